"""Which runtime and precision run a model: the config's when it names them, else (``models.runtime: auto``)
what a short measurement on this CPU found fastest, among the candidates whose embeddings keep cosine ≥ 0.999
to ONNX Runtime's fp32 on the same probe images. The measurement is cached beside the optimised graphs, keyed
by the CPU's model and flags, the runtimes' versions, the model's sha256 and the thread count."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from PIL import Image

from ..media.fileio import write_bytes_atomic
from . import openvino
from .cache import cache_dir
from .encoders import preprocessing
from .onnx import OnnxModel
from .registry import DEFAULT_CHOICE, Choice, ModelError, Resolved
from .runtime import PRECISIONS, Runtime

log = logging.getLogger(__name__)

MIN_COSINE = 0.999
"""The least cosine between an embedding at another runtime or precision and ONNX Runtime's fp32 one."""
MIN_GAIN = 1.05
"""How much faster than ONNX Runtime at fp32 a candidate must be to be picked: less is within noise."""
PROBE_BATCH = 8
ROUNDS = 3


def choose(resolved: Resolved, runtime: Runtime, threads: int) -> Choice:
    """The runtime and precision for ``resolved`` under the config's ``runtime``."""
    spec = resolved.spec
    wanted = runtime.precision.get(spec.id)
    if not spec.openvino or runtime.device != "cpu":
        return DEFAULT_CHOICE
    if runtime.runtime == "onnxruntime":
        if wanted not in (None, "fp32"):
            raise ModelError(
                f"config 'models.precision.{spec.id}' is {wanted}, which ONNX Runtime does not run here; "
                "set models.runtime to openvino or auto"
            )
        return DEFAULT_CHOICE
    if runtime.runtime == "openvino":
        openvino.openvino_module()
        return Choice("openvino", wanted or "fp32")
    candidates = [DEFAULT_CHOICE] if wanted in (None, "fp32") else []
    if openvino.version() is not None:
        bf16 = openvino.bf16_capable()
        candidates += [Choice("openvino", p) for p in PRECISIONS if wanted in (None, p) and (p == "fp32" or bf16)]
    if not candidates:
        raise ModelError(
            f"config 'models.precision.{spec.id}' is {wanted}, which needs OpenVINO on a CPU with bf16 "
            "(pip install 'cl_ml_tools[openvino]')"
        )
    if len(candidates) == 1:
        return candidates[0]
    return measured(resolved, candidates, threads)


def measured(resolved: Resolved, candidates: list[Choice], threads: int) -> Choice:
    """The fastest of ``candidates`` (ONNX Runtime fp32 first: the reference), from the cache or measured
    now under a lock, so that parallel jobs measure once."""
    key = _key(resolved, candidates, threads)
    path = cache_dir() / "optimized" / "runtime-choice" / f"{resolved.id}-{key[:24]}.json"
    cached = _read(path)
    if cached is None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(path) + ".lck"):
                cached = _read(path) or _measure_and_save(resolved, candidates, threads, path, key)
        except OSError as exc:
            log.info("model %s: runtime choice not cached (%s)", resolved.id, exc)
            cached = measure(resolved, candidates, threads)
    return Choice(**cached["choice"])


def _measure_and_save(resolved: Resolved, candidates: list[Choice], threads: int, path: Path, key: str) -> dict:
    result = {**measure(resolved, candidates, threads), "key": key}
    write_bytes_atomic(path, (json.dumps(result, indent=1, sort_keys=True) + "\n").encode())
    return result


def measure(resolved: Resolved, candidates: list[Choice], threads: int) -> dict[str, Any]:
    """Each candidate's images/s on a batch of probe images (best of a few rounds after a warm-up) and its
    least cosine to the reference's embeddings; the pick."""
    assert candidates[0] == DEFAULT_CHOICE, "ONNX Runtime at fp32 is the reference"
    probe = probe_batch(resolved)
    rows: list[dict[str, Any]] = []
    reference: np.ndarray | None = None
    for choice in candidates:
        network = OnnxModel(resolved, threads, "cpu", choice)
        out = network.embed_inputs(probe)  # the warm-up, and the embeddings compared
        best = float("inf")
        for _ in range(ROUNDS):
            start = time.perf_counter()
            network.embed_inputs(probe)
            best = min(best, time.perf_counter() - start)
        reference = out if reference is None else reference
        cosine = float(np.min(np.sum(out * reference, axis=1)))
        rows.append({"choice": vars(choice), "images_per_s": len(probe) / best, "min_cosine": cosine})
    base = rows[0]["images_per_s"]
    fine = [r for r in rows[1:] if r["min_cosine"] >= MIN_COSINE and r["images_per_s"] >= MIN_GAIN * base]
    pick = max(fine, key=lambda r: r["images_per_s"]) if fine else rows[0]
    log.info(
        "model %s: runtime %s chosen by measurement (%s)",
        resolved.id,
        Choice(**pick["choice"]).variant or "onnxruntime-fp32",
        ", ".join(
            f"{Choice(**r['choice']).variant or 'onnxruntime-fp32'} {r['images_per_s']:.1f} img/s "
            f"cosine {r['min_cosine']:.5f}"
            for r in rows
        ),
    )
    return {"choice": pick["choice"], "measured": rows}


def probe_batch(resolved: Resolved) -> np.ndarray:
    """Probe images prepared as the network takes them: smooth colour gradients with some texture, closer to
    photographs than noise is (noise is where bf16's rounding shows least)."""
    prepare = preprocessing(resolved.id)
    size = prepare.resize
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = []
    for i in range(PROBE_BATCH):
        f = 1 + i
        rgb = np.stack(
            [
                0.5 + 0.4 * np.sin(2 * np.pi * (f * x + 0.3 * y)),
                0.5 + 0.4 * np.cos(2 * np.pi * (0.5 * f * y - x)),
                x * y + 0.1 * np.sin(40 * (x + y) / f),
            ],
            axis=-1,
        )
        images.append(prepare(Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))))
    return np.stack(images)


def cpu_fingerprint() -> dict[str, str]:
    """The CPU's model name and instruction-set flags (Linux's /proc/cpuinfo; elsewhere what platform says)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor(), "flags": platform.machine()}
    fields = dict(line.split(":", 1) for line in text.split("\n\n", 1)[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return {"model": fields.get("model name", ""), "flags": fields.get("flags", "")}


def _key(resolved: Resolved, candidates: list[Choice], threads: int) -> str:
    import onnxruntime

    facts = {
        "cpu": cpu_fingerprint(),
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino.version(),
        "sha256": resolved.sha256,
        "threads": threads,
        "candidates": [vars(c) for c in candidates],
        "probe": [PROBE_BATCH, ROUNDS, MIN_COSINE, MIN_GAIN],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
        Choice(**data["choice"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data
