"""The events step on a synthetic timeline: time and peak memory of a first run and of a rerun (ids kept).

    .venv/bin/python benchmarks/bench_events.py --work /tmp/events --files 1000000

The tables are written once into ``--work`` with the real schemas, as 100 parts each (``bench_global``'s
writer), and reused by later calls with the same size: ``files`` (images, 3 % videos), ``exif`` and a
``places`` table as that step would write it (``media_id``, ``status``, ``place``, ``country``; the place
names the planted event, so that the events found can be checked against the planted ones). The files
come from made-up events one after another, each 8 h plus an exponential 12 h after the one before, each
at a random place on Earth in a random zone (UTC−8 to UTC+9): sizes log-normal (median 33, mean about 68,
at most 5000), photos an exponential 10 minutes apart, 70 % with a GPS position within about 2 km of the
event's centre, 60 % with a recorded UTC offset, 30 % with camera time only, 10 % without a date (timed by
their mtime, 2 s after the photo). Each run is ``events.events_table`` on the table paths, default
settings, in a fresh process with ``--threads`` BLAS/OpenMP threads; printed: events planted and found,
wall seconds (without interpreter start-up), CPU seconds, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bench_global import _common, _distinct, _write

START_US = int(1.4e15)  # 2014-05-13


def make(folder: Path, n: int, seed: int = 3) -> int:
    """The tables; returns how many events were planted."""
    rng = np.random.default_rng(seed)
    sizes = np.minimum(5000, np.maximum(1, rng.lognormal(3.5, 1.2, n).astype(np.int64)))
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), n) + 1]
    sizes[-1] -= sizes.sum() - n
    event = np.repeat(np.arange(len(sizes)), sizes)
    firsts = np.r_[0, np.cumsum(sizes)[:-1]]
    gaps = rng.exponential(600e6, n).astype(np.int64)
    gaps[firsts] = 0
    within = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[firsts], sizes)  # time since the event's first photo
    # Events one after another, each starting 8 h plus an exponential 12 h after the last one ended.
    duration = within[np.cumsum(sizes) - 1]
    pause = (8 * 3600e6 + rng.exponential(12 * 3600e6, len(sizes))).astype(np.int64)
    starts = START_US + np.r_[0, np.cumsum(duration + pause)[:-1]]
    utc = starts[event] + within
    offset_min = rng.choice(np.arange(-8, 10) * 60, len(sizes))[event]
    local = utc + offset_min * 60_000_000
    kind = rng.random(n)
    recorded, dated = kind < 0.6, kind < 0.9
    centre = np.c_[rng.uniform(-50, 65, len(sizes)), rng.uniform(-180, 180, len(sizes))][event]
    located = rng.random(n) < 0.7
    lat = np.where(located, centre[:, 0] + rng.normal(0, 0.01, n), np.nan)
    lon = np.where(located, centre[:, 1] + rng.normal(0, 0.01, n), np.nan)

    media = _distinct(rng, n)
    common = _common(media)
    text = {m: f"{'+' if m >= 0 else '-'}{abs(m) // 60:02d}:00" for m in np.unique(offset_min).tolist()}
    _write("files", folder / "files.parquet", {
        **common, "kind": pa.array(np.where(rng.random(n) < 0.03, "video", "image")),
        "mtime": pa.array((utc + 2_000_000) * 1000, pa.timestamp("ns", tz="UTC")),
    })  # fmt: skip
    _write("exif", folder / "exif.parquet", {
        **common,
        "datetime_original": pa.array(local, pa.timestamp("us"), mask=~dated),
        "datetime_original_offset": pa.array([text[m] for m in offset_min.tolist()], mask=~recorded),
        "gps_latitude": pa.array(lat, from_pandas=True), "gps_longitude": pa.array(lon, from_pandas=True),
    })  # fmt: skip
    places = pa.table({
        "media_id": common["media_id"], "status": common["status"],
        "place": pa.array([f"planted {e}" for e in event.tolist()]), "country": pa.array(np.full(n, "Xland")),
    })  # fmt: skip
    step = -(-n // 100)
    (folder / "places.parquet").mkdir(parents=True, exist_ok=True)
    for p in range(100):
        pq.write_table(places.slice(p * step, step), folder / "places.parquet" / f"{p:04d}.parquet")
    return len(sizes)


def run(work: Path) -> None:
    from cl_ml_tools.steps import events

    t = work / "tables"
    start = time.perf_counter()
    events.events_table(t / "files.parquet", t / "exif.parquet", t / "places.parquet", work / events.IDS_FILE,
                        work / "events.parquet", events.Settings())  # fmt: skip
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "events": pq.read_metadata(work / "events.parquet").num_rows}))


def check(work: Path) -> str:
    """How the events found match the planted ones, the place naming the planted event of each file."""
    import pyarrow.compute as pc

    found = pq.read_table(work / "events.parquet", columns=["event_id", "media_ids"])
    members = found.column("media_ids").combine_chunks()
    t = work / "tables"
    places = pq.read_table(t / "places.parquet", columns=["media_id", "place"])
    planted = places.column("place").take(pc.index_in(members.flatten(), places.column("media_id")))
    pairs = pa.table({"found": pc.list_parent_indices(members), "planted": planted}).group_by(["found", "planted"])
    pairs = pairs.aggregate([]).to_pandas()
    mixed = int((pairs.groupby("found").size() > 1).sum())
    split = int((pairs.groupby("planted").size() > 1).sum())
    return f"events found holding files of two or more planted events: {mixed:,}; planted events split: {split:,}"


def measure(work: Path, threads: int) -> dict[str, float]:
    env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    proc = subprocess.Popen([sys.executable, __file__, "--work", str(work), "--run"], env=env, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"events failed ({status})")
    return {
        **json.loads(out.splitlines()[-1]),
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_gb": usage.ru_maxrss / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--run", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        run(args.work)
        return
    marker = args.work / "made.json"
    if not marker.exists() or json.loads(marker.read_text())["files"] != args.files:
        start = time.perf_counter()
        planted = make(args.work / "tables", args.files)
        marker.write_text(json.dumps({"files": args.files, "planted": planted}))
        print(f"tables written in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(f"events planted: {json.loads(marker.read_text())['planted']:,}")
    (args.work / "events_ids.parquet").unlink(missing_ok=True)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print("| run | files | events | seconds | µs per file | CPU seconds | peak RSS (GB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in ("first", "rerun, ids kept"):
        m = measure(args.work, args.threads)
        per = m["seconds"] / args.files * 1e6
        print(f"| {name} | {args.files:,} | {m['events']:,} | {m['seconds']:.1f} | {per:.1f} | {m['cpu']:.0f} | "
              f"{m['rss_gb']:.2f} |", flush=True)  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(check(args.work))


if __name__ == "__main__":
    main()
