"""Metadata with one exiftool process per shard.

exiftool reads its file list from an argument file. Each file is reached through a symlink with a plain
ASCII name in a private directory, so names with newlines, leading dashes, quotes or any encoding are just
names, and each JSON record maps back to its file by position.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..data.tables import STATUS_SKIPPED, base_row, error_row
from ..media.errors import MediaError
from .common import Job, Row, describe

EXIFTOOL = os.environ.get("CL_ML_TOOLS_EXIFTOOL", "exiftool")
TIMEOUT_PER_FILE_S = 30
# Below this many files per process, a second exiftool start-up costs more than it saves.
MIN_FILES_PER_PROCESS = 20

# Where each typed column is read from, first usable value wins (keys as ``exiftool -G`` names them).
# "*:Tag" is that tag in any group, in exiftool's output order: cameras and containers put the standard
# tags in groups of their own (SigmaRaw in X3F, H264 in AVCHD, RIFF in AVI, MakerNotes in CRW, FLIR's
# APP1, ...), and a group list would always miss the next one. The named groups come first because they
# are the standard places; EXIF before maker notes, which repeat many tags in vendor encodings.
SOURCES: dict[str, tuple[str, ...]] = {
    "make": ("EXIF:Make", "QuickTime:Make", "XMP:Make", "MakerNotes:Make", "*:Make"),
    "model": ("EXIF:Model", "QuickTime:Model", "XMP:Model", "MakerNotes:Model", "*:Model"),
    "lens": ("EXIF:LensModel", "XMP:LensModel", "MakerNotes:LensModel", "*:LensModel", "Composite:LensID",
             "XMP:Lens"),
    # exiftool's SubSec composite is DateTimeOriginal with its SubSecTimeOriginal and OffsetTimeOriginal.
    "datetime_original": ("Composite:SubSecDateTimeOriginal", "EXIF:DateTimeOriginal", "XMP:DateTimeOriginal",
                          "QuickTime:DateTimeOriginal", "QuickTime:CreationDate", "*:DateTimeOriginal"),
    "datetime_original_offset": ("EXIF:OffsetTimeOriginal",),
    "create_date": ("EXIF:CreateDate", "QuickTime:CreateDate", "XMP:CreateDate", "*:CreateDate"),
    # exiftool's own size rule: the main image's ImageWidth/Height (not a stale ExifImageWidth left by an
    # editor), the raw size for Canon/Phase One/Fujifilm raw files; "W H" with -n.
    "width": ("Composite:ImageSize",),
    "height": ("Composite:ImageSize",),
    "orientation": ("EXIF:Orientation", "XMP:Orientation"),
    "iso": ("EXIF:ISO", "Composite:ISO", "MakerNotes:ISO", "XMP:ISO", "*:ISO"),
    "f_number": ("EXIF:FNumber", "Composite:Aperture", "XMP:FNumber", "*:FNumber"),
    "exposure_time": ("EXIF:ExposureTime", "Composite:ShutterSpeed", "XMP:ExposureTime", "*:ExposureTime"),
    "focal_length": ("EXIF:FocalLength", "XMP:FocalLength", "*:FocalLength"),
    # EXIF's own GPS values are unsigned (the sign lives in the Ref tags); the Composite ones are signed.
    "gps_latitude": ("Composite:GPSLatitude", "XMP:GPSLatitude"),
    "gps_longitude": ("Composite:GPSLongitude", "XMP:GPSLongitude"),
    "gps_altitude": ("Composite:GPSAltitude", "XMP:GPSAltitude"),
    # EXIF's GPSDateStamp and GPSTimeStamp, UTC by the EXIF standard, joined by exiftool.
    "gps_datetime": ("Composite:GPSDateTime",),
    "software": ("EXIF:Software", "QuickTime:Software", "*:Software", "XMP:CreatorTool", "QuickTime:Encoder"),
    "duration": ("QuickTime:Duration", "Composite:Duration", "Matroska:Duration", "RIFF:Duration", "*:Duration"),
    "mime": ("File:MIMEType",),
}  # fmt: skip
TEXT = {"make", "model", "lens", "datetime_original_offset", "software", "mime"}
INTEGER = {"width", "height", "orientation", "iso"}
FLOAT = {"f_number", "exposure_time", "focal_length", "gps_latitude", "gps_longitude", "gps_altitude", "duration"}
# A camera that does not know the aperture or exposure writes 0 (Pentax's AVI maker notes: FNumber 0);
# exiftool's own Aperture and ShutterSpeed treat it as absent, and so do we.
UNKNOWN_WHEN_ZERO = {"f_number", "exposure_time"}
# Columns read from exiftool's printed values instead of its numeric ones: -n turns names into codes
# (LensID 65535, Nikon's lens bytes, H264 Make 4113), and maker notes keep ISO as a table index (Pentax 6
# is ISO 100) or a pair (Nikon "0 200"), where the printed value is the ISO itself.
PRINTED = TEXT | {"iso"}
_DROPPED = {"SourceFile", "ExifTool:ExifToolVersion"}
_DATE_RE = re.compile(r"^(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})(\.\d+)?")
_OFFSET_RE = re.compile(r"^(?:[+-]\d{2}:\d{2}|Z)$")
# Matroska and WebM store a track's duration as a clock string ("00:00:02.000000000"), which exiftool's -n
# passes through as it is.
_CLOCK_RE = re.compile(r"^(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)$")


def parse_date(value: Any) -> tuple[datetime | None, str | None]:
    """An exiftool date ('2021:07:04 12:30:05.12+02:00') → (naive local datetime, '+02:00' or None)."""
    if not isinstance(value, str):
        return None, None
    m = _DATE_RE.match(value.strip())
    if not m:
        return None, None
    y, mo, d, h, mi, s, frac = m.groups()
    try:
        micro = round(float(frac) * 1e6) if frac else 0
        dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), min(micro, 999_999))
    except ValueError:
        return None, None  # e.g. the all-zero dates cameras write before their clock is set
    offset = re.search(r"([+-]\d{2}:\d{2}|Z)$", value.strip())
    return dt, offset.group(1) if offset else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip().split()[0] if value.strip() else ""
        if "/" in text:
            num, _, den = text.partition("/")
            try:
                return float(num) / float(den)
            except (ValueError, ZeroDivisionError):
                return None
        try:
            f = float(text)
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, bool):
        return str(value).lower()  # exiftool writes the strings "true"/"false" as JSON booleans
    if value is None or isinstance(value, list | dict):
        return None
    return str(value).strip() or None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and abs(number) < 2**31 else None


def _size(value: Any, index: int) -> int | None:
    parts = value.split() if isinstance(value, str) else []
    return _integer(parts[index]) if len(parts) == 2 else None


def _by_name(tags: Mapping[str, Any]) -> dict[str, list[Any]]:
    by_name: dict[str, list[Any]] = {}
    for key, value in tags.items():
        by_name.setdefault(key.partition(":")[2], []).append(value)
    return by_name


def _convert(column: str, value: Any) -> Any:
    if column in TEXT:
        text = _text(value)
        if column == "datetime_original_offset" and text is not None and not _OFFSET_RE.match(text):
            return None
        return text
    if column == "width":
        return _size(value, 0)
    if column == "height":
        return _size(value, 1)
    if column in INTEGER:
        number = _integer(value)
        return None if column == "orientation" and number is not None and not 1 <= number <= 8 else number
    if column == "duration" and isinstance(value, str) and (clock := _CLOCK_RE.match(value.strip())):
        hours, minutes, seconds = clock.groups()
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    if column in FLOAT:
        number = _number(value)
        return None if column in UNKNOWN_WHEN_ZERO and number is not None and number <= 0 else number
    return parse_date(value)[0]  # the dates: datetime_original, create_date, gps_datetime


def _pick(
    column: str, tags: Mapping[str, Any], by_name: Mapping[str, list[Any]], keys: Sequence[str]
) -> tuple[Any, Any]:
    """The first value among ``keys`` that converts for ``column``: (converted, as exiftool gave it)."""
    for key in keys:
        group, _, name = key.partition(":")
        for value in by_name.get(name, ()) if group == "*" else (tags.get(key),):
            converted = _convert(column, value)
            if converted is not None:
                return converted, value
    return None, None


def typed_columns(tags: Mapping[str, Any], printed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The table's typed columns from one exiftool record: ``tags`` as ``-j -n -G`` gives them, ``printed``
    the same keys with exiftool's printed values (``-j -G``; ``tags`` itself when not given)."""
    printed = tags if printed is None else printed
    numeric_names = _by_name(tags)
    printed_names = numeric_names if printed is tags else _by_name(printed)
    out: dict[str, Any] = {}
    own_offset = None
    for column, keys in SOURCES.items():
        if column in PRINTED:
            out[column], value = _pick(column, printed, printed_names, keys)
        else:
            out[column], value = _pick(column, tags, numeric_names, keys)
        if column == "datetime_original":
            own_offset = parse_date(value)[1]
    # An offset written into the date itself (XMP, QuickTime, the SubSec composite) belongs to that date.
    out["datetime_original_offset"] = own_offset or out["datetime_original_offset"]
    return out


def _link_dir_entries(paths: Sequence[str], tmp: Path) -> list[str]:
    links = []
    for i, path in enumerate(paths):
        ext = re.sub(r"[^A-Za-z0-9]", "", os.path.splitext(path)[1])[:10]
        link = tmp / (f"{i:07d}.{ext}" if ext else f"{i:07d}")
        os.symlink(os.path.abspath(path), link)
        links.append(str(link))
    return links


@dataclass(frozen=True)
class Record:
    """One file's tags from exiftool, keyed ``Group:Tag``: ``values`` as ``-n`` gives them (numbers are
    numbers), ``printed`` as exiftool prints them (names for codes, and text exactly as written)."""

    values: dict[str, Any]
    printed: dict[str, Any]


class _Literal(float):
    """A JSON number as exiftool wrote it: exiftool writes any value that looks like a number as a JSON
    number, so the text columns would see Software "1.00" as 1.0 without these digits."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> _Literal:
        number = super().__new__(cls, text)
        number.text = text
        return number


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, _Literal) else value


def _tag(obj: dict[str, Any]) -> Any:
    """One tag as ``-l`` writes it ({"desc", "val", "num"}) → (-n value, printed value), made while parsing
    so that the descriptions never pile up for a whole shard."""
    if "val" not in obj or "desc" not in obj:
        return obj  # a file's record (its keys are Group:Tag)
    val = obj["val"]
    return _plain(obj.get("num", val)), val.text if isinstance(val, _Literal) else val


def _split(record: Mapping[str, Any]) -> Record:
    values, printed = {}, {}
    for key, tag in record.items():
        if key not in _DROPPED and isinstance(tag, tuple):
            values[key], printed[key] = tag
    return Record(values, printed)


def run_exiftool(paths: Sequence[str]) -> list[Record | None]:
    """One exiftool process for all ``paths``; one Record (or None when exiftool said nothing) per path."""
    if not paths:
        return []
    with tempfile.TemporaryDirectory(prefix="cl_ml_tools_exif_") as tmp:
        tmp_dir = Path(tmp)
        links = _link_dir_entries(paths, tmp_dir)
        argfile = tmp_dir / "args.txt"
        argfile.write_text("".join(f"{link}\n" for link in links), encoding="ascii")
        proc = subprocess.run(
            [
                EXIFTOOL,
                "-j",
                # -l gives each tag's printed value ("val") and, where it differs, the -n one ("num"): both
                # from one read of the file.
                "-l",
                "-G",
                "-a",
                "-q",
                "-q",
                "-api",
                "LargeFileSupport=1",
                # The link's own name and folder describe nothing; access and inode-change times change
                # whenever anything reads the file, and would make reruns differ.
                "--FileName",
                "--Directory",
                "--FileAccessDate",
                "--FileInodeChangeDate",
                "-@",
                str(argfile),
            ],
            capture_output=True,
            timeout=TIMEOUT_PER_FILE_S * len(paths) + 60,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if not proc.stdout.strip():
            if proc.returncode != 0 and len(paths) == 1:
                message = proc.stderr.decode("utf-8", "replace").strip() or "exiftool failed"
                raise MediaError(message.replace(links[0], paths[0]))
            return [None] * len(paths)
        # exiftool already replaces invalid UTF-8 in values; decoding leniently keeps a stray byte from
        # costing the whole batch.
        records = json.loads(proc.stdout.decode("utf-8", "replace"), parse_float=_Literal, object_hook=_tag)
    by_link = {rec.get("SourceFile"): _split(rec) for rec in records}
    return [by_link.get(link) for link in links]


def _row_from_record(file_row: Mapping[str, Any], record: Record | None) -> Row:
    if record is None:
        return error_row(file_row, "exiftool returned no metadata for this file")
    error = record.values.get("ExifTool:Error")
    row: Row = {
        **base_row(file_row),
        **typed_columns(record.values, record.printed),
        "raw": json.dumps(record.values, ensure_ascii=False, sort_keys=True),
    }
    if error:
        row.update(status="error", error=f"exiftool: {error}")
    return row


def exif_shard(files: Sequence[Mapping[str, Any]], processes: int = 1) -> list[Row]:
    """Metadata rows for every non-skipped file of a shard.

    exiftool is single-threaded Perl, so a job with several cores runs one batch process per core, each on
    a contiguous slice of the shard (never one process per file). If a batch call itself breaks, its
    files are retried one by one, so one poisonous file costs only its own row."""
    files = [f for f in files if f["status"] != STATUS_SKIPPED]
    # exiftool words a missing or unreadable file as "Error opening file"; the OS says why.
    rows = {f["media_id"]: error_row(f, problem) for f in files if (problem := _unreadable(f["path"]))}
    todo = [f for f in files if f["media_id"] not in rows]
    n = max(1, min(processes, len(todo) // MIN_FILES_PER_PROCESS))
    slices = [todo[i * len(todo) // n : (i + 1) * len(todo) // n] for i in range(n)]
    with ThreadPoolExecutor(max_workers=n) as pool:
        for part in pool.map(_exif_rows, slices):
            rows.update({r["media_id"]: r for r in part})
    return [rows[f["media_id"]] for f in files]


def _unreadable(path: str) -> str | None:
    try:
        with open(path, "rb"):
            return None
    except OSError as exc:
        return describe(exc)


def _exif_rows(files: Sequence[Mapping[str, Any]]) -> list[Row]:
    paths = [f["path"] for f in files]
    try:
        records = run_exiftool(paths)
        return [_row_from_record(f, r) for f, r in zip(files, records, strict=True)]
    except (subprocess.TimeoutExpired, json.JSONDecodeError, MediaError):
        pass
    rows = []
    for f in files:
        try:
            rows.append(_row_from_record(f, run_exiftool([f["path"]])[0]))
        except (subprocess.TimeoutExpired, json.JSONDecodeError, MediaError) as exc:
            rows.append(error_row(f, f"exiftool failed: {exc}"))
    return rows


def shard(job: Job) -> list[Row]:
    return exif_shard(job.files, processes=job.threads)
