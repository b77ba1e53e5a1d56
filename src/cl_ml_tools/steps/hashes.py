"""Content hashes: byte hashes in one read, a pixel hash, a video keyframe hash, perceptual hashes."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ..data.config import schema_defaults
from ..data.tables import STATUS_SKIPPED, base_row
from ..media import imaging, video
from ..media.sniff import media_kind
from .common import Converters, Job, Row, StepSettings, describe, map_files

log = logging.getLogger(__name__)

CHUNK = 1 << 20
PIXEL_STRIP_ROWS = 32
# Colours Pillow cannot map to RGB without a colour profile: hashed as their own samples.
_OWN_SPACE = frozenset({"CMYK", "LAB"})
_DEEP = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# Modes whose pixels may be transparent without a ``transparency`` entry in ``info`` (and "P" with an RGBA
# palette); only these pay for the pass that looks for a pixel that is not opaque.
_ALPHA = frozenset({"LA", "PA", "RGBA", "RGBa"})


def byte_hashes(path: str | os.PathLike[str], algorithms: Sequence[str] = ("sha512", "md5")) -> dict[str, str]:
    """Hex digests of the file's bytes for each algorithm, all from a single read pass."""
    hashers = [(name, hashlib.new(name, usedforsecurity=False)) for name in algorithms]
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            chunk = view[:n]
            for _, h in hashers:
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashers}


def _strips(image: Image.Image) -> Iterator[Image.Image]:
    # Strips of rows never build a second full-size copy of the frame (36 MB for 12 MP), which measured
    # 22 ms per photo cheaper than one ``tobytes()``.
    w, height = image.size
    for y in range(0, height, PIXEL_STRIP_ROWS):
        yield image.crop((0, y, w, min(height, y + PIXEL_STRIP_ROWS)))


def canonical_pixels(image: Image.Image) -> tuple[str, Iterator[bytes]]:
    """The decoded colours of a frame in the canonical form the pixel hash covers (docs/tables.md), as its
    mode name and its bytes in strips of rows: 8-bit RGB, or RGBA when some pixel is not opaque; 16-bit
    greyscale that 8 bits cannot hold exactly as 16-bit RGB(A); CMYK and LAB as their own samples."""
    image.load()
    if image.mode in _OWN_SPACE:
        return image.mode, (s.tobytes() for s in _strips(image))
    if image.mode in _DEEP:
        return _deep_pixels(image)
    translucent = image.mode == "P" and image.palette is not None and image.palette.mode == "RGBA"
    alpha = (image.mode in _ALPHA or translucent or "transparency" in image.info) and any(
        s.convert("RGBA").getchannel("A").getextrema()[0] < 255 for s in _strips(image)
    )
    mode = "RGBA" if alpha else "RGB"
    return mode, (s.tobytes() if s.mode == mode else s.convert(mode).tobytes() for s in _strips(image))


def _deep_pixels(image: Image.Image) -> tuple[str, Iterator[bytes]]:
    """Greyscale deeper than 8 bits. Integers within 0..65535 are samples on a 16-bit scale, so that ``v``
    and the 8-bit ``v / 257`` are one colour; anything else (floats, wider integers) has no colour scale
    and is hashed as its values."""
    if image.mode == "F":
        return "F;32", (np.asarray(s).astype(">f4").tobytes() for s in _strips(image))
    trns = image.info.get("transparency")  # PNG's tRNS: the grey value that is fully transparent
    lo, hi, eight, alpha = 0, 0, True, False
    for s in _strips(image):
        v = np.asarray(s)
        lo, hi = min(lo, int(v.min())), max(hi, int(v.max()))
        eight = eight and not (v % 257).any()
        alpha = alpha or (trns is not None and bool((v == trns).any()))
    if lo < 0 or hi > 65535:
        return "I;32", (np.asarray(s).astype(">i4").tobytes() for s in _strips(image))
    grey = np.dtype(np.uint8 if eight else ">u2")
    opaque = np.iinfo(grey).max

    def encode(s: Image.Image) -> bytes:
        v = np.asarray(s).astype(np.int64)
        g = (v // 257 if eight else v).astype(grey)
        channels = [g, g, g, np.where(v == trns, 0, opaque).astype(grey)] if alpha else [g, g, g]
        return np.stack(channels, axis=-1).tobytes()

    return ("RGBA" if alpha else "RGB") + ("" if eight else ";16"), (encode(s) for s in _strips(image))


def pixel_sha512(image: Image.Image) -> str:
    """SHA-512 of ``"<canonical mode> <width>x<height>\\n"`` and the frame's canonical pixels
    (:func:`canonical_pixels`), as stored (before EXIF orientation): the same colours give the same hash
    whatever the stored pixel format, and editing metadata, orientation included, keeps it."""
    mode, strips = canonical_pixels(image)
    h = hashlib.sha512(f"{mode} {image.width}x{image.height}\n".encode())
    for data in strips:
        h.update(data)
    return h.hexdigest()


def _bits_to_int(bits: np.ndarray) -> int:
    value = 0
    for bit in bits.flatten():
        value = (value << 1) | int(bit)
    return value


def phash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash (the pHash algorithm as ImageHash implements it): 32×32 grey, 2-D DCT,
    the 8×8 lowest frequencies compared with their median; bit order row-major, first bit most significant.
    The DCT is SciPy's, as in ImageHash: on flat or symmetric pictures most coefficients are rounding noise
    around zero, and another DCT's noise sets other bits."""
    from scipy.fftpack import dct

    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dct(dct(grey, axis=0), axis=1)[:8, :8]
    return _bits_to_int(low > np.median(low))


def dhash(image: Image.Image) -> int:
    """64-bit difference hash: 9×8 grey, each pixel compared with its right-hand neighbour."""
    grey = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    return _bits_to_int(grey[:, 1:] > grey[:, :-1])


def video_sha512(path: str | os.PathLike[str]) -> tuple[str, int]:
    """SHA-512 over the payloads of the first video stream's keyframe packets, in stream order, as
    ``video.read_keyframes`` gives them. Copying the stream into another container or editing metadata leaves
    it unchanged; re-encoding changes it. Returns (hex digest, keyframe count)."""
    sha = hashlib.sha512()
    count = video.read_keyframes(path, sha.update)
    return sha.hexdigest(), count


@dataclass(frozen=True)
@schema_defaults("hashes")
class Settings(StepSettings):
    CONVERT: ClassVar[Converters] = {"bytes": tuple}

    bytes: tuple[str, ...]
    pixel: bool
    video: bool
    perceptual: bool
    max_pixels: int


def hash_image(path: str, fmt: str, settings: Settings) -> dict[str, Any]:
    """Pixel hash and perceptual hashes of an image, from one full-size decode. The perceptual hashes come
    from that decode with the pixel hash off too: a JPEG draft (DCT-scaled decode) would save ~30 ms a
    12 MP photo there but flips a bit or two of them on some photos, so a setting would change them."""
    opened = imaging.open_image(path, fmt, settings.max_pixels)
    image = opened.image
    image.load()
    out: dict[str, Any] = {}
    if settings.pixel:
        raw = opened.raw_pixels
        out["pixel_sha512"] = hashlib.sha512(raw).hexdigest() if raw is not None else pixel_sha512(image)
    if settings.perceptual:
        # Perceptual hashes describe the picture as a person sees it: upright, in sRGB.
        # A box reduction to roughly 256 px first: the hashes only look at 32x32 and 9x8, and this costs a
        # third of a LANCZOS fit on a 12 MP frame.
        factor = max(1, min(image.size) // 256)
        small = image.reduce(factor) if image.mode not in ("P", "1", "I;16", "I;16B", "I;16L") else image
        small = imaging.to_srgb(imaging.orient(small, opened.orientation))
        out["phash"], out["dhash"] = phash(small), dhash(small)
    return out


def hash_file(file_row: Mapping[str, Any], settings: Settings, poster: str | None = None) -> list[Row]:
    """All hashes of one file. ``poster`` is the video's poster frame written by the thumbnails step,
    which the perceptual hashes of a video describe."""
    row: Row = {**base_row(file_row), **byte_hashes(file_row["path"], settings.bytes)}
    kind = media_kind(file_row["kind"], file_row["path"])
    try:
        if kind == "image" and (settings.pixel or settings.perceptual):
            row.update(hash_image(file_row["path"], file_row["format"] or "", settings))
        elif kind == "video":
            if settings.video:
                row["video_sha512"], row["video_keyframes"] = video_sha512(file_row["path"])
            if settings.perceptual and poster:
                with Image.open(poster) as im:
                    row["phash"], row["dhash"] = phash(im), dhash(im)
    except Exception as exc:
        # The byte hashes are still right; keep them on the error row.
        row.update(status="error", error=describe(exc))
        log.warning("%s: %s", file_row["path"], row["error"])
    return [row]


def hash_shard(
    files: Sequence[Mapping[str, Any]],
    settings: Settings,
    thumbnail_rows: Sequence[Mapping[str, Any]] = (),
    threads: int = 1,
) -> list[Row]:
    """Hash every non-skipped file of a shard (every file has bytes to hash, whatever its kind)."""
    # A video whose frames cannot be read (truncated, audio only) has an error row in thumbnails, without a
    # role (none at all where the rows come straight from the step, not from its table): it simply has no
    # poster, and its byte and keyframe hashes are made all the same.
    posters = {r["media_id"]: r["file"] for r in thumbnail_rows if r.get("role") == "poster" and r["status"] == "ok"}
    todo = [f for f in files if f["status"] != STATUS_SKIPPED]
    return map_files(lambda f: hash_file(f, settings, posters.get(f["media_id"])), todo, threads)


def wanted(read: str, files: list[Mapping[str, Any]], settings: Settings) -> list[Mapping[str, Any]]:
    """The files whose thumbnails a job must make first: videos, when perceptual hashes are wanted (they
    describe the poster frame)."""
    return [f for f in files if f["kind"] == "video"] if settings.perceptual else []


def shard(job: Job) -> list[Row]:
    return hash_shard(job.files, job.settings, job.reads.get("thumbnails", []), job.threads)
