"""Model manager: the registry of the networks the ML steps use (:mod:`.registry`), a verified local cache
(:mod:`.cache`), downloads (:mod:`.download`), the config's ``models`` section (:mod:`.runtime`), ONNX
Runtime sessions (:mod:`.onnx`), OpenVINO (:mod:`.openvino`) and the choice between them (:mod:`.choose`), and
the encoders built on them (:mod:`.encoders`, with the CLIP
:mod:`.tokenizer`).

Every file the steps load is identified by its sha256. Registry pins are checked on download; a cached file is
hashed once on first use and then trusted through a stamp beside it (size, mtime, inode, sha256), so a job
only pays a ``stat``. Nothing is ever placed under its final name before it has been verified.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cache import CACHE_ENV, LOCK_NAME, cache_dir, cache_state, identity, locate, read_record, verify, write_record
    from .download import OFFLINE_ENV, fetch
    from .loader import Loader
    from .onnx import (
        OnnxModel,
        check_io,
        embedding_problem,
        execution_providers,
        l2_normalise,
        onnx_session,
        optimized_graph,
        without_prelu,
    )
    from .registry import (
        DEFAULT_CHOICE,
        REGISTRY,
        Choice,
        ImageInput,
        ModelError,
        ModelFile,
        ModelSpec,
        Resolved,
        TensorSpec,
        spec_of,
        step_embedding_size,
        step_models,
        weights_tag,
    )
    from .runtime import DEVICES, RUNTIME_KEYS, Runtime, overrides_from_config, runtime_from_config

# Each name is imported from its module on first use (PEP 562): a pipeline job that only reads the registry
# (every table consolidation does, for the embedding sizes) does not pay for the cache's file locks, the
# downloader's http.client, the encoders and the tokenizer.
_HOMES = {
    "CACHE_ENV": "cache",
    "Choice": "registry",
    "DEFAULT_CHOICE": "registry",
    "DEVICES": "runtime",
    "ImageInput": "registry",
    "LOCK_NAME": "cache",
    "Loader": "loader",
    "ModelError": "registry",
    "ModelFile": "registry",
    "ModelSpec": "registry",
    "OFFLINE_ENV": "download",
    "OnnxModel": "onnx",
    "REGISTRY": "registry",
    "RUNTIME_KEYS": "runtime",
    "Resolved": "registry",
    "Runtime": "runtime",
    "TensorSpec": "registry",
    "cache_dir": "cache",
    "cache_state": "cache",
    "check_io": "onnx",
    "embedding_problem": "onnx",
    "execution_providers": "onnx",
    "fetch": "download",
    "identity": "cache",
    "l2_normalise": "onnx",
    "locate": "cache",
    "onnx_session": "onnx",
    "optimized_graph": "onnx",
    "overrides_from_config": "runtime",
    "read_record": "cache",
    "runtime_from_config": "runtime",
    "spec_of": "registry",
    "step_embedding_size": "registry",
    "step_models": "registry",
    "verify": "cache",
    "weights_tag": "registry",
    "without_prelu": "onnx",
    "write_record": "cache",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


__all__ = [
    "CACHE_ENV",
    "DEFAULT_CHOICE",
    "DEVICES",
    "LOCK_NAME",
    "OFFLINE_ENV",
    "REGISTRY",
    "RUNTIME_KEYS",
    "Choice",
    "ImageInput",
    "Loader",
    "ModelError",
    "ModelFile",
    "ModelSpec",
    "OnnxModel",
    "Resolved",
    "Runtime",
    "TensorSpec",
    "cache_dir",
    "cache_state",
    "check_io",
    "embedding_problem",
    "execution_providers",
    "fetch",
    "identity",
    "l2_normalise",
    "locate",
    "onnx_session",
    "optimized_graph",
    "overrides_from_config",
    "read_record",
    "runtime_from_config",
    "spec_of",
    "step_embedding_size",
    "step_models",
    "verify",
    "weights_tag",
    "without_prelu",
    "write_record",
]
