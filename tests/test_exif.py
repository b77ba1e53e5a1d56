from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from conftest import SAMPLE, make_video

from cl_ml_tools import exif

ASTRONAUT = SAMPLE / "2021 holiday" / "astronaut.jpg"


def exiftool_json(path: Path) -> dict:
    out = subprocess.run(["exiftool", "-j", "-n", "-G", str(path)], check=True, capture_output=True).stdout
    return json.loads(out)[0]


def rows_for(paths: list[Path]) -> list[dict]:
    files = [{"media_id": f"{i:016x}", "input": "t", "path": str(p), "status": "ok"} for i, p in enumerate(paths)]
    return exif.exif_shard(files)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2021:07:04 12:30:05", (datetime(2021, 7, 4, 12, 30, 5), None)),
        ("2021:07:04 12:30:05.25+02:00", (datetime(2021, 7, 4, 12, 30, 5, 250000), "+02:00")),
        ("2021-07-04T12:30:05Z", (datetime(2021, 7, 4, 12, 30, 5), "Z")),
        ("0000:00:00 00:00:00", (None, None)),
        ("garbage", (None, None)),
        (12, (None, None)),
    ],
)
def test_parse_date(value: object, expected: tuple) -> None:
    assert exif.parse_date(value) == expected


def test_typed_columns_of_the_sample_photo_match_exiftool() -> None:
    [row] = rows_for([ASTRONAUT])
    ref = exiftool_json(ASTRONAUT)
    assert row["status"] == "ok"
    assert (row["make"], row["model"]) == (ref["EXIF:Make"], ref["EXIF:Model"])
    assert row["lens"] == ref["EXIF:LensModel"]
    assert row["orientation"] == ref["EXIF:Orientation"] == 6
    assert (row["width"], row["height"]) == (ref["File:ImageWidth"], ref["File:ImageHeight"])
    assert row["iso"] == ref["EXIF:ISO"]
    assert row["f_number"] == pytest.approx(ref["EXIF:FNumber"])
    assert row["exposure_time"] == pytest.approx(1 / 250)
    assert row["focal_length"] == pytest.approx(50)
    assert row["gps_latitude"] == pytest.approx(ref["Composite:GPSLatitude"])
    assert row["gps_longitude"] == pytest.approx(-80.648)  # west is negative
    assert row["gps_altitude"] == pytest.approx(3)
    assert row["datetime_original"] == datetime(2021, 7, 4, 12, 30, 5)
    assert row["datetime_original_offset"] == "+02:00"
    assert row["mime"] == "image/jpeg"
    raw = json.loads(row["raw"])
    assert raw["EXIF:Make"] == "Canon" and "SourceFile" not in raw and "File:FileName" not in raw


def test_one_exiftool_for_odd_names(tmp_path: Path) -> None:
    names = [
        "-rf.jpg",
        "new\nline.jpg",
        'quote\'s "double".jpg',
        "ünïcødé ☃ name.jpg",
        "$(reboot).jpg",
        "a" * 200 + ".jpg",
    ]
    paths = []
    for name in names:
        p = tmp_path / name
        shutil.copy(ASTRONAUT, p)
        paths.append(p)
    rows = rows_for(paths)
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    assert all(r["status"] == "ok" and r["make"] == "Canon" for r in rows), rows


def test_video_duration_and_errors(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", seconds=2)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(bytes(range(256)) * 64)
    rows = rows_for([video, empty, junk, ASTRONAUT])
    assert rows[0]["status"] == "ok" and rows[0]["duration"] == pytest.approx(2, abs=0.1)
    assert rows[0]["mime"] == "video/mp4" and (rows[0]["width"], rows[0]["height"]) == (320, 240)
    assert rows[1]["status"] == "error" and "empty" in rows[1]["error"].lower()
    assert rows[2]["status"] == "error" and rows[2]["error"].startswith("exiftool: ")
    assert rows[3]["status"] == "ok" and rows[3]["make"] == "Canon"


def test_missing_file_gets_its_own_row(tmp_path: Path) -> None:
    rows = rows_for([tmp_path / "vanished.jpg", ASTRONAUT])
    assert rows[0]["status"] == "error" and rows[0]["error"].startswith("No such file or directory")
    assert rows[1]["status"] == "ok"


def test_several_processes_give_the_same_rows(tmp_path: Path) -> None:
    paths = []
    for i in range(45):
        p = tmp_path / f"{i:02d}.jpg"
        shutil.copy(ASTRONAUT, p)
        paths.append(p)
    (tmp_path / "07.jpg").write_text("broken")
    files = [{"media_id": f"{i:016x}", "input": "t", "path": str(p), "status": "ok"} for i, p in enumerate(paths)]
    one, two = exif.exif_shard(files, processes=1), exif.exif_shard(files, processes=2)
    assert one == two
    assert [r["path"] for r in two] == [str(p) for p in paths]
    assert two[7]["mime"] == "text/plain" and all(r["make"] == "Canon" for i, r in enumerate(two) if i != 7)
