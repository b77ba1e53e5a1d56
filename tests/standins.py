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


def blazeface_files(cache: Path) -> dict[str, Path]:
    """The two BlazeFace networks from the mediapipe wheel (downloaded once with pip into ``cache``),
    checked against their known sha256."""
    expected = {
        "face_detection_full_range_sparse": models.REGISTRY["face_detection_full_range_sparse"].files[0].sha256,
        "blaze_face_short_range": SHORT_RANGE_SHA256,
    }
    out = {model_id: cache / Path(member).name for model_id, member in WHEEL_MEMBERS.items()}
    if all(p.exists() and _sha256(p) == expected[m] for m, p in out.items()):
        return out
    cache.mkdir(parents=True, exist_ok=True)
    wheels = list(cache.glob("mediapipe-0.10.21-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
             "-d", str(cache), MEDIAPIPE_WHEEL],
            check=True,
        )  # fmt: skip
        wheels = list(cache.glob("mediapipe-0.10.21-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        for model_id, member in WHEEL_MEMBERS.items():
            out[model_id].write_bytes(wheel.read(member))
            assert _sha256(out[model_id]) == expected[model_id], f"{member} in the wheel is not the pinned file"
    return out


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def arcface(path: Path, *, seed: int = 0, output_name: str = "516", dim: int = 512) -> Path:
    """An ArcFace-shaped network: input ``input.1`` (N, 3, 112, 112) → output (N, ``dim``).

    A strided convolution, ReLU and a dense layer: deterministic, and different faces give different
    vectors, so the tests can tell crops apart and compare batch sizes."""
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0, 0.2, (8, 3, 8, 8)).astype(np.float32)
    dense_w = rng.normal(0, 0.05, (8 * 14 * 14, dim)).astype(np.float32)
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
