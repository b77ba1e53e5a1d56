"""Generate a deterministic benchmark corpus: 12 MP JPEG photos with camera EXIF and faces, a few HEICs and
short videos.

    python benchmarks/make_corpus.py --out /tmp/bench_corpus --photos 200 --heics 10 --videos 3

Layout: ``DIR/photos/photo_0000.jpg ...``, ``DIR/heic/photo_0000.heic ...`` (the first ``--heics`` photos
re-encoded as HEIC, EXIF kept) and ``DIR/videos/clip_000.mp4 ...``. A ``--faces`` share of the photos
(default 0.5) gets one to three real faces pasted in at 150-900 px (the sample archive's astronaut and
Grace Hopper, both public domain), so the face steps have work of a realistic size. Every photo depends only on
``--seed`` and its own index, so the corpus is identical whatever the number of worker processes.

The photos are upscaled scikit-image sample pictures (random 4:3 crop, flip, colour jitter) with sensor-like
noise added. Without the noise an 8x upscale compresses to about 1 MB, and both decoders and hashes would
then see far less data than a real 12 MP photo (2.5-3.5 MB at quality 90) gives them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, TiffImagePlugin

WIDTH, HEIGHT = 4000, 3000
# Sources bundled with scikit-image (no download needed); all are colour photographs or micrographs.
SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
CAMERAS = (
    ("Apple", "iPhone 12"),
    ("Google", "Pixel 6"),
    ("SAMSUNG", "SM-G991B"),
    ("Canon", "Canon EOS 80D"),
    ("NIKON CORPORATION", "NIKON D7500"),
    ("FUJIFILM", "X-T30"),
)
# Mostly upright, like a real archive, but with enough rotated frames that EXIF orientation is exercised.
ORIENTATIONS = (1, 1, 1, 1, 1, 6, 6, 8, 3)
EXPOSURES = (Fraction(1, 1000), Fraction(1, 500), Fraction(1, 250), Fraction(1, 120), Fraction(1, 60), Fraction(1, 30))
F_NUMBERS = (Fraction(18, 10), Fraction(28, 10), Fraction(4), Fraction(56, 10), Fraction(8))
ISOS = (50, 100, 200, 400, 800, 1600)
# (latitude, longitude, altitude m) around which GPS positions are scattered.
PLACES = ((48.8584, 2.2945, 35.0), (40.6892, -74.0445, 10.0), (-33.8568, 151.2153, 5.0), (35.6586, 139.7454, 40.0))
EPOCH = dt.datetime(2019, 1, 1, 8, 0, 0)

# EXIF tag numbers (Pillow writes tags by number).
IFD_EXIF, IFD_GPS = 0x8769, 0x8825
TAG_MAKE, TAG_MODEL, TAG_ORIENTATION, TAG_SOFTWARE, TAG_DATETIME = 0x010F, 0x0110, 0x0112, 0x0131, 0x0132
TAG_EXPOSURE, TAG_FNUMBER, TAG_ISO, TAG_DTO, TAG_DTD, TAG_OFFSET_O = 0x829A, 0x829D, 0x8827, 0x9003, 0x9004, 0x9011
TAG_FOCAL = 0x920A


@dataclass(frozen=True)
class Job:
    index: int
    seed: int
    out: Path
    quality: int
    faces: float


_sources: list[np.ndarray] = []


def _load_sources() -> None:
    """Load the sample pictures once per worker process (they are small; the upscale happens per photo)."""
    import skimage.data

    for name in SOURCES:
        image = getattr(skimage.data, name)()
        _sources.append(np.ascontiguousarray(image[..., :3]))


def _rational(value: Fraction | float) -> TiffImagePlugin.IFDRational:
    frac = Fraction(value).limit_denominator(1_000_000)
    return TiffImagePlugin.IFDRational(frac.numerator, frac.denominator)


def _dms(value: float) -> tuple[TiffImagePlugin.IFDRational, ...]:
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = round((value - degrees - minutes / 60) * 3600, 4)
    return _rational(degrees), _rational(minutes), _rational(seconds)


def make_exif(rng: np.random.Generator, orientation: int) -> Image.Exif:
    """The tags an archive is typically queried by: camera, capture time, GPS, orientation, exposure."""
    make, model = CAMERAS[rng.integers(len(CAMERAS))]
    when = EPOCH + dt.timedelta(seconds=int(rng.integers(0, 5 * 365 * 24 * 3600)))
    stamp = when.strftime("%Y:%m:%d %H:%M:%S")
    lat0, lon0, alt0 = PLACES[rng.integers(len(PLACES))]
    lat, lon = lat0 + rng.normal(0, 0.05), lon0 + rng.normal(0, 0.05)
    alt = max(0.0, alt0 + rng.normal(0, 5))

    exif = Image.Exif()
    exif[TAG_MAKE] = make
    exif[TAG_MODEL] = model
    exif[TAG_ORIENTATION] = orientation
    exif[TAG_SOFTWARE] = "cl_ml_tools make_corpus"
    exif[TAG_DATETIME] = stamp
    sub = exif.get_ifd(IFD_EXIF)
    sub[TAG_DTO] = stamp
    sub[TAG_DTD] = stamp
    sub[TAG_OFFSET_O] = "+01:00"
    sub[TAG_EXPOSURE] = _rational(EXPOSURES[rng.integers(len(EXPOSURES))])
    sub[TAG_FNUMBER] = _rational(F_NUMBERS[rng.integers(len(F_NUMBERS))])
    sub[TAG_ISO] = int(ISOS[rng.integers(len(ISOS))])
    sub[TAG_FOCAL] = _rational(Fraction(int(rng.integers(40, 700)), 10))
    gps = exif.get_ifd(IFD_GPS)
    gps[0] = b"\x02\x03\x00\x00"  # GPSVersionID 2.3.0.0
    gps[1] = "N" if lat >= 0 else "S"
    gps[2] = _dms(lat)
    gps[3] = "E" if lon >= 0 else "W"
    gps[4] = _dms(lon)
    gps[5] = 0  # above sea level
    gps[6] = _rational(round(alt, 1))
    return exif


def make_pixels(rng: np.random.Generator) -> np.ndarray:
    """A 4000x3000 RGB frame: a jittered crop of a sample picture, upscaled, with luma and chroma noise."""
    src = _sources[rng.integers(len(_sources))]
    h, w = src.shape[:2]
    # Largest 4:3 box inside the source, then a random 60-100 % of it at a random position.
    box_w = min(w, h * 4 // 3)
    scale = rng.uniform(0.6, 1.0)
    cw, ch = max(8, int(box_w * scale)), max(6, int(box_w * scale * 3 / 4))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    image = Image.fromarray(src[y : y + ch, x : x + cw])
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # Colour jitter through per-channel lookup tables on the small crop: cheap, and it changes every pixel.
    ramp = np.arange(256, dtype=np.float64) / 255.0
    luts = []
    for _ in range(3):
        gain, gamma = rng.uniform(0.85, 1.15), rng.uniform(0.8, 1.25)
        luts.extend(np.clip(255.0 * gain * ramp**gamma, 0, 255).astype(np.uint8).tolist())
    image = image.point(luts).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)

    pixels = np.asarray(image, dtype=np.float32)
    # Fine luma grain at full resolution and blotchy chroma noise at 1/4 resolution, as a phone sensor
    # at moderate ISO gives; the sigma range was tuned for 2.2-3.3 MB files
    # (2.7 MB on average) at quality 90.
    sigma = rng.uniform(3.3, 4.5)
    luma = rng.standard_normal((HEIGHT, WIDTH, 1), dtype=np.float32)
    luma *= sigma
    pixels += luma
    chroma = rng.standard_normal((HEIGHT // 4, WIDTH // 4, 3), dtype=np.float32)
    chroma *= sigma * 0.6
    pixels += np.repeat(np.repeat(chroma, 4, axis=0), 4, axis=1)
    np.clip(pixels, 0, 255, out=pixels)
    return pixels.astype(np.uint8)


_faces: list[Image.Image] = []


def _load_faces() -> None:
    from matplotlib import cbook
    from skimage import data

    _faces.append(Image.fromarray(data.astronaut()).crop((140, 20, 300, 220)))
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        _faces.append(Image.open(f).convert("RGB").crop((150, 90, 390, 390)))


def _load_all() -> None:
    _load_sources()
    _load_faces()


def paste_faces(pixels: np.ndarray, rng: np.random.Generator) -> None:
    """One to three head-and-shoulders crops pasted at random sizes and places (in place)."""
    for _ in range(int(rng.integers(1, 4))):
        face = _faces[rng.integers(len(_faces))]
        height = int(rng.integers(HEIGHT // 20, HEIGHT * 3 // 10))  # 150-900 px at 12 MP
        width = height * face.width // face.height
        x, y = int(rng.integers(0, WIDTH - width)), int(rng.integers(0, HEIGHT - height))
        pixels[y : y + height, x : x + width] = np.asarray(face.resize((width, height), Image.Resampling.BICUBIC))


def make_photo(job: Job) -> int:
    """Write one photo; returns its size in bytes."""
    rng = np.random.default_rng([job.seed, job.index])
    orientation = int(ORIENTATIONS[rng.integers(len(ORIENTATIONS))])
    exif = make_exif(rng, orientation)
    pixels = make_pixels(rng)
    if rng.random() < job.faces:
        paste_faces(pixels, rng)
    target = job.out / f"photo_{job.index:04d}.jpg"
    tmp = target.with_suffix(".tmp.jpg")
    Image.fromarray(pixels).save(tmp, "JPEG", quality=job.quality, exif=exif.tobytes())
    os.replace(tmp, target)
    return target.stat().st_size


def make_heic(job: tuple[Path, Path]) -> None:
    """The JPEG re-encoded as HEIC (as a phone stores it), EXIF carried over."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    source, folder = job
    with Image.open(source) as image:
        target = folder / f"{source.stem}.heic"
        image.save(target.with_suffix(".tmp.heic"), quality=60, exif=image.info.get("exif"))
    os.replace(target.with_suffix(".tmp.heic"), target)


def make_video(path: Path, index: int, seed: int, seconds: float) -> None:
    """A short 1280x720 H.264 + AAC clip from ffmpeg's test sources (moving pattern and a tone)."""
    rng = np.random.default_rng([seed, 1_000_000 + index])
    tone = int(rng.integers(220, 880))
    created = (EPOCH + dt.timedelta(days=int(rng.integers(0, 5 * 365)))).strftime("%Y-%m-%dT%H:%M:%SZ")
    tmp = path.with_suffix(".tmp.mp4")
    cmd = [
        "ffmpeg", "-nostdin", "-v", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=30:duration={seconds}",
        "-f", "lavfi", "-i", f"sine=frequency={tone}:duration={seconds}",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "60",
        "-c:a", "aac", "-b:a", "128k", "-shortest",
        "-metadata", f"creation_time={created}",
        "-movflags", "+faststart",
        str(tmp),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="corpus directory (created)")
    parser.add_argument("--photos", type=int, default=200, help="number of 12 MP photos (default 200)")
    parser.add_argument("--faces", type=float, default=0.5, help="share of photos with faces (default 0.5)")
    parser.add_argument("--heics", type=int, default=0, help="HEIC copies of the first photos (default 0)")
    parser.add_argument("--videos", type=int, default=3, help="number of short videos (default 3)")
    parser.add_argument("--video-seconds", type=float, default=4.0, help="length of each video (default 4)")
    parser.add_argument("--size", default=f"{WIDTH}x{HEIGHT}", help=f"photo size WxH (default {WIDTH}x{HEIGHT}: 12 MP)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the photos (default 90)")
    parser.add_argument("--seed", type=int, default=20240601, help="corpus seed (default 20240601)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="worker processes (default: all cores)")
    args = parser.parse_args(argv)
    # Module globals, inherited by the forked workers: a smaller size keeps benchmarks of many files short.
    width, height = (int(v) for v in args.size.split("x"))
    globals().update(WIDTH=width, HEIGHT=height)

    photos_dir, videos_dir = args.out / "photos", args.out / "videos"
    photos_dir.mkdir(parents=True, exist_ok=True)
    videos_dir.mkdir(parents=True, exist_ok=True)
    # A rerun with smaller counts must not leave earlier extra files behind: the benchmark globs these folders.
    wanted = {f"photo_{i:04d}.jpg" for i in range(args.photos)} | {f"clip_{i:03d}.mp4" for i in range(args.videos)}
    for stale in [*photos_dir.iterdir(), *videos_dir.iterdir()]:
        if stale.name not in wanted:
            stale.unlink()

    start = time.perf_counter()
    jobs = [Job(i, args.seed, photos_dir, args.quality, args.faces) for i in range(args.photos)]
    total = 0
    # chunksize 1: photos cost about the same, and small chunks keep both cores busy to the end.
    with Pool(processes=max(1, args.jobs), initializer=_load_all) as pool:
        for done, size in enumerate(pool.imap_unordered(make_photo, jobs, chunksize=1), start=1):
            total += size
            if done % 25 == 0 or done == len(jobs):
                print(f"photos: {done}/{len(jobs)} ({total / 1e6:.0f} MB)", file=sys.stderr, flush=True)
    photo_s = time.perf_counter() - start

    heic_dir = args.out / "heic"
    shutil.rmtree(heic_dir, ignore_errors=True)
    if args.heics:
        heic_dir.mkdir()
        with Pool(processes=max(1, args.jobs)) as pool:
            pool.map(make_heic, [(photos_dir / f"photo_{i:04d}.jpg", heic_dir) for i in range(args.heics)])

    for i in range(args.videos):
        make_video(videos_dir / f"clip_{i:03d}.mp4", i, args.seed, args.video_seconds)
    video_bytes = sum(p.stat().st_size for p in videos_dir.glob("clip_*.mp4"))

    print(
        f"{args.photos} photos ({total / 1e6:.1f} MB, {total / max(1, args.photos) / 1e6:.2f} MB each) "
        f"in {photo_s:.1f} s; {args.videos} videos ({video_bytes / 1e6:.1f} MB); "
        f"total {time.perf_counter() - start:.1f} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
