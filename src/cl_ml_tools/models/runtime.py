"""The ``models`` section of the workflow config: where the ONNX models run and on which runtime and precision,
and local files used instead of the cache."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .registry import REGISTRY, ModelError

DEVICES = ("cpu", "cuda")
RUNTIMES = ("auto", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16")
RUNTIME_KEYS = ("device", "gpu_batch_size", "runtime", "precision")
"""Keys of config ``models`` that are not model ids: where the ONNX models run, their batch on a GPU, the
runtime on the CPU and the precision per model."""


@dataclass(frozen=True)
class Runtime:
    device: str = "cpu"
    gpu_batch_size: int = 256
    # auto: per model and CPU, what a short measurement found fastest among the runtimes and precisions whose
    # embeddings keep cosine >= 0.999 to ONNX Runtime's fp32 (models/choose.py).
    runtime: str = "onnxruntime"
    # model id -> fp32 or bf16; a model not named here: fp32, or under auto whichever precision the
    # measurement picked.
    precision: Mapping[str, str] = field(default_factory=dict)

    def decided(self, model_id: str) -> str:
        """What the config decides of how ``model_id`` runs, for the rules' params (Snakemake's rerun trigger
        and the reuse fingerprint): equal values give embeddings of the same runtime and precision. A model
        OpenVINO does not run, and every model on a GPU, runs on ONNX Runtime fp32 whatever ``runtime``
        says (:func:`.choose.choose`); under ``auto`` the rest is measured per machine (docs/models.md)."""
        spec = REGISTRY.get(model_id)
        if spec is None or not spec.openvino or self.device != "cpu":
            return "onnxruntime default"
        return f"{self.runtime} {self.precision.get(model_id, 'default')}"

    def batch(self, cpu_batch: int) -> int:
        """Images per onnxruntime call: the step's CPU batch, or a GPU's larger one (a GPU is starved by 8)."""
        return cpu_batch if self.device == "cpu" else max(cpu_batch, self.gpu_batch_size)


def runtime_from_config(config: Mapping[str, Any]) -> Runtime:
    section = config.get("models") or {}
    runtime = Runtime(**{k: section[k] for k in RUNTIME_KEYS if k in section})
    if runtime.device not in DEVICES:
        raise ModelError(f"config 'models.device' must be one of {', '.join(DEVICES)}, not {runtime.device!r}")
    if runtime.runtime not in RUNTIMES:
        raise ModelError(f"config 'models.runtime' must be one of {', '.join(RUNTIMES)}, not {runtime.runtime!r}")
    if not isinstance(runtime.precision, Mapping):
        raise ModelError(f"config 'models.precision' must map model ids to a precision, not {runtime.precision!r}")
    choosable = sorted(k for k, spec in REGISTRY.items() if spec.openvino)
    for model_id, precision in runtime.precision.items():
        if model_id not in choosable:
            raise ModelError(
                f"config 'models.precision' names {model_id!r}; a precision can be set for {', '.join(choosable)}"
            )
        if precision not in PRECISIONS:
            raise ModelError(
                f"config 'models.precision.{model_id}' must be one of {', '.join(PRECISIONS)}, not {precision!r}"
            )
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
