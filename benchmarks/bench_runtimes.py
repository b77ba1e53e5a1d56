"""ONNX Runtime fp32, OpenVINO fp32 and OpenVINO bf16 side by side in one run, through our code path
(``models.OnnxModel`` with each ``Choice``), on random-weight exports of the real architectures:

    .venv/bin/python benchmarks/networks.py mobilefacenet /tmp/w600k_mbf_random.onnx
    /tmp/torchvenv/bin/python benchmarks/torch_networks.py dinov2_small /tmp/dinov2_small_random.onnx
    .venv/bin/python benchmarks/bench_runtimes.py --batch 8 --threads 2 \\
        dinov2_small=/tmp/dinov2_small_random.onnx arcface_w600k_mbf=/tmp/w600k_mbf_random.onnx

Input: the probe batch ``auto`` measures with (models/choose.py), preprocessed as the model's registry entry
says. Printed per network and runtime: img/s (best of ``--rounds`` timed runs of ``--seconds`` each), the CPU
time per image in that run (all threads), and the least cosine of its embeddings to ONNX Runtime fp32's.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from cl_ml_tools import models
from cl_ml_tools.models import choose
from cl_ml_tools.models.registry import Choice

CHOICES = [Choice("onnxruntime", "fp32"), Choice("openvino", "fp32"), Choice("openvino", "bf16")]


def rate(network: models.OnnxModel, batch: np.ndarray, seconds: float, rounds: int) -> tuple[float, float]:
    """(img/s, CPU-ms per image), from the round with the best img/s. CPU time (all threads) is the figure
    that holds up on a shared machine, where wall-clock rates drop with the other processes' load."""
    network.embed_inputs(batch)
    best = (0.0, 0.0)
    for _ in range(rounds):
        start, cpu, n = time.perf_counter(), time.process_time(), 0
        while (elapsed := time.perf_counter() - start) < seconds:
            network.embed_inputs(batch)
            n += len(batch)
        best = max(best, (n / elapsed, 1000 * (time.process_time() - cpu) / n))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("networks", nargs="+", help="model_id=/path/to/file.onnx")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cpu = choose.cpu_fingerprint()
    flags = [f for f in cpu["flags"].split() if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2"))]
    print(f"CPU: {cpu['model'] or platform.processor()}; flags: {' '.join(flags)}")
    import onnxruntime
    import openvino

    print(f"onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__}")
    print(f"| network | {' | '.join(c.variant or 'onnxruntime-fp32' for c in CHOICES)} |")
    print("|---|" + "---:|" * len(CHOICES))
    for item in args.networks:
        model_id, path = item.split("=", 1)
        resolved = models.locate(model_id, {model_id: Path(path)})
        probe = choose.probe_batch(resolved)
        batch = np.concatenate([probe] * (args.batch // len(probe) + 1))[: args.batch]
        cells, reference = [], None
        for c in CHOICES:
            network = models.OnnxModel(resolved, args.threads, "cpu", c)
            out = network.embed_inputs(batch)
            reference = out if reference is None else reference
            cosine = float(np.min(np.sum(out * reference, axis=1)))
            images_per_s, cpu_ms = rate(network, batch, args.seconds, args.rounds)
            cells.append(f"{images_per_s:.1f} img/s, {cpu_ms:.0f} CPU-ms/img (cos {cosine:.5f})")
        print(f"| {model_id} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
