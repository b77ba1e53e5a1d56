from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import imagehash
import pytest
from conftest import SAMPLE, ffmpeg, file_row, make_audio_only, make_dng, make_photo, make_video
from PIL import Image

from cl_ml_tools import hashes

ASTRONAUT = SAMPLE / "2021 holiday" / "astronaut.jpg"


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
    files = [file_row(make_photo(tmp_path / f"{i}.png", (64, 48))) for i in range(5)]
    files[2] = {**files[2], "status": "skipped"}
    rows = hashes.hash_shard(files, hashes.Settings(), threads=2)
    assert [r["path"] for r in rows] == [f["path"] for i, f in enumerate(files) if i != 2]
    assert all(r["status"] == "ok" and r["phash"] is not None for r in rows)


def test_raw_pixel_hash_covers_the_sensor_data(tmp_path: Path) -> None:
    import rawpy

    dng = make_dng(tmp_path / "shot.dng")
    row = hashes.hash_file(file_row(dng), hashes.Settings())[0]
    with rawpy.imread(str(dng)) as raw:
        expected = hashlib.sha512(raw.raw_image_visible.tobytes()).hexdigest()
    assert row["status"] == "ok" and row["pixel_sha512"] == expected and row["phash"] is not None


def test_perceptual_hashes_of_every_image_mode(tmp_path: Path) -> None:
    for mode in ("P", "1", "I;16", "L", "RGBA", "CMYK"):
        path = tmp_path / f"{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}"
        Image.new(mode, (900, 700)).save(path)
        row = hashes.hash_file(file_row(path), hashes.Settings())[0]
        assert row["status"] == "ok" and row["phash"] is not None, (mode, row["error"])


def test_pixel_hash_equals_hash_of_all_bytes_for_every_mode(tmp_path: Path) -> None:
    for mode in ("RGB", "L", "1", "RGBA", "I;16"):
        image = Image.open(make_photo(tmp_path / "p.png", (301, 97))).convert(mode)
        expected = hashlib.sha512(f"{mode} 301x97\n".encode() + image.tobytes()).hexdigest()
        assert hashes.pixel_sha512(image) == expected, mode


def test_perceptual_only_uses_a_reduced_decode(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    Image.open(ASTRONAUT).resize((3000, 4000)).save(big, quality=90)
    full = hashes.hash_file(file_row(big), hashes.Settings())[0]
    quick = hashes.hash_file(file_row(big), hashes.Settings(pixel=False))[0]
    assert "pixel_sha512" not in quick
    assert bin(full["phash"] ^ quick["phash"]).count("1") <= 2
    assert bin(full["dhash"] ^ quick["dhash"]).count("1") <= 2
