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
from datetime import datetime
from pathlib import Path
from typing import Any

from .steps import MediaError, Row, describe
from .tables import STATUS_SKIPPED, base_row, error_row

EXIFTOOL = os.environ.get("CL_ML_TOOLS_EXIFTOOL", "exiftool")
TIMEOUT_PER_FILE_S = 30
# Below this many files per process, a second exiftool start-up costs more than it saves.
MIN_FILES_PER_PROCESS = 20

# Where each typed column is read from, first match wins (keys as ``exiftool -G`` names them).
SOURCES: dict[str, tuple[str, ...]] = {
    "make": ("EXIF:Make", "QuickTime:Make", "XMP:Make", "MakerNotes:Make"),
    "model": ("EXIF:Model", "QuickTime:Model", "XMP:Model", "MakerNotes:Model"),
    "lens": ("EXIF:LensModel", "XMP:LensModel", "Composite:LensID", "MakerNotes:LensModel", "XMP:Lens"),
    "datetime_original": ("EXIF:DateTimeOriginal", "XMP:DateTimeOriginal", "QuickTime:CreationDate",
                          "QuickTime:DateTimeOriginal"),
    "datetime_original_offset": ("EXIF:OffsetTimeOriginal", "EXIF:OffsetTime"),
    "create_date": ("EXIF:CreateDate", "QuickTime:CreateDate", "XMP:CreateDate"),
    "width": ("File:ImageWidth", "EXIF:ExifImageWidth", "QuickTime:ImageWidth", "PNG:ImageWidth",
              "RIFF:ImageWidth", "GIF:ImageWidth", "EXIF:ImageWidth", "Composite:ImageWidth"),
    "height": ("File:ImageHeight", "EXIF:ExifImageHeight", "QuickTime:ImageHeight", "PNG:ImageHeight",
               "RIFF:ImageHeight", "GIF:ImageHeight", "EXIF:ImageHeight", "Composite:ImageHeight"),
    "orientation": ("EXIF:Orientation", "XMP:Orientation"),
    "iso": ("EXIF:ISO", "Composite:ISO", "MakerNotes:ISO", "XMP:ISO"),
    "f_number": ("EXIF:FNumber", "Composite:Aperture", "XMP:FNumber"),
    "exposure_time": ("EXIF:ExposureTime", "Composite:ShutterSpeed", "XMP:ExposureTime"),
    "focal_length": ("EXIF:FocalLength", "XMP:FocalLength"),
    # EXIF's own GPS values are unsigned (the sign lives in the Ref tags); the Composite ones are signed.
    "gps_latitude": ("Composite:GPSLatitude", "XMP:GPSLatitude"),
    "gps_longitude": ("Composite:GPSLongitude", "XMP:GPSLongitude"),
    "gps_altitude": ("Composite:GPSAltitude", "XMP:GPSAltitude"),
    "software": ("EXIF:Software", "XMP:CreatorTool", "QuickTime:Software", "QuickTime:Encoder"),
    "duration": ("QuickTime:Duration", "Composite:Duration", "Matroska:Duration", "RIFF:Duration"),
    "mime": ("File:MIMEType",),
}  # fmt: skip
TEXT = {"make", "model", "lens", "datetime_original_offset", "software", "mime"}
INTEGER = {"width", "height", "orientation", "iso"}
FLOAT = {"f_number", "exposure_time", "focal_length", "gps_latitude", "gps_longitude", "gps_altitude", "duration"}
DATES = {"datetime_original", "create_date"}
_DROPPED = {"SourceFile", "ExifTool:ExifToolVersion"}
_DATE_RE = re.compile(r"^(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})(\.\d+)?")


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


def _first(tags: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        value = tags.get(key)
        if value not in (None, ""):
            return value
    return None


def typed_columns(tags: Mapping[str, Any]) -> dict[str, Any]:
    """The table's typed columns from one exiftool ``-j -n -G`` record."""
    out: dict[str, Any] = {}
    for column, keys in SOURCES.items():
        value = _first(tags, keys)
        if column in TEXT:
            out[column] = str(value).strip() if value is not None else None
        elif column in INTEGER:
            number = _number(value)
            out[column] = int(number) if number is not None and abs(number) < 2**31 else None
        elif column in FLOAT:
            out[column] = _number(value)
        elif column in DATES:
            out[column], offset = parse_date(value)
            if column == "datetime_original" and offset and not out.get("datetime_original_offset"):
                out["datetime_original_offset"] = offset
    if out.get("orientation") is not None and not 1 <= out["orientation"] <= 8:
        out["orientation"] = None
    return out


def _link_dir_entries(paths: Sequence[str], tmp: Path) -> list[str]:
    links = []
    for i, path in enumerate(paths):
        ext = re.sub(r"[^A-Za-z0-9]", "", os.path.splitext(path)[1])[:10]
        link = tmp / (f"{i:07d}.{ext}" if ext else f"{i:07d}")
        os.symlink(os.path.abspath(path), link)
        links.append(str(link))
    return links


def run_exiftool(paths: Sequence[str]) -> list[dict[str, Any] | None]:
    """One exiftool process for all ``paths``; one tag dict (or None when exiftool said nothing) per path."""
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
                "-n",
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
        records = json.loads(proc.stdout.decode("utf-8", "replace"))
    by_link = {rec.get("SourceFile"): rec for rec in records}
    return [by_link.get(link) for link in links]


def _row_from_record(file_row: Mapping[str, Any], record: dict[str, Any] | None) -> Row:
    if record is None:
        return error_row(file_row, "exiftool returned no metadata for this file")
    tags = {k: v for k, v in record.items() if k not in _DROPPED}
    error = tags.get("ExifTool:Error")
    row: Row = {
        **base_row(file_row),
        **typed_columns(tags),
        "raw": json.dumps(tags, ensure_ascii=False, sort_keys=True),
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
