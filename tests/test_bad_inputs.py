"""The bad-input corpus through every step: each bad file gets an understandable error row (or a correct ok
row when its data really is valid), memory stays bounded, and every good file's rows are identical to those
of a run without the bad files."""

from __future__ import annotations

import csv
import io
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE, ffmpeg, make_audio_only, make_photo, snakemake, write_config
from PIL import Image
from test_thumbnails import bomb_png
from test_workflow import TABLES, comparable

from cl_ml_tools.data import tables

pytestmark = pytest.mark.e2e

GOOD = {
    "astronaut.jpg": "2021 holiday/astronaut.jpg",
    "coffee.png": "2021 holiday/coffee.png",
    "rocket.heic": "misc/rocket.heic",
    "clip.mp4": "videos/clip.mp4",
    "portrait.mov": "videos/portrait.mov",
}
# Valid files of unusual shapes: they must come out ok, not as errors.
VALID_ODDITIES = {"pixel.png", "strip.png", "cmyk.jpg", "deep.png", "palette.png", "grey.jpg", "many frames.gif",
                  "orientation 9.jpg", "x" * 246 + ".jpg", "bogus duration.mp4", "rotated 90.mp4",
                  "rotated -90.mp4"}  # fmt: skip
# Shards fixed, so that adding the bad files moves no good file to another shard.
SHARDING = {"shards": 2, "shard_size": 1000}


def jpeg_declaring(path: Path, width: int, height: int) -> Path:
    """A small JPEG whose frame header (SOF0) is patched to declare width x height."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "JPEG", optimize=False, progressive=False)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def mp4_box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def mp4_without_streams(path: Path) -> Path:
    """A well-formed MP4: file type and a movie header, but not a single track."""
    identity = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    mvhd = b"\0" * 4 + struct.pack(">IIIIIH", 0, 0, 1000, 0, 0x10000, 0x100) + b"\0" * 10 + identity
    mvhd += b"\0" * 24 + struct.pack(">I", 1)
    ftyp = mp4_box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2mp41")
    path.write_bytes(ftyp + mp4_box(b"moov", mp4_box(b"mvhd", mvhd)))
    return path


def mp4_with_bogus_duration(source: Path, path: Path) -> Path:
    """``source`` with the movie, track and media headers claiming 4 294 967 s (49 days)."""
    data = bytearray(source.read_bytes())
    for kind, offset in ((b"mvhd", 20), (b"mdhd", 20), (b"tkhd", 24)):  # version-0 duration field
        at = data.find(kind)
        while at >= 0:
            assert data[at + 4] == 0, "version-1 header"
            data[at + offset : at + offset + 4] = struct.pack(">I", 0xFFFFFFF0)
            at = data.find(kind, at + 4)
    path.write_bytes(bytes(data))
    return path


def bad_corpus(folder: Path) -> None:
    folder.mkdir()
    for ext in ("jpg", "png", "heic", "mp4", "mov"):
        (folder / f"empty.{ext}").write_bytes(b"")
    for name, source in GOOD.items():
        data = (SAMPLE / source).read_bytes()
        for share in (0.1, 0.5, 0.9):
            stem, ext = name.rsplit(".", 1)
            (folder / f"{stem} cut {int(share * 100)}.{ext}").write_bytes(data[: int(len(data) * share)])
    (folder / "text.jpg").write_text("this is not a photo\n")
    (folder / "page.jpg").write_text("<!doctype html><html><body>404 Not Found</body></html>\n")
    (folder / "random.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    bomb_png(folder / "bomb.png", 50_000, 50_000)
    make_audio_only(folder / "only audio.mp4")
    mp4_without_streams(folder / "no streams.mp4")
    mp4_with_bogus_duration(SAMPLE / GOOD["clip.mp4"], folder / "bogus duration.mp4")
    for degrees in (90, -90):  # stored in the display matrix; ffprobe reports them with these signs
        clip = str(SAMPLE / GOOD["clip.mp4"])
        ffmpeg("-i", clip, "-c", "copy", "-metadata:s:v:0", f"rotate={degrees}", str(folder / f"rotated {degrees}.mp4"))
    jpeg_declaring(folder / "bomb.jpg", 50_000, 50_000)
    exif_broken = (SAMPLE / GOOD["astronaut.jpg"]).read_bytes()
    app1 = exif_broken.index(b"Exif\x00\x00")
    (folder / "corrupt exif.jpg").write_bytes(exif_broken[: app1 + 6] + b"\xde\xad" * 40 + exif_broken[app1 + 86 :])
    # Valid but unusual.
    Image.new("RGB", (1, 1), (10, 20, 30)).save(folder / "pixel.png")
    Image.new("L", (1, 20_000), 128).save(folder / "strip.png")
    make_photo(folder / "tmp.png")
    Image.open(folder / "tmp.png").convert("CMYK").save(folder / "cmyk.jpg")
    Image.open(folder / "tmp.png").convert("L").save(folder / "grey.jpg")
    (folder / "tmp.png").unlink()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).save(folder / "deep.png")
    palette = Image.new("P", (64, 64), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.save(folder / "palette.png", transparency=0)
    frames = [Image.new("P", (16, 16), i % 256) for i in range(3000)]
    frames[0].save(folder / "many frames.gif", save_all=True, append_images=frames[1:], duration=10)
    exif = Image.Exif()
    exif[0x0112] = 9
    Image.new("RGB", (40, 30), (0, 90, 200)).save(folder / "orientation 9.jpg", exif=exif)
    Image.new("RGB", (40, 30), (90, 90, 20)).save(folder / ("x" * 246 + ".jpg"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    work = tmp_path_factory.mktemp("bad")
    archive = work / "archive"
    archive.mkdir()
    for name, source in GOOD.items():
        shutil.copy(SAMPLE / source, archive / name)
    write_config(work, {"photos": "archive"}, results="clean", sharding=SHARDING)
    snakemake(work)
    bad_corpus(archive / "bad")
    write_config(work, {"photos": "archive"}, results="dirty", sharding=SHARDING)
    snakemake(work)
    return archive, work / "clean", work / "dirty"


def test_good_rows_are_identical_with_and_without_bad_files(runs) -> None:
    _, clean, dirty = runs
    for name in TABLES:
        if name in ("duplicates", "people"):
            continue  # groups may rightly gain bad files' byte copies (and faces); checked by their own tests
        a = comparable(tables.load(name, clean))
        b = comparable(tables.load(name, dirty))
        b = b[b.media_id.isin(set(a.media_id))].reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b, obj=name)


def test_every_bad_file_has_a_readable_error_or_a_valid_ok_row(runs) -> None:
    archive, _, dirty = runs
    files = tables.load("files", dirty)
    bad = files[files.relpath.str.startswith("bad/")]
    assert len(bad) == len(list((archive / "bad").iterdir()))
    for step in ("hashes", "exif", "thumbnails", "faces", "dino", "clip"):
        df = tables.load(step, dirty)
        df = df[df.media_id.isin(set(bad.media_id))]
        for _, rows in df.groupby("media_id"):
            name = Path(rows.path.iloc[0]).name
            errors = rows[rows.status == "error"]
            if name in VALID_ODDITIES:
                assert errors.empty, (step, name, errors.error.tolist())
            if not errors.empty:
                assert len(errors) == 1, (step, name)
                message = errors.error.iloc[0]
                assert message and "Traceback" not in message and len(message) < 400, (step, name, message)
        if step != "faces":  # faces has rows only for faces and errors
            images = set(bad[bad.kind.isin(["image", "video"]) | bad.relpath.str.endswith(".jpg")].media_id)
            assert images <= set(df.media_id), (step, images - set(df.media_id))


def test_memory_stays_bounded(runs) -> None:
    """Snakemake's per-job benchmark records (max_rss, MB) for the run with the bad files: no job, the
    decompression bombs' included, comes near what decoding one of them would need (7.5 GB)."""
    _, _, dirty = runs
    peaks = {}
    for tsv in (dirty / "benchmarks").rglob("*.tsv"):
        (row,) = csv.DictReader(tsv.open(), delimiter="\t")
        peaks[f"{tsv.parent.name}/{tsv.stem}"] = float(row["max_rss"]) if row["max_rss"] != "NA" else 0.0
    assert len(peaks) >= 9 * 2
    print("peak RSS per job (MB):", dict(sorted(peaks.items())))
    assert max(peaks.values()) < 2500, peaks


def test_odd_videos(runs) -> None:
    """No streams or only audio: errors that say so. A container claiming 49 days: the real 4 s are
    rendered. Rotations of +90 and -90 degrees: upright portrait frames, each the other turned by 180."""
    _, _, dirty = runs

    def by_name(step: str) -> pd.DataFrame:
        df = tables.load(step, dirty)
        return df.assign(name=df.path.map(lambda p: Path(p).name))

    thumbs, hls = by_name("thumbnails"), by_name("hls")
    for step in (thumbs, hls):
        for name, streams in (("no streams.mp4", "none"), ("only audio.mp4", "audio")):
            (message,) = step[step.name == name].error
            assert message == f"no video stream (streams found: {streams})"
    bogus = hls[hls.name == "bogus duration.mp4"].iloc[0]
    assert bogus.status == "ok" and bogus.duration_s == pytest.approx(4.0, abs=0.1)
    previews = thumbs[(thumbs.name == "bogus duration.mp4") & (thumbs.role == "preview")]
    assert previews.timestamp_s.max() < 4.0
    posters = {}
    for name in ("rotated 90.mp4", "rotated -90.mp4"):
        poster = thumbs[(thumbs.name == name) & (thumbs.role == "poster")].iloc[0]
        assert (poster.source_width, poster.source_height) == (240, 320)
        with Image.open(poster.file) as im:
            posters[name] = np.asarray(im.convert("L"), dtype=np.float32)
    turned = np.rot90(posters["rotated 90.mp4"], 2)
    assert np.abs(turned - posters["rotated -90.mp4"]).mean() < 8
    assert np.abs(posters["rotated 90.mp4"] - posters["rotated -90.mp4"]).mean() > 20
