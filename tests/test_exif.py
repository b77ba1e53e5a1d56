from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import SAMPLE, ffmpeg, make_video

from cl_ml_tools.steps import exif

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


def test_video_duration_in_every_container_is_ffprobes(tmp_path: Path) -> None:
    """Matroska and WebM name a track's duration as a clock string ("00:00:02.000000000", exiftool's -n keeps
    it so); the column is still seconds. Reference: ffprobe's format duration of the same file."""
    clips = [make_video(tmp_path / f"clip.{ext}", seconds=2) for ext in ("mp4", "mov", "mkv", "avi")]
    webm = tmp_path / "clip.webm"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=3", "-c:v", "libvpx-vp9", "-deadline", "realtime", str(webm))
    clips.append(webm)
    for clip, row in zip(clips, rows_for(clips), strict=True):
        probed = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(clip)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert row["duration"] == pytest.approx(float(probed.stdout), abs=0.05), (clip.name, row["duration"])


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


# The EXIF tags (EXIF 2.32, as exifread names them: "Image" is IFD0, "EXIF" the Exif IFD) that hold each
# column's value when a file has them (docs/tables.md: "EXIF first").
EXIF_TAGS = {
    "make": "Image Make",
    "model": "Image Model",
    "lens": "EXIF LensModel",
    "orientation": "Image Orientation",
    "iso": "EXIF ISOSpeedRatings",
    "f_number": "EXIF FNumber",
    "exposure_time": "EXIF ExposureTime",
    "focal_length": "EXIF FocalLength",
    "software": "Image Software",
}


def _ratio(value: object) -> float:
    return float(value.num) / float(value.den) if hasattr(value, "den") else float(value)


def _degrees(tags: dict, name: str) -> float | None:
    """A GPS coordinate from its degrees, minutes and seconds and its N/S or E/W reference."""
    if f"GPS {name}" not in tags:
        return None
    d, m, sec = (_ratio(v) for v in tags[f"GPS {name}"].values)
    value = d + m / 60 + sec / 3600
    return -value if str(tags.get(f"GPS {name}Ref", "")).strip().upper() in ("S", "W") else value


def exifread_reference(path: Path) -> dict:
    """The typed columns that a second, independent EXIF reader (exifread, pure Python) finds in the
    file's EXIF tags; a column is left out when the file has no such tag."""
    import exifread

    with open(path, "rb") as fh:
        tags = exifread.process_file(fh, details=False)
    ref: dict = {}
    for column, tag in EXIF_TAGS.items():
        values = getattr(tags.get(tag), "values", None)
        if isinstance(values, str):
            if values.strip():
                ref[column] = values.strip()
        elif values and column in ("orientation", "iso"):
            if column == "iso" or values[0] in range(1, 9):
                ref[column] = int(values[0])
        elif values:
            ref[column] = _ratio(values[0])
    when, _ = _when(getattr(tags.get("EXIF DateTimeOriginal"), "values", None))
    if when is not None:
        subsec = str(tags.get("EXIF SubSecTimeOriginal", "")).strip()
        if subsec.isdigit():
            when = when.replace(microsecond=min(round(float(f"0.{subsec}") * 1e6), 999_999))
        ref["datetime_original"] = when
        # EXIF's date holds no offset: its offset is OffsetTimeOriginal, or none.
        ref["datetime_original_offset"] = str(tags.get("EXIF OffsetTimeOriginal", "")).strip() or None
    created, _ = _when(getattr(tags.get("EXIF DateTimeDigitized"), "values", None))
    if created is not None:
        ref["create_date"] = created
    for column, name in (("gps_latitude", "GPSLatitude"), ("gps_longitude", "GPSLongitude")):
        if (degrees := _degrees(tags, name)) is not None:
            ref[column] = degrees
    if "GPS GPSDate" in tags and "GPS GPSTimeStamp" in tags:  # UTC, by the EXIF standard
        hours, minutes, seconds = (_ratio(v) for v in tags["GPS GPSTimeStamp"].values)
        day = datetime.strptime(str(tags["GPS GPSDate"]).strip(), "%Y:%m:%d")
        ref["gps_datetime"] = day + timedelta(hours=hours, minutes=minutes, seconds=round(seconds, 6))
    if "GPS GPSAltitude" in tags:
        altitude = _ratio(tags["GPS GPSAltitude"].values[0])
        below = list(getattr(tags.get("GPS GPSAltitudeRef"), "values", [0])) == [1]
        ref["gps_altitude"] = -altitude if below else altitude
    return ref


def exiftool_reference(paths: list[Path]) -> list[dict]:
    """What exiftool itself says each typed column is, without our choice among its groups: its output
    without groups (``-j`` printed values for text and ISO, ``-j -n`` for the other numbers, as
    docs/tables.md says), where exiftool's own priority rules pick among a tag's copies; the size is its
    Composite ImageSize, the capture time its Composite SubSecDateTimeOriginal when it has one."""
    refs = []
    for plain, numeric in zip(_exiftool_all(paths), _exiftool_all(paths, "-n"), strict=True):
        ref: dict = {
            column: _text(plain.get(tag))
            for column, tag in (("make", "Make"), ("model", "Model"), ("software", "Software"), ("mime", "MIMEType"))
        }
        ref["lens"] = _text(plain.get("LensModel") or plain.get("LensID"))
        when, offset = _when(plain.get("SubSecDateTimeOriginal") or numeric.get("DateTimeOriginal"))
        ref["datetime_original"] = when
        ref["datetime_original_offset"] = offset or _text(plain.get("OffsetTimeOriginal"))
        ref["create_date"] = _when(numeric.get("CreateDate"))[0]
        size = str(numeric.get("ImageSize", "")).split()
        ref["width"], ref["height"] = (int(float(size[0])), int(float(size[1]))) if len(size) == 2 else (None, None)
        orientation = _number(numeric.get("Orientation"))
        ref["orientation"] = int(orientation) if orientation in range(1, 9) else None
        iso = _number(plain.get("ISO"))
        ref["iso"] = int(iso) if iso is not None else None
        for column, tag in NUMERIC_TAGS.items():
            ref[column] = _number(numeric.get(tag))
        refs.append(ref)
    return refs


NUMERIC_TAGS = {
    # exiftool's Composite Aperture and ShutterSpeed: FNumber and ExposureTime, else the APEX values.
    "f_number": "Aperture",
    "exposure_time": "ShutterSpeed",
    "focal_length": "FocalLength",
    "gps_latitude": "GPSLatitude",  # without groups, exiftool's GPS position is its signed Composite one
    "gps_longitude": "GPSLongitude",
    "gps_altitude": "GPSAltitude",
    "duration": "Duration",
}


def reference(paths: list[Path]) -> list[dict]:
    """Each file's typed columns as the references see them: the EXIF tag read by exifread where the file
    has it, else exiftool's own choice."""
    return [{**tool, **exifread_reference(p)} for p, tool in zip(paths, exiftool_reference(paths), strict=True)]


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
    rows, refs = rows_for(CAMERA_FILES), reference(CAMERA_FILES)
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
