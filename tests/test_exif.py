from __future__ import annotations

import json
import math
import re
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


# Real cameras' files, see data/cameras/README.md for where each comes from and its licence.
CAMERAS = Path(__file__).parent / "data" / "cameras"
CAMERA_FILES = sorted(p for p in CAMERAS.iterdir() if p.name != "README.md")
_EXIFTOOL_DATE = re.compile(r"(\d{4}):(\d\d):(\d\d) (\d\d):(\d\d):(\d\d)(\.\d+)?([+-]\d\d:\d\d|Z)?$")


def _exiftool_all(paths: list[Path], *options: str) -> list[dict]:
    out = subprocess.run(
        ["exiftool", "-j", "-q", "-q", *options, *map(str, paths)], check=False, capture_output=True
    ).stdout
    # Numbers as exiftool wrote them ("1.00" stays "1.00"); the reference makes numbers of them itself.
    by_file = {r["SourceFile"]: r for r in json.loads(out, parse_float=str, parse_int=str)}
    return [by_file.get(str(p), {}) for p in paths]


def _text(value: object) -> str | None:
    return (str(value).strip() or None) if value is not None else None


def _number(value: object) -> float | None:
    try:
        return float(str(value).split()[0]) if value not in (None, "") else None
    except ValueError:
        return None


def _when(value: object) -> tuple[datetime | None, str | None]:
    m = _EXIFTOOL_DATE.match(str(value).strip()) if value is not None else None
    if not m:
        return None, None
    fraction = min(round(float(m.group(7)) * 1e6), 999_999) if m.group(7) else 0
    try:
        return datetime(*map(int, m.groups()[:6]), fraction), m.group(8)
    except ValueError:  # "0000:00:00 00:00:00", a camera whose clock was never set
        return None, None


def _reference(plain: dict, numeric: dict, grouped: dict, grouped_numeric: dict) -> dict:
    def pick(tag: str, printed: bool = False) -> object:
        value = (grouped if printed else grouped_numeric).get(f"EXIF:{tag}")
        return value if value not in (None, "") else (plain if printed else numeric).get(tag)

    ref: dict = {
        "make": _text(pick("Make", printed=True)),
        "model": _text(pick("Model", printed=True)),
        "lens": _text(pick("LensModel", printed=True) or plain.get("LensID") or grouped.get("XMP:Lens")),
        "datetime_original": None,
        "datetime_original_offset": None,
    }
    dates = (
        grouped.get("Composite:SubSecDateTimeOriginal"),
        pick("DateTimeOriginal"),
        grouped.get("QuickTime:CreationDate"),
    )
    for value in dates:
        when, offset = _when(value)
        if when is not None:
            ref["datetime_original"] = when
            ref["datetime_original_offset"] = offset or _text(grouped.get("EXIF:OffsetTimeOriginal"))
            break
    ref["create_date"] = _when(pick("CreateDate"))[0]
    size = str(numeric.get("ImageSize", "")).split()
    ref["width"], ref["height"] = (int(float(size[0])), int(float(size[1]))) if len(size) == 2 else (None, None)
    orientation = _number(pick("Orientation"))
    ref["orientation"] = int(orientation) if orientation in range(1, 9) else None
    iso = _number(pick("ISO", printed=True))
    ref["iso"] = int(iso) if iso is not None else None
    ref["f_number"] = _number(pick("FNumber") or numeric.get("Aperture"))
    ref["exposure_time"] = _number(pick("ExposureTime") or numeric.get("ShutterSpeed"))
    ref["focal_length"] = _number(pick("FocalLength"))
    # Without groups, exiftool's GPS position is its signed Composite one.
    ref["gps_latitude"] = _number(numeric.get("GPSLatitude"))
    ref["gps_longitude"] = _number(numeric.get("GPSLongitude"))
    ref["gps_altitude"] = _number(numeric.get("GPSAltitude"))
    ref["software"] = _text(pick("Software", printed=True) or grouped.get("XMP:CreatorTool"))
    ref["duration"] = _number(numeric.get("Duration"))
    ref["mime"] = _text(numeric.get("MIMEType"))
    return ref


def exiftool_reference(paths: list[Path]) -> list[dict]:
    """What exiftool itself says each typed column is, for each file. The base is its ``-j`` (printed) and
    ``-j -n`` output without groups, where exiftool's own priority rules choose among a tag's copies. On
    top: a tag in the EXIF group beats its copies elsewhere (maker notes repeat tags in vendor encodings:
    Kodak's FNumber 6.73 next to EXIF's 6.7; Pentax's ISO index 6 next to EXIF's 100); text and ISO are
    exiftool's printed values, other numbers its -n ones; the size is exiftool's Composite ImageSize; the
    capture time is its SubSecDateTimeOriginal when there is one (EXIF's date with its sub-seconds and
    offset), else DateTimeOriginal, else QuickTime's CreationDate."""
    runs = (
        _exiftool_all(paths),
        _exiftool_all(paths, "-n"),
        _exiftool_all(paths, "-G"),
        _exiftool_all(paths, "-G", "-n"),
    )
    return [_reference(*one) for one in zip(*runs, strict=True)]


def mismatches(row: dict, ref: dict) -> list[str]:
    """Every typed column where ``row`` differs from exiftool's ``ref``, as 'column: ours != exiftool's'."""
    out = []
    for column, want in ref.items():
        got = row[column]
        if isinstance(want, float) and isinstance(got, int | float):
            same = math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)
        else:
            same = got == want and type(got) is type(want)
        if not same:
            out.append(f"{column}: {got!r} != {want!r}")
    return out


@pytest.fixture(scope="module")
def camera_rows() -> dict[str, tuple[dict, dict]]:
    """Our rows (one exiftool batch, as the exif step runs it) and exiftool's reference, by file name."""
    rows, refs = rows_for(CAMERA_FILES), exiftool_reference(CAMERA_FILES)
    return {p.name: (row, ref) for p, row, ref in zip(CAMERA_FILES, rows, refs, strict=True)}


@pytest.mark.parametrize("name", [p.name for p in CAMERA_FILES])
def test_real_camera_files_match_exiftool(camera_rows: dict[str, tuple[dict, dict]], name: str) -> None:
    row, ref = camera_rows[name]
    assert row["status"] == "ok", row["error"]
    assert mismatches(row, ref) == []


def test_the_camera_files_cover_many_makers_and_formats(camera_rows: dict[str, tuple[dict, dict]]) -> None:
    # The comparison above is only as broad as the files: keep it many makers, raw formats and videos,
    # with the values it is about present (not a set of files exiftool finds nothing in).
    refs = [ref for _, ref in camera_rows.values()]
    makers = {ref["make"].split()[0].lower() for ref in refs if ref["make"]}
    assert len(makers) >= 15, makers
    assert len({ref["mime"] for ref in refs}) >= 12
    for column in ("lens", "iso", "f_number", "gps_latitude", "software", "duration", "datetime_original_offset"):
        assert sum(ref[column] is not None for ref in refs) >= 3, column
