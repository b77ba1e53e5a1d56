"""The network input of a JPEG preview decoded at reduced DCT scale (``encoders.load``) against a full
decode's, and what each costs.

    .venv/bin/python benchmarks/bench_preview_decode.py [PHOTO ...] [--crops 12] [--timing 100]
    # measured for docs/models.md with scikit-image's real photos added:
    .venv/bin/python benchmarks/bench_preview_decode.py .venv/lib/python3.11/site-packages/skimage/data/*.{png,jpg}

Previews: for each real photo with a shorter side of at least 512 px (the sample archive's photos, the camera
samples of tests/data/cameras, and the PHOTOs given), the thumbnails step's preview and ``--crops``
random crops of the upright photo, 512 to 1024 px a side, saved as the thumbnails step saves a preview (JPEG,
its default quality). A shorter side of 512 px or more is what makes ``load`` decode at 1/2 scale.

For DINOv2 and MobileCLIP-S2's recipes and each preview, the input from ``encoders.load`` and from the
same reduced decode resized from the reduced image's own size (the code before issue 19) are compared with
the full decode's (``Preprocess`` on the whole image, which Hugging Face's processors match): mean, 99th
percentile and largest absolute difference in grey levels (0-255) over every value of the previews with an
odd side, and of those with even sides (whose geometry never differed), and the worst single preview's
mean and 99th percentile.

Timing (``--timing`` 1024×768 previews of bench_faces' corpus and the odd-sided previews, one thread,
``time.process_time``, best of five): decode + preprocessing per input for the full decode, the reduced
decode before and after.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench_faces import make_corpus
from PIL import Image, ImageOps

from cl_ml_tools.models import encoders
from cl_ml_tools.steps import thumbnails
from cl_ml_tools.steps.common import describe

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = [
    *sorted((REPO / "examples" / "archive").glob("20*/*")),
    *sorted((REPO / "tests" / "data" / "cameras").glob("*.jpg")),
]
MODELS = ("dinov2_small", "mobileclip_s2_image")


def make_previews(photos: list[Path], out: Path, crops: int, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    settings = thumbnails.Settings()
    previews = []
    for i, photo in enumerate(photos):
        try:
            with Image.open(photo) as opened:
                upright = ImageOps.exif_transpose(opened).convert("RGB")
        except Exception as exc:
            print(f"skipped {photo.name}: {describe(exc)}")
            continue
        if min(upright.size) < 512:
            continue
        preview = upright.copy()
        preview.thumbnail((settings.preview_size, settings.preview_size))
        boxes = set()
        for _ in range(crops):
            w = rng.randint(512, min(1024, upright.width))
            h = rng.randint(512, min(1024, upright.height))
            x, y = rng.randint(0, upright.width - w), rng.randint(0, upright.height - h)
            boxes.add((x, y, x + w, y + h))
        images = [preview, *(upright.crop(box) for box in sorted(boxes) if box != (0, 0, *upright.size))]
        for j, image in enumerate(images):
            path = out / f"{i:03d}_{j:02d}.jpg"
            thumbnails.save(image, path, settings)
            previews.append(path)
    return previews


def before(path: Path, pre: encoders.Preprocess) -> np.ndarray:
    """The reduced decode resized from its own size, as ``load`` did before issue 19."""
    with Image.open(path) as image:
        image.draft("RGB", (pre.resize, pre.resize))
        return pre(image)


def full(path: Path, pre: encoders.Preprocess) -> np.ndarray:
    with Image.open(path) as image:
        return pre(image)


def ms_per_input(fns: list[Callable], paths: list[Path], pre: encoders.Preprocess, rounds: int = 5) -> list[float]:
    """Best of ``rounds`` per function, the functions taking turns within each round so that a busy moment
    of the machine does not fall on one of them only."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            start = time.process_time()
            for p in paths:
                fn(p, pre)
            best[i] = min(best[i], (time.process_time() - start) / len(paths))
    return [1000 * b for b in best]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", nargs="*", type=Path, help="more photos, besides the repository's")
    ap.add_argument("--crops", type=int, default=12, help="random crops per photo")
    ap.add_argument("--timing", type=int, default=100, help="1024x768 previews timed")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_preview_decode_"))
    (work / "previews").mkdir()
    previews = make_previews(DEFAULT_PHOTOS + args.photos, work / "previews", args.crops)
    odd = [p for p in previews if any(side % 2 for side in Image.open(p).size)]
    photos = len({p.name.split("_")[0] for p in previews})
    print(f"{len(previews)} previews from {photos} photos, {len(odd)} with an odd side")
    print("| model | previews | path | mean | p99 | max | worst preview's mean | worst preview's p99 |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for model_id in MODELS:
        pre = encoders.preprocessing(model_id)
        scale = 255 * np.asarray(pre.recipe.std, np.float32)[:, None, None]
        for group, paths in (("odd side", odd), ("even sides", [p for p in previews if p not in odd])):
            for label, fn in (("before", before), ("load", encoders.load)):
                d = [(np.abs(fn(p, pre) - full(p, pre)) * scale).ravel() for p in paths]
                v = np.concatenate(d)
                stats = [v.mean(), np.percentile(v, 99), v.max(), max(x.mean() for x in d)]
                stats.append(max(np.percentile(x, 99) for x in d))
                cells = " | ".join(f"{x:.{n}f}" for x, n in zip(stats, (2, 1, 0, 2, 1), strict=True))
                print(f"| {model_id} | {group} ({len(paths)}) | {label} | {cells} |")
    _, thumbs, _ = make_corpus(work / "corpus", args.timing)
    corpus = [Path(t["file"]) for t in thumbs]
    print("| model | previews | full decode ms | reduced, before ms | reduced, load ms |")
    print("|---|---|---:|---:|---:|")
    for model_id in MODELS:
        pre = encoders.preprocessing(model_id)
        for group, paths in ((f"corpus 1024x768 ({len(corpus)})", corpus), (f"odd side ({len(odd)})", odd)):
            times = ms_per_input([full, before, encoders.load], paths, pre)
            print(f"| {model_id} | {group} | " + " | ".join(f"{t:.2f}" for t in times) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
