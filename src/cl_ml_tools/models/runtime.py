"""The ``models`` section of the workflow config: where the ONNX models run, and local files used instead of
the cache."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .registry import REGISTRY, ModelError

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
