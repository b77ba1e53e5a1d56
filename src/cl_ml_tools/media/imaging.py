"""Opening still images of every supported format with the safety limits the pipeline needs."""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageCms, ImageOps

from . import icc
from .errors import MediaError
from .sniff import RAW_FORMATS

try:  # HEIC/HEIF/AVIF decoding; registered once per process.
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a hard dependency, this only guards odd installs
    pillow_heif = None

DEFAULT_MAX_PIXELS = 250_000_000
# Opening reads only the header; _check_pixels applies the configured limit before any decoding, with a
# message that names the setting. Pillow's own global guard would fire first with a fixed limit.
Image.MAX_IMAGE_PIXELS = None

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Each orientation's transpose undone: 6 and 8 undo each other, the rest undo themselves.
_UNDO = {n: _TRANSPOSE[{6: 8, 8: 6}.get(n, n)] for n in _TRANSPOSE}
# LibRaw's flip codes for the orientation of a RAW frame, as EXIF orientation values.
_RAW_FLIP_TO_ORIENTATION = {0: 1, 3: 3, 5: 8, 6: 6}
_SRGB = ImageCms.createProfile("sRGB")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Opened:
    """A lazily decoded image plus the orientation (EXIF 1..8) that displays it upright."""

    image: Image.Image
    orientation: int
    raw_pixels: bytes | None = None  # for RAW files: the sensor data, the thing a pixel hash covers
    size: tuple[int, int] = field(init=False)  # as stored, before a reduced decode changes image.size

    def __post_init__(self) -> None:
        self.size = self.image.size

    @property
    def oriented_size(self) -> tuple[int, int]:
        w, h = self.size
        return (h, w) if self.orientation in (5, 6, 7, 8) else (w, h)


def open_image(path: str | os.PathLike[str], fmt: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Opened:
    """Open ``path`` without decoding its pixels yet, refusing images that declare too many pixels.

    ``fmt`` is the sniffed format; RAW files are opened through their embedded preview (rawpy), which is
    what a thumbnail needs and costs no demosaicing.
    """
    if os.path.getsize(path) == 0:
        raise MediaError("empty file (0 bytes)")
    if fmt in RAW_FORMATS:
        return _open_raw(path, max_pixels)
    try:
        image = Image.open(path)
    except Image.UnidentifiedImageError as exc:
        repaired = _png_without_damaged_ancillary_chunks(path) if fmt == "png" else None
        try:
            image = Image.open(repaired) if repaired is not None else None
        except Image.UnidentifiedImageError:
            image = None
        if image is None:
            raise MediaError(f"not a decodable image (sniffed format: {fmt})") from exc
    _check_pixels(image.size, max_pixels)
    orientation = _orientation(image)
    if image.format == "TIFF" and orientation != 1:
        # Pillow's TIFF reader turns the picture upright while decoding, and then forgets the tag. Every
        # step wants the frame as stored beside its orientation, as from every other format (the pixel
        # hash covers the stored frame; the previews apply the orientation once), so the turn is undone.
        image.load()
        image = image.transpose(_UNDO[orientation])
    if image.mode == "RGB" and icc.names_adobe_rgb(image):
        image.info["icc_profile"] = icc.adobe_rgb_profile()
    return Opened(image, orientation)


def _png_without_damaged_ancillary_chunks(path: str | os.PathLike[str]) -> io.BytesIO | None:
    """The PNG without its ancillary chunks whose CRC is wrong (a text or colour chunk damaged on the way);
    None when it has none. The PNG specification lets a decoder ignore such a chunk, and libpng, browsers
    and ffmpeg show the picture, while Pillow refuses the whole file. A damaged critical chunk stays."""
    with open(path, "rb") as fh:
        data = fh.read()
    if not data.startswith(_PNG_SIGNATURE):
        return None
    kept, pos, dropped = [_PNG_SIGNATURE], len(_PNG_SIGNATURE), False
    while pos + 12 <= len(data):
        end = pos + 12 + int.from_bytes(data[pos : pos + 4], "big")
        if end > len(data):
            break
        ancillary = data[pos + 4] & 0x20  # bit 5 of the type's first letter: lower case
        if ancillary and zlib.crc32(data[pos + 4 : end - 4]) != int.from_bytes(data[end - 4 : end], "big"):
            dropped = True
        else:
            kept.append(data[pos:end])
        pos = end
    kept.append(data[pos:])
    return io.BytesIO(b"".join(kept)) if dropped else None


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise MediaError(
            f"image declares {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
            "(max_pixels in config.yaml); refused as a possible decompression bomb"
        )
    if w <= 0 or h <= 0:
        raise MediaError(f"image declares an empty size {w}x{h}")


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:
        return 1  # a corrupt EXIF block must not cost the picture itself
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _open_raw(path: str | os.PathLike[str], max_pixels: int) -> Opened:
    """A RAW file through its embedded JPEG preview (no demosaicing); one without a usable preview is
    demosaiced at half size, which LibRaw does cheaply by merging each 2x2 Bayer block."""
    import rawpy

    try:
        with rawpy.imread(os.fspath(path)) as raw:
            _check_pixels((raw.sizes.width, raw.sizes.height), max_pixels)
            orientation = _RAW_FLIP_TO_ORIENTATION.get(raw.sizes.flip, 1)
            sensor = raw.raw_image_visible.tobytes()
            try:
                thumb = raw.extract_thumb()
            except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
                thumb = None
            if thumb is None:
                # postprocess() applies the orientation itself.
                rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
                return Opened(Image.fromarray(rgb), 1, raw_pixels=sensor)
    except rawpy.LibRawError as exc:
        raise MediaError(f"not a readable RAW file: {exc}") from exc
    if thumb.format == rawpy.ThumbFormat.JPEG:
        image = Image.open(io.BytesIO(thumb.data))
    else:
        image = Image.fromarray(thumb.data)
    return Opened(image, orientation, raw_pixels=sensor)


def orient(image: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSE.get(orientation)
    return image.transpose(method) if method is not None else image


def to_srgb(image: Image.Image) -> Image.Image:
    """RGB in sRGB: embedded ICC profiles converted, alpha flattened onto white, deep images scaled."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if image.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    icc = image.info.get("icc_profile")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            if image.mode not in ("RGB", "CMYK", "L"):
                image = image.convert("RGB")
            return ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            pass  # an unusable profile: fall back to treating the pixels as sRGB
    return image if image.mode == "RGB" else image.convert("RGB")


def fit_size(size: tuple[int, int], box: int) -> tuple[int, int]:
    """``size`` scaled to fit in ``box``×``box`` keeping the aspect ratio, never enlarged."""
    w, h = size
    scale = min(1.0, box / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def fit(image: Image.Image, box: int) -> Image.Image:
    """A new image scaled to fit in ``box``×``box``, never upscaled.

    HAMMING rather than LANCZOS: Pillow's filters are antialiased at any scale, and on a 12 MP photo drafted
    to 2000 px and fitted to 1024 px HAMMING stays at 49 dB PSNR from LANCZOS (invisible) while costing half
    (13 ms against 28 ms; the resize was a third of a thumbnail's time). A box reduction first
    (``reducing_gap``) handles the large ratios cheaply."""
    size = fit_size(image.size, box)
    if size == image.size:
        return image.copy()
    return image.resize(size, Image.Resampling.HAMMING, reducing_gap=2.0)


def is_blank(image: Image.Image, threshold: float = 6.0) -> bool:
    """True for an all-black, all-white or otherwise flat frame (luma standard deviation below threshold)."""
    small = ImageOps.grayscale(image).resize((64, 64), Image.Resampling.BILINEAR)
    return float(np.asarray(small, dtype=np.float32).std()) < threshold


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 3×3 Laplacian (4-neighbour kernel) of a grey image, with the reflected border (edge
    pixel not repeated) of OpenCV's ``cv2.Laplacian``; computed in ``gray``'s float type, unclipped."""
    padded = np.pad(gray, 1, mode="reflect")
    laplacian = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:] - 4 * gray
    return float(laplacian.var(dtype=np.float64))
