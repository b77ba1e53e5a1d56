"""Colour spaces that a photo names without embedding an ICC profile, and the profiles that stand for them.

Cameras set to Adobe RGB write JPEGs without a profile and say so in EXIF instead, as the DCF standard
(JEITA CP-3461) lets them: ColorSpace 0xFFFF (uncalibrated) with the Interoperability index "R03"; some write
ColorSpace 2. Photo tools (Lightroom, digiKam, darktable, exiftool's own reading) show such files in Adobe RGB;
read as sRGB, every colour comes out duller. The profile is built here from Adobe's specification, so that the
one ICC conversion path (``imaging.to_srgb``) handles both kinds of file."""

from __future__ import annotations

import functools
import struct

import numpy as np
from PIL import Image

_EXIF_IFD, _INTEROP_IFD = 0x8769, 0xA005
_COLOR_SPACE, _INTEROP_INDEX = 0xA001, 0x0001
_UNCALIBRATED, _ADOBE_RGB = 0xFFFF, 2

# Adobe RGB (1998) Color Image Encoding, version 2005-05: primaries and white point (CIE 1931 xy), and the
# transfer function, a pure power of 563/256 (section 4.3.1.2).
ADOBE_RGB_PRIMARIES = ((0.6400, 0.3300), (0.2100, 0.7100), (0.1500, 0.0600))
ADOBE_RGB_WHITE = (0.3127, 0.3290)
ADOBE_RGB_GAMMA = 563 / 256
_PCS_WHITE = np.array([0.9642, 1.0, 0.8249])  # ICC's D50, as ICC.1 rounds it
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])


def names_adobe_rgb(image: Image.Image) -> bool:
    """Whether the image's EXIF says Adobe RGB the DCF way (or ColorSpace 2) and it embeds no ICC profile."""
    if image.info.get("icc_profile"):
        return False
    try:
        exif = image.getexif()
        space = exif.get_ifd(_EXIF_IFD).get(_COLOR_SPACE)
        index = exif.get_ifd(_INTEROP_IFD).get(_INTEROP_INDEX)
    except Exception:
        return False  # a corrupt EXIF block must not cost the picture itself
    if isinstance(index, bytes):
        index = index.decode("ascii", "replace")
    return space == _ADOBE_RGB or (space == _UNCALIBRATED and isinstance(index, str) and index.strip("\0 ") == "R03")


def _xy_to_xyz(x: float, y: float) -> np.ndarray:
    return np.array([x / y, 1.0, (1 - x - y) / y])


def rgb_to_pcs_matrix() -> np.ndarray:
    """Adobe RGB's linear RGB to XYZ, adapted from its D65 white to the ICC's D50 with the Bradford transform
    (what ICC.1 asks of a matrix/TRC profile's colorant tags)."""
    primaries = np.stack([_xy_to_xyz(*xy) for xy in ADOBE_RGB_PRIMARIES], axis=1)
    white = _xy_to_xyz(*ADOBE_RGB_WHITE)
    to_xyz = primaries * np.linalg.solve(primaries, white)
    cone_gain = (_BRADFORD @ _PCS_WHITE) / (_BRADFORD @ white)
    adapt = np.linalg.inv(_BRADFORD) @ np.diag(cone_gain) @ _BRADFORD
    return adapt @ to_xyz


def _s15f16(values: np.ndarray) -> bytes:
    return b"".join(struct.pack(">i", round(float(v) * 65536)) for v in values)


def _tag_xyz(xyz: np.ndarray) -> bytes:
    return b"XYZ \0\0\0\0" + _s15f16(xyz)


def _tag_desc(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    # textDescriptionType (ICC.1:2001-04 6.5.17): ASCII, then empty Unicode and ScriptCode descriptions.
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + b"\0" * 8 + b"\0\0\0" + b"\0" * 67


@functools.cache
def adobe_rgb_profile() -> bytes:
    """An ICC version 2.1 display profile of Adobe RGB (1998): matrix and one-gamma curves, nothing else."""
    matrix = rgb_to_pcs_matrix()
    gamma = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(ADOBE_RGB_GAMMA * 256)) + b"\0\0"  # u8Fixed8: 563/256
    tags = [
        (b"desc", _tag_desc("Adobe RGB (1998) as named by EXIF (cl_ml_tools)")),
        (b"cprt", b"text\0\0\0\0" + b"No copyright: built from the published specification\0"),
        (b"wtpt", _tag_xyz(_PCS_WHITE)),
        (b"rXYZ", _tag_xyz(matrix[:, 0])),
        (b"gXYZ", _tag_xyz(matrix[:, 1])),
        (b"bXYZ", _tag_xyz(matrix[:, 2])),
        (b"rTRC", gamma),
        (b"gTRC", gamma),
        (b"bTRC", gamma),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = [struct.pack(">I", len(tags))], []
    for signature, body in tags:
        body += b"\0" * (-len(body) % 4)
        table.append(signature + struct.pack(">II", offset, len(body)))
        data.append(body)
        offset += len(body)
    header = struct.pack(">I4sI4s4s4s6H4s", offset, b"\0\0\0\0", 0x02100000, b"mntr", b"RGB ", b"XYZ ",
                         1998, 1, 1, 0, 0, 0, b"acsp")  # fmt: skip
    header += b"\0" * 28 + _s15f16(_PCS_WHITE)  # platform, flags, maker, model, attributes, intent; illuminant
    header += b"\0" * (128 - len(header))
    return header + b"".join(table) + b"".join(data)
