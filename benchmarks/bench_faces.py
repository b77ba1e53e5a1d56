"""Throughput of the faces and face_embeddings steps on 1024-px previews, next to a reference in the same run.

    python benchmarks/bench_faces.py --blazeface .cache/test-models/face_detection_full_range_sparse.tflite

The BlazeFace file is the real network (the tests take it from the mediapipe==0.10.21 wheel; `make test`
leaves it in .cache/test-models/). ArcFace is a random-weight copy of the w600k_mbf architecture
(benchmarks/networks.py), since the released weights cannot be downloaded here; speed depends on the graph,
not on the weight values.

Corpus: ``--images`` 1024×768 JPEG previews (quality 90) made from the sample archive's pictures, each with
0–4 copies of the astronaut's face pasted at 32–240 px, so detection, alignment and crop writing all do
their real work.

Measured, best of ``--rounds``:

- faces, ours: ``faces.faces_shard`` with ``--threads`` threads (read preview, whole-frame pass + tiles,
  NMS, alignment, crop JPEG) — img/s.
- faces, ours with ``tile_size: 0`` (whole-frame pass only), for the cost of the tiles.
- faces, ours with ``refine: false`` and with both, for the cost of measuring each face again.
- faces, reference: MediaPipe's FaceDetector on each whole preview only (what a plain use of the Tasks API
  does), same threads — img/s. It finds far fewer of the small faces (recall is printed for both).
- face embeddings, ours: ``face_embeddings.face_embeddings_shard`` over the crops (read crop, batch,
  onnxruntime with the PRelu rewrite, L2 norm) — faces/s.
- face embeddings, reference: onnxruntime on the unmodified graph with the same batches and threads, model
  only (no crop reading) — faces/s.

``--sweep 0,416,384,352,320`` prints instead the recall per face size for each tile size, with the test
suite's own harness (``tests/test_faces.py::recall_by_size``), and one thread's detection time per
1024×768 frame.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from networks import mobilefacenet
from PIL import Image, ImageOps

from cl_ml_tools import models
from cl_ml_tools.models import encoders
from cl_ml_tools.steps import face_embeddings, faces

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "archive" / "2021 holiday"


def make_corpus(out: Path, n: int, seed: int = 0) -> tuple[list[dict], list[dict], int]:
    """Previews with pasted faces; returns files rows, thumbnails rows and the number of faces pasted."""
    rng = random.Random(seed)
    backgrounds = [ImageOps.exif_transpose(Image.open(p)).convert("RGB").resize((1024, 768)) for p in
                   sorted(SAMPLE.iterdir())]  # fmt: skip
    astronaut = ImageOps.exif_transpose(Image.open(SAMPLE / "astronaut.jpg")).convert("RGB")
    patch = astronaut.crop((90, 0, 360, 250))  # the face (about 106 px wide) with hair and shoulders
    files, thumbs, pasted = [], [], 0
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        canvas = backgrounds[i % len(backgrounds)].copy()
        for _ in range(rng.randint(0, 4)):
            size = rng.randint(32, 240)
            face = patch.resize((round(patch.width * size / 106), round(patch.height * size / 106)))
            if rng.random() < 0.5:
                face = ImageOps.mirror(face)
            canvas.paste(face, (rng.randint(0, 1024 - face.width), rng.randint(0, 768 - face.height)))
            pasted += 1
        path = out / f"{i:05d}.jpg"
        canvas.save(path, quality=90)
        media_id = f"{i:016x}"
        common = {"media_id": media_id, "input": "bench", "path": str(path), "status": "ok", "error": None}
        files.append({**common, "kind": "image", "format": "jpeg"})
        thumbs.append({**common, "role": "preview", "frame_index": 0, "timestamp_s": None, "file": str(path),
                       "width": 1024, "height": 768, "source_width": 1024, "source_height": 768})  # fmt: skip
    return files, thumbs, pasted


def reference_detect(model: Path, paths: list[str], threads: int) -> int:
    """MediaPipe FaceDetector on whole frames, one graph per thread; returns faces found."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    local = threading.local()

    def detect(path: str) -> int:
        if not hasattr(local, "graph"):
            options = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_path=str(model)))
            local.graph = vision.FaceDetector.create_from_options(options)
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
        return len(local.graph.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)).detections)

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(detect, paths))


def best_rate(fn, count: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return count / min(times)


def sweep(model: Path, tile_sizes: list[int]) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_faces import recall_by_size

    sizes = [24, 32, 48, 64, 96]
    frame = np.random.default_rng(0).integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    print("| tile_size | " + " | ".join(f"{s} px" for s in sizes) + " | ms / frame, 1 thread |")
    print("|---" * (len(sizes) + 2) + "|")
    for tile in tile_sizes:
        with faces.Detector(model, faces.Settings(tile_size=tile)) as detector:
            found = recall_by_size(detector, sizes, canvases=4)
            detector.detect(frame)
            start = time.perf_counter()
            for _ in range(20):
                detector.detect(frame)
            ms = (time.perf_counter() - start) / 20 * 1000
        print(f"| {tile} | " + " | ".join(f"{h / t:.2f}" for h, t in found.values()) + f" | {ms:.0f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blazeface", type=Path, required=True, help="face_detection_full_range_sparse.tflite")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--sweep", default=None, help="comma-separated tile sizes: print recall per face size")
    args = ap.parse_args(argv)
    if args.sweep:
        sweep(args.blazeface, [int(t) for t in args.sweep.split(",")])
        return 0

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_faces_"))
    shutil.rmtree(work, ignore_errors=True)
    files, thumbs, pasted = make_corpus(work / "previews", args.images)
    settings = faces.Settings()

    rows: list[dict] = []
    whole_rows: list[dict] = []
    rough_rows: list[dict] = []
    fastest_rows: list[dict] = []

    def ours_detect(settings: faces.Settings = settings, into: list[dict] = rows) -> None:
        shutil.rmtree(work / "crops", ignore_errors=True)
        with faces.Detector(args.blazeface, settings) as detector:
            into[:] = faces.faces_shard(files, thumbs, detector, work / "crops", threads=args.threads)

    found_ref = [0]

    def ref_detect() -> None:
        found_ref[0] = reference_detect(args.blazeface, [t["file"] for t in thumbs], args.threads)

    det_ours = best_rate(ours_detect, len(files), args.rounds)
    det_ref = best_rate(ref_detect, len(files), args.rounds)
    det_whole = best_rate(lambda: ours_detect(faces.Settings(tile_size=0), whole_rows), len(files), args.rounds)
    unrefined = faces.Settings(refine=False)
    det_rough = best_rate(lambda: ours_detect(unrefined, rough_rows), len(files), args.rounds)
    fastest = faces.Settings(tile_size=0, refine=False)
    det_fastest = best_rate(lambda: ours_detect(fastest, fastest_rows), len(files), args.rounds)
    ours_detect()  # leave the default run's crops for the embedding step
    found = [r for r in rows if r["status"] == "ok"]

    network = mobilefacenet(work / "w600k_mbf_random.onnx")
    resolved = models.locate("arcface_w600k_mbf", {"arcface_w600k_mbf": network})
    arcface = encoders.ArcFace(resolved, threads=args.threads)
    emb_settings = face_embeddings.Settings(batch_size=args.batch)
    emb_ours = best_rate(lambda: face_embeddings.face_embeddings_shard(found, arcface, emb_settings), len(found),
                         args.rounds)  # fmt: skip

    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    stock = onnxruntime.InferenceSession(str(network), options, providers=["CPUExecutionProvider"])
    name = stock.get_inputs()[0].name
    batch = np.random.default_rng(0).normal(size=(args.batch, 3, 112, 112)).astype(np.float32)
    n_batches = max(1, len(found) // args.batch)
    emb_ref = best_rate(lambda: [stock.run(None, {name: batch}) for _ in range(n_batches)],
                        n_batches * args.batch, args.rounds)  # fmt: skip

    print(f"corpus: {len(files)} previews 1024x768, {pasted} faces pasted (32-240 px); threads {args.threads}")
    print("| step | ours | reference | ratio |")
    print("|---|---|---|---|")
    print(f"| faces (img/s) | {det_ours:.1f} (found {len(found)}) | {det_ref:.1f} (MediaPipe whole frame, found "
          f"{found_ref[0]}) | {det_ours / det_ref:.2f} |")  # fmt: skip
    print(f"| faces, `tile_size: 0` (img/s) | {det_whole:.1f} (found {len(whole_rows)}) | {det_ref:.1f} | "
          f"{det_whole / det_ref:.2f} |")  # fmt: skip
    print(f"| faces, `refine: false` (img/s) | {det_rough:.1f} (found {len(rough_rows)}) | {det_ref:.1f} | "
          f"{det_rough / det_ref:.2f} |")  # fmt: skip
    print(f"| faces, `tile_size: 0`, `refine: false` (img/s) | {det_fastest:.1f} (found {len(fastest_rows)}) | "
          f"{det_ref:.1f} | {det_fastest / det_ref:.2f} |")  # fmt: skip
    print(f"| face_embeddings (faces/s) | {emb_ours:.1f} | {emb_ref:.1f} (onnxruntime, unmodified graph, model "
          f"only) | {emb_ours / emb_ref:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
