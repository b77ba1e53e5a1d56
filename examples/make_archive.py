"""Rebuild ``examples/archive/``, the small sample archive ``make run`` processes.

The archive is committed; this script documents exactly how it was made and rebuilds it byte-for-byte
apart from encoder version differences. It needs the dev extras (scikit-image for its public-domain
sample photos) plus ffmpeg and exiftool:

    .venv/bin/python examples/make_archive.py
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pillow_heif
from matplotlib import cbook
from PIL import Image, ImageDraw, ImageFont
from skimage import data

ARCHIVE = Path(__file__).resolve().parent / "archive"
SOURCES = Path(__file__).resolve().parent / "sources"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"  # Debian's fonts-dejavu-core


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def main() -> None:
    shutil.rmtree(ARCHIVE, ignore_errors=True)
    (ARCHIVE / "2021 holiday").mkdir(parents=True)
    (ARCHIVE / "videos").mkdir()
    (ARCHIVE / "misc").mkdir()

    # The astronaut (NASA, public domain) stored lying on its side with Orientation 6 (rotate 90° CW to
    # display), plus camera, date and GPS tags: the photo every test of orientation and EXIF leans on.
    astronaut = Image.fromarray(data.astronaut()).crop((0, 0, 512, 400))
    photo = ARCHIVE / "2021 holiday" / "astronaut.jpg"
    astronaut.transpose(Image.Transpose.ROTATE_90).save(photo, quality=90)
    run(
        "exiftool", "-q", "-overwrite_original", "-Orientation#=6", "-Make=Canon", "-Model=Canon EOS 5D Mark IV",
        "-LensModel=EF24-105mm f/4L IS USM", "-DateTimeOriginal=2021:07:04 12:30:05", "-OffsetTimeOriginal=+02:00",
        "-CreateDate=2021:07:04 12:30:05", "-ISO=200", "-FNumber=5.6", "-ExposureTime=1/250", "-FocalLength=50",
        "-GPSLatitude=28.5721", "-GPSLatitudeRef=N", "-GPSLongitude=80.6480", "-GPSLongitudeRef=W",
        "-GPSAltitude=3", "-GPSAltitudeRef=0", "-Software=cl_ml_tools sample", str(photo),
    )  # fmt: skip

    Image.fromarray(data.coffee()).save(ARCHIVE / "2021 holiday" / "coffee.png", optimize=True)
    Image.fromarray(data.chelsea()).save(ARCHIVE / "2021 holiday" / "chelsea the cat.webp", quality=80)
    rocket = Image.fromarray(data.rocket())
    rocket.save(ARCHIVE / "misc" / "rocket.heic", quality=60)
    frames = [Image.fromarray(data.camera()).resize((128, 128)).rotate(a) for a in (0, 30, 60)]
    frames[0].save(ARCHIVE / "misc" / "spinner.gif", save_all=True, append_images=frames[1:], duration=200, loop=0)

    # An MP4 with audio whose first second is black, so the poster must skip it.
    run(
        "ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=black:s=320x240:r=25:d=1",
        "-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=3", "-f", "lavfi", "-i", "sine=frequency=440:duration=4",
        "-filter_complex", "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]", "-map", "2:a",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "30", "-pix_fmt", "yuv420p", "-g", "25",
        "-c:a", "aac", "-b:a", "48k", "-shortest", "-movflags", "+faststart", str(ARCHIVE / "videos" / "clip.mp4"),
    )  # fmt: skip
    # A MOV shot "in portrait": landscape pixels with a 90° display rotation.
    run(
        "ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=s=320x180:r=25:d=3",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "30", "-pix_fmt", "yuv420p", "-g", "25",
        str(ARCHIVE / "videos" / "portrait.mov"),
    )  # fmt: skip
    # ffmpeg 5.1 no longer writes a rotate tag; exiftool sets the track's display matrix.
    run("exiftool", "-q", "-overwrite_original", "-Rotation=90", str(ARCHIVE / "videos" / "portrait.mov"))

    reunion(astronaut)
    texts()

    # Bad input that must become error rows, not crashes.
    good = photo.read_bytes()
    (ARCHIVE / "misc" / "truncated.jpg").write_bytes(good[: len(good) * 2 // 5])
    (ARCHIVE / "misc" / "notes.txt").write_text("Not a photo. The pipeline lists it in `files` as kind=other.\n")


def reunion(astronaut: Image.Image) -> None:
    """Two people for the people step and its examples: Grace Hopper's portrait (US Navy, public domain; it
    ships with matplotlib) alone, and both women side by side in one picture."""
    folder = ARCHIVE / "2023 reunion"
    folder.mkdir()
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = Image.open(f).convert("RGB")
    hopper.save(folder / "hopper.jpg", quality=90)
    together = Image.new("RGB", (1100, 620), (236, 232, 224))
    together.paste(hopper.resize((440, 516)), (40, 52))
    together.paste(astronaut.crop((60, 0, 460, 400)).resize((480, 480)), (580, 70))
    together.save(folder / "together.jpg", quality=90)
    tags = ["-Make=NIKON CORPORATION", "-Model=NIKON D750", "-OffsetTimeOriginal=-04:00"]
    tags.append("-Software=cl_ml_tools sample")
    for name, when in (("hopper.jpg", "2023:05:20 10:15:00"), ("together.jpg", "2023:05:20 16:42:31")):
        run("exiftool", "-q", "-overwrite_original", *tags, f"-DateTimeOriginal={when}", f"-CreateDate={when}",
            str(folder / name))  # fmt: skip


def texts() -> None:
    """Photos with text for the ocr step and ``search --text``: Tesseract's test page (examples/sources,
    Apache-2.0), and a street sign on a brick wall, stored sideways (Orientation 6) so that the text's boxes
    must come back in the oriented picture's pixels. The sign is drawn here with DejaVu Sans Bold, its plate
    set in perspective, on scikit-image's brick wall (CC0)."""
    folder = ARCHIVE / "texts"
    folder.mkdir()
    shutil.copy(SOURCES / "phototest.tif", folder / "phototest.tif")
    wall = Image.fromarray(data.brick()).convert("RGB").resize((900, 600))
    plate = Image.new("RGB", (520, 200), (22, 60, 140))
    draw = ImageDraw.Draw(plate)
    draw.rounded_rectangle((8, 8, 511, 191), radius=18, outline=(240, 240, 240), width=6)
    draw.text((260, 72), "PALAIS ROYAL", fill=(245, 245, 245), font=ImageFont.truetype(FONT, 54), anchor="mm")
    draw.text((260, 140), "Musée du Louvre", fill=(245, 245, 245), font=ImageFont.truetype(FONT, 36), anchor="mm")
    # A plate seen a little from the left: its right edge shorter than its left.
    coeffs = _perspective([(0, 0), (470, 30), (470, 170), (0, 200)], [(0, 0), (520, 0), (520, 200), (0, 200)])
    seen = plate.transform((470, 200), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC)
    mask = Image.new("L", (520, 200), 255).transform((470, 200), Image.Transform.PERSPECTIVE, coeffs)
    wall.paste(seen, (200, 180), mask)
    sign = folder / "metro sign.jpg"
    wall.transpose(Image.Transpose.ROTATE_90).save(sign, quality=88)
    run("exiftool", "-q", "-overwrite_original", "-Orientation#=6", "-Software=cl_ml_tools sample", str(sign))


def _perspective(dst: list[tuple[int, int]], src: list[tuple[int, int]]) -> tuple[float, ...]:
    """Pillow's PERSPECTIVE coefficients mapping each output corner ``dst`` to the input corner ``src``."""
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    solution = np.linalg.solve(np.array(rows, dtype=float), np.array([c for p in src for c in p], dtype=float))
    return tuple(float(c) for c in solution)


if __name__ == "__main__":
    pillow_heif.register_heif_opener()
    main()
