"""What a file is, from its first bytes (and, where the bytes do not say, its name)."""

from __future__ import annotations

import os

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .png .gif .webp .heic .heif .avif .tif .tiff .bmp "
    ".dng .cr2 .cr3 .nef .arw .orf .rw2 .raf .pef .srw".split()
)
VIDEO_EXTENSIONS = frozenset(".mp4 .m4v .mov .qt .mkv .webm .avi .mts .m2ts .ts .3gp .mpg .mpeg .wmv".split())
AUDIO_EXTENSIONS = frozenset(".mp3 .m4a .aac .wav .flac .ogg .opus".split())
RAW_FORMATS = frozenset("dng cr2 cr3 nef arw orf rw2 raf pef srw".split())

_FTYP_BRANDS = {
    b"heic": ("image", "heic"), b"heix": ("image", "heic"), b"heim": ("image", "heic"),
    b"heis": ("image", "heic"), b"hevc": ("image", "heic"), b"hevx": ("image", "heic"),
    b"mif1": ("image", "heif"), b"msf1": ("image", "heif"), b"avif": ("image", "avif"),
    b"avis": ("image", "avif"), b"crx ": ("image", "cr3"),
    b"qt  ": ("video", "mov"), b"M4A ": ("audio", "m4a"), b"M4B ": ("audio", "m4a"),
    b"M4V ": ("video", "mp4"), b"3gp4": ("video", "3gp"), b"3gp5": ("video", "3gp"),
    b"3g2a": ("video", "3gp"),
}  # fmt: skip
_TIFF_RAW_BY_EXTENSION = {".dng": "dng", ".nef": "nef", ".arw": "arw", ".orf": "orf", ".pef": "pef",
                          ".srw": "srw", ".rw2": "rw2"}  # fmt: skip


def sniff_bytes(head: bytes, extension: str = "") -> tuple[str, str]:
    """Classify a file from its first bytes: ``(kind, format)`` with kind image/video/audio/other.

    The extension is consulted only to name TIFF-based RAW formats, whose magic bytes are plain TIFF.
    """
    ext = extension.lower()
    if not head:
        return "other", "empty"
    if head.startswith(b"\xff\xd8\xff"):
        return "image", "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image", "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", "webp"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video", "avi"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio", "wav"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        if head[8:10] == b"CR":
            return "image", "cr2"
        return "image", _TIFF_RAW_BY_EXTENSION.get(ext, "tiff")
    if head[:4] == b"IIU\x00":
        return "image", "rw2"
    if head[:8] == b"FUJIFILM":
        return "image", "raf"
    if head[:2] == b"BM" and len(head) >= 14:
        return "image", "bmp"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _FTYP_BRANDS:
            return _FTYP_BRANDS[brand]
        return "video", "mp4"
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return "video", "mov"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "video", "webm" if b"webm" in head[:64] else "mkv"
    if head[:1] == b"\x47" and len(head) > 188 and head[188:189] == b"\x47":
        return "video", "mpegts"
    if head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return "video", "mpeg"
    if head[:4] == b"0&\xb2u":
        return "video", "wmv"
    # A bare MPEG audio frame sync is two bytes; trust it only when the name agrees.
    if head[:3] == b"ID3" or (ext == ".mp3" and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio", "mp3"
    if head[:4] == b"fLaC":
        return "audio", "flac"
    if head[:4] == b"OggS":
        return "audio", "ogg"
    if _looks_like_text(head):
        return "other", "text"
    return "other", "unknown"


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character may be cut at the end of the sample.
        try:
            head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return b"\x00" not in head


def sniff(path: str | os.PathLike[str]) -> tuple[str, str]:
    with open(path, "rb") as fh:
        head = fh.read(512)
    return sniff_bytes(head, os.path.splitext(os.fspath(path))[1])


def extension_kind(path: str) -> str | None:
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in AUDIO_EXTENSIONS:
        return "audio"
    return None


def media_kind(kind: str, path: str) -> str | None:
    """The kind a step treats a file as: its sniffed kind, or, when the bytes are not recognised, the kind
    its name claims. A text file named ``.jpg`` therefore reaches the image steps and gets a clear error
    row there instead of silently vanishing."""
    if kind in ("image", "video", "audio"):
        return kind
    return extension_kind(path)
