from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import subprocess
from pathlib import Path

import imagehash
import numpy as np
import pytest
import tifffile
from conftest import (
    REPO,
    SAMPLE,
    adobe_rgb_to_srgb,
    exiftool_names_adobe_rgb,
    ffmpeg,
    file_row,
    make_audio_only,
    make_dng,
    make_photo,
    make_still_first,
    make_video,
)
from PIL import Image, ImageCms, ImageOps, PngImagePlugin

from cl_ml_tools.steps import duplicates, hashes, thumbnails

ASTRONAUT = SAMPLE / "2021 holiday" / "astronaut.jpg"
SPINNER = SAMPLE / "misc" / "spinner.gif"
CAMERAS = REPO / "tests" / "data" / "cameras"
# Real photos, every still format of the sample archive and the cameras' JPEGs (most of those are 8x8).
PHOTOS = sorted(
    [
        p
        for p in SAMPLE.rglob("*")
        if p.suffix in (".jpg", ".png", ".webp", ".heic", ".gif") and p.name != "truncated.jpg"
    ]
    + list(CAMERAS.glob("*.jpg"))
    + [CAMERAS / "exiv2_Stonehenge.heic", CAMERAS / "piexif_01.tif"]
)


def reference_pixel_hash(image: Image.Image) -> str:
    """The pixel hash by its definition in docs/tables.md, from Pillow's RGBA decode of 8-bit images
    (16-bit greyscale built with numpy), independent of the hashes module."""
    if image.mode.startswith("I;16"):
        v = np.asarray(image).astype(np.int64)
        mode, grey = ("RGB;16", v.astype(">u2")) if (v % 257).any() else ("RGB", (v // 257).astype(np.uint8))
        data = np.stack([grey, grey, grey], axis=-1)
    else:
        rgba = np.asarray(image.convert("RGBA"))
        mode, data = ("RGB", rgba[..., :3]) if (rgba[..., 3] == 255).all() else ("RGBA", rgba)
    return hashlib.sha512(f"{mode} {image.width}x{image.height}\n".encode() + data.tobytes()).hexdigest()


def prepared(path: Path) -> Image.Image:
    """The picture the perceptual hashes describe, made here from its definition in docs/tables.md with
    Pillow's own operations: the first frame box-reduced by k = max(1, min(w, h) // 256) (not palette,
    1-bit and 16-bit frames), upright by Pillow's ``exif_transpose``, 16-bit grey scaled to 8 bits,
    transparency over white, the ICC profile converted to sRGB; a photo that exiftool reads as naming Adobe
    RGB in EXIF, without a profile, converted by colour-science from Adobe RGB (1998) to sRGB."""
    with Image.open(path) as im:
        k = max(1, min(im.size) // 256)
        im = im.reduce(k) if k > 1 and im.mode not in ("P", "1", "I;16") else im.copy()
    im = ImageOps.exif_transpose(im)
    if im.mode == "I;16":
        im = Image.fromarray((np.asarray(im, dtype=np.float32) * np.float32(255 / 65535)).astype(np.uint8))
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA"):
        im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
    if icc := im.info.get("icc_profile"):
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        im = ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    elif im.mode == "RGB" and exiftool_names_adobe_rgb(path):
        im = Image.fromarray(np.round(adobe_rgb_to_srgb(np.asarray(im))).astype(np.uint8))
    return im.convert("RGB")


def swapped_primaries_profile() -> bytes:
    """LittleCMS's sRGB profile with the red and blue primaries exchanged: a valid RGB profile under which
    converting to sRGB visibly changes the colours (no other profile is at hand offline)."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    (count,) = struct.unpack(">I", icc[128:132])
    entries = {bytes(icc[132 + 12 * i : 136 + 12 * i]): 136 + 12 * i for i in range(count)}
    r, b = entries[b"rXYZ"], entries[b"bXYZ"]  # each entry: signature, then offset and size of the data
    icc[r : r + 8], icc[b : b + 8] = icc[b : b + 8], icc[r : r + 8]
    return bytes(icc)


def assert_hashes_of(row: dict, image: Image.Image) -> None:
    """``row``'s pHash and dHash are ImageHash's of ``image``, bit for bit."""
    assert (row["phash"], row["dhash"]) == (
        int(str(imagehash.phash(image)), 16),
        int(str(imagehash.dhash(image)), 16),
    ), row["path"]


def test_byte_hashes_match_hashlib(tmp_path: Path) -> None:
    for data in (b"", b"x", bytes(range(256)) * 20_000):  # empty, tiny, several read chunks
        p = tmp_path / "f.bin"
        p.write_bytes(data)
        got = hashes.byte_hashes(p)
        assert got == {"sha512": hashlib.sha512(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}
    assert hashes.byte_hashes(p, ["md5"]) == {"md5": hashlib.md5(data).hexdigest()}


def test_perceptual_hashes_match_imagehash() -> None:
    # Below 256 px the reduction step is a no-op, so the values must equal ImageHash's bit for bit.
    image = Image.open(SAMPLE / "2021 holiday" / "coffee.png").convert("RGB").resize((240, 160))
    assert hashes.phash(image) == int(str(imagehash.phash(image)), 16)
    assert hashes.dhash(image) == int(str(imagehash.dhash(image)), 16)


def test_perceptual_hashes_are_imagehash_of_the_prepared_image(tmp_path: Path) -> None:
    large = tmp_path / "large.jpg"  # 3 MP: a box reduction by 5 before the hashes' own resize
    Image.open(SAMPLE / "2023 reunion" / "together.jpg").resize((2000, 1500)).save(large, quality=90)
    rotated = tmp_path / "rotated.jpg"  # 2 MP stored sideways, Orientation 8
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.open(SAMPLE / "2023 reunion" / "hopper.jpg").resize((1700, 1280)).save(rotated, quality=90, exif=exif)
    translucent = tmp_path / "translucent.png"
    image = Image.open(make_photo(tmp_path / "p.png", (700, 520))).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    image.save(translucent)
    profiled = tmp_path / "profiled.jpg"  # red and blue exchanged by its ICC profile
    Image.open(SAMPLE / "2021 holiday" / "coffee.png").save(
        profiled, quality=90, icc_profile=swapped_primaries_profile()
    )
    with Image.open(profiled) as im:
        assert imagehash.phash(prepared(profiled)) != imagehash.phash(im.convert("RGB"))  # the profile matters
    for path in [large, rotated, translucent, profiled, *PHOTOS]:
        assert_hashes_of(hashes.hash_file(file_row(path), hashes.Settings())[0], prepared(path))


def test_perceptual_hashes_against_imagehash_on_the_original() -> None:
    # What a user running ImageHash on the file gets: the stored frame, not upright, no colour management,
    # alpha ignored. Measured distances are in docs/tables.md.
    distances = {}
    for path in PHOTOS:
        row = hashes.hash_file(file_row(path), hashes.Settings())[0]
        with Image.open(path) as im:
            p, d = int(str(imagehash.phash(im)), 16), int(str(imagehash.dhash(im)), 16)
        distances[path.name] = (int(np.bitwise_count(row["phash"] ^ p)), int(np.bitwise_count(row["dhash"] ^ d)))
    # astronaut.jpg and metro sign.jpg are stored sideways (Orientation 6); the starfish (1278x720) is
    # box-reduced by 2 first. Every other file agrees exactly: none has an ICC profile or transparency, and the
    # two others reduced by 2 (together.jpg, exiv2_DSC_3079.jpg) come out the same. exiftool_NikonD70.jpg names
    # Adobe RGB in EXIF (DCF), which ImageHash does not read.
    assert {k: v for k, v in distances.items() if v != (0, 0)} == {
        "astronaut.jpg": (26, 30),
        "metro sign.jpg": (34, 32),
        "exifparser_starfish.jpg": (2, 0),
        "exiftool_NikonD70.jpg": (4, 1),
    }


def test_pixel_hash_ignores_metadata_edits(tmp_path: Path) -> None:
    edited = tmp_path / "edited.jpg"
    shutil.copy(ASTRONAUT, edited)
    subprocess.run(
        ["exiftool", "-q", "-overwrite_original", "-Orientation#=1", "-Make=Other", "-Comment=edited", str(edited)],
        check=True,
    )
    settings = hashes.Settings()
    original = hashes.hash_file(file_row(ASTRONAUT), settings)[0]
    changed = hashes.hash_file(file_row(edited), settings)[0]
    assert original["sha512"] != changed["sha512"]
    assert original["pixel_sha512"] == changed["pixel_sha512"]
    with Image.open(ASTRONAUT) as im:
        expected = hashlib.sha512(f"RGB {im.width}x{im.height}\n".encode() + im.tobytes()).hexdigest()
    assert original["pixel_sha512"] == expected


def test_perceptual_hash_sees_the_upright_picture(tmp_path: Path) -> None:
    # The stored pixels of the sample are rotated; with Orientation applied they match an upright copy.
    upright = tmp_path / "upright.png"
    with Image.open(ASTRONAUT) as im:
        im.transpose(Image.Transpose.ROTATE_270).save(upright)
    a = hashes.hash_file(file_row(ASTRONAUT), hashes.Settings())[0]
    b = hashes.hash_file(file_row(upright), hashes.Settings())[0]
    assert bin(a["phash"] ^ b["phash"]).count("1") <= 4
    assert a["pixel_sha512"] != b["pixel_sha512"]


def test_video_hash_survives_remux_and_metadata_but_not_reencode(tmp_path: Path) -> None:
    src = make_video(tmp_path / "a.mp4", seconds=3)
    remux = tmp_path / "b.mov"
    ffmpeg("-i", str(src), "-c", "copy", "-map", "0", str(remux))
    tagged = tmp_path / "c.mp4"
    ffmpeg("-i", str(src), "-c", "copy", "-map", "0", "-metadata", "title=holiday", str(tagged))
    reencoded = tmp_path / "d.mp4"
    ffmpeg("-i", str(src), "-c:v", "libx264", "-preset", "ultrafast", "-crf", "35", str(reencoded))
    digest, n = hashes.video_sha512(src)
    assert n == 3  # -g 25 at 25 fps over 3 s
    assert hashes.video_sha512(remux)[0] == digest
    assert hashes.video_sha512(tagged)[0] == digest
    assert hashes.video_sha512(reencoded)[0] != digest
    assert hashes.byte_hashes(src) != hashes.byte_hashes(tagged)


# Encoders of Debian's ffmpeg, each with the container it is first written to and those its stream is then
# copied into (ffmpeg's MOV muxer takes neither VP9 nor AV1). -g 10: a keyframe every 10 of 25 frames.
CODECS = {
    "h264": (["-c:v", "libx264", "-preset", "fast", "-bf", "2"], "mp4", ["mov", "mkv", "ts"]),
    "hevc": (["-c:v", "libx265", "-preset", "fast", "-x265-params", "log-level=error:bframes=3"], "mp4",
             ["mov", "mkv", "ts"]),
    "vp9": (["-c:v", "libvpx-vp9", "-deadline", "realtime"], "webm", ["mkv", "mp4"]),
    "av1": (["-c:v", "libaom-av1", "-cpu-used", "8"], "webm", ["mkv", "mp4"]),
}  # fmt: skip
# The definition in docs/tables.md, written out here rather than taken from the code under test.
CANONICAL = {
    "h264": ",h264_mp4toannexb,filter_units=remove_types=9",
    "hevc": ",hevc_mp4toannexb,filter_units=remove_types=35",
}


def reference_video_sha512(path: Path, codec: str) -> tuple[str, int]:
    """The definition computed another way: ffmpeg's own hash muxer (libavutil's SHA-512) over the keyframe
    packets, and ffprobe's count of key packets."""
    out = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:V:0", "-c", "copy",
         "-bsf:v", "noise=drop=not(key)" + CANONICAL.get(codec, ""), "-f", "hash", "-hash", "sha512", "-"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    flags = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "V:0", "-show_entries", "packet=flags", "-of", "csv=p=0",
         str(path)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return out.strip().removeprefix("SHA512="), flags.count("K")


@pytest.mark.parametrize("codec", CODECS)
def test_video_hash_survives_stream_copy_between_containers(tmp_path: Path, codec: str) -> None:
    encode, ext, copies = CODECS[codec]
    if encode[1] not in subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout:
        pytest.skip(f"this ffmpeg has no {encode[1]} encoder")
    src = tmp_path / f"src.{ext}"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x64:r=25:d=1", *encode, "-g", "10", "-pix_fmt", "yuv420p", str(src))
    digest, n = hashes.video_sha512(src)
    assert (digest, n) == reference_video_sha512(src, codec)
    assert n == 3
    for target in copies:
        copy = tmp_path / f"copy.{target}"
        ffmpeg("-i", str(src), "-c", "copy", str(copy))
        assert hashes.video_sha512(copy) == (digest, n), target
        assert reference_video_sha512(copy, codec) == (digest, n), target
    reencoded = tmp_path / f"again.{ext}"
    ffmpeg("-i", str(src), *encode, "-g", "10", "-crf", "40", str(reencoded))
    assert hashes.video_sha512(reencoded)[0] != digest


def test_video_hash_of_the_sample_clips_equals_the_reference() -> None:
    for name in ("clip.mp4", "portrait.mov"):
        assert hashes.video_sha512(SAMPLE / "videos" / name) == reference_video_sha512(SAMPLE / "videos" / name, "h264")


def test_video_hash_is_of_the_film_not_of_a_still_ahead_of_it(tmp_path: Path) -> None:
    """A still first in the file is not the video: the hash is the one of the film's own file (the same
    stream copied, so the same hash by definition), as ffmpeg's hash muxer computes it on that file."""
    mkv, film = make_still_first(tmp_path / "still_first.mkv")
    assert hashes.video_sha512(mkv) == reference_video_sha512(film, "h264")


def test_video_without_keyframes_is_an_error_row(tmp_path: Path) -> None:
    src = make_video(tmp_path / "a.mp4", seconds=2, size="64x64", audio=False)
    # Stream copy keeps the packets after the first and drops every key one: a stream no player can start.
    nokey = tmp_path / "nokey.mkv"
    ffmpeg("-i", str(src), "-c", "copy", "-bsf:v", "noise=drop=key", str(nokey))
    assert reference_video_sha512(nokey, "h264")[1] == 0
    row = hashes.hash_file(file_row(nokey), hashes.Settings())[0]
    assert row["status"] == "error" and row["error"] == "video stream has no keyframe packets"


def test_truncated_video_is_an_error_with_byte_hashes_kept(tmp_path: Path) -> None:
    src = make_video(tmp_path / "a.mp4", seconds=3)
    ffmpeg("-i", str(src), "-c", "copy", "-movflags", "+faststart", str(tmp_path / "fast.mp4"))
    data = (tmp_path / "fast.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # index intact, media data half gone
    row = hashes.hash_file(file_row(cut), hashes.Settings())[0]
    assert row["status"] == "error"
    assert row["error"].startswith("video is damaged or truncated") and "partial file" in row["error"]
    assert row["sha512"] == hashlib.sha512(cut.read_bytes()).hexdigest()


def test_error_rows_for_bad_media(tmp_path: Path) -> None:
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    audio = make_audio_only(tmp_path / "sound.mp4")
    settings = hashes.Settings()
    assert "not a decodable image" in hashes.hash_file(file_row(text), settings)[0]["error"]
    assert hashes.hash_file(file_row(empty), settings)[0]["error"] == "empty file (0 bytes)"
    row = hashes.hash_file(file_row(audio), settings)[0]
    assert row["status"] == "error" and row["error"].startswith("no video stream")


def test_hash_shard_keeps_order_and_skips_skipped(tmp_path: Path) -> None:
    files = [file_row(make_photo(tmp_path / f"{i}.png", (64, 48 + i))) for i in range(5)]
    files[2] = {**files[2], "status": "skipped"}
    rows = hashes.hash_shard(files, hashes.Settings(), threads=2)
    assert [r["path"] for r in rows] == [f["path"] for i, f in enumerate(files) if i != 2]
    for row in rows:
        assert row["status"] == "ok"
        assert_hashes_of(row, Image.open(row["path"]))  # small upright RGB: the file as it is


def test_raw_pixel_hash_covers_the_sensor_data(tmp_path: Path) -> None:
    import rawpy

    dng = make_dng(tmp_path / "shot.dng")
    row = hashes.hash_file(file_row(dng), hashes.Settings())[0]
    with rawpy.imread(str(dng)) as raw:
        expected = hashlib.sha512(raw.raw_image_visible.tobytes()).hexdigest()
        # No embedded preview: the perceptual hashes describe LibRaw's half-size demosaic (128x96).
        rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
    assert row["status"] == "ok" and row["pixel_sha512"] == expected
    assert_hashes_of(row, Image.fromarray(rgb))


def test_perceptual_hashes_of_every_image_mode(tmp_path: Path) -> None:
    photo = Image.open(make_photo(tmp_path / "p.png", (900, 700)))
    grey16 = Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 251)
    for name, image in {
        "P": photo.quantize(64),
        "1": photo.convert("1"),
        "I16": grey16,
        "L": photo.convert("L"),
        "RGBA": photo.convert("RGBA"),
        "LA": photo.convert("LA"),
        "CMYK": photo.convert("CMYK"),
    }.items():
        path = tmp_path / f"{name}.{'jpg' if name == 'CMYK' else 'png'}"
        image.save(path)
        row = hashes.hash_file(file_row(path), hashes.Settings())[0]
        assert row["status"] == "ok", (name, row["error"])
        assert_hashes_of(row, prepared(path))


def test_perceptual_hashes_of_a_video_are_imagehash_of_its_poster(tmp_path: Path) -> None:
    clip = make_video(tmp_path / "clip.mp4", seconds=2, size="640x360")
    files = [file_row(clip)]
    thumbs = thumbnails.thumbnail_shard(files, tmp_path / "thumbs", thumbnails.Settings())
    poster = next(t["file"] for t in thumbs if t["role"] == "poster")
    row = hashes.hash_shard(files, hashes.Settings(), thumbs)[0]
    assert_hashes_of(row, Image.open(poster))
    with Image.open(poster) as im:
        assert im.size == (640, 360)


def test_pixel_hash_follows_its_definition_for_every_mode(tmp_path: Path) -> None:
    photo = Image.open(make_photo(tmp_path / "p.png", (301, 97)))  # 97 rows: a partial last strip
    translucent = photo.convert("RGBA")
    translucent.putalpha(Image.linear_gradient("L").resize(photo.size))
    deep = Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257 + 3)  # not 8-bit exact
    transparent_index = photo.quantize(200)
    transparent_index.info["transparency"] = 5
    rgba_palette = photo.quantize(200)  # alpha in the palette itself, no "transparency" entry
    rgba_palette.putpalette(
        [v for i, c in enumerate(rgba_palette.getpalette()[:600]) for v in ([c, 128] if i % 3 == 2 else [c])], "RGBA"
    )
    for image in (
        photo,
        photo.convert("L"),
        photo.convert("1"),
        photo.convert("RGBA"),
        translucent,
        translucent.convert("LA"),
        photo.quantize(200),
        transparent_index,
        rgba_palette,
        photo.convert("YCbCr"),
        Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257),
        deep,
    ):
        assert hashes.pixel_sha512(image) == reference_pixel_hash(image), image.mode
    grey = np.asarray(photo.convert("L"))
    wide = Image.fromarray(grey.astype(np.int32) * 1000 - 5)  # mode I beyond 16 bits: its values
    floats = Image.fromarray(grey.astype(np.float32) / 255)
    for image, mode, dtype in (
        (photo.convert("CMYK"), "CMYK", np.uint8),
        (wide, "I;32", ">i4"),
        (floats, "F;32", ">f4"),
    ):
        expected = hashlib.sha512(f"{mode} 301x97\n".encode() + np.asarray(image).astype(dtype).tobytes())
        assert hashes.pixel_sha512(image) == expected.hexdigest(), mode


def test_same_colours_give_the_same_pixel_hash_whatever_the_stored_format(tmp_path: Path) -> None:
    photo = Image.open(make_photo(tmp_path / "p.png", (301, 97)))
    grey = photo.convert("L")
    palette = photo.quantize(64)
    paths = {}
    for name, image in {
        "rgb": photo,
        "rgba_opaque": photo.convert("RGBA"),
        "palette": palette,
        "palette_as_rgb": palette.convert("RGB"),
        "grey": grey,
        "grey_as_rgb": grey.convert("RGB"),
        "grey_16bit": Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257),
    }.items():
        image.save(paths.setdefault(name, tmp_path / f"{name}.png"))
    paths["grey_as_rgb_tiff"] = tmp_path / "grey_as_rgb.tif"
    grey.convert("RGB").save(paths["grey_as_rgb_tiff"])
    decoded = {n: np.asarray(Image.open(p).convert("RGBA")) for n, p in paths.items() if n != "grey_16bit"}
    got = {n: hashes.hash_file(file_row(p), hashes.Settings())[0]["pixel_sha512"] for n, p in paths.items()}
    for group in (
        ("rgb", "rgba_opaque"),
        ("palette", "palette_as_rgb"),
        ("grey", "grey_as_rgb", "grey_as_rgb_tiff", "grey_16bit"),
    ):
        first = group[0]
        assert all(np.array_equal(decoded[first], decoded[n]) for n in group if n in decoded), group
        assert {got[n] for n in group} == {reference_pixel_hash(Image.open(paths[first]))}, group
    assert len({got["rgb"], got["palette"], got["grey"]}) == 3  # different colours


def test_a_palette_image_hashes_its_colours_not_its_indices(tmp_path: Path) -> None:
    inverted = Image.open(SPINNER)
    inverted.putpalette([255 - c for c in inverted.getpalette()])
    inverted.save(tmp_path / "inverted.png")  # PNG keeps the indices exactly as they are
    with Image.open(SPINNER) as a, Image.open(tmp_path / "inverted.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))  # the same indices
        assert not np.array_equal(np.asarray(a.convert("RGBA")), np.asarray(b.convert("RGBA")))
        expected = [reference_pixel_hash(a), reference_pixel_hash(b)]
    rows = [
        hashes.hash_file(file_row(p, f"{i:016x}"), hashes.Settings())[0]
        for i, p in enumerate((SPINNER, tmp_path / "inverted.png"))
    ]
    assert [r["pixel_sha512"] for r in rows] == expected and expected[0] != expected[1]
    files = [{**file_row(Path(r["path"]), r["media_id"]), "error": None, "size": 1000} for r in rows]
    assert [g for g in duplicates.find_duplicates(files, rows, [], duplicates.Settings()) if g["kind"] == "pixel"] == []


def test_perceptual_hashes_do_not_depend_on_the_pixel_setting(tmp_path: Path) -> None:
    # At 768x1024 a JPEG draft (the pixel-off decode before) gave 2 pHash bits and 1 dHash bit of its own.
    resized = tmp_path / "together.jpg"
    Image.open(SAMPLE / "2023 reunion" / "together.jpg").resize((768, 1024)).save(resized, quality=90)
    for path in [resized, *PHOTOS]:
        full = hashes.hash_file(file_row(path), hashes.Settings())[0]
        quick = hashes.hash_file(file_row(path), hashes.Settings(pixel=False))[0]
        assert "pixel_sha512" not in quick
        assert (quick["phash"], quick["dhash"]) == (full["phash"], full["dhash"]), path.name


# EXIF's eight orientations (CIPA DC-008, tag 0x0112) as numpy operations on the stored rows and columns: the
# picture a viewer shows. Written from the specification, not from Pillow's table or ours.
EXIF_UPRIGHT = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: np.rot90(np.fliplr(a), 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(np.fliplr(a), -1),
    8: lambda a: np.rot90(a, 1),
}


def tiffs_in_every_orientation(folder: Path) -> dict[int, Path]:
    """The same stored 160x100 picture as eight TIFFs, each with another Orientation tag (checked with exiftool)."""
    stored = Image.open(SAMPLE / "2023 reunion" / "together.jpg").convert("RGB").resize((160, 100))
    paths = {}
    for n in EXIF_UPRIGHT:
        exif = Image.Exif()
        exif[0x0112] = n
        paths[n] = folder / f"o{n}.tif"
        stored.save(paths[n], exif=exif)
    tags = json.loads(
        subprocess.run(
            ["exiftool", "-j", "-n", "-Orientation", *map(str, paths.values())], capture_output=True, check=True
        ).stdout
    )
    assert [t["Orientation"] for t in tags] == list(EXIF_UPRIGHT)
    return paths


def test_a_tiffs_orientation_is_applied_once(tmp_path: Path) -> None:
    """Pillow's TIFF reader turns a picture upright itself while decoding; the pixel hash must still cover
    the stored frame (one hash for all eight) and the perceptual hashes and the preview the upright one.
    References: tifffile's decode of the stored frame, the specification's transforms, imagehash."""
    for n, path in tiffs_in_every_orientation(tmp_path).items():
        stored = tifffile.imread(path)
        upright = np.ascontiguousarray(EXIF_UPRIGHT[n](stored))
        h, w = stored.shape[:2]
        row = hashes.hash_file(file_row(path), hashes.Settings())[0]
        assert row["pixel_sha512"] == hashlib.sha512(f"RGB {w}x{h}\n".encode() + stored.tobytes()).hexdigest(), n
        image = Image.fromarray(upright)
        assert (row["phash"], row["dhash"]) == (
            int(str(imagehash.phash(image)), 16),
            int(str(imagehash.dhash(image)), 16),
        ), n
        preview = next(
            r
            for r in thumbnails.thumbnail_file(file_row(path), tmp_path / str(n), thumbnails.Settings())
            if r["role"] == "preview"
        )
        assert (preview["source_width"], preview["source_height"]) == (upright.shape[1], upright.shape[0]), n
        with Image.open(preview["file"]) as im:
            shown = np.asarray(im.convert("RGB"), dtype=np.int16)
        assert shown.shape == upright.shape and np.abs(shown - upright).mean() < 8, n


def png_with_a_damaged_chunk(path: Path, chunk: bytes) -> Path:
    """A 64x48 PNG with a text chunk before its pixels, whose chunk ``chunk`` has its CRC flipped."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "sent through a lossy mailer")
    make_photo(path, (64, 48), pnginfo=info)
    data = bytearray(path.read_bytes())
    at = data.index(chunk) - 4
    crc = at + 8 + int.from_bytes(data[at : at + 4], "big")
    data[crc] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def test_a_png_with_a_damaged_text_chunk_is_still_its_picture(tmp_path: Path) -> None:
    """The PNG specification lets a decoder skip an ancillary chunk whose CRC is wrong, and ffmpeg shows the
    picture; a damaged critical chunk (the header) stays an error, as the specification has it. Reference:
    ffmpeg's decode of the same file."""
    path = png_with_a_damaged_chunk(tmp_path / "damaged text.png", b"tEXt")
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    row = hashes.hash_file(file_row(path), hashes.Settings())[0]
    assert row["status"] == "ok", row["error"]
    assert row["pixel_sha512"] == hashlib.sha512(b"RGB 64x48\n" + decoded).hexdigest()
    thumbs = thumbnails.thumbnail_file(file_row(path), tmp_path, thumbnails.Settings())
    assert [r["status"] for r in thumbs] == ["ok", "ok"]
    broken = png_with_a_damaged_chunk(tmp_path / "damaged header.png", b"IHDR")
    row = hashes.hash_file(file_row(broken), hashes.Settings())[0]
    assert row["status"] == "error" and "not a decodable image" in row["error"] and row["sha512"] is not None
