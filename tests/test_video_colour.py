"""The colours of video in previews, contact sheets and HLS renditions, checked against the standards rather
than against ffmpeg.

HDR (PQ and HLG) is shown as SDR: test clips are built here from known light levels with the formulas of
ITU-R BT.2100 (PQ and HLG signals, BT.2020 Y'CbCr), BT.2087 (BT.709 to BT.2020 colours) and BT.2408
(reference white at 203 cd/m²), stored losslessly (FFV1), and the pictures made from them must show those
levels as an SDR display does (the inverse of BT.1886's EOTF, V = L^(1/2.4)) up to the roll-off's knee.

Video that does not name its Y'CbCr matrix is read with the one players assume (mpv's rule, also VLC's and
Kodi's): BT.709 at HD sizes, BT.601 below; clips are built from known RGB with that matrix."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE, file_row
from PIL import Image

from cl_ml_tools.media import video
from cl_ml_tools.steps import hls, thumbnails

# Light of each patch in linear BT.709 RGB, relative to reference white: greys, then pure primaries.
GREYS = (0.05, 0.18, 0.5, 0.8, 1.0, 2.0, 4.0)
COLOURS = ((0.5, 0, 0), (0, 0.5, 0), (0, 0, 0.5))
PATCHES = np.array([(g, g, g) for g in GREYS] + list(COLOURS), dtype=np.float64)
COLUMNS, ROWS, SIDE = 5, 2, 64
KNEE = 0.8  # the tone curve's knee: light up to it is shown exactly, brighter light is compressed
BT2087 = np.array([[0.6274, 0.3293, 0.0433], [0.0691, 0.9195, 0.0114], [0.0164, 0.0880, 0.8956]])
KR, KB = 0.2627, 0.0593  # BT.2020's luma weights
REFERENCE_WHITE = 203  # cd/m², BT.2408


def pq(nits: np.ndarray) -> np.ndarray:
    """BT.2100 PQ inverse EOTF: display light in cd/m² to signal."""
    m1, m2 = 2610 / 16384, 2523 / 4096 * 128
    c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    y = (nits / 10000) ** m1
    return ((c1 + c2 * y) / (1 + c3 * y)) ** m2


def hlg(display: np.ndarray) -> np.ndarray:
    """BT.2100 HLG: display light (RGB, in cd/m², on the reference 1000 cd/m² display, system gamma 1.2) through
    the inverse OOTF to scene light, then the OETF to signal."""
    a, b, c = 0.17883277, 0.28466892, 0.55991073
    d = display / 1000
    luminance = d @ np.array([KR, 1 - KR - KB, KB])
    scene = d / np.maximum(luminance, 1e-12)[:, None] ** (0.2 / 1.2)
    return np.where(scene <= 1 / 12, np.sqrt(3 * scene), a * np.log(np.maximum(12 * scene - b, 1e-12)) + c)


def make_hdr_clip(path: Path, transfer: str) -> Path:
    """One second of the patches as 10-bit 4:4:4 BT.2020 Y'CbCr, tagged with the transfer and stored lossless."""
    nits = (PATCHES @ BT2087.T) * REFERENCE_WHITE
    signal = pq(nits) if transfer == "smpte2084" else hlg(nits)
    y = signal @ np.array([KR, 1 - KR - KB, KB])
    cb, cr = (signal[:, 2] - y) / (2 * (1 - KB)), (signal[:, 0] - y) / (2 * (1 - KR))
    codes = np.stack([64 + 876 * y, 512 + 896 * cb, 512 + 896 * cr]).round().astype("<u2")  # limited range
    frame = np.zeros((3, ROWS * SIDE, COLUMNS * SIDE), "<u2")
    frame[0], frame[1:] = 64, 512  # black around nothing: every pixel belongs to a patch
    for i, (r, c) in enumerate(np.ndindex(ROWS, COLUMNS)):
        frame[:, r * SIDE : (r + 1) * SIDE, c * SIDE : (c + 1) * SIDE] = codes[:, i, None, None]
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "yuv444p10le",
         "-s", f"{COLUMNS * SIDE}x{ROWS * SIDE}", "-r", "25", "-i", "-", "-frames:v", "25", "-c:v", "ffv1",
         "-color_primaries", "bt2020", "-color_trc", transfer, "-colorspace", "bt2020nc", "-color_range", "tv",
         str(path)],
        input=frame.tobytes() * 25, check=True,
    )  # fmt: skip
    return path


def expected_sdr() -> np.ndarray:
    """8-bit RGB of the patches below the knee on an SDR (BT.709, BT.1886) display; NaN above it."""
    shown = 255 * PATCHES ** (1 / 2.4)
    shown[PATCHES.max(axis=1) > KNEE] = np.nan
    return shown


def patch_means(image: np.ndarray) -> np.ndarray:
    """Mean RGB of each patch's middle half, in a picture of the whole frame at any size."""
    height, width = image.shape[:2]
    means = []
    for r, c in np.ndindex(ROWS, COLUMNS):
        top, bottom = (round(height * (r + f) / ROWS) for f in (0.25, 0.75))
        left, right = (round(width * (c + f) / COLUMNS) for f in (0.25, 0.75))
        means.append(image[top:bottom, left:right].reshape(-1, 3).mean(axis=0))
    return np.array(means)


def check_sdr(means: np.ndarray, grey: float, colour: float) -> None:
    """Greys within ``grey`` of the SDR display's levels, pure colours within ``colour`` (8-bit 4:2:0 Y'CbCr
    does not keep a primary's zero channels at zero), highlights rolled off but still ordered."""
    expected = expected_sdr()
    below = ~np.isnan(expected[:, 0])
    is_grey = (PATCHES.min(axis=1) == PATCHES.max(axis=1))[:, None].repeat(3, axis=1)
    allowed = np.where(is_grey, grey, colour)
    assert np.all(np.abs(means - expected)[below] <= allowed[below]), (means.round(1), expected.round(1))
    highlights = means[: len(GREYS), 1][np.array(GREYS) >= KNEE]
    assert np.all(np.diff(highlights) > 0), f"brighter light must stay brighter: {highlights}"
    assert highlights[-1] >= 245, "four times reference white is near SDR white"


def first_frames(out: Path) -> list[tuple[dict, np.ndarray]]:
    """Each rendition's video stream as ffprobe reads its first segment, and that segment's first frame as ffmpeg
    decodes it to RGB (reading the colour description the segment carries)."""
    renditions = []
    for segment in sorted(out.rglob("segment_00000.ts")):
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_streams", "-of", "json", str(segment)],
            capture_output=True, check=True,
        )  # fmt: skip
        [stream] = json.loads(probe.stdout)["streams"]
        decoded = subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(segment), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24",
             "-"],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        picture = np.frombuffer(decoded, np.uint8).reshape(stream["height"], stream["width"], 3)
        renditions.append((stream, picture.astype(np.float64)))
    return renditions


@pytest.fixture(scope="module", params=["smpte2084", "arib-std-b67"], ids=["PQ", "HLG"])
def clip(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hdr_clip(tmp_path_factory.mktemp("hdr") / f"{request.param}.mkv", request.param)


def test_the_clips_carry_the_hdr_tags_players_read(clip: Path) -> None:
    info = video.probe(clip)
    assert info.stream["color_transfer"] == clip.stem and info.stream["color_primaries"] == "bt2020"
    assert video.sdr_filter(info), "an HDR stream gets the tone mapping"
    assert video.sdr_filter(video.probe(SAMPLE / "videos" / "clip.mp4")) == "", "an SDR one none"


def test_without_zscale_an_hdr_video_is_an_error_row_that_says_why(
    clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(video, "_has_zscale", lambda: False)
    [row] = hls.hls_shard([file_row(clip)], tmp_path / "out", hls.Settings())
    assert row["status"] == "error" and "zscale" in row["error"], row


def test_previews_and_the_sheet_show_hdr_video_as_an_sdr_display_would(clip: Path, tmp_path: Path) -> None:
    settings = thumbnails.Settings()
    rows = thumbnails.video_thumbnails(file_row(clip), tmp_path, settings)
    for row in rows:
        with Image.open(row["file"]) as im:
            picture = np.asarray(im.convert("RGB"), np.float64)
        if row["role"] == "sheet":  # tiles of the thumbnail's width, one per keyframe: the first one
            tile = settings.thumb_size
            picture = picture[: round(tile * ROWS / COLUMNS), :tile]
        check_sdr(patch_means(picture), grey=3, colour=9)


def test_hls_renditions_of_hdr_video_are_sdr_bt709(clip: Path, tmp_path: Path) -> None:
    # Two rungs: the top one is tone-mapped, the lower one scaled from it.
    ladder = (hls.Rung(ROWS * SIDE, 1000, 64), hls.Rung(ROWS * SIDE * 3 // 4, 800, 64))
    [row] = hls.encode(file_row(clip), tmp_path / "out", hls.Settings(segment_s=1, ladder=ladder))
    assert row["status"] == "ok", row["error"]
    renditions = first_frames(tmp_path / "out")
    assert len(renditions) == 2
    for stream, picture in renditions:
        # What the H.264 VUI tells a player: BT.709, not the source's PQ/HLG it would otherwise inherit.
        assert (stream.get("color_transfer"), stream.get("color_primaries"), stream.get("color_space")) == (
            "bt709", "bt709", "bt709",
        )  # fmt: skip
        check_sdr(patch_means(picture), grey=4, colour=10)


UNTAGGED_COLOURS = ((200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 180, 40), (128, 128, 128))


def make_untagged_clip(path: Path, size: tuple[int, int], matrix: str) -> Path:
    """A second of vertical stripes of known RGB, converted to limited-range Y'CbCr with ``matrix`` and stored
    without saying which (no colour description in the H.264 stream)."""
    width, height = size
    frame = np.zeros((height, width, 3), np.uint8)
    for i, colour in enumerate(UNTAGGED_COLOURS):
        frame[:, i * width // 5 : (i + 1) * width // 5] = colour
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", "25",
         "-i", "-", "-frames:v", "25", "-vf", f"scale=out_color_matrix={matrix}:out_range=limited",
         "-pix_fmt", "yuv420p", "-c:v", "libx264", "-crf", "1", str(path)],
        input=frame.tobytes() * 25, check=True,
    )  # fmt: skip
    assert "color_space" not in video.probe(path).stream, "the clip must not name its matrix"
    return path


def stripe_means(picture: np.ndarray) -> np.ndarray:
    width = picture.shape[1]
    return np.array([picture[:, round(width * (i + 0.25) / 5) : round(width * (i + 0.75) / 5)].reshape(-1, 3).mean(0)
                     for i in range(5)])  # fmt: skip


@pytest.mark.parametrize(("size", "matrix"), [((1280, 720), "bt709"), ((640, 480), "bt601")], ids=["720p", "480p"])
def test_video_that_does_not_name_its_matrix_is_read_as_players_read_it(
    size: tuple[int, int], matrix: str, tmp_path: Path
) -> None:
    clip = make_untagged_clip(tmp_path / "untagged.mp4", size, matrix)
    for row in thumbnails.video_thumbnails(file_row(clip), tmp_path, thumbnails.Settings()):
        with Image.open(row["file"]) as im:
            picture = np.asarray(im.convert("RGB"), np.float64)
        if row["role"] == "sheet":
            picture = picture[
                : round(thumbnails.Settings().thumb_size * size[1] / size[0]), : thumbnails.Settings().thumb_size
            ]
        np.testing.assert_allclose(stripe_means(picture), UNTAGGED_COLOURS, atol=4, err_msg=row["role"])
    # HLS: an SD-sized rung of HD video says BT.709, or players would read it as BT.601 by its size.
    ladder = (hls.Rung(size[1], 1500, 64), hls.Rung(360, 800, 64))
    [row] = hls.encode(file_row(clip), tmp_path / "out", hls.Settings(segment_s=1, ladder=ladder))
    assert row["status"] == "ok", row["error"]
    named = {"bt709": "bt709", "bt601": "smpte170m"}[matrix]
    renditions = first_frames(tmp_path / "out")
    assert len(renditions) == 2
    for stream, picture in renditions:
        assert stream.get("color_space") == named, stream["height"]
        np.testing.assert_allclose(stripe_means(picture), UNTAGGED_COLOURS, atol=6)
