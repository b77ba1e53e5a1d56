from __future__ import annotations

import json
import struct
import subprocess
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    SAMPLE,
    adobe_rgb_to_srgb,
    combing,
    exiftool_names_adobe_rgb,
    ffmpeg,
    file_row,
    make_audio_only,
    make_dng,
    make_interlaced,
    make_photo,
    make_still_first,
    make_video,
)
from PIL import Image, ImageStat

from cl_ml_tools.media import imaging
from cl_ml_tools.steps import thumbnails

ASTRONAUT = SAMPLE / "2021 holiday" / "astronaut.jpg"
SETTINGS = thumbnails.Settings()


def by_role(rows: list[dict]) -> dict[str, dict]:
    return {r["role"]: r for r in rows if r["role"] != "preview"} | {
        f"preview{r['frame_index']}": r for r in rows if r["role"] == "preview"
    }


def test_image_is_oriented_fitted_and_never_upscaled(tmp_path: Path) -> None:
    rows = by_role(thumbnails.thumbnail_file(file_row(ASTRONAUT), tmp_path, SETTINGS))
    # Stored 400x512 with Orientation 6: displayed 512 wide, 400 high.
    assert (rows["preview0"]["source_width"], rows["preview0"]["source_height"]) == (512, 400)
    assert (rows["preview0"]["width"], rows["preview0"]["height"]) == (512, 400)  # smaller than 1024: not upscaled
    assert (rows["thumb"]["width"], rows["thumb"]["height"]) == (256, 200)
    for r in rows.values():
        with Image.open(r["file"]) as im:
            assert im.size == (r["width"], r["height"]) and im.mode == "RGB" and im.format == "JPEG"
    # Upright: the face (bright, top centre-left) is in the top half of the oriented preview.
    with Image.open(rows["preview0"]["file"]) as im:
        upright = Image.open(ASTRONAUT).transpose(Image.Transpose.ROTATE_270)
        diff = sum(abs(a - b) for a, b in zip(im.convert("L").tobytes(), upright.convert("L").tobytes(), strict=True))
        assert diff / (512 * 400) < 6


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path: Path) -> None:
    big = make_photo(tmp_path / "big.jpg", (4000, 3000), quality=90)
    opened = imaging.open_image(big, "jpeg")
    reduced = thumbnails._decode_reduced(opened, 1024)
    assert opened.image.size == (2000, 1500), "draft mode decodes at 1/2 scale, never the full 12 MP"
    assert max(reduced.size) == 1024
    rows = by_role(thumbnails.thumbnail_file(file_row(big), tmp_path, SETTINGS))
    assert (rows["preview0"]["width"], rows["preview0"]["height"]) == (1024, 768)
    assert (rows["thumb"]["width"], rows["thumb"]["height"]) == (256, 192)
    assert (rows["thumb"]["source_width"], rows["thumb"]["source_height"]) == (4000, 3000)


@pytest.mark.parametrize("name", ["coffee.png", "chelsea the cat.webp", "rocket.heic", "spinner.gif"])
def test_formats(tmp_path: Path, name: str) -> None:
    path = next(SAMPLE.rglob(name))
    rows = by_role(thumbnails.thumbnail_file(file_row(path), tmp_path, SETTINGS))
    with Image.open(path) as src:
        w, h = src.size
    assert (rows["preview0"]["source_width"], rows["preview0"]["source_height"]) == (w, h)
    assert max(rows["thumb"]["width"], rows["thumb"]["height"]) == min(256, max(w, h))


def test_webp_output_and_modes(tmp_path: Path) -> None:
    rgba = tmp_path / "alpha.png"
    Image.new("RGBA", (300, 200), (255, 0, 0, 0)).save(rgba)
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (300, 200), (0, 255, 255, 0)).save(cmyk)
    deep = tmp_path / "deep.png"
    Image.new("I;16", (300, 200), 65535).save(deep)
    settings = thumbnails.Settings(format="webp")
    for path, colour in ((rgba, (255, 255, 255)), (cmyk, (255, 0, 0)), (deep, (255, 255, 255))):
        rows = by_role(thumbnails.thumbnail_file(file_row(path), tmp_path, settings))
        with Image.open(rows["thumb"]["file"]) as im:
            assert im.format == "WEBP" and im.mode == "RGB"
            px = im.getpixel((10, 10))
            assert all(abs(a - b) <= 12 for a, b in zip(px, colour, strict=True)), (path.name, px)


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header declares width x height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\x00" * 64)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def test_bad_images_raise_clear_errors(tmp_path: Path) -> None:
    bomb = bomb_png(tmp_path / "bomb.png", 50_000, 50_000)
    with pytest.raises(imaging.MediaError, match="2,500,000,000 pixels"):
        thumbnails.thumbnail_file(file_row(bomb), tmp_path, SETTINGS)
    text = tmp_path / "text.jpg"
    text.write_text("hello")
    with pytest.raises(imaging.MediaError, match="not a decodable image"):
        thumbnails.thumbnail_file(file_row(text), tmp_path, SETTINGS)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(ASTRONAUT.read_bytes()[:20_000])
    with pytest.raises(OSError, match="truncated"):
        thumbnails.thumbnail_file(file_row(truncated), tmp_path, SETTINGS)


def test_video_previews_poster_and_sheet(tmp_path: Path) -> None:
    video = SAMPLE / "videos" / "clip.mp4"  # 1 s of black, then 3 s of test pattern
    rows = thumbnails.thumbnail_file(file_row(video), tmp_path, SETTINGS)
    previews = [r for r in rows if r["role"] == "preview"]
    assert [r["frame_index"] for r in previews] == list(range(8))
    assert [r["timestamp_s"] for r in previews] == pytest.approx([4 * i / 8 for i in range(8)], abs=0.05)
    roles = by_role(rows)
    assert roles["poster"]["timestamp_s"] == pytest.approx(1.0)  # the black second is skipped
    with Image.open(roles["poster"]["file"]) as im:
        assert not imaging.is_blank(im)
    with Image.open(roles["preview0"]["file"]) as im:
        assert imaging.is_blank(im)
    assert (roles["thumb"]["width"], roles["thumb"]["height"]) == (256, 192)
    assert roles["sheet"]["width"] == 4 * 256


def test_rotated_video_is_upright(tmp_path: Path) -> None:
    rows = by_role(thumbnails.thumbnail_file(file_row(SAMPLE / "videos" / "portrait.mov"), tmp_path, SETTINGS))
    assert (rows["poster"]["source_width"], rows["poster"]["source_height"]) == (180, 320)
    assert (rows["poster"]["width"], rows["poster"]["height"]) == (180, 320)


def ffprobe_video(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v", "-show_streams", "-of", "json", str(path)],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    return json.loads(out)["streams"][0]


def ratio(text: str) -> Fraction:
    num, den = text.split(":")
    return Fraction(int(num), int(den))


@pytest.mark.parametrize("rotation", [0, 90])
def test_video_with_non_square_pixels_is_shown_at_its_display_aspect_ratio(tmp_path: Path, rotation: int) -> None:
    """Pixels twice as wide as high (SAR 2:1): players show the 320x240 frame 640 wide (and, turned 90°, 240x640:
    the pixels are stretched before the turn). ffprobe's display and sample aspect ratios of the input and of
    every written image are the reference."""
    video = tmp_path / "sar2.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=2", "-vf", "setsar=2/1", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(video))  # fmt: skip
    if rotation:
        subprocess.run(["exiftool", "-q", "-overwrite_original", f"-Rotation={rotation}", str(video)], check=True)
    source = ffprobe_video(video)
    assert ratio(source["sample_aspect_ratio"]) == 2
    dar = ratio(source["display_aspect_ratio"])  # of the stored orientation
    displayed = (round(source["height"] * dar), source["height"])
    if rotation:
        dar, displayed = 1 / dar, displayed[::-1]
    rows = thumbnails.thumbnail_file(file_row(video), tmp_path, SETTINGS)
    for r in rows:
        assert (r["source_width"], r["source_height"]) == displayed
        written = ffprobe_video(Path(r["file"]))
        assert ratio(written.get("sample_aspect_ratio", "1:1")) in (0, 1)
        assert (written["width"], written["height"]) == (r["width"], r["height"])
        if r["role"] == "sheet":
            continue  # a grid of tiles: its tiles are checked below
        assert r["width"] / r["height"] == pytest.approx(dar, rel=0.02), r["role"]
        if r["role"] in ("preview", "poster"):
            assert (r["width"], r["height"]) == displayed  # it fits the 1024 box: neither enlarged nor reduced
    sheet = by_role(rows)["sheet"]
    tile_w = SETTINGS.thumb_size
    tile_h = sheet["height"]  # 2 s at -g 250: one keyframe, one row of tiles
    assert tile_w / tile_h == pytest.approx(dar, rel=0.02)


def test_a_still_ahead_of_the_film_is_not_the_video(tmp_path: Path) -> None:
    """The first video stream is a 640x480 red still, the second a 3 s 320x240 film: the rows describe the film
    (its size and duration as ffprobe reads the film's own file) and no image written is the red still."""
    mkv, film = make_still_first(tmp_path / "still_first.mkv")
    reference = ffprobe_video(film)
    duration = float(reference["duration"])
    rows = thumbnails.thumbnail_file(file_row(mkv), tmp_path, SETTINGS)
    previews = [r for r in rows if r["role"] == "preview"]
    assert [r["timestamp_s"] for r in previews] == pytest.approx([duration * i / 8 for i in range(8)], abs=0.05)
    for r in rows:
        assert (r["source_width"], r["source_height"]) == (reference["width"], reference["height"])
        with Image.open(r["file"]) as im:
            red, green, blue = ImageStat.Stat(im.convert("RGB")).mean
            assert not (red > 200 and green < 60 and blue < 60), r["role"]


def shown_frames(video: Path, tmp: Path) -> list[tuple[float, float]]:
    """Every frame of the video: its presentation time as ffprobe's ``-show_frames`` lists it, and its mean
    grey level as ffmpeg decodes it (one PNG per frame, none dropped or repeated)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v", "-show_frames", "-show_entries", "frame=pts_time",
         "-of", "json", str(video)],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    pts = [float(f["pts_time"]) for f in json.loads(out)["frames"]]
    ffmpeg("-i", str(video), "-fps_mode", "passthrough", str(tmp / "f%03d.png"))
    greys = []
    for i in range(len(pts)):
        with Image.open(tmp / f"f{i + 1:03d}.png") as im:
            greys.append(ImageStat.Stat(im.convert("L")).mean[0])
    return list(zip(pts, greys, strict=True))


@pytest.mark.parametrize(
    ("name", "frames"),
    [
        ("short", "color=black:s=64x48:r=25:d=0.12,format=yuv420p,geq=lum='20+40*N':cb=128:cr=128"),  # 3 frames
        # 6 frames 0.08 to 0.9 s apart (N² × 0.1 s, on the 1/25 s grid)
        ("sparse", "color=black:s=64x48:r=25:d=0.24,format=yuv420p,geq=lum='20+40*N':cb=128:cr=128,"
                   "setpts='N*N*0.1/TB'"),
    ],
)  # fmt: skip
def test_each_preview_is_the_frame_on_screen_at_its_time(tmp_path: Path, name: str, frames: str) -> None:
    """Frames of distinct grey levels: the preview at time t is the frame shown at t, the last one whose
    presentation time (ffprobe) is at or before t, and a clip shorter than K frames still gets K previews."""
    video = tmp_path / f"{name}.mp4"
    ffmpeg("-f", "lavfi", "-i", frames, "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video))
    reference = shown_frames(video, tmp_path)
    rows = thumbnails.thumbnail_file(file_row(video), tmp_path, SETTINGS)
    previews = [r for r in rows if r["role"] == "preview"]
    assert [r["frame_index"] for r in previews] == list(range(SETTINGS.video_frames))
    for r in previews:
        shown = max(i for i, (pts, _) in enumerate(reference) if pts <= r["timestamp_s"] + 1e-6)
        with Image.open(r["file"]) as im:
            level = ImageStat.Stat(im.convert("L")).mean[0]
        nearest = min(range(len(reference)), key=lambda i: abs(reference[i][1] - level))
        assert (nearest, level) == (shown, pytest.approx(reference[shown][1], abs=6)), r["timestamp_s"]


def test_video_errors(tmp_path: Path) -> None:
    audio = make_audio_only(tmp_path / "sound.mp4")
    with pytest.raises(imaging.MediaError, match="no video stream"):
        thumbnails.thumbnail_file(file_row(audio), tmp_path, SETTINGS)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(bytes(range(256)) * 100)
    with pytest.raises(imaging.MediaError, match="ffprobe cannot read"):
        thumbnails.thumbnail_file(file_row(junk), tmp_path, SETTINGS)


def test_shard_keeps_going_and_writes_only_media(tmp_path: Path) -> None:
    good = make_video(tmp_path / "ok.mp4", seconds=1)
    ffmpeg("-i", str(good), "-c", "copy", str(tmp_path / "copy.mov"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    note = tmp_path / "note.txt"
    note.write_text("x")
    files = [file_row(p, f"{i:016x}") for i, p in enumerate([good, bad, note, ASTRONAUT])]
    rows = thumbnails.thumbnail_shard(files, tmp_path / "out", SETTINGS, threads=2)
    assert {r["path"] for r in rows} == {str(good), str(bad), str(ASTRONAUT)}
    assert [r["error"] for r in rows if r["path"] == str(bad)] == ["empty file (0 bytes)"]
    written = {Path(r["file"]) for r in rows if r["status"] == "ok"}
    assert written == set((tmp_path / "out").iterdir())


def test_raw_without_preview_is_demosaiced(tmp_path: Path) -> None:
    dng = make_dng(tmp_path / "shot.dng")
    row = file_row(dng)
    assert (row["kind"], row["format"]) == ("image", "dng")
    rows = by_role(thumbnails.thumbnail_file(row, tmp_path, SETTINGS))
    assert (rows["preview0"]["source_width"], rows["preview0"]["source_height"]) == (128, 96)  # half size
    with Image.open(rows["preview0"]["file"]) as im:
        grey = im.convert("L")
        assert grey.getpixel((5, 48)) < grey.getpixel((120, 48))  # the ramp runs dark to bright


@pytest.mark.parametrize("mode", ["P", "1", "I;16", "L", "LA", "RGBA", "CMYK", "F"])
def test_large_images_of_every_mode(tmp_path: Path, mode: str) -> None:
    path = tmp_path / ("img.tif" if mode == "F" else "img.jpg" if mode == "CMYK" else "img.png")
    Image.new(mode, (2100, 1500)).save(path)
    rows = by_role(thumbnails.thumbnail_file(file_row(path), tmp_path, SETTINGS))
    assert (rows["preview0"]["width"], rows["preview0"]["height"]) == (1024, 731)
    assert (rows["thumb"]["width"], rows["thumb"]["height"]) == (256, 183)


def test_interlaced_video_is_shown_one_moment_per_picture(tmp_path: Path) -> None:
    clip, fields = make_interlaced(tmp_path / "interlaced.mp4")
    assert json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=field_order", "-of", "json", str(clip)],
        capture_output=True, check=True).stdout)["streams"][0]["field_order"] == "tt"  # fmt: skip
    rows = by_role(thumbnails.thumbnail_file(file_row(clip), tmp_path, SETTINGS))
    for name, row in rows.items():
        with Image.open(row["file"]) as im:
            picture = np.asarray(im.convert("L"), np.float64)
        if name == "sheet":  # its first tile: the first keyframe, frame 0
            picture = picture[: round(SETTINGS.thumb_size * 576 / 720), : SETTINGS.thumb_size]
            moment = fields[0]
        else:  # the frame on screen at the row's time, at its top field's moment: progressive frame 2k
            moment = fields[2 * int(row["timestamp_s"] * 25 + 1e-6)]
        truth = np.asarray(Image.fromarray(moment).resize(picture.shape[::-1], Image.Resampling.BOX), np.float64)
        band = slice(round(picture.shape[0] * 200 / 576), round(picture.shape[0] * 376 / 576))  # the square's rows
        # Measured on the moving band: previews, poster and thumb 0.16-0.29 levels from that moment, the sheet's
        # tile (a field, scaled) 1.1; woven frames 2.7-2.8 and 3.8, and full-size ones 14 times the combing.
        error = np.abs(picture - truth)[band].mean()
        assert error <= (1.6 if name == "sheet" else 0.6), (name, error)
        if picture.shape == moment.shape:
            assert combing(picture) <= combing(truth) + 0.1, name


ADOBE_PATCHES = ((0, 255, 0), (200, 60, 60), (100, 150, 200), (128, 128, 128), (30, 30, 30), (240, 230, 200))


@pytest.mark.parametrize(
    ("tags", "adobe"),
    [(["-ColorSpace#=65535", "-InteropIndex=R03"], True), (["-ColorSpace#=2"], True), (["-ColorSpace#=1"], False),
     (["-ColorSpace#=65535"], False)],
    ids=["uncalibrated-R03", "colorspace-2", "srgb", "uncalibrated-alone"],
)  # fmt: skip
def test_a_photo_that_names_adobe_rgb_in_exif_is_shown_in_srgb(tmp_path: Path, tags: list[str], adobe: bool) -> None:
    """Cameras set to Adobe RGB embed no profile and say it in EXIF (DCF): the previews convert it as the
    colour-science library converts Adobe RGB (1998) to sRGB; other files are left as they are."""
    side = 64
    pixels = np.zeros((side, side * len(ADOBE_PATCHES), 3), np.uint8)
    for i, patch in enumerate(ADOBE_PATCHES):
        pixels[:, i * side : (i + 1) * side] = patch
    photo = tmp_path / "camera.jpg"
    Image.fromarray(pixels).save(photo, quality=100, subsampling=0)
    subprocess.run(["exiftool", "-q", "-overwrite_original", *tags, str(photo)], check=True)
    assert exiftool_names_adobe_rgb(photo) == adobe  # exiftool reads what the test wrote
    rows = by_role(thumbnails.thumbnail_file(file_row(photo), tmp_path, SETTINGS))
    with Image.open(rows["preview0"]["file"]) as im:
        shown = np.asarray(im.convert("RGB"), np.float64)
    means = np.array([shown[8:-8, i * side + 8 : (i + 1) * side - 8].reshape(-1, 3).mean(0) for i in range(6)])
    expected = np.array(ADOBE_PATCHES, np.float64)
    if adobe:
        expected = adobe_rgb_to_srgb(expected)
    np.testing.assert_allclose(means, expected, atol=3)
