"""Events: the archive's photos and videos grouped by when and where they were taken, with event ids that
survive reruns.

Every image and video of ``files`` (status ok) gets a time on one UTC timeline:

1. ``exif.datetime_original`` with its ``datetime_original_offset``: that instant (the time source ``exif``).
   Without an offset but with a GPS time (``exif.gps_datetime``, UTC; phones before they recorded offsets,
   GPS cameras), the offset is the difference between the two rounded to 15 minutes (zones are whole
   quarters), if the difference is within ``GPS_LAG_MINUTES`` of that (a fix a little older than the
   shutter): the instant the camera's own clock says, whether or not it was set to the local zone
   (``gps_offset``).
2. ``datetime_original`` without an offset (many cameras record none): the camera's local time. It takes
   the offset of the file with a recorded offset whose local time is nearest, if that is at most
   ``max_gap_hours`` away (a camera beside a phone that records its zone); else it is read as UTC, which is
   off by the zone's offset.
3. A video without ``datetime_original`` (Android phones, action cameras: no Apple creation date) but with
   ``exif.create_date``: that instant, read as UTC, as the QuickTime file format and ISO/IEC 14496-12 define
   the movie header's creation time (the time source ``create_date``). A camera that writes its local time
   there instead is off by its zone's offset, as in 2.
4. Neither (a scan, a screenshot, an exif error): the file's ``mtime`` (``files``, UTC) when
   ``mtime_fallback`` is on; else, and for a file without an mtime, the file is in no event.

Sorted by that time (ties by ``media_id``), each file joins the event of the file before it unless it was
taken more than ``max_gap_hours`` later, or it has a GPS position more than ``max_jump_km`` (great-circle
distance, haversine on a sphere of the Earth's mean radius) from the last file with a position in that
event. A position of exactly 0°, 0° (cameras without a fix write it), or one off the globe (a latitude
beyond ±90°, a longitude beyond ±180°), counts as none.

A camera whose clock is wrong cannot be corrected: nothing in the files says which clock is right. Its
photos sit on the timeline where its clock puts them. Wrong by less than ``max_gap_hours`` they still join
the event they belong to (at the wrong place in its order); wrong by more, they form an event of their own
at the wrong time, or join whatever event was happening then (and a GPS position far from that event's
splits it there).

An event's representative is its middle image by time (the ``(n - 1) // 2``-th of its n images in timeline
order), or its middle video when it has no image. With the ``places`` step enabled, its place is the most
frequent ``place`` (with its ``country``) among its files, ties to the one whose first file came first.

Stable ids: each run records which file was in which event (:data:`IDS_FILE`); the next run gives an event
the id of the earlier event it shares the most files with (``assign_ids``, as ``people`` does), and events
sharing no file with an earlier one ids never used before, in time order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..data.config import schema_defaults
from ..data.tables import STATUS_OK, Source, read_columns, write_part
from ..media.fileio import atomic_path
from .common import StepSettings, assign_ids

log = logging.getLogger(__name__)

IDS_FILE = "events_ids.parquet"
"""Which file was in which event in the last run, in ``results/events/`` (not a declared output, for the
reason given at ``people.IDS_FILE``)."""

EARTH_RADIUS_KM = 6371.0088
"""The IUGG mean radius."""
HOUR_US = 3_600_000_000
EXIF, GPS_OFFSET, NEARBY_OFFSET, NO_OFFSET = "exif", "gps_offset", "nearby_offset", "no_offset"
CREATE_DATE, MTIME = "create_date", "mtime"
"""How a file's time was found (module docstring, 1–4)."""
# How far from a quarter hour's multiple the camera time may be from its GPS time (the fix is usually a
# little older than the shutter: 6, 15 and 84 s in the camera files at hand) for the offset to be read from
# it. Small, because a fix an hour or more old passes as well if its lag is near a quarter hour's multiple.
GPS_LAG_MINUTES = 2
ZONE_STEP_MINUTES = 15


@dataclass(frozen=True)
@schema_defaults("events")
class Settings(StepSettings):
    max_gap_hours: float
    max_jump_km: float
    mtime_fallback: bool


@dataclass(frozen=True)
class Timeline:
    """The archive's dated images and videos in timeline order."""

    media_id: np.ndarray  # object (str)
    path: np.ndarray  # object (str)
    image: np.ndarray  # bool
    time_us: np.ndarray  # int64, µs since the epoch, UTC
    source: np.ndarray  # object (str): EXIF, NEARBY_OFFSET, NO_OFFSET or MTIME
    latitude: np.ndarray  # float64, NaN: no position
    longitude: np.ndarray


def offset_minutes(offset: str | None) -> float:
    """``+02:00`` → 120, ``-05:30`` → −330, ``Z`` → 0; NaN for none."""
    if not offset:
        return np.nan
    if offset == "Z":
        return 0.0
    sign = -1 if offset[0] == "-" else 1
    hours, minutes = offset[1:].split(":")
    return sign * (int(hours) * 60 + int(minutes))


def gps_offsets(local_us: np.ndarray, gps_us: np.ndarray) -> np.ndarray:
    """Per file, the UTC offset in minutes that its camera time ``local_us`` has against its GPS time
    ``gps_us`` (both µs since the epoch), in whole quarter hours; NaN where the two are not a quarter hour's
    multiple apart within ``GPS_LAG_MINUTES``, or more than 14 hours apart (no zone is)."""
    with np.errstate(invalid="ignore"):
        minutes = (local_us - gps_us) / 60_000_000
        offset = np.round(minutes / ZONE_STEP_MINUTES) * ZONE_STEP_MINUTES
        usable = (np.abs(minutes - offset) <= GPS_LAG_MINUTES) & (np.abs(offset) <= 14 * 60)
    return np.where(usable, offset, np.nan)


def _micros(column: pa.ChunkedArray) -> np.ndarray:
    """A timestamp column as int64 µs since the epoch (NaT as the int64 minimum; masked by the caller)."""
    return column.to_numpy(zero_copy_only=False).astype("datetime64[us]").astype(np.int64)


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return pc.fill_null(table.column(name), np.nan).to_numpy(zero_copy_only=False).astype(np.float64)


def borrow_offsets(local_us: np.ndarray, offset_min: np.ndarray, window_us: int) -> np.ndarray:
    """Each NaN of ``offset_min`` replaced by the offset of the file with a recorded one nearest in local
    time (``local_us``), if at most ``window_us`` away (ties: the earlier one); others stay NaN."""
    known = np.flatnonzero(~np.isnan(offset_min))
    missing = np.flatnonzero(np.isnan(offset_min))
    out = offset_min.copy()
    if not len(known) or not len(missing):
        return out
    order = known[np.argsort(local_us[known], kind="stable")]
    times = local_us[order]
    at = np.searchsorted(times, local_us[missing])
    before = np.clip(at - 1, 0, len(order) - 1)
    after = np.clip(at, 0, len(order) - 1)
    d_before = np.abs(local_us[missing] - times[before])
    d_after = np.abs(times[after] - local_us[missing])
    nearest = np.where(d_after < d_before, after, before)
    distance = np.minimum(d_before, d_after)
    near = distance <= window_us
    out[missing[near]] = offset_min[order[nearest[near]]]
    return out


def read_timeline(files: Source, exif: Source, settings: Settings) -> Timeline:
    """The images and videos of ``files`` joined with their ``exif`` row, timed (module docstring) and
    sorted by time, then ``media_id``."""
    f = read_columns("files", files, ["media_id", "path", "status", "kind", "mtime"])
    f = f.filter(
        pc.and_(pc.equal(f.column("status"), STATUS_OK), pc.is_in(f.column("kind"), pa.array(["image", "video"])))
    )
    columns = ["media_id", "status", "datetime_original", "datetime_original_offset", "create_date", "gps_latitude",
               "gps_longitude", "gps_datetime"]  # fmt: skip
    e = read_columns("exif", exif, columns)
    e = e.filter(pc.equal(e.column("status"), STATUS_OK)).drop_columns("status")
    joined = f.drop_columns("status").join(e, "media_id", join_type="left outer").sort_by("media_id")

    local = _micros(joined.column("datetime_original"))
    dated = joined.column("datetime_original").is_valid().to_numpy(zero_copy_only=False)
    offsets = {o: offset_minutes(o) for o in set(joined.column("datetime_original_offset").to_pylist())}
    offset_min = np.array([offsets[o] for o in joined.column("datetime_original_offset").to_pylist()], np.float64)
    offset_min[~dated] = np.nan
    from_gps = gps_offsets(local, _micros(joined.column("gps_datetime")))
    derived = dated & np.isnan(offset_min) & joined.column("gps_datetime").is_valid().to_numpy(zero_copy_only=False)
    derived &= ~np.isnan(from_gps)
    offset_min[derived] = from_gps[derived]
    recorded = ~np.isnan(offset_min)
    window = int(settings.max_gap_hours * HOUR_US)
    borrowed = borrow_offsets(np.where(dated, local, 0), np.where(dated, offset_min, np.nan), window)
    borrowed[~dated] = np.nan  # undated files neither lend nor borrow
    time_us = local - np.nan_to_num(borrowed).astype(np.int64) * 60_000_000
    source = np.where(recorded, EXIF, np.where(~np.isnan(borrowed), NEARBY_OFFSET, NO_OFFSET)).astype(object)
    source[derived] = GPS_OFFSET

    video = pc.equal(joined.column("kind"), "video").to_numpy(zero_copy_only=False)
    created = ~dated & video & joined.column("create_date").is_valid().to_numpy(zero_copy_only=False)
    time_us = np.where(created, _micros(joined.column("create_date")), time_us)
    source[created] = CREATE_DATE

    mtime_ok = joined.column("mtime").is_valid().to_numpy(zero_copy_only=False)
    fallback = ~dated & ~created & mtime_ok & settings.mtime_fallback
    time_us = np.where(fallback, _micros(joined.column("mtime")), time_us)
    source[fallback] = MTIME
    keep = dated | created | fallback

    lat, lon = _floats(joined, "gps_latitude"), _floats(joined, "gps_longitude")
    with np.errstate(invalid="ignore"):  # NaN compares False
        nowhere = (lat == 0) & (lon == 0) | ~(np.abs(lat) <= 90) | ~(np.abs(lon) <= 180)
    lat[nowhere] = lon[nowhere] = np.nan
    order = np.flatnonzero(keep)
    order = order[np.argsort(time_us[order], kind="stable")]  # stable: media_id order among equal times
    return Timeline(
        media_id=np.asarray(joined.column("media_id").to_pylist(), dtype=object)[order],
        path=np.asarray(joined.column("path").to_pylist(), dtype=object)[order],
        image=pc.equal(joined.column("kind"), "image").to_numpy(zero_copy_only=False)[order],
        time_us=time_us[order],
        source=source[order],
        latitude=lat[order],
        longitude=lon[order],
    )


def haversine_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Great-circle distance in km between points given in degrees."""
    p1, p2, dl = np.radians(lat1), np.radians(lat2), np.radians(lon2 - lon1)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def split(timeline: Timeline, settings: Settings) -> np.ndarray:
    """An event number per file of the timeline, from 0 in time order."""
    n = len(timeline.time_us)
    starts = np.zeros(n, dtype=bool)
    starts[:1] = True
    starts[1:] |= np.diff(timeline.time_us) > settings.max_gap_hours * HOUR_US
    # Jumps: each located file against the previous located file, when both are in one stretch of time.
    located = np.flatnonzero(~np.isnan(timeline.latitude))
    if len(located) > 1:
        stretch = np.cumsum(starts)
        prev, cur = located[:-1], located[1:]
        far = haversine_km(
            timeline.latitude[prev], timeline.longitude[prev], timeline.latitude[cur], timeline.longitude[cur]
        )
        starts[cur[(stretch[prev] == stretch[cur]) & (far > settings.max_jump_km)]] = True
    return np.cumsum(starts) - 1


def read_places(places: str | os.PathLike[str] | None) -> dict[str, tuple[str, str | None]]:
    """media_id → (place, country) of the ``places`` table's ok rows with a place; empty without the step."""
    if not places:
        return {}
    table = pq.read_table(places, columns=["media_id", "status", "place", "country"])
    table = table.filter(pc.and_(pc.equal(table.column("status"), STATUS_OK), table.column("place").is_valid()))
    pairs = zip(table.column("place").to_pylist(), table.column("country").to_pylist(), strict=True)
    return dict(zip(table.column("media_id").to_pylist(), pairs, strict=True))


def _modes(event: np.ndarray, code: np.ndarray, n_events: int) -> np.ndarray:
    """Per event, its files' most frequent ``code`` ≥ 0 (ties: the code whose first file came first), −1
    for an event without one. ``event`` is ascending; files are in timeline order."""
    out = np.full(n_events, -1, dtype=np.int64)
    pos = np.flatnonzero(code >= 0)
    if not len(pos):
        return out
    width = int(code.max()) + 1
    pairs, first, counts = np.unique(event[pos] * width + code[pos], return_index=True, return_counts=True)
    order = np.lexsort((pos[first], -counts, pairs // width))
    best = order[np.r_[True, np.diff(pairs[order] // width) != 0]]
    out[pairs[best] // width] = pairs[best] % width
    return out


def find_events(
    timeline: Timeline,
    settings: Settings,
    previous: Mapping[str, int],
    next_id: int,
    places: Mapping[str, tuple[str, str | None]] | None = None,
) -> tuple[pa.Table, int]:
    """The ``events`` table, in time order, and the next unused id. Built column by column (one pass of
    NumPy's ``reduceat`` per column, not a Python loop over events): an archive has tens of thousands."""
    labels = split(timeline, settings)
    bounds = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1], True]) if len(labels) else np.array([0])
    starts, ends = bounds[:-1], bounds[1:]
    n_events = len(starts)
    media = timeline.media_id.tolist()
    ids, next_id = assign_ids([media[a:b] for a, b in zip(starts, ends, strict=True)], previous, next_id)

    images = np.r_[np.flatnonzero(timeline.image), 0]  # padded: an index past the last image stays valid
    first_image = np.searchsorted(images[:-1], starts)
    n_images = np.searchsorted(images[:-1], ends) - first_image
    middle_image = images[np.minimum(first_image + (n_images - 1) // 2, len(images) - 1)]
    representative = np.where(n_images > 0, middle_image, starts + (ends - starts - 1) // 2)

    located = ~np.isnan(timeline.latitude)
    p, q = np.radians(np.nan_to_num(timeline.latitude)), np.radians(np.nan_to_num(timeline.longitude))
    unit = np.c_[np.cos(p) * np.cos(q), np.cos(p) * np.sin(q), np.sin(p)] * located[:, None]
    # The mean position is the direction of the sum of unit vectors, so an event across the 180th meridian
    # is not placed on the 0th.
    x, y, z = np.add.reduceat(unit, starts, axis=0).T if n_events else np.zeros((3, 0))
    n_located = np.add.reduceat(located, starts) if n_events else np.zeros(0, np.int64)
    undated = np.add.reduceat(timeline.source == MTIME, starts) if n_events else np.zeros(0, np.int64)

    found = [(places or {}).get(m) for m in media]
    labels_seen = list(dict.fromkeys(f for f in found if f is not None))
    code_of = {label: i for i, label in enumerate(labels_seen)}
    codes = np.array([code_of[f] if f is not None else -1 for f in found], dtype=np.int64)
    mode = _modes(labels, codes, n_events)
    place = [labels_seen[c] if c >= 0 else (None, None) for c in mode.tolist()]

    nowhere = n_located == 0
    table = pa.table(
        {
            "event_id": pa.array(ids, pa.int64()),
            "start": pa.array(timeline.time_us[starts], pa.timestamp("us", tz="UTC")),
            "end": pa.array(timeline.time_us[ends - 1], pa.timestamp("us", tz="UTC")),
            "size": pa.array(ends - starts, pa.int32()),
            "media_ids": pa.ListArray.from_arrays(pa.array(bounds, pa.int32()), pa.array(media, pa.string())),
            "undated": pa.array(undated, pa.int32()),
            "located": pa.array(n_located, pa.int32()),
            "latitude": pa.array(np.degrees(np.arctan2(z, np.hypot(x, y))), mask=nowhere),
            "longitude": pa.array(np.degrees(np.arctan2(y, x)), mask=nowhere),
            "place": pa.array([pl for pl, _ in place], pa.string()),
            "country": pa.array([c for _, c in place], pa.string()),
            "media_id": pa.array(timeline.media_id[representative], pa.string()),
            "path": pa.array(timeline.path[representative], pa.string()),
        }
    )
    log.info("%d files: %d events", len(media), n_events)
    return table, next_id


def read_ids(path: str | os.PathLike[str]) -> tuple[dict[str, int], int]:
    """The media_id → event id map of the last run, and its next unused id (1 when there was no run)."""
    if not Path(path).exists():
        return {}, 1
    table = pq.read_table(path)
    ids = dict(zip(table.column("media_id").to_pylist(), table.column("event_id").to_pylist(), strict=True))
    next_id = int((table.schema.metadata or {}).get(b"next_id", b"1"))
    return ids, max([next_id, *(i + 1 for i in ids.values())])


def write_ids(path: str | os.PathLike[str], events: pa.Table, next_id: int) -> None:
    members = events.column("media_ids").combine_chunks()
    table = pa.table(
        {"media_id": members.flatten(), "event_id": events.column("event_id").take(pc.list_parent_indices(members))},
        metadata={"next_id": str(next_id)},
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def events_table(
    files: Source,
    exif: Source,
    places: str | os.PathLike[str] | None,
    ids: str | os.PathLike[str],
    output: str | os.PathLike[str],
    settings: Settings,
) -> None:
    """The whole step: the consolidated tables in, the ``events`` table and the id file out."""
    previous, next_id = read_ids(ids)
    timeline = read_timeline(files, exif, settings)
    table, next_id = find_events(timeline, settings, previous, next_id, read_places(places))
    write_ids(ids, table, next_id)
    write_part("events", table, output)


def archive(inputs: Mapping[str, Any], output: str, settings: Settings, params: Mapping[str, Any]) -> None:
    """The rule's job: its ``files`` and ``exif`` tables, ``places`` when that step runs, the id file named by
    its ``ids`` param."""
    events_table(inputs["files"], inputs["exif"], inputs.get("places") or None, params["ids"], output, settings)
