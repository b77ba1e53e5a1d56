"""Cheap, documented image-quality measures of each preview frame: sharpness, exposure, contrast, noise and
colourfulness (docs/tables.md defines each). No model: numpy over a small working image, a few CPU-ms a frame.

Every measure is taken at one working scale (the preview's long side brought down to ``WORKING_SIZE``) so that
values compare across files whatever their preview size; frames smaller than that are measured as they are
(never upscaled: interpolation would invent smoothness the picture does not have).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from ..data.tables import base_row
from ..media.errors import MediaError
from ..media.imaging import laplacian_variance
from .common import Job, Row, map_files, preview_frames

WORKING_SIZE = 512
# ITU-R BT.601 luma weights, on the gamma-encoded sRGB values: what Pillow's convert("L") and OpenCV's
# RGB2GRAY use, and what the faces table's sharpness is measured on.
LUMA_601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Luma below / above these (of 255) counts as clipped: a few levels of slack for JPEG's ringing around pure
# black and white.
SHADOW_LEVEL = 5.0
HIGHLIGHT_LEVEL = 250.0


def working_image(path: str) -> Image.Image:
    """The preview at the working scale, RGB: fully decoded, then Pillow's box filter (each pixel the area
    average of the pixels it covers) down to ``WORKING_SIZE`` px on the long side. No reduced JPEG decode
    (draft): its DCT scaling keeps more fine detail than area averaging, and sharpness would then depend on the
    preview's size (24 % higher on a 1100-px picture drafted to 550 then boxed to 512); it would save 3 of the
    7 CPU-ms a 1024-px preview costs."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    w, h = rgb.size
    scale = WORKING_SIZE / max(w, h)
    if scale >= 1:
        return rgb
    return rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)


def luma(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma, 0..255 in float32, of an (h, w, 3) uint8 sRGB array."""
    return rgb.astype(np.float32) @ LUMA_601


def noise_sigma(gray: np.ndarray) -> float:
    """Immerkær's fast noise estimate (1996): the standard deviation of white Gaussian noise that the mean
    absolute response to the kernel [[1,-2,1],[-2,4,-2],[1,-2,1]] implies, over the pixels whose 3×3
    neighbourhood lies inside the image. The kernel is the difference of two Laplacians, blind to planes and
    to most smooth shading; edges and fine texture still add to it."""
    h, w = gray.shape
    if h < 3 or w < 3:
        return 0.0
    # The kernel is separable: [1, -2, 1] down the columns, then along the rows.
    across = gray[:, :-2] - 2 * gray[:, 1:-1] + gray[:, 2:]
    response = across[:-2] - 2 * across[1:-1] + across[2:]
    return math.sqrt(math.pi / 2) * float(np.abs(response).sum(dtype=np.float64)) / (6 * (w - 2) * (h - 2))


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler and Süsstrunk's colourfulness M (2003) of an sRGB array on 0..255: with rg = R − G and
    yb = (R + G) / 2 − B, M = √(σ_rg² + σ_yb²) + 0.3·√(μ_rg² + μ_yb²). 0 for a grey picture."""
    # Contiguous planes: numpy's pairwise summation (float32 stays within 1e-6 of float64) and no BLAS call,
    # whose threads would spin on every core for a product this small.
    r, g, b = (np.ascontiguousarray(rgb[..., i], dtype=np.float32) for i in range(3))
    rg = r - g
    yb = 0.5 * (r + g) - b
    spread = math.sqrt(float(rg.var()) + float(yb.var()))
    return spread + 0.3 * math.hypot(float(rg.mean()), float(yb.mean()))


def measures(rgb: np.ndarray) -> dict[str, float]:
    """The table's measures of an (h, w, 3) uint8 sRGB array, taken as it is (the step passes the working
    image)."""
    y = luma(rgb)
    pixels = y.size
    return {
        "sharpness": laplacian_variance(y),
        "mean_luma": float(y.mean(dtype=np.float64)) / 255,
        "shadows_clipped": float(np.count_nonzero(y < SHADOW_LEVEL)) / pixels,
        "highlights_clipped": float(np.count_nonzero(y > HIGHLIGHT_LEVEL)) / pixels,
        "contrast": float(y.std(dtype=np.float64)) / 255,
        "noise": noise_sigma(y),
        "colourfulness": colourfulness(rgb),
    }


def measure_frame(preview: Mapping[str, Any]) -> Row:
    """One preview frame's row."""
    image = working_image(preview["file"])
    return {
        **base_row(preview),
        "frame_index": preview["frame_index"],
        "timestamp_s": preview["timestamp_s"],
        "width": image.width,
        "height": image.height,
        **measures(np.asarray(image)),
    }


def measure_file(previews: Sequence[Mapping[str, Any]], thumbnail_error: str | None) -> list[Row]:
    if not previews:
        raise MediaError(f"no preview frame to measure: the thumbnails step failed ({thumbnail_error})")
    return [measure_frame(p) for p in sorted(previews, key=lambda p: p["frame_index"])]


def quality_shard(
    files: Sequence[Mapping[str, Any]], thumbnails: Sequence[Mapping[str, Any]], threads: int
) -> list[Row]:
    """Rows for every file of a shard that has preview frames; files whose thumbnails failed get an error
    row."""
    wanted, previews, failed = preview_frames(files, thumbnails)
    return map_files(
        lambda f: measure_file(previews.get(f["media_id"], []), failed.get(f["media_id"])), wanted, threads
    )


def shard(job: Job) -> list[Row]:
    return quality_shard(job.files, job.reads["thumbnails"], job.threads)
