"""Throughput of the dino and clip steps on 1024-px previews, next to the bare network in the same run.

    # random-weight copies of the real architectures (see torch_networks.py for the set-up):
    /tmp/torchvenv/bin/python benchmarks/torch_networks.py dinov2_small /tmp/dinov2_small_random.onnx
    /tmp/torchvenv/bin/python benchmarks/torch_networks.py mobileclip_s2_image /tmp/mobileclip_s2_image_random.onnx
    .venv/bin/python benchmarks/bench_embeddings.py --dino /tmp/dinov2_small_random.onnx \\
        --clip /tmp/mobileclip_s2_image_random.onnx

For each step and batch size, best of ``--rounds``:

- ours: ``embeddings.embed_shard`` over ``--images`` previews of 1024×768 (decode, the model's resize and
  crop, batching with the next batch decoded during inference, onnxruntime with ``--threads`` threads, L2
  norm, rows) — img/s, and CPU seconds per image.
- reference: the same onnxruntime session on an already preprocessed batch, model only — img/s.

``--device cuda`` runs both on onnxruntime-gpu's CUDA provider, with ``--decoders`` threads (default
``--threads``) decoding previews ahead; ``benchmarks/gpu.sh`` runs it on a device machine.

``--int8`` also measures int8 copies made from the given files with onnxruntime's dynamic quantisation
(``quantize_dynamic``, int8 weights), the recipe of the ``model_quantized.onnx`` file the registry's
``dinov2_small_int8`` downloads, and prints their cosine to the fp32 embeddings of the same previews.
``--bf16`` does the same for the given files on OpenVINO at bf16 (``models.runtime: openvino``).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_faces import best_rate, make_corpus
from PIL import Image

from cl_ml_tools import models
from cl_ml_tools.models import encoders
from cl_ml_tools.steps import image_embeddings

MODEL_IDS = {"dino": "dinov2_small", "clip": "mobileclip_s2_image"}


def measure(
    encoder: encoders.ImageEncoder, thumbs: list[dict], batch: int, rounds: int, decoders: int = 1
) -> tuple[float, ...]:
    """(ours img/s, ours CPU s per image, network-only img/s)."""
    cpu = time.process_time()
    ours = best_rate(lambda: image_embeddings.embed_shard(thumbs, encoder, batch, decoders), len(thumbs), rounds)
    cpu_per_image = (time.process_time() - cpu) / (len(thumbs) * rounds)
    x = np.stack([encoder.preprocess(Image.open(t["file"])) for t in thumbs[:batch]])
    n = len(thumbs) // batch
    bare = best_rate(lambda: [encoder.embed_batch(x) for _ in range(n)], n * batch, rounds)
    return ours, cpu_per_image, bare


def quantized(path: Path, work: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = work / f"{path.stem}_int8.onnx"
    quantize_dynamic(str(path), str(target), weight_type=QuantType.QInt8)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dino", type=Path, required=True, help="a dinov2_small-shaped ONNX file")
    ap.add_argument("--clip", type=Path, required=True, help="a mobileclip_s2_image-shaped ONNX file")
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--batches", default="8,32", help="comma-separated batch sizes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--int8", action="store_true", help="also int8 copies (dynamic quantisation)")
    ap.add_argument("--bf16", action="store_true", help="also the same files on OpenVINO at bf16 (models.runtime)")
    ap.add_argument("--device", choices=models.DEVICES, default="cpu", help="models.device (cuda: onnxruntime-gpu)")
    ap.add_argument("--decoders", type=int, help="threads decoding ahead (default: 1 on cpu, --threads on cuda)")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_embeddings_"))
    _, thumbs, _ = make_corpus(work / "previews", args.images)
    decoders = args.decoders or (args.threads if args.device == "cuda" else 1)
    print(f"corpus: {len(thumbs)} previews 1024x768; threads {args.threads}; {args.device}, {decoders} decoder(s)")
    print("| step | batch | ours img/s | ours CPU s / img | network only img/s | ours / network |")
    print("|---|---:|---:|---:|---:|---:|")
    fp32_choice, bf16_choice = models.Choice(), models.Choice("openvino", "bf16")
    variants = [("dino", args.dino, "", fp32_choice), ("clip", args.clip, "", fp32_choice)]
    if args.int8:
        variants += [(step, quantized(path, work), " int8", fp32_choice) for step, path, _, _ in variants[:2]]
    if args.bf16:
        variants += [(step, path, " openvino-bf16", bf16_choice) for step, path, _, _ in variants[:2]]
    fp32: dict[str, np.ndarray] = {}
    for step, path, label, choice in variants:
        resolved = models.locate(MODEL_IDS[step], {MODEL_IDS[step]: path})
        encoder = encoders.ImageEncoder(resolved, args.threads, args.device, choice)
        if encoder.device != args.device:
            print(f"{step}: running on {encoder.device}, not {args.device} (see the warning above)")
        for batch in (int(b) for b in args.batches.split(",")):
            ours, cpu_per_image, bare = measure(encoder, thumbs, batch, args.rounds, decoders)
            print(f"| {step}{label} | {batch} | {ours:.1f} | {cpu_per_image:.3f} | {bare:.1f} | {ours / bare:.2f} |")
        vectors = np.stack([r["embedding"] for r in image_embeddings.embed_shard(thumbs, encoder, 8)])
        if label:
            cosine = (vectors * fp32[step]).sum(axis=1)
            print(f"|   {step}{label} vs fp32 cosine: mean {cosine.mean():.5f}, min {cosine.min():.5f} | | | | | |")
        else:
            fp32[step] = vectors
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
