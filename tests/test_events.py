"""Events: synthetic timelines (a day trip, a two-week journey, photos without dates, two cameras whose
clocks disagree) built as ``files`` and ``exif`` rows, grouped by the step and compared with groups written
out by hand; event ids across reruns; the distance against a geodesic library."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from geographiclib.geodesic import Geodesic

from cl_ml_tools.data import tables
from cl_ml_tools.steps import events, exif

SETTINGS = events.Settings()
COPIED = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)  # the mtime of every file: the day the archive was copied

# Places, (latitude, longitude): a few km apart within a town, hundreds between towns.
HOME = (48.137, 11.575)  # Munich
COMO, BELLAGIO = (45.808, 9.085), (45.986, 9.261)  # 24 km apart: one day trip
ROME, FLORENCE, VENICE, VIENNA = (41.902, 12.496), (43.769, 11.256), (45.440, 12.316), (48.208, 16.373)


class Archive:
    """``files`` and ``exif`` rows of a made-up archive, each file named by the test."""

    def __init__(self) -> None:
        self.files: list[dict[str, Any]] = []
        self.exif: list[dict[str, Any]] = []

    def add(
        self,
        name: str,
        local: str | None,
        offset: str | None = None,
        at: tuple[float, float] | None = None,
        kind: str = "image",
        mtime: datetime | None = COPIED,
        created: datetime | None = None,
        gps_time: datetime | None = None,
    ) -> None:
        """A file taken at ``local`` (camera time, ISO format) with EXIF offset ``offset`` and GPS ``at``;
        ``created`` and ``gps_time``: the exif table's ``create_date`` and ``gps_datetime``."""
        self.files.append({"media_id": name, "path": f"/archive/{name}", "status": "ok", "kind": kind, "mtime": mtime})
        self.exif.append(
            {
                "media_id": name,
                "status": "ok",
                "datetime_original": datetime.fromisoformat(local) if local else None,
                "datetime_original_offset": offset,
                "create_date": created,
                "gps_datetime": gps_time,
                "gps_latitude": at[0] if at else None,
                "gps_longitude": at[1] if at else None,
            }
        )

    def events(self, settings: events.Settings = SETTINGS, **kw: Any) -> list[dict[str, Any]]:
        table, _ = events.find_events(events.read_timeline(self.files, self.exif, settings), settings, {}, 1, **kw)
        return table.to_pylist()


def groups(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [r["media_ids"] for r in rows]


def utc(text: str) -> datetime:
    """An ISO time with its offset in UTC, by the standard library."""
    return datetime.fromisoformat(text).astimezone(UTC)


def day_trip() -> Archive:
    """The evening before at home, a Saturday at Lake Como (with a three-hour lunch without photos), the
    evening back home; a phone recording its zone and position."""
    a = Archive()
    a.add("home-fri-1", "2024-05-03T19:30:00", "+02:00", HOME)
    a.add("home-fri-2", "2024-05-03T20:10:00", "+02:00", HOME)
    for name, t, where in [
        ("como-1", "08:55", COMO), ("como-2", "09:40", COMO), ("como-3", "10:05", (45.812, 9.080)),
        ("bellagio-1", "13:20", BELLAGIO), ("bellagio-2", "14:45", BELLAGIO), ("como-4", "17:30", COMO),
    ]:  # fmt: skip
        a.add(name, f"2024-05-04T{t}:00", "+02:00", where)
    a.add("home-sat", "2024-05-04T21:45:00", "+02:00", HOME)  # 4 h later, 350 km away: not the trip
    return a


def test_a_day_trip_is_one_event() -> None:
    rows = day_trip().events()
    assert groups(rows) == [
        ["home-fri-1", "home-fri-2"],
        ["como-1", "como-2", "como-3", "bellagio-1", "bellagio-2", "como-4"],
        ["home-sat"],
    ]
    trip = rows[1]
    assert (trip["start"], trip["end"]) == (utc("2024-05-04T08:55:00+02:00"), utc("2024-05-04T17:30:00+02:00"))
    assert trip["size"] == trip["located"] == 6 and trip["undated"] == 0
    assert trip["media_id"] == "como-3"  # the middle one of six images by time: the third
    assert [r["event_id"] for r in rows] == [1, 2, 3]  # a first run numbers events in time order


def journey() -> tuple[Archive, list[str]]:
    """Two weeks in Italy and Austria, photos from 10:00 to 18:00 every day; day 4 starts in Rome and goes
    on in Florence, day 7 is a train to Venice (photos on the way, each within 100 km of the one before),
    day 10 a flight to Vienna. Returns the archive and each file's stop as the traveller would name it."""
    plan = {1: ROME, 2: ROME, 3: ROME, 5: FLORENCE, 6: FLORENCE, 8: VENICE, 9: VENICE}
    plan |= {d: VIENNA for d in range(11, 15)}
    city = {ROME: "rome", FLORENCE: "florence", VENICE: "venice", VIENNA: "vienna"}
    bologna, ferrara, padua = (44.494, 11.343), (44.838, 11.620), (45.406, 11.877)
    a, stop = Archive(), []
    for day in range(1, 15):
        date = f"2024-09-{day:02d}"
        if day in plan:
            shots = [(t, plan[day], city[plan[day]]) for t in ("10:00", "13:00", "18:00")]
        elif day == 4:
            shots = [("09:00", ROME, "rome"), ("10:30", ROME, "rome"), ("15:00", FLORENCE, "florence"),
                     ("18:00", FLORENCE, "florence")]  # fmt: skip
        elif day == 7:
            shots = [("09:00", FLORENCE, "train"), ("11:00", bologna, "train"), ("12:30", ferrara, "train"),
                     ("14:00", padua, "train"), ("16:00", VENICE, "train")]  # fmt: skip
        else:
            shots = [("09:00", VENICE, "venice"), ("16:00", VIENNA, "vienna"), ("18:00", VIENNA, "vienna")]
        for i, (t, where, name) in enumerate(shots):
            a.add(f"{date}-{i}", f"{date}T{t}:00", "+02:00", where)
            stop.append(f"{day}-{name}")
    return a, stop


def test_a_journey_is_an_event_per_day_and_stop() -> None:
    a, stop = journey()
    expected = ["1-rome", "2-rome", "3-rome", "4-rome", "4-florence", "5-florence", "6-florence", "7-train",
                "8-venice", "9-venice", "10-venice", "10-vienna", *(f"{d}-vienna" for d in range(11, 15))]  # fmt: skip
    names = [f["media_id"] for f in a.files]
    assert groups(a.events()) == [[n for n, s in zip(names, stop, strict=True) if s == e] for e in expected]


def test_with_a_day_between_splits_a_journey_is_its_stops() -> None:
    """Nights no longer split: only the jumps of more than 100 km do. The train ride moves less than that
    between photos, so Florence, the ride and Venice are one event."""
    a, stop = journey()
    where = dict(zip((f["media_id"] for f in a.files), (s.split("-")[1] for s in stop), strict=True))
    rows = a.events(replace(SETTINGS, max_gap_hours=24))
    assert [{where[m] for m in g} for g in groups(rows)] == [{"rome"}, {"florence", "train", "venice"}, {"vienna"}]
    assert sum(r["size"] for r in rows) == len(stop)


def test_photos_without_dates_take_their_mtime_or_no_event() -> None:
    a = day_trip()
    a.add("scan", None, mtime=datetime(2024, 5, 4, 12, 0, tzinfo=UTC))  # 14:00 at Como: during the trip
    a.add("screenshot", None, mtime=COPIED)
    a.add("no-mtime", None, mtime=None)
    a.add("notes", "2024-05-04T10:00:00", "+02:00", kind="other")  # not a photo or a video
    names = [f["media_id"] for f in a.files]
    a.exif[names.index("como-2")] = {"media_id": "como-2", "status": "error"}
    rows = a.events()
    trip = ["como-1", "como-3", "bellagio-1", "scan", "bellagio-2", "como-4"]
    # como-2's exif row failed: its mtime (the copy) times it, so it leaves the trip for the copy's event.
    assert groups(rows) == [["home-fri-1", "home-fri-2"], trip, ["home-sat"], ["como-2", "screenshot"]]
    assert [r["undated"] for r in rows] == [0, 1, 0, 2]
    assert rows[3]["start"] == rows[3]["end"] == COPIED
    without = a.events(replace(SETTINGS, mtime_fallback=False))
    assert groups(without) == [["home-fri-1", "home-fri-2"], [m for m in trip if m != "scan"], ["home-sat"]]


def test_a_video_without_a_taken_date_is_timed_by_its_utc_creation_time(tmp_path: Path) -> None:
    """An Android-style MP4 names no taken date, only the movie header's creation time, UTC by the QuickTime
    and ISO base media file formats: made here by ffmpeg, read by the exif step (exiftool), and timed at the
    instant ffprobe reads; a photo's CreateDate is no such thing and leaves it to the mtime."""
    video = tmp_path / "como.mp4"
    made = "creation_time=2024-05-04T10:30:00Z"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=s=160x120:d=1",
                    "-c:v", "libx264", "-metadata", made, str(video)], check=True)  # fmt: skip
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format_tags=creation_time", "-of", "json",
                            str(video)], capture_output=True, check=True).stdout  # fmt: skip
    instant = utc(json.loads(probe)["format"]["tags"]["creation_time"].replace("Z", "+00:00"))
    [row] = exif.exif_shard([{"media_id": "v", "input": "i", "path": str(video), "kind": "video", "status": "ok"}])
    assert row["status"] == "ok" and row["datetime_original"] is None, row
    a = day_trip()
    a.add("como-video", None, kind="video", created=row["create_date"])  # 12:30 at Como
    a.add("scan", None, created=datetime(2024, 5, 4, 10, 30))  # a photo: not a UTC creation time
    rows = a.events()
    trip = ["como-1", "como-2", "como-3", "como-video", "bellagio-1", "bellagio-2", "como-4"]
    assert groups(rows) == [["home-fri-1", "home-fri-2"], trip, ["home-sat"], ["scan"]]
    assert [r["undated"] for r in rows] == [0, 0, 0, 1]
    timeline = events.read_timeline(a.files, a.exif, SETTINGS)
    [at] = timeline.time_us[timeline.media_id == "como-video"]
    assert at == (instant - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


CAMERAS = Path(__file__).parent / "data" / "cameras"


def test_photos_without_an_offset_take_it_from_their_gps_time() -> None:
    """Real camera files without OffsetTimeOriginal but with EXIF's GPS time (UTC): an iPhone 7 in England,
    a Ricoh in Spain whose clock was an hour behind the zone's summer time, a GoPro in New York. Each is timed
    at its camera time less a whole quarter hour, within seconds of its GPS time as exifread reads it."""
    import exifread

    names = ["exiftool_Apple.jpg", "exiftool_Ricoh2.jpg", "exiftool_GoPro.jpg"]
    files = [{"media_id": n, "input": "i", "path": str(CAMERAS / n), "kind": "image", "status": "ok"} for n in names]
    rows = exif.exif_shard(files)
    assert all(r["datetime_original_offset"] is None and r["gps_datetime"] for r in rows), rows
    timeline = events.read_timeline([{**f, "mtime": COPIED} for f in files], rows, SETTINGS)
    for name in names:
        with open(CAMERAS / name, "rb") as fh:
            tags = exifread.process_file(fh, details=False)
        hours, minutes, seconds = (float(v.num) / float(v.den) for v in tags["GPS GPSTimeStamp"].values)
        day = datetime.strptime(str(tags["GPS GPSDate"]), "%Y:%m:%d").replace(tzinfo=UTC)
        gps = day + timedelta(hours=hours, minutes=minutes, seconds=seconds)
        taken = datetime.strptime(str(tags["EXIF DateTimeOriginal"]), "%Y:%m:%d %H:%M:%S").replace(tzinfo=UTC)
        if subsec := str(tags.get("EXIF SubSecTimeOriginal", "")).strip():
            taken += timedelta(seconds=float(f"0.{subsec}"))
        [i] = np.flatnonzero(timeline.media_id == name)
        at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(timeline.time_us[i]))
        assert timeline.source[i] == events.GPS_OFFSET
        assert (taken - at) % timedelta(minutes=15) == timedelta(0)  # a zone's offset
        assert abs(at - gps) <= timedelta(seconds=90), (name, at, gps)  # the fix's lag: 6, 84 and 15 s


def test_a_gps_offset_lends_to_a_camera_beside_it_and_a_stale_fix_gives_none() -> None:
    a = Archive()
    # A phone from before offsets were recorded, at Como in summer time (UTC+2), its fix 40 s old ...
    a.add("phone", "2024-05-04T09:00:00", at=COMO, gps_time=datetime(2024, 5, 4, 6, 59, 20))
    # ... a camera beside it with neither offset nor GPS, and a photo whose last fix is 20 minutes old.
    a.add("camera", "2024-05-04T09:30:00")
    a.add("stale", "2024-05-04T12:00:00", gps_time=datetime(2024, 5, 4, 9, 40))
    timeline = events.read_timeline(a.files, a.exif, SETTINGS)
    by_name = dict(zip(timeline.media_id, zip(timeline.source, timeline.time_us, strict=True), strict=True))
    assert by_name["phone"] == (events.GPS_OFFSET, utc("2024-05-04T09:00:00+02:00").timestamp() * 1e6)
    assert by_name["camera"] == (events.NEARBY_OFFSET, utc("2024-05-04T09:30:00+02:00").timestamp() * 1e6)
    assert by_name["stale"] == (events.NEARBY_OFFSET, utc("2024-05-04T12:00:00+02:00").timestamp() * 1e6)


def test_two_cameras_the_phones_zone_and_a_wrong_clock() -> None:
    """A phone records Tokyo's +09:00, a camera only its local time: the camera borrows the phone's offset.
    A second camera's clock is an hour fast (one event, out of order); a third's a day slow (its own event)."""
    a = Archive()
    for name, t in [("phone-1", "10:00"), ("phone-2", "11:00"), ("phone-3", "16:00")]:
        a.add(name, f"2024-10-12T{t}:00", "+09:00", (35.68, 139.76))
    for name, t in [("camera-1", "10:30"), ("camera-2", "15:30")]:
        a.add(name, f"2024-10-12T{t}:00")  # no offset, no GPS
    a.add("fast-1", "2024-10-12T11:40:00")  # taken 10:40: one hour fast
    a.add("slow-1", "2024-10-11T12:00:00")  # taken 12:00 on the 12th: a day slow
    timeline = events.read_timeline(a.files, a.exif, SETTINGS)
    time = {m: datetime.fromtimestamp(t / 1e6, UTC) for m, t in zip(timeline.media_id, timeline.time_us, strict=True)}
    source = dict(zip(timeline.media_id, timeline.source, strict=True))
    assert time["camera-1"] == utc("2024-10-12T10:30:00+09:00") and source["camera-1"] == "nearby_offset"
    # A day away from any recorded offset: read as UTC.
    assert time["slow-1"] == utc("2024-10-11T12:00:00+00:00") and source["slow-1"] == "no_offset"
    rows = a.events()
    assert groups(rows) == [
        ["slow-1"],
        ["phone-1", "camera-1", "phone-2", "fast-1", "camera-2", "phone-3"],
    ]
    assert rows[1]["located"] == 3 and rows[1]["latitude"] == pytest.approx(35.68)


def test_without_any_recorded_offset_camera_time_is_read_as_utc() -> None:
    a = Archive()
    a.add("a", "2024-10-12T10:00:00")
    a.add("b", "2024-10-12T23:00:00")
    rows = a.events()
    assert groups(rows) == [["a"], ["b"]]
    assert rows[0]["start"] == utc("2024-10-12T10:00:00+00:00")


def test_the_representative_is_the_middle_image_and_the_place_the_most_frequent() -> None:
    a = Archive()
    for i, kind in enumerate(["video", "video", "image", "video", "image", "image", "image"]):
        a.add(f"f{i}", f"2024-06-01T{10 + i}:00:00", "Z", kind=kind)
    for i in range(3):
        a.add(f"v{i}", f"2024-06-03T1{i}:00:00", "Z", kind="video")
    places = {"f0": ("Villeurbanne", "France"), "f1": ("Lyon", "France"), "f3": ("Lyon", "France"),
              "f4": ("Villeurbanne", "France"), "v0": ("Gent", "Belgium"), "v1": ("Brugge", "Belgium")}  # fmt: skip
    rows = a.events(places=places)
    # Images f2, f4, f5, f6: the second of four (the middle file, f3, is a video). Videos only: the second of
    # three.
    assert [r["media_id"] for r in rows] == ["f4", "v1"]
    assert [r["path"] for r in rows] == ["/archive/f4", "/archive/v1"]
    # Villeurbanne and Lyon twice each: Villeurbanne was seen first. Gent and Brugge once: Gent first.
    assert [(r["place"], r["country"]) for r in rows] == [("Villeurbanne", "France"), ("Gent", "Belgium")]
    assert [(r["place"], r["latitude"]) for r in a.events()] == [(None, None), (None, None)]


@pytest.mark.parametrize(
    ("p", "q"),
    [(ROME, FLORENCE), (VENICE, VIENNA), (HOME, COMO), ((0.0, 179.9), (0.0, -179.9)), ((89.9, 0.0), (89.9, 180.0))],
)
def test_distance_agrees_with_geographiclib_within_the_spheres_error(p: tuple, q: tuple) -> None:
    """The haversine distance on a sphere against the ellipsoid's geodesic (Karney's algorithm, WGS84):
    a sphere of the mean radius is off by at most about 0.5 %."""
    km = float(events.haversine_km(p[0], p[1], q[0], q[1]))
    assert km == pytest.approx(Geodesic.WGS84.Inverse(*p, *q)["s12"] / 1000, rel=0.006)


def test_0_0_is_no_position_and_the_centre_crosses_the_date_line() -> None:
    a = Archive()
    a.add("fiji-1", "2024-02-01T10:00:00", "+12:00", (-17.0, 179.9))
    a.add("nowhere", "2024-02-01T10:30:00", "+12:00", (0.0, 0.0))  # would be a jump of 19 000 km
    a.add("fiji-2", "2024-02-01T11:00:00", "+12:00", (-17.0, -179.9))
    a.add("off-the-globe", "2024-02-01T11:10:00", "+12:00", (-97.0, 179.9))
    a.add("fiji-3", "2024-02-01T11:20:00", "+12:00", (-17.0, 180.0))
    a.add("off-the-globe-2", "2024-02-01T11:30:00", "+12:00", (-17.0, 379.9))
    (row,) = a.events()
    assert row["located"] == 3
    assert abs(row["longitude"]) == pytest.approx(180.0) and row["latitude"] == pytest.approx(-17.0, abs=1e-3)


def test_ids_survive_added_photos_and_new_events(tmp_path: Path) -> None:
    """The whole step on Parquet tables, twice: photos added to the trip and a new event; the first run's
    events keep their ids, the new event gets the next one."""
    results = tmp_path / "results"
    output, ids = results / "tables" / "events.parquet", results / "events" / events.IDS_FILE
    ids.parent.mkdir(parents=True)

    def run(a: Archive) -> pd.DataFrame:
        for name, rows in (("files", a.files), ("exif", a.exif)):
            tables.write_part(name, [{"input": "t", "path": "/x", "error": None, **r} for r in rows],
                              tmp_path / f"{name}.parquet")  # fmt: skip
        events.events_table(tmp_path / "files.parquet", tmp_path / "exif.parquet", None, ids, output, SETTINGS)
        return tables.load("events", results).set_index("event_id")

    first = run(day_trip())
    assert list(first.index) == [1, 2, 3]
    a = day_trip()
    # Photos of earlier days arrive (a scanned album): a new event *before* the others, then more of the trip.
    a.add("album-1", "2023-12-24T18:00:00", "+01:00")
    a.add("album-2", "2023-12-24T19:00:00", "+01:00")
    a.add("como-late", "2024-05-04T18:30:00", "+02:00", COMO)
    a.files.reverse()  # and the tables list files in another order
    a.exif.reverse()
    second = run(a)
    assert list(second.index) == [4, 1, 2, 3]  # in time order; the new event takes the next id
    for event_id in (1, 3):
        assert list(second.media_ids[event_id]) == list(first.media_ids[event_id])
    assert list(second.media_ids[2]) == [*first.media_ids[2], "como-late"]
    assert list(second.media_ids[4]) == ["album-1", "album-2"]
    assert second.start[2] == pd.Timestamp("2024-05-04T08:55:00+02:00")
    # The trip split by a stricter gap: its larger part keeps id 2, the smaller gets a fresh one.
    again = events.find_events(events.read_timeline(a.files, a.exif, replace(SETTINGS, max_gap_hours=3)),
                               replace(SETTINGS, max_gap_hours=3), *events.read_ids(ids))[0].to_pylist()  # fmt: skip
    parts = {r["event_id"]: r["media_ids"] for r in again}
    assert parts[2] == ["bellagio-1", "bellagio-2", "como-4", "como-late"]
    assert parts[5] == ["como-1", "como-2", "como-3"] and set(parts) == {1, 2, 3, 4, 5}


def test_an_archive_without_photos_has_no_events(tmp_path: Path) -> None:
    a = Archive()
    a.add("notes", "2024-05-04T10:00:00", "+02:00", kind="other")
    assert a.events() == []
    table, next_id = events.find_events(events.read_timeline([], [], SETTINGS), SETTINGS, {}, 1)
    assert table.num_rows == 0 and next_id == 1


def test_offsets_parse_as_the_standard_library_reads_them() -> None:
    for text in ("+02:00", "-05:30", "+12:45", "Z", "+00:00", "-00:00"):
        want = datetime.fromisoformat(f"2024-01-01T00:00:00{text}").utcoffset()
        assert timedelta(minutes=events.offset_minutes(text)) == want


def test_the_place_comes_from_the_places_tables_ok_rows(tmp_path: Path) -> None:
    """The places step's table as that step writes it (its columns beside these are not read): error rows
    and rows without a place are left out."""
    a = day_trip()
    rows = [("como-1", "ok", "Como", "Italy"), ("como-2", "error", "Bellagio", "Italy"),
            ("como-3", "ok", None, None), ("bellagio-1", "ok", "Bellagio", "Italy")]  # fmt: skip
    columns = dict(zip(("media_id", "status", "place", "country"), map(list, zip(*rows, strict=True)), strict=True))
    pq.write_table(pa.table(columns), tmp_path / "places.parquet")
    places = events.read_places(tmp_path / "places.parquet")
    assert places == {"como-1": ("Como", "Italy"), "bellagio-1": ("Bellagio", "Italy")}
    assert [r["place"] for r in a.events(places=places)] == [None, "Como", None]
    assert events.read_places(None) == {}
