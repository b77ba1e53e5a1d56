"""Model manager: the registry of the networks the ML steps use, a verified local cache, downloads, config
overrides and ONNX Runtime sessions.

Every file the steps load is identified by its sha256. Registry pins are checked on download; a cached file is
hashed once on first use and then trusted through a stamp beside it (size, mtime, inode, sha256), so a job
only pays a ``stat``. Nothing is ever placed under its final name before it has been verified.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import math
import os
import stat
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from . import __version__
from .fileio import atomic_path, write_bytes_atomic

if TYPE_CHECKING:
    import onnxruntime

log = logging.getLogger(__name__)

CACHE_ENV = "CL_ML_TOOLS_MODEL_CACHE"
# Set (to anything but "" or "0") on machines that must never try the network, e.g. cluster nodes: a missing
# model then fails at once with the same message instead of waiting on a connection.
OFFLINE_ENV = "CL_ML_TOOLS_OFFLINE"
TIMEOUT_S = 30
CHUNK = 1 << 20
LOCK_NAME = "lock.json"
STAMP_SUFFIX = ".verified"


def cache_dir() -> Path:
    """The model cache: ``$CL_ML_TOOLS_MODEL_CACHE`` or ``~/.cache/cl_ml_tools/models``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cl_ml_tools" / "models"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # str for a symbolic dim such as "N"
    dtype: str = "float32"


@dataclass(frozen=True)
class ModelFile:
    name: str  # file name in the cache folder <cache>/<model id>/<name>
    url: str
    # None = pin unknown: the first download's sha256 is recorded in <cache>/lock.json and enforced afterwards.
    sha256: str | None
    size: int | None
    member: str | None = None  # path of the file inside the zip archive at `url`


@dataclass(frozen=True)
class ModelSpec:
    id: str
    version: str
    files: tuple[ModelFile, ...]  # files[0] is the main file (the network)
    licence: str
    source: str  # model page
    runtime: str  # "mediapipe" or "onnxruntime"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    description: str
    notice: str | None = None  # shown when fetching/using (non-commercial licences)


_APACHE = "Apache-2.0"
_MEDIAPIPE_PAGE = "https://ai.google.dev/edge/mediapipe/solutions/vision/face_detector"
_INSIGHTFACE_LICENCE = "InsightFace pretrained models: non-commercial research use only"
_INSIGHTFACE_NOTICE = (
    "The InsightFace pretrained models (buffalo_s, buffalo_l) are licensed for non-commercial research use only; "
    "do not use them, or embeddings made with them, commercially."
)
_INSIGHTFACE_RELEASE = "https://github.com/deepinsight/insightface/releases/download/v0.7"
_MOBILECLIP_LICENCE = "Apple ML research licence (apple/ml-mobileclip)"
_MOBILECLIP_NOTICE = (
    "MobileCLIP weights are released under Apple's ML research licence (apple/ml-mobileclip); "
    "read its terms before any use beyond research."
)
# Hugging Face files at a fixed commit of their repository, never at `main`: a new upload there would otherwise
# change what a URL serves (and fail its sha256 pin) under a run's feet. Each commit was checked to hold the
# pinned files (docs/models.md, "Where the pins come from").
_XENOVA_DINOV2 = "https://huggingface.co/Xenova/dinov2-small/resolve/c2bb04a51fab207c420665f1946016107bffc701"
_XENOVA_MOBILECLIP = "https://huggingface.co/Xenova/mobileclip_s2/resolve/80568acdfbd3e3b8b5e94a7feb07095a00d622bf"

REGISTRY: dict[str, ModelSpec] = {
    spec.id: spec
    for spec in (
        ModelSpec(
            id="blaze_face_short_range",
            version="float16/1",
            files=(
                ModelFile(
                    name="blaze_face_short_range.tflite",
                    url="https://storage.googleapis.com/mediapipe-models/face_detector/blaze_face_short_range/"
                    "float16/1/blaze_face_short_range.tflite",
                    sha256="b4578f35940bf5a1a655214a1cce5cab13eba73c1297cd78e1a04c2380b0152f",
                    size=229746,
                ),
            ),
            licence=_APACHE,
            source=_MEDIAPIPE_PAGE,
            runtime="mediapipe",
            inputs=(TensorSpec("input", (1, 128, 128, 3)),),
            outputs=(TensorSpec("regressors", (1, 896, 16)), TensorSpec("classificators", (1, 896, 1))),
            description="BlazeFace short range (MediaPipe Tasks face detector): faces within about 2 m",
        ),
        ModelSpec(
            id="face_detection_full_range_sparse",
            version="mediapipe-assets",
            files=(
                # The same bytes ship in the mediapipe==0.10.21 wheel as
                # mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite.
                ModelFile(
                    name="face_detection_full_range_sparse.tflite",
                    url="https://storage.googleapis.com/mediapipe-assets/face_detection_full_range_sparse.tflite",
                    sha256="2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
                    size=676746,
                ),
            ),
            licence=_APACHE,
            source=_MEDIAPIPE_PAGE,
            runtime="mediapipe",
            inputs=(TensorSpec("input", (1, 192, 192, 3)),),
            outputs=(TensorSpec("regressors", (1, 2304, 16)), TensorSpec("classificators", (1, 2304, 1))),
            description="BlazeFace full range (sparse): smaller faces, up to about 5 m",
        ),
        ModelSpec(
            id="arcface_w600k_mbf",
            version="buffalo_s v0.7",
            files=(
                ModelFile(
                    name="w600k_mbf.onnx",
                    url=f"{_INSIGHTFACE_RELEASE}/buffalo_s.zip",
                    sha256="9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f",
                    size=13616099,
                    member="w600k_mbf.onnx",
                ),
            ),
            licence=_INSIGHTFACE_LICENCE,
            source="https://github.com/deepinsight/insightface/tree/master/model_zoo",
            runtime="onnxruntime",
            inputs=(TensorSpec("input.1", ("N", 3, 112, 112)),),
            # The output name was not checked against the real file offline; callers read names from the
            # session, and check_io compares shapes only.
            outputs=(TensorSpec("516", ("N", 512)),),
            description="ArcFace MobileFaceNet trained on WebFace600K (InsightFace buffalo_s): 512-d face embeddings",
            notice=_INSIGHTFACE_NOTICE,
        ),
        ModelSpec(
            id="arcface_w600k_r50",
            version="buffalo_l v0.7",
            files=(
                ModelFile(
                    name="w600k_r50.onnx",
                    url=f"{_INSIGHTFACE_RELEASE}/buffalo_l.zip",
                    sha256="4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
                    size=174383860,
                    member="w600k_r50.onnx",
                ),
            ),
            licence=_INSIGHTFACE_LICENCE,
            source="https://github.com/deepinsight/insightface/tree/master/model_zoo",
            runtime="onnxruntime",
            inputs=(TensorSpec("input.1", ("N", 3, 112, 112)),),
            # As for the MobileFaceNet, the output name is read from the session at run time.
            outputs=(TensorSpec("683", ("N", 512)),),
            description="ArcFace ResNet-50 trained on WebFace600K (InsightFace buffalo_l): 512-d face embeddings",
            notice=_INSIGHTFACE_NOTICE,
        ),
        ModelSpec(
            id="dinov2_small",
            version="Xenova c2bb04a",
            files=(
                ModelFile(
                    name="model.onnx",
                    url=f"{_XENOVA_DINOV2}/onnx/model.onnx",
                    sha256="83141175ec78b4ff9a2bb58a4c7c264ba0054d1c2e122e5a8114b79a8d4179ea",
                    size=88459888,
                ),
            ),
            licence=_APACHE,
            source="https://huggingface.co/facebook/dinov2-small",
            runtime="onnxruntime",
            inputs=(TensorSpec("pixel_values", ("N", 3, 224, 224)),),
            outputs=(TensorSpec("last_hidden_state", ("N", 257, 384)), TensorSpec("pooler_output", ("N", 384))),
            description="DINOv2 ViT-S/14 image features (ONNX export by Xenova)",
        ),
        ModelSpec(
            id="mobileclip_s2_image",
            version="Xenova 80568ac",
            files=(
                ModelFile(
                    name="vision_model.onnx",
                    url=f"{_XENOVA_MOBILECLIP}/onnx/vision_model.onnx",
                    sha256="d28b92d7a3a6ba99bd000cce5c91678c0e279dc934c887a3785908a811872a6c",
                    size=143020962,
                ),
            ),
            licence=_MOBILECLIP_LICENCE,
            source="https://huggingface.co/apple/MobileCLIP-S2",
            runtime="onnxruntime",
            inputs=(TensorSpec("pixel_values", ("N", 3, 256, 256)),),
            outputs=(TensorSpec("image_embeds", ("N", 512)),),
            description="MobileCLIP-S2 image tower (ONNX export by Xenova): 512-d embeddings in the text tower's space",
            notice=_MOBILECLIP_NOTICE,
        ),
        ModelSpec(
            id="mobileclip_s2_text",
            version="Xenova 80568ac",
            files=(
                ModelFile(
                    name="text_model.onnx",
                    url=f"{_XENOVA_MOBILECLIP}/onnx/text_model.onnx",
                    sha256="ff82e945c6c652c51df687e10f102a8e43c87d37c9108ff692468be3732f3710",
                    size=253894023,
                ),
                ModelFile(
                    name="tokenizer.json",
                    url=f"{_XENOVA_MOBILECLIP}/tokenizer.json",
                    sha256="72ed5c96db5729294468543e4bc75fce14ca63f58e37300290189ba1c1e52b85",
                    size=2224081,
                ),
            ),
            licence=_MOBILECLIP_LICENCE,
            source="https://huggingface.co/apple/MobileCLIP-S2",
            runtime="onnxruntime",
            inputs=(TensorSpec("input_ids", ("N", 77), dtype="int64"),),
            outputs=(TensorSpec("text_embeds", ("N", 512)),),
            description="MobileCLIP-S2 text tower and its tokenizer (ONNX export by Xenova)",
            notice=_MOBILECLIP_NOTICE,
        ),
    )
}


def _int8(model_id: str, file: ModelFile) -> ModelSpec:
    """The int8-quantised export published beside an fp32 one (same tensors; weights quantised, activations
    quantised on the fly)."""
    base = REGISTRY[model_id]
    return replace(
        base,
        id=f"{model_id}_int8",
        files=(file,),
        description=f"{base.description}; int8 weights (smaller and faster on CPUs, embeddings slightly off fp32)",
    )


REGISTRY["dinov2_small_int8"] = _int8(
    "dinov2_small",
    ModelFile(
        name="model_quantized.onnx",
        url=f"{_XENOVA_DINOV2}/onnx/model_quantized.onnx",
        sha256="3afdc8bc63b50558d6e5770f5b799bb82455c2311183a2de43803f343a29d917",
        size=24451943,
    ),
)
# No MobileCLIP-S2 int8: its convolutions quantised run ~9x slower on ONNX Runtime's CPU (docs/models.md).


class ModelError(Exception):
    """A model that cannot be found, downloaded, verified or loaded. The message is complete and meant for a
    person: it never wraps a library traceback."""


@dataclass(frozen=True)
class Resolved:
    spec: ModelSpec
    path: Path  # main file
    paths: dict[str, Path]  # every file by ModelFile.name
    sha256: str  # of the main file actually used
    override: bool  # came from config `models: {id: {path: ...}}`

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def tag(self) -> str:
        """What the tables store in their ``model`` column."""
        return f"{self.spec.id}@sha256:{self.sha256}"


# --------------------------------------------------------------------------------------------------- lookups


def _spec(model_id: str) -> ModelSpec:
    try:
        return REGISTRY[model_id]
    except KeyError:
        raise ModelError(f"unknown model id {model_id!r}; known ids: {', '.join(sorted(REGISTRY))}") from None


def _target(spec: ModelSpec, f: ModelFile) -> Path:
    return cache_dir() / spec.id / f.name


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + STAMP_SUFFIX)


def _config_hint(model_id: str) -> str:
    return f"or point the config at a local copy:\n  models: {{{model_id}: {{path: /path/to/file}}}}"


def _describe_file(spec: ModelSpec, f: ModelFile, sha: str | None, size: int | None) -> str:
    where = f"  url:      {f.url}\n"
    if f.member:
        where += f"  member:   {f.member} (inside that zip archive)\n"
    where += f"  place at: {_target(spec, f)}\n"
    where += f"  sha256:   {sha or 'not pinned'}"
    if size is not None:
        where += f" ({size} bytes)"
    return where


DEVICES = ("cpu", "cuda")
RUNTIME_KEYS = ("device", "gpu_batch_size")
"""Keys of config ``models`` that are not model ids: where the ONNX models run, and their batch on a GPU."""


@dataclass(frozen=True)
class Runtime:
    device: str = "cpu"
    gpu_batch_size: int = 256

    def batch(self, cpu_batch: int) -> int:
        """Images per onnxruntime call: the step's CPU batch, or a GPU's larger one (a GPU is starved by 8)."""
        return cpu_batch if self.device == "cpu" else max(cpu_batch, self.gpu_batch_size)


def runtime_from_config(config: Mapping[str, Any]) -> Runtime:
    section = config.get("models") or {}
    runtime = Runtime(**{k: section[k] for k in RUNTIME_KEYS if k in section})
    if runtime.device not in DEVICES:
        raise ModelError(f"config 'models.device' must be one of {', '.join(DEVICES)}, not {runtime.device!r}")
    return runtime


def overrides_from_config(config: Mapping[str, Any]) -> dict[str, Path]:
    """``config["models"]`` as ``{id: Path}``. Relative paths stay relative to the working directory, as
    every other path in the workflow config."""
    section = config.get("models") or {}
    if not isinstance(section, Mapping):
        raise ModelError(f"config 'models' must be a mapping of model id to {{path: ...}}, not {section!r}")
    section = {k: v for k, v in section.items() if k not in RUNTIME_KEYS}
    unknown = sorted(str(k) for k in section if k not in REGISTRY)
    if unknown:
        raise ModelError(
            f"config 'models' names unknown model id(s) {', '.join(unknown)}; known ids: {', '.join(sorted(REGISTRY))}"
        )
    out: dict[str, Path] = {}
    for model_id, entry in section.items():
        path = entry.get("path") if isinstance(entry, Mapping) else None
        if not isinstance(path, str | os.PathLike) or not str(path):
            raise ModelError(f"config 'models.{model_id}' must be {{path: /path/to/file}}, not {entry!r}")
        out[model_id] = Path(path).expanduser()
    return out


# --------------------------------------------------------------------------------------------------- hashing


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _stat_key(st: os.stat_result) -> dict[str, int]:
    # The inode is part of the key because a replaced file gets a new one even when size and a coarse mtime
    # happen to match the old file's.
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: Mapping[str, Any]) -> bool:
    try:
        write_bytes_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
    except OSError as exc:
        # A read-only cache still works; it just costs a full hash on every use.
        log.debug("could not write %s: %s", path, exc)
        return False
    return True


def _remembered_sha(stamp: Mapping[str, Any] | None, st: os.stat_result) -> str | None:
    """The sha256 a stamp records, if the stamp describes the file as ``st`` finds it now."""
    key = _stat_key(st)
    if stamp is None or {k: stamp.get(k) for k in key} != key:
        return None
    sha = stamp.get("sha256")
    return sha if isinstance(sha, str) else None


def _stamped_sha(path: Path, st: os.stat_result) -> str | None:
    return _remembered_sha(_read_json(_stamp_path(path)), st)


def _write_stamp(path: Path, sha: str) -> None:
    with contextlib.suppress(OSError):
        _write_json(_stamp_path(path), {**_stat_key(path.stat()), "sha256": sha})


def _drop_stamp(path: Path) -> None:
    with contextlib.suppress(OSError):
        _stamp_path(path).unlink()


def _override_sha(path: Path, fresh: bool = False) -> str:
    """sha256 of a file named in the config, remembered in the cache by path, size, mtime and inode so that
    every workflow parse does not re-read a 170 MB network (``fresh`` ignores what was remembered)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    resolved = str(path.resolve())
    stamp_file = cache_dir() / "overrides" / (hashlib.sha256(resolved.encode()).hexdigest()[:32] + ".json")
    stamp = _read_json(stamp_file)
    if not fresh and stamp and stamp.get("path") == resolved and (sha := _remembered_sha(stamp, st)):
        return sha
    try:
        sha = _sha256_file(path)
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    _write_json(stamp_file, {**_stat_key(st), "path": resolved, "sha256": sha})
    return sha


# --------------------------------------------------------------------------------------------------- lock.json

_lock_mutex = threading.Lock()


@contextlib.contextmanager
def _lock_file() -> Iterator[None]:
    """Serialise read-modify-write of lock.json between threads and processes (parallel Snakemake jobs)."""
    path = cache_dir() / (LOCK_NAME + ".lck")
    with _lock_mutex:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fh: IO[bytes] | None = open(path, "ab")  # noqa: SIM115 - held for the whole block
        except OSError:
            fh = None
        try:
            if fh is not None:
                with contextlib.suppress(ImportError, OSError):
                    import fcntl

                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            yield
        finally:
            if fh is not None:
                fh.close()


def _lock_key(spec: ModelSpec, f: ModelFile) -> str:
    return f"{spec.id}/{f.name}"


def _locked(spec: ModelSpec, f: ModelFile) -> dict[str, Any] | None:
    data = _read_json(cache_dir() / LOCK_NAME) or {}
    entry = (data.get("files") or {}).get(_lock_key(spec, f))
    # An entry recorded for another URL describes another file: the registry moved on.
    if isinstance(entry, dict) and entry.get("url") == f.url and isinstance(entry.get("sha256"), str):
        return entry
    return None


def _record_lock(spec: ModelSpec, f: ModelFile, sha: str, size: int) -> None:
    path = cache_dir() / LOCK_NAME
    with _lock_file():
        data = _read_json(path) or {}
        files = data.setdefault("files", {})
        files[_lock_key(spec, f)] = {
            "sha256": sha,
            "size": size,
            "url": f.url,
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        data["version"] = 1
        saved = _write_json(path, data)
    log.warning(
        "model %s: %s has no sha256 pin in the registry; %s its sha256 %s (%d bytes), which later runs enforce",
        spec.id,
        f.name,
        f"recorded in {path}" if saved else f"could not record in {path}; this run accepted",
        sha,
        size,
    )


def _expected(spec: ModelSpec, f: ModelFile) -> tuple[str | None, int | None, str]:
    """The sha256 and size a file must have, and where that requirement comes from."""
    if f.sha256:
        return f.sha256, f.size, "pinned in the registry"
    entry = _locked(spec, f)
    if entry:
        size = entry.get("size")
        return entry["sha256"], size if isinstance(size, int) else f.size, f"recorded in {cache_dir() / LOCK_NAME}"
    return None, f.size, "not pinned"


# --------------------------------------------------------------------------------------------------- locate


class _Missing(ModelError):
    pass


class _Bad(ModelError):
    pass


def _check_cached(spec: ModelSpec, f: ModelFile, *, full: bool) -> str:
    """Return the sha256 of the verified cached file, or raise _Missing / _Bad."""
    path = _target(spec, f)
    sha_pin, size_pin, origin = _expected(spec, f)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise _Missing(
            f"model {spec.id}: {f.name} is not in the cache. Run `cl-ml-tools models fetch {spec.id}` (needs the "
            f"network), or put {f.name}{' (extracted from the archive)' if f.member else ''} there by hand:\n"
            f"{_describe_file(spec, f, sha_pin, size_pin)}\n{_config_hint(spec.id)}"
        ) from None
    except OSError as exc:
        raise _Bad(f"model {spec.id}: cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _Bad(f"model {spec.id}: {path} is not a regular file")
    fix = (
        f"Delete it and run `cl-ml-tools models fetch {spec.id}`, or fetch it by hand:\n"
        f"{_describe_file(spec, f, sha_pin, size_pin)}\n{_config_hint(spec.id)}"
    )
    if size_pin is not None and st.st_size != size_pin:
        _drop_stamp(path)
        raise _Bad(f"model {spec.id}: cached {path} has {st.st_size} bytes, expected {size_pin} ({origin}). {fix}")
    if not full and sha_pin is not None:
        stamped = _stamped_sha(path, st)
        if stamped == sha_pin:
            return stamped
    try:
        sha = _sha256_file(path)
    except OSError as exc:
        raise _Bad(f"model {spec.id}: cannot read {path}: {exc.strerror or exc}") from None
    if sha_pin is None:
        _record_lock(spec, f, sha, st.st_size)
    elif sha != sha_pin:
        _drop_stamp(path)
        raise _Bad(f"model {spec.id}: cached {path} has sha256 {sha}, expected {sha_pin} ({origin}). {fix}")
    _write_stamp(path, sha)
    return sha


def _override_paths(spec: ModelSpec, given: Path) -> dict[str, Path]:
    """Where each file of an overridden model is: a directory holds them all by name; a file is the main
    file, with the others taken from beside it when there, else from the cache."""
    if given.is_dir():
        paths = {f.name: given / f.name for f in spec.files}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise ModelError(
                f"model {spec.id}: the config override {given} is a directory but lacks {', '.join(missing)}; "
                f"it must hold every file of the model: {', '.join(f.name for f in spec.files)}"
            )
        return paths
    if not given.is_file():
        raise ModelError(
            f"model {spec.id}: the config override path {given} does not exist "
            f"(config `models: {{{spec.id}: {{path: ...}}}}`)"
        )
    paths = {spec.files[0].name: given}
    for f in spec.files[1:]:
        beside = given.with_name(f.name)
        paths[f.name] = beside if beside.is_file() else _target(spec, f)
    return paths


def _resolve(model_id: str, overrides: Mapping[str, Path] | None, *, full: bool) -> Resolved:
    spec = _spec(model_id)
    given = (overrides or {}).get(model_id)
    if given is None:
        shas = [_check_cached(spec, f, full=full) for f in spec.files]
        paths = {f.name: _target(spec, f) for f in spec.files}
        return Resolved(spec, paths[spec.files[0].name], paths, shas[0], override=False)

    paths = _override_paths(spec, Path(given))
    main_sha = ""
    for i, f in enumerate(spec.files):
        path = paths[f.name]
        if path == _target(spec, f):
            sha = _check_cached(spec, f, full=full)
        else:
            sha = _override_sha(path, fresh=full)
            if f.sha256 and sha != f.sha256:
                log.warning(
                    "model %s: using %s from the config override, whose sha256 %s differs from the registry pin %s",
                    spec.id,
                    path,
                    sha,
                    f.sha256,
                )
        if i == 0:
            main_sha = sha
    return Resolved(spec, paths[spec.files[0].name], paths, main_sha, override=True)


def locate(model_id: str, overrides: Mapping[str, Path] | None = None) -> Resolved:
    """The model's files, verified, without any network access. A config override is used as given (with a
    warning when it differs from the pin); otherwise the cached files must match their pins."""
    return _resolve(model_id, overrides, full=False)


def verify(model_id: str, overrides: Mapping[str, Path] | None = None) -> Resolved:
    """Like :func:`locate` but re-hashes every file, ignoring the stamps."""
    return _resolve(model_id, overrides, full=True)


def identity(model_id: str, overrides: Mapping[str, Path] | None = None) -> str:
    """The sha256 that identifies the model, for Snakemake rule params. Runs at every workflow parse, so a
    pinned registry model costs no file access at all; an override is hashed once and remembered."""
    spec = _spec(model_id)
    given = (overrides or {}).get(model_id)
    if given is not None:
        main_path = _override_paths(spec, Path(given))[spec.files[0].name]
        return _override_sha(main_path)
    main = spec.files[0]
    if main.sha256:
        return main.sha256
    # No pin: the sha256 recorded on the first download identifies it (one small read of lock.json).
    entry = _locked(spec, main)
    return entry["sha256"] if entry else f"unpinned:{main.url}"


def cache_state(model_id: str, overrides: Mapping[str, Path] | None = None) -> tuple[str, Path]:
    """For listings, from ``stat`` alone: ``override``, ``verified`` (every file matches a stamp of its pin),
    ``cached`` (present with the right size, not hashed yet), ``bad-size`` or ``missing``; and the main
    file's path."""
    spec = _spec(model_id)
    given = (overrides or {}).get(model_id)
    if given is not None:
        return "override", Path(given)
    state = "verified"
    for f in spec.files:
        path = _target(spec, f)
        sha_pin, size_pin, _ = _expected(spec, f)
        try:
            st = path.stat()
        except OSError:
            return "missing", _target(spec, spec.files[0])
        if size_pin is not None and st.st_size != size_pin:
            state = "bad-size"
        elif state == "verified" and (sha_pin is None or _stamped_sha(path, st) != sha_pin):
            state = "cached"
    return state, _target(spec, spec.files[0])


# --------------------------------------------------------------------------------------------------- download

_noticed: set[str] = set()


def _notice(spec: ModelSpec) -> None:
    if spec.notice and spec.id not in _noticed:
        _noticed.add(spec.id)
        log.warning("model %s: %s", spec.id, spec.notice)


def _progress_bar(total: int | None, desc: str, progress: bool) -> Any:
    enabled = progress and sys.stderr.isatty()
    try:
        from tqdm import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        return contextlib.nullcontext(None)
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False)


def _stream(src: IO[bytes], dst: IO[bytes], limit: int | None, bar: Any) -> tuple[str, int]:
    """Copy src to dst, hashing; stop as soon as more than ``limit`` bytes arrive (a wrong file)."""
    h = hashlib.sha256()
    n = 0
    while chunk := src.read(CHUNK):
        n += len(chunk)
        if limit is not None and n > limit:
            return h.hexdigest(), n
        h.update(chunk)
        dst.write(chunk)
        if bar is not None:
            bar.update(len(chunk))
    return h.hexdigest(), n


def _temp_beside(target: Path, suffix: str) -> tuple[IO[bytes], Path]:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    return os.fdopen(fd, "wb"), Path(name)


def _download(spec: ModelSpec, f: ModelFile, dest: IO[bytes], limit: int | None, progress: bool) -> tuple[str, int]:
    sha_pin, size_pin, _ = _expected(spec, f)

    def failure(reason: str) -> ModelError:
        return ModelError(
            f"model {spec.id}: cannot download {f.name}: {reason}\n{_describe_file(spec, f, sha_pin, size_pin)}\n"
            f"Put a copy of {f.name}{' (extracted from that archive)' if f.member else ''} at that path by hand, "
            f"{_config_hint(spec.id)}"
        )

    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise failure(f"downloads are switched off ({OFFLINE_ENV} is set)")
    request = urllib.request.Request(f.url, headers={"User-Agent": f"cl_ml_tools/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with _progress_bar(total, f"{spec.id}/{f.name}", progress) as bar:
                sha, n = _stream(response, dest, limit, bar)
    except urllib.error.HTTPError as exc:
        raise failure(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise failure(str(exc.reason)) from None
    except TimeoutError:
        raise failure(f"no answer within {TIMEOUT_S} s") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise failure(str(exc) or type(exc).__name__) from None
    # http.client returns a short body without complaint when the connection drops early.
    if total is not None and n < total:
        raise failure(f"the connection closed after {n} of {total} bytes")
    return sha, n


def _check_download(spec: ModelSpec, f: ModelFile, sha: str, size: int, what: str) -> None:
    sha_pin, size_pin, origin = _expected(spec, f)
    problem = None
    if size_pin is not None and size != size_pin:
        problem = f"{what} has {'at least ' if size > size_pin else ''}{size} bytes, expected {size_pin} ({origin})"
    elif sha_pin is not None and sha != sha_pin:
        problem = f"{what} has sha256 {sha}, expected {sha_pin} ({origin})"
    if problem:
        raise ModelError(
            f"model {spec.id}: {f.name} from {f.url} failed verification: {problem}. Nothing was saved. If the "
            f"upstream file changed on purpose, update the registry pin{' (or lock.json)' if not f.sha256 else ''}; "
            f"otherwise place a good copy by hand:\n{_describe_file(spec, f, sha_pin, size_pin)}\n"
            f"{_config_hint(spec.id)}"
        )
    if sha_pin is None:
        _record_lock(spec, f, sha, size)


def _zip_entry(spec: ModelSpec, f: ModelFile, archive: zipfile.ZipFile) -> zipfile.ZipInfo:
    """The archive entry holding ``f.member``: the exact path, else the one entry with that base name.
    Entries that could escape a folder or are links are refused even though the bytes are written to a path
    of our choosing, because such an archive is not the one the pin describes."""
    assert f.member is not None
    wanted = PurePosixPath(f.member.replace("\\", "/")).name
    infos = archive.infolist()
    matches = [i for i in infos if i.filename == f.member]
    if not matches:
        matches = [i for i in infos if PurePosixPath(i.filename.replace("\\", "/")).name == wanted]
    if not matches:
        raise ModelError(
            f"model {spec.id}: the archive at {f.url} has no member {f.member!r}; it holds "
            f"{', '.join(i.filename for i in infos[:20]) or 'nothing'}"
        )
    if len(matches) > 1:
        raise ModelError(
            f"model {spec.id}: the archive at {f.url} has several members named {wanted!r}: "
            f"{', '.join(i.filename for i in matches)}"
        )
    info = matches[0]
    name = info.filename.replace("\\", "/")
    mode = info.external_attr >> 16
    reason = None
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        reason = "an absolute path"
    elif ".." in name.split("/"):
        reason = "a '..' component"
    elif stat.S_ISLNK(mode):
        reason = "a symbolic link"
    elif info.is_dir() or stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # archives made on Windows carry no type
        reason = "not a regular file"
    if reason:
        raise ModelError(f"model {spec.id}: refusing archive member {info.filename!r} from {f.url}: it is {reason}")
    return info


def _fetch_file(spec: ModelSpec, f: ModelFile, progress: bool) -> None:
    target = _target(spec, f)
    sha_pin, size_pin, _ = _expected(spec, f)
    temps: list[Path] = []
    try:
        if f.member is None:
            fh, tmp = _temp_beside(target, ".part")
            temps.append(tmp)
            with fh:
                sha, size = _download(spec, f, fh, size_pin, progress)
            _check_download(spec, f, sha, size, "the download")
        else:
            zfh, ztmp = _temp_beside(target, ".zip.part")
            temps.append(ztmp)
            with zfh:
                _download(spec, f, zfh, None, progress)
            fh, tmp = _temp_beside(target, ".part")
            temps.append(tmp)
            with fh:
                try:
                    with zipfile.ZipFile(ztmp) as archive:
                        info = _zip_entry(spec, f, archive)
                        if size_pin is not None and info.file_size != size_pin:
                            sha, size = "", info.file_size
                        else:
                            with archive.open(info) as src:
                                sha, size = _stream(src, fh, size_pin, None)
                except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError) as exc:
                    raise ModelError(
                        f"model {spec.id}: the download from {f.url} is not a readable zip archive ({exc})\n"
                        f"{_describe_file(spec, f, sha_pin, size_pin)}\nPlace the file there by hand, "
                        f"{_config_hint(spec.id)}"
                    ) from None
            ztmp.unlink()
            _check_download(spec, f, sha, size, f"archive member {info.filename!r}")
        os.chmod(tmp, 0o644)  # mkstemp made it private; a shared cache must be readable by every user
        _drop_stamp(target)
        os.replace(tmp, target)
        _write_stamp(target, sha)
    finally:
        for path in temps:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def fetch(model_id: str, overrides: Mapping[str, Path] | None = None, progress: bool = True) -> Resolved:
    """:func:`locate`, downloading every cached file that is missing or fails verification first."""
    spec = _spec(model_id)
    given = (overrides or {}).get(model_id)
    paths = _override_paths(spec, Path(given)) if given is not None else {}
    for f in spec.files:
        if f.name in paths and paths[f.name] != _target(spec, f):
            continue
        try:
            _check_cached(spec, f, full=False)
            continue
        except _Missing:
            pass
        except _Bad:
            log.warning("model %s: cached %s failed verification; downloading it again", spec.id, f.name)
        _notice(spec)
        log.info("model %s: downloading %s from %s", spec.id, f.name, f.url)
        _fetch_file(spec, f, progress)
    return locate(model_id, overrides)


# --------------------------------------------------------------------------------------------------- records


def write_record(resolved: Resolved, path: str | os.PathLike[str]) -> None:
    """Write what a job needs to load the model without looking anything up again: the workflow's models
    rule fetches on the machine that has the network and hands this record to the jobs."""
    record = {
        "id": resolved.id,
        "version": resolved.spec.version,
        "sha256": resolved.sha256,
        "tag": resolved.tag,
        "override": resolved.override,
        "path": os.path.abspath(resolved.path),
        "files": {
            name: {"path": os.path.abspath(p), "size": Path(p).stat().st_size} for name, p in resolved.paths.items()
        },
    }
    write_bytes_atomic(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


def read_record(path: str | os.PathLike[str]) -> Resolved:
    """The :class:`Resolved` a record describes. Only a ``stat`` per file checks that the files are still
    the ones recorded; the models rule verified their sha256 when it wrote the record."""
    data = _read_json(Path(path))
    if data is None or not isinstance(data.get("files"), dict) or not isinstance(data.get("sha256"), str):
        raise ModelError(f"{path} is not a model record written by cl_ml_tools.models.write_record")
    spec = _spec(str(data.get("id")))
    paths: dict[str, Path] = {}
    for f in spec.files:
        entry = data["files"].get(f.name)
        if not isinstance(entry, dict) or "path" not in entry:
            raise ModelError(f"model record {path} lacks {f.name}; delete it so that the models rule runs again")
        file_path = Path(entry["path"])
        try:
            size = file_path.stat().st_size
        except OSError:
            size = None
        if size != entry.get("size"):
            now = "missing" if size is None else f"{size} bytes, recorded {entry.get('size')}"
            raise ModelError(
                f"model {spec.id}: {file_path} changed since {path} was written ({now}); delete {path} so that "
                f"the models rule fetches and verifies the model again"
            )
        paths[f.name] = file_path
    return Resolved(spec, paths[spec.files[0].name], paths, data["sha256"], override=bool(data.get("override")))


# --------------------------------------------------------------------------------------------------- ONNX Runtime


def onnx_session(resolved: Resolved, threads: int = 1, device: str = "cpu") -> onnxruntime.InferenceSession:
    """An ONNX Runtime session for the model: ``threads`` intra-op threads and one inter-op thread, so that
    parallelism stays under the Snakemake rule's ``threads``; on ``device="cuda"`` the CUDA provider with
    the CPU behind it (for operators CUDA lacks), or the CPU alone with a warning where CUDA is missing.

    The graph is loaded from the optimised copy in the cache (:func:`optimized_graph`) when there is one:
    each job then skips ONNX Runtime's graph rewrites, which cost 0.1-0.2 s per load of DINOv2 or
    MobileCLIP-S2 (docs/performance.md)."""
    if resolved.spec.runtime != "onnxruntime":
        raise ModelError(f"model {resolved.id} runs on {resolved.spec.runtime}, not ONNX Runtime")
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(
            f"model {resolved.id} needs ONNX Runtime, which is not installed (pip install onnxruntime)"
        ) from None
    _notice(resolved.spec)
    providers = execution_providers(device, onnxruntime.get_available_providers())
    try:
        # The cached graph is optimised for the CPU provider; a GPU session optimises its own at load.
        graph = (
            optimized_graph(resolved, onnxruntime)
            if providers == ["CPUExecutionProvider"]
            else without_prelu(resolved.path.read_bytes())
        )
        session = onnxruntime.InferenceSession(graph, sess_options=_options(onnxruntime, threads), providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph/... errors
        lines = str(exc).strip().splitlines()
        detail = lines[0] if lines else type(exc).__name__
        raise ModelError(f"model {resolved.id}: ONNX Runtime cannot load {resolved.path}: {detail}") from None
    if providers[0] != "CPUExecutionProvider" and session.get_providers()[0] != providers[0]:
        log.warning(
            "model %s: the CUDA provider could not start (CUDA or cuDNN libraries missing?); running on the CPU",
            resolved.id,
        )
    return session


def _options(onnxruntime: Any, threads: int) -> Any:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: optimiser remarks about unused initialisers are noise here
    return options


def execution_providers(device: str, available: Sequence[str]) -> list[str]:
    """ONNX Runtime providers for ``device``, from those this onnxruntime build has."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device != "cuda":
        raise ModelError(f"unknown device {device!r}; known: {', '.join(DEVICES)}")
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    log.warning(
        "models.device is cuda, but this onnxruntime has no CUDA provider (it has %s); running on the CPU. "
        "For the GPU: pip uninstall -y onnxruntime && pip install -e '.[gpu]' (onnxruntime-gpu)",
        ", ".join(available),
    )
    return ["CPUExecutionProvider"]


def optimized_graph(resolved: Resolved, onnxruntime: Any) -> bytes | str:
    """The model's graph after ONNX Runtime's portable ("extended") optimisations and the PRelu rewrite,
    saved once in the cache under ``optimized/`` (keyed by the model's sha256 and the onnxruntime version)
    and read from there by every later CPU session. Layout-specific rewrites (which depend on the CPU's
    instruction set) are left to each session. Where the cache cannot be written, the graph is optimised in
    memory."""
    name = f"{resolved.id}-{resolved.sha256[:16]}-ort{onnxruntime.__version__}.onnx"
    cached = cache_dir() / "optimized" / name
    if cached.is_file():
        return str(cached)
    graph = without_prelu(resolved.path.read_bytes())
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp:
            options = _options(onnxruntime, 1)
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            options.optimized_model_filepath = str(tmp)
            onnxruntime.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"])
    except OSError as exc:
        log.info("model %s: optimised graph not cached (%s)", resolved.id, exc)
        return graph
    return str(cached)


def without_prelu(data: bytes) -> bytes:
    """The ONNX graph ``data`` with each PRelu of constant slopes s rewritten as s·x + (1 − s)·Relu(x).

    Exactly the same function, but ONNX Runtime's CPU kernels have no blocked-layout PRelu: on MobileFaceNet
    (60 PRelus) it spends about half its time in PRelu and in the layout conversions around each one, and the
    rewritten graph runs about twice as fast (docs/performance.md). Graphs without PRelu are returned as
    they are, without parsing them."""
    if b"PRelu" not in data:
        return data
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(data)
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type != "PRelu" or node.input[1] not in constants:
            nodes.append(node)
            continue
        x, slope = node.input
        (y,) = node.output
        s = numpy_helper.to_array(constants[slope])
        graph.initializer.append(numpy_helper.from_array((1 - s).astype(s.dtype), f"{y}/one_minus_slope"))
        nodes += [
            helper.make_node("Relu", [x], [f"{y}/relu"]),
            helper.make_node("Mul", [x, slope], [f"{y}/scaled"]),
            helper.make_node("Mul", [f"{y}/relu", f"{y}/one_minus_slope"], [f"{y}/kept"]),
            helper.make_node("Add", [f"{y}/scaled", f"{y}/kept"], [y]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString()


_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


def _describe_tensors(tensors: list[tuple[str, tuple[Any, ...], str]]) -> str:
    return ", ".join(f"{name} {tuple(shape)} {dtype}" for name, shape, dtype in tensors) or "none"


def check_io(session: Any, spec: ModelSpec) -> None:
    """Check the session's inputs and outputs against the spec: count, rank, element type and fixed dims
    (a symbolic dim on either side matches anything). Names are not compared: stand-ins and re-exports
    rename tensors, and callers read names from the session."""
    problems = []
    for kind, expected, found_args in (
        ("inputs", spec.inputs, session.get_inputs()),
        ("outputs", spec.outputs, session.get_outputs()),
    ):
        found = [(a.name, tuple(a.shape or ()), _ORT_DTYPES.get(a.type, a.type)) for a in found_args]
        want = [(t.name, t.shape, t.dtype) for t in expected]
        ok = len(found) == len(want) and all(
            len(fs) == len(ws)
            and fd == wd
            and all(not (isinstance(a, int) and isinstance(b, int)) or a == b for a, b in zip(fs, ws, strict=True))
            for (_, fs, fd), (_, ws, wd) in zip(found, want, strict=False)
        )
        if not ok:
            problems.append(
                f"  expected {kind}: {_describe_tensors(want)}\n  found {kind}:    {_describe_tensors(found)}"
            )
    if problems:
        raise ModelError(f"model {spec.id} does not have the inputs and outputs it should:\n" + "\n".join(problems))


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32), so that cosine similarity is a dot product."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def embedding_problem(vector: np.ndarray, model_id: str) -> str | None:
    """Why an embedding from ``l2_normalise`` cannot be stored as an ok row, or None. A zero output (a black
    frame through a network that maps it to nothing) stays zero there, and a cosine with it is 0 for every
    query: stored as ok, it would be a file that silently never matches."""
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm):
        return f"{model_id} returned non-finite values (NaN or infinity) for this input"
    if norm < 0.5:  # a unit vector or nothing: l2_normalise leaves only an all-zero output short of 1
        return f"{model_id} returned an all-zero embedding for this input"
    return None


class OnnxModel:
    """The base of every ONNX embedding network: a session on the CPU or a GPU, its tensors checked against
    the registry's spec, tensor names read from the session. ``embed_inputs`` runs a prepared batch and
    returns L2-normalised rows. Subclasses prepare the input and may pick another output (``_output_name``)."""

    def __init__(self, resolved: Resolved, threads: int = 1, device: str = "cpu"):
        self.resolved = resolved
        self.session = onnx_session(resolved, threads, device)
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        check_io(self.session, resolved.spec)
        self.input = self.session.get_inputs()[0].name
        self.output = self._output_name()

    def _output_name(self) -> str:
        return self.session.get_outputs()[0].name

    def embed_inputs(self, batch: np.ndarray) -> np.ndarray:
        # io-binding: the output lives on the session's device and is copied back once per batch. On an
        # H200 this took DINOv2 from 4,193 to 5,868 img/s (measured for issue 6, not here); on the CPU it is
        # as fast as session.run (22.0 against 22.6 img/s, within noise), so both devices share one path.
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input, np.ascontiguousarray(batch))
        binding.bind_output(self.output, self.device)
        self.session.run_with_iobinding(binding)
        (out,) = binding.copy_outputs_to_cpu()
        return l2_normalise(np.asarray(out, dtype=np.float32).reshape(len(batch), -1))
