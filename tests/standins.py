"""Stand-in models for tests: small ONNX graphs with the real models' tensor names and shapes, and the real
BlazeFace files taken from the mediapipe==0.10.21 wheel on PyPI.

The stand-ins have random weights: they exercise the code path (names read from the session, shapes,
batching, normalisation), never the quality of a real model, and nothing in the tests depends on what a
real model would answer.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cl_ml_tools import models

MEDIAPIPE_WHEEL = "mediapipe==0.10.21"
WHEEL_MEMBERS = {
    "face_detection_full_range_sparse": "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
    # The short-range network without Tasks metadata: the same weights as blaze_face_short_range, whose
    # Tasks-format file is not in any wheel; it is used through an override, with the sha256 warning.
    "blaze_face_short_range": "mediapipe/modules/face_detection/face_detection_short_range.tflite",
}
# sha256 of the wheel's short-range file (= https://storage.googleapis.com/mediapipe-assets/face_detection_short_range.tflite)
SHORT_RANGE_SHA256 = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _from_wheel(cache: Path, requirement: str, member: str, sha256: str, *pip_args: str) -> Path:
    """``member`` of the wheel ``requirement`` (downloaded once with pip into ``cache``), extracted beside it
    and checked against ``sha256``."""
    out = cache / Path(member).name
    if out.exists() and _sha256(out) == sha256:
        return out
    cache.mkdir(parents=True, exist_ok=True)
    name, version = requirement.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    if not list(cache.glob(pattern)):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *pip_args,
             "-d", str(cache), requirement],
            check=True,
        )  # fmt: skip
    with zipfile.ZipFile(next(cache.glob(pattern))) as wheel:
        out.write_bytes(wheel.read(member))
    assert _sha256(out) == sha256, f"{member} in {requirement} is not the pinned file"
    return out


def blazeface_files(cache: Path) -> dict[str, Path]:
    """The two BlazeFace networks from the mediapipe wheel, checked against their known sha256."""
    expected = {
        "face_detection_full_range_sparse": models.REGISTRY["face_detection_full_range_sparse"].files[0].sha256,
        "blaze_face_short_range": SHORT_RANGE_SHA256,
    }
    # Any platform's wheel holds the same files; this one exists for every Python the project supports.
    platform = ("--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64")
    return {
        model_id: _from_wheel(cache, MEDIAPIPE_WHEEL, member, expected[model_id], *platform)
        for model_id, member in WHEEL_MEMBERS.items()
    }


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def arcface(path: Path, *, seed: int = 0, output_name: str = "516", dim: int = 512, dense_scale: float = 0.05) -> Path:
    """An ArcFace-shaped network: input ``input.1`` (N, 3, 112, 112) → output (N, ``dim``).

    A strided convolution, ReLU and a dense layer: deterministic, and different faces give different
    vectors, so the tests can tell crops apart and compare batch sizes. ``dense_scale=0`` makes a network
    that answers zero to everything."""
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0, 0.2, (8, 3, 8, 8)).astype(np.float32)
    dense_w = rng.normal(0, dense_scale, (8 * 14 * 14, dim)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input.1", "conv_w"], ["c"], strides=[8, 8]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "dense_w"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes,
        "arcface_standin",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", dim])],
        initializer=[numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(dense_w, "dense_w")],
    )
    return _save(graph, path)


OPEN_CLIP_WHEEL = "open-clip-torch==3.3.0"
CLIP_VOCAB_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


def clip_vocab(cache: Path) -> Path:
    """CLIP's BPE vocabulary and merges (the file open_clip's tokenizer reads), from the open-clip-torch
    wheel, checked against its known sha256."""
    return _from_wheel(cache, OPEN_CLIP_WHEEL, CLIP_VOCAB_MEMBER, CLIP_VOCAB_SHA256)


def _random(shape: tuple[int, ...], scale: float, seed: int, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(seed).normal(0, scale, shape).astype(np.float32), name)


def dinov2(path: Path, *, seed: int = 0, pooled_name: str = "pooler_output") -> Path:
    """A DINOv2-shaped network: ``pixel_values`` (N, 3, 224, 224) → ``last_hidden_state`` (N, 257, 384) and
    ``pooler_output`` (N, 384). 14-px patches, ReLU, and the patches' mean as the class token: resized or
    recompressed copies of a picture land close together, as with the real model."""
    nodes = [
        helper.make_node("Conv", ["pixel_values", "patch_w"], ["p"], strides=[14, 14]),
        helper.make_node("Relu", ["p"], ["r"]),
        helper.make_node("Reshape", ["r", "to_tokens"], ["t"]),  # (N, 384, 256)
        helper.make_node("Transpose", ["t"], ["tokens"], perm=[0, 2, 1]),
        helper.make_node("ReduceMean", ["tokens"], ["cls"], axes=[1], keepdims=1),
        helper.make_node("Concat", ["cls", "tokens"], ["last_hidden_state"], axis=1),
        helper.make_node("Squeeze", ["cls", "token_axis"], [pooled_name]),
    ]
    graph = helper.make_graph(
        nodes,
        "dinov2_standin",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [
            helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["N", 257, 384]),
            helper.make_tensor_value_info(pooled_name, TensorProto.FLOAT, ["N", 384]),
        ],
        initializer=[
            _random((384, 3, 14, 14), 0.05, seed, "patch_w"),
            numpy_helper.from_array(np.array([0, 384, 256], np.int64), "to_tokens"),
            numpy_helper.from_array(np.array([1], np.int64), "token_axis"),
        ],
    )
    return _save(graph, path)


def mobileclip_image(path: Path, *, seed: int = 0, dim: int = 512, bias: float = 0.1) -> Path:
    """A MobileCLIP-S2-image-shaped network: ``pixel_values`` (N, 3, 256, 256) → ``image_embeds`` (N, dim)."""
    nodes = [
        # The bias keeps a black frame (all zeros in [0, 1] pixels) from giving a zero vector; bias=0 makes
        # a network that does, as a random-weight export can.
        helper.make_node("Conv", ["pixel_values", "patch_w", "patch_b"], ["p"], strides=[16, 16]),
        helper.make_node("Relu", ["p"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "proj"], ["image_embeds"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mobileclip_image_standin",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["N", 3, 256, 256])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["N", dim])],
        initializer=[
            _random((64, 3, 16, 16), 0.05, seed, "patch_w"),
            numpy_helper.from_array(np.full(64, bias, np.float32), "patch_b"),
            _random((64, dim), 0.1, seed + 1, "proj"),
        ],
    )
    return _save(graph, path)


def mobileclip_text(folder: Path, vocab_gz: Path, *, seed: int = 0) -> Path:
    """A folder holding a MobileCLIP-S2-text-shaped network (``input_ids`` int64 (N, 77) → ``text_embeds``
    (N, 512): token embeddings from a 1024-row table, by id modulo 1024, averaged) and a ``tokenizer.json``
    built from CLIP's real vocabulary; the folder is what a config override names."""
    from cl_ml_tools.models import tokenizer

    nodes = [
        helper.make_node("Mod", ["input_ids", "rows"], ["row"]),
        helper.make_node("Gather", ["table", "row"], ["e"], axis=0),
        helper.make_node("ReduceMean", ["e"], ["text_embeds"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "mobileclip_text_standin",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", 77])],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["N", 512])],
        initializer=[
            _random((1024, 512), 1.0, seed, "table"),
            numpy_helper.from_array(np.array(1024, np.int64), "rows"),
        ],
    )
    folder.mkdir(parents=True, exist_ok=True)
    _save(graph, folder / "text_model.onnx")
    tokenizer.from_bpe_vocab(vocab_gz).save(str(folder / "tokenizer.json"))
    return folder
