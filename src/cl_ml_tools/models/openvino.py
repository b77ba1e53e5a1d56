"""OpenVINO for the registry's image towers and ArcFace: the same ONNX files, read by OpenVINO's CPU plugin at
fp32 or bf16. Compiled blobs are kept in the cache under ``optimized/openvino`` (OpenVINO's own cache, keyed by
the graph, the plugin's version and the CPU), so a job after the first skips the compile."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .cache import cache_dir
from .registry import ModelError, Resolved, notice

log = logging.getLogger(__name__)

HINTS = {"fp32": "f32", "bf16": "bf16"}
"""Our precision names and OpenVINO's ``INFERENCE_PRECISION_HINT`` for each."""

_OV_DTYPES = {"f32": "float32", "f16": "float16", "f64": "float64", "i64": "int64", "i32": "int32", "u8": "uint8"}


def openvino_module() -> Any:
    """The ``openvino`` package, or a ModelError saying how to get it."""
    try:
        import openvino
    except ImportError:
        raise ModelError(
            "models.runtime is openvino, but OpenVINO is not installed (pip install 'cl_ml_tools[openvino]', "
            "or set models.runtime to auto or onnxruntime)"
        ) from None
    return openvino


def version() -> str | None:
    """OpenVINO's version, or None where it is not installed."""
    try:
        import openvino
    except ImportError:
        return None
    return str(openvino.__version__)


def bf16_capable() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (AVX-512-BF16 or AMX); elsewhere a bf16 hint
    runs at fp32, so there is nothing to measure."""
    if version() is None:
        return False
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoNetwork:
    """A compiled model on the CPU with ``threads`` threads and one stream (parallelism stays under the
    Snakemake rule's ``threads``, as for ONNX Runtime). ``precision`` is set explicitly even for fp32: on a
    CPU with bf16 OpenVINO's default is bf16, which would trade accuracy silently."""

    def __init__(self, resolved: Resolved, threads: int, precision: str):
        if precision not in HINTS:
            raise ModelError(f"model {resolved.id}: OpenVINO precision must be one of {', '.join(HINTS)}")
        ov = openvino_module()
        notice(resolved.spec)
        core = ov.Core()
        blobs = cache_dir() / "optimized" / "openvino"
        try:
            blobs.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(blobs)})
        except OSError as exc:
            log.info("model %s: OpenVINO blobs not cached (%s)", resolved.id, exc)
        config = {
            "INFERENCE_NUM_THREADS": max(1, int(threads)),
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": HINTS[precision],
        }
        try:
            model = core.read_model(str(resolved.path))
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line C++ trace
            lines = str(exc).strip().splitlines()
            detail = next((line for line in lines if line.strip()), type(exc).__name__)
            raise ModelError(f"model {resolved.id}: OpenVINO cannot load {resolved.path}: {detail}") from None
        self.request = self.compiled.create_infer_request()

    def tensors(self) -> tuple[list[tuple[str, tuple[Any, ...], str]], list[tuple[str, tuple[Any, ...], str]]]:
        """(inputs, outputs) as (name, shape, dtype), a dynamic dimension as ``"?"``, for ``check_io``."""

        def describe(port: Any) -> tuple[str, tuple[Any, ...], str]:
            shape = tuple(d.get_length() if d.is_static else "?" for d in port.get_partial_shape())
            kind = port.get_element_type().to_string()
            return port.get_any_name(), shape, _OV_DTYPES.get(kind, kind)

        return [describe(p) for p in self.compiled.inputs], [describe(p) for p in self.compiled.outputs]

    def run(self, batch: np.ndarray, output: int) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(self.request.get_output_tensor(output).data, dtype=np.float32)
