from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import file_row, make_audio_only, make_video

from cl_ml_tools import hls


def test_plan_ladder_never_upscales() -> None:
    ladder = hls.Settings().ladder
    assert [r.height for r in hls.plan_ladder(ladder, 1080)] == [720, 480, 240]
    assert [r.height for r in hls.plan_ladder(ladder, 720)] == [720, 480, 240]
    assert [r.height for r in hls.plan_ladder(ladder, 500)] == [480, 240]
    small = hls.plan_ladder(ladder, 181)
    assert [r.height for r in small] == [180] and small[0].video_kbps == 400


def ffprobe_streams(path: Path) -> list[dict]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)], check=True, capture_output=True
    ).stdout
    return json.loads(out)["streams"]


def test_two_rung_ladder_with_audio(tmp_path: Path) -> None:
    video = make_video(tmp_path / "in.mp4", seconds=5, size="640x360")
    settings = hls.Settings(ladder=(hls.Rung(360, 800, 96), hls.Rung(240, 400, 64)), segment_s=2)
    [row] = hls.encode(file_row(video), tmp_path / "out", settings)
    assert row["status"] == "ok"
    master = Path(row["master"])
    text = master.read_text()
    assert text.count("#EXT-X-STREAM-INF") == 2 and 'CODECS="avc1.' in text and "mp4a.40.2" in text
    assert [(v["name"], v["width"], v["height"]) for v in row["variants"]] == [("360p", 640, 360), ("240p", 426, 240)]
    assert row["duration_s"] == pytest.approx(5, abs=0.1)
    assert row["segment_count"] == 3  # 2 + 2 + 1 s
    for v in row["variants"]:
        playlist = Path(v["playlist"])
        durations = [
            float(x.split(":")[1].rstrip(",")) for x in playlist.read_text().splitlines() if x.startswith("#EXTINF")
        ]
        assert durations == pytest.approx([2, 2, 1], abs=0.05)
        first_segment = playlist.parent / "segment_00000.ts"
        kinds = sorted(s["codec_type"] for s in ffprobe_streams(first_segment))
        assert kinds == ["audio", "video"]
    # ffprobe opens the master playlist and sees both renditions
    heights = sorted({s.get("height") for s in ffprobe_streams(master) if s["codec_type"] == "video"})
    assert heights == [240, 360]
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "out").iterdir())


def test_video_without_audio_and_rotation(tmp_path: Path) -> None:
    video = make_video(tmp_path / "in.mp4", seconds=2, size="320x240", audio=False)
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-Rotation=90", str(video)], check=True)
    [row] = hls.encode(file_row(video), tmp_path / "out", hls.Settings())
    # Shown upright the frame is 240 wide and 320 high, so the 240p rung is kept and rotated.
    assert [(v["width"], v["height"]) for v in row["variants"]] == [(180, 240)]
    assert "mp4a" not in row["variants"][0]["codecs"]


def test_shard_turns_failures_into_rows(tmp_path: Path) -> None:
    audio = make_audio_only(tmp_path / "sound.mp4")
    junk = tmp_path / "junk.mov"
    junk.write_bytes(b"\x00" * 1000)
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"\xff\xd8\xff")
    good = make_video(tmp_path / "ok.mp4", seconds=1)
    files = [file_row(p, f"{i:016x}") for i, p in enumerate([audio, junk, photo, good])]
    rows = hls.hls_shard(files, tmp_path / "out", hls.Settings(), threads=2)
    assert [Path(r["path"]).name for r in rows] == ["sound.mp4", "junk.mov", "ok.mp4"]  # the photo has no row
    assert rows[0]["status"] == "error" and rows[0]["error"].startswith("no video stream")
    assert rows[1]["status"] == "error"
    assert rows[2]["status"] == "ok"
