"""The two whole-archive steps, ``duplicates`` and ``people``, on synthetic tables: time, peak memory, and
the groups of the faiss index against those of the exact search.

    .venv/bin/python benchmarks/bench_global.py --work /tmp/global --images 1000000 --faces 2000000
    .venv/bin/python benchmarks/bench_global.py --work /tmp/global-20k --images 20000 --faces 20000 --recall \
        --exact-below 0

The tables are written once into ``--work`` with the real schemas (``tables.SCHEMAS``), as 100 parts each
like a consolidated run's datasets, and reused by later calls with the same sizes:

- images: DINOv2-like unit vectors in 384-d around 100 000 scene directions (cosine to the scene 0.75–0.9,
  so shots of one scene are not near duplicates), with planted copies: 1 % byte copies, 1 % pixel copies,
  4 % near copies (cosine 0.93–0.999 to the original, 0–14 pHash bits flipped: about half are within both
  thresholds), 1 % look-alikes (cosine ≥ 0.95, unrelated pHash); plus 2000 videos of 5 frames, 5 % of them
  re-encodes of another.
- faces: ArcFace-like unit vectors in 512-d: eight persons with 0.5–3 % of all faces each, then persons of
  Zipf-distributed sizes (exponent 2, at most 1000), 12 % strangers seen once; cosine to the person's
  direction 0.7–0.95 for faces of quality 0.3–1 and 0.6–0.8 for the 15 % of quality under 0.2.

Each step then runs as the pipeline runs it (``duplicates.duplicates_table``, ``people.people_table``), in
its own process with ``--threads`` BLAS/OpenMP threads; printed: wall seconds and peak RSS of each.
``--recall`` runs both steps a second time with the index off (every pair compared) and prints how many of
the exact method's groups the index reproduced member for member (affordable up to a few tens of thousands
of rows: the exact search is quadratic); ``--exact-below 0`` makes the first run use the index even where
the steps would compare every pair.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cl_ml_tools.data import tables

PARTS = 100
DIM = {"dino": 384, "face_embeddings": 512}


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _around(centres: np.ndarray, cosine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at exactly ``cosine`` to the unit ``centres`` (rows), in a random direction."""
    w = rng.standard_normal(centres.shape, dtype=np.float32)
    w -= np.einsum("ij,ij->i", w, centres)[:, None] * centres
    _unit(w)
    c = cosine.astype(np.float32)[:, None]
    return _unit(c * centres + np.sqrt(1 - c * c) * w)


def _write(name: str, folder: Path, columns: dict[str, pa.Array]) -> None:
    """One table as ``PARTS`` parts with the real schema (columns not given are null)."""
    schema = tables.SCHEMAS[name]
    n = len(next(iter(columns.values())))
    full = pa.table(
        {f.name: columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in schema}, schema=schema
    )
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-n // PARTS)
    for p in range(PARTS):
        pq.write_table(full.slice(p * step, step), folder / f"{p:04d}.parquet", compression="zstd")


def _embeddings(vectors: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])


def _common(media: np.ndarray) -> dict[str, pa.Array]:
    ids = [f"{m:016x}" for m in media.tolist()]
    return {
        "media_id": pa.array(ids),
        "input": pa.array(np.full(len(ids), "photos")),
        "path": pa.array([f"/archive/{m[:2]}/{m}.jpg" for m in ids]),
        "status": pa.array(np.full(len(ids), tables.STATUS_OK)),
    }


def make_images(folder: Path, n: int, seed: int = 1) -> None:
    """``files``, ``hashes`` and ``dino`` tables of ``n`` images and 2000 videos (see the module docstring)."""
    rng = np.random.default_rng(seed)
    scenes = _unit(rng.standard_normal((min(100_000, max(1, n // 10)), DIM["dino"]), dtype=np.float32))
    vectors = np.empty((n, DIM["dino"]), np.float32)
    for s in range(0, n, 100_000):
        k = min(n, s + 100_000) - s
        vectors[s : s + k] = _around(scenes[rng.integers(len(scenes), size=k)], rng.uniform(0.75, 0.9, k), rng)
    phash = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    sha = np.arange(n)
    pixel = np.arange(n)
    size = rng.integers(100_000, 8_000_000, size=n)
    # Copies of the first 60 % (originals are never copies themselves), in the last 40 %.
    kind = rng.choice(5, size=n, p=[0.01, 0.01, 0.04, 0.01, 0.93])
    kind[: int(0.6 * n)] = 4
    copy = np.flatnonzero(kind < 4)
    original = rng.integers(int(0.6 * n), size=len(copy))
    k = kind[copy]
    sha[copy[k == 0]] = sha[original[k == 0]]
    pixel[copy[k <= 1]] = pixel[original[k <= 1]]
    vectors[copy[k <= 1]] = vectors[original[k <= 1]]
    phash[copy[k <= 1]] = phash[original[k <= 1]]
    near, alike = copy[k == 2], copy[k == 3]
    vectors[near] = _around(vectors[original[k == 2]], rng.uniform(0.93, 0.999, len(near)), rng)
    flips = rng.integers(0, 15, size=len(near))
    bits = np.array([sum(1 << int(b) for b in rng.choice(64, f, replace=False)) for f in flips], dtype=np.uint64)
    phash[near] = phash[original[k == 2]] ^ bits
    vectors[alike] = _around(vectors[original[k == 3]], rng.uniform(0.95, 0.999, len(alike)), rng)
    videos, frames = 2000, 5
    clips = _unit(rng.standard_normal((videos, frames, DIM["dino"]), dtype=np.float32).reshape(-1, DIM["dino"]))
    clips = clips.reshape(videos, frames, -1)
    again = rng.choice(videos // 2, size=videos // 20, replace=False)
    clips[videos // 2 : videos // 2 + len(again)] = _around(
        clips[again].reshape(-1, DIM["dino"]), np.full(len(again) * frames, 0.98), rng
    ).reshape(len(again), frames, -1)
    means = _unit(clips.mean(axis=1))

    media = _distinct(rng, n + videos)
    common = _common(media)
    is_video = np.r_[np.zeros(n, bool), np.ones(videos, bool)]
    _write("files", folder / "files.parquet", {
        **common, "size": pa.array(np.r_[size, np.full(videos, 50_000_000)]),
        "kind": pa.array(np.where(is_video, "video", "image")), "shard": pa.array(np.full(n + videos, "0000")),
    })  # fmt: skip
    _write("hashes", folder / "hashes.parquet", {
        **common, "sha512": pa.array([f"s{x}" for x in np.r_[sha, n + np.arange(videos)].tolist()]),
        "pixel_sha512": pa.array([f"p{x}" for x in pixel.tolist()] + [None] * videos),
        "phash": pa.array(np.r_[phash, rng.integers(0, 2**63, size=videos).astype(np.uint64)]),
    })  # fmt: skip
    video_rows = np.repeat(np.arange(n, n + videos), frames + 1)
    frame_index = np.tile(np.r_[np.arange(frames), -1], videos)
    dino = np.concatenate([vectors, np.concatenate([clips, means[:, None]], axis=1).reshape(-1, DIM["dino"])])
    rows = np.r_[np.arange(n), video_rows]
    _write("dino", folder / "dino.parquet", {
        **{c: a.take(pa.array(rows)) for c, a in common.items()},
        "frame_index": pa.array(np.r_[np.zeros(n, np.int32), frame_index.astype(np.int32)]),
        "embedding": _embeddings(dino),
    })  # fmt: skip


def synthetic_faces(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors, planted person (−1: a stranger) and quality of ``n`` faces (see the module docstring)."""
    strangers = int(0.12 * n)
    sizes = [max(2, int(f * n)) for f in rng.uniform(0.005, 0.03, 8)]
    while sum(sizes) < n - strangers:
        sizes.append(int(min(1000, rng.zipf(2.0))))
    sizes[-1] -= sum(sizes) - (n - strangers)
    person = np.r_[np.repeat(np.arange(len(sizes)), sizes), np.full(strangers, -1)]
    person = person[rng.permutation(n)]
    centres = _unit(rng.standard_normal((len(sizes), DIM["face_embeddings"]), dtype=np.float32))
    low = rng.random(n) < 0.15
    quality = np.where(low, rng.uniform(0, 0.2, n), rng.uniform(0.3, 1.0, n)).astype(np.float32)
    vectors = np.empty((n, DIM["face_embeddings"]), np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        p, lo = person[s:e], low[s:e]
        cosine = np.where(lo, rng.uniform(0.6, 0.8, e - s), rng.uniform(0.7, 0.95, e - s))
        stranger = p < 0
        centre = centres[np.maximum(p, 0)]
        centre[stranger] = _unit(rng.standard_normal((int(stranger.sum()), centres.shape[1]), dtype=np.float32))
        vectors[s:e] = _around(centre, np.where(stranger, 1.0, cosine), rng)
    return vectors, person, quality


def make_faces(folder: Path, n: int, seed: int = 2) -> np.ndarray:
    """``faces`` and ``face_embeddings`` tables of ``n`` faces; returns each face's planted person."""
    rng = np.random.default_rng(seed)
    vectors, person, quality = synthetic_faces(n, rng)
    photos = _distinct(rng, -(-n // 2))
    common = _common(np.repeat(photos, 2)[:n])
    key = {"frame_index": pa.array(np.zeros(n, np.int32)), "face_index": pa.array((np.arange(n) % 2).astype(np.int32))}
    _write("faces", folder / "faces.parquet", {
        **common, **key, "quality": pa.array(quality),
        "crop": pa.array([f"/results/crops/{i:08d}.jpg" for i in range(n)]),
    })  # fmt: skip
    _write("face_embeddings", folder / "face_embeddings.parquet", {**common, **key, "embedding": _embeddings(vectors)})
    return person


def _distinct(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct random 63-bit numbers (media ids)."""
    out = np.unique(rng.integers(0, 2**63, size=int(n * 1.01) + 16))
    return rng.permutation(out)[:n]


def make(work: Path, images: int, faces: int) -> None:
    marker = work / "made.json"
    wanted = {"images": images, "faces": faces}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return
    start = time.perf_counter()
    make_images(work / "tables", images)
    np.save(work / "persons.npy", make_faces(work / "tables", faces))
    marker.write_text(json.dumps(wanted))
    print(f"tables written in {time.perf_counter() - start:.0f} s", file=sys.stderr)


def _search(exact: bool, probes: int | None, exact_below: int):
    from cl_ml_tools.data import neighbours

    default = neighbours.SEARCH
    return replace(default, exact_below=2**62 if exact else exact_below, probes=probes or default.probes)


def _out(work: Path, exact: bool, probes: int | None) -> Path:
    return work / "out" / ("exact" if exact else f"index-{_search(False, probes, 0).probes}")


def run_step(step: str, work: Path, exact: bool, probes: int | None, exact_below: int) -> None:
    """One step as the pipeline's script runs it, writing into ``work/out``."""
    from cl_ml_tools.steps import duplicates, people

    t = work / "tables"
    out = _out(work, exact, probes)
    out.mkdir(parents=True, exist_ok=True)
    search = _search(exact, probes, exact_below)
    start = time.perf_counter()
    if step == "duplicates":
        rows = duplicates.find_duplicates(
            t / "files.parquet", t / "hashes.parquet", t / "dino.parquet", duplicates.Settings(), search
        )
        tables.write_part("duplicates", rows, out / "duplicates.parquet")
    else:
        ids = out / people.IDS_FILE
        ids.unlink(missing_ok=True)  # a first run each time: ids from an earlier run would change nothing here
        people.people_table(
            t / "faces.parquet", t / "face_embeddings.parquet", ids, out / "people.parquet", people.Settings(), search
        )
    print(json.dumps({"seconds": time.perf_counter() - start, "probes": search.probes}))


def measure(step: str, work: Path, threads: int, exact: bool, probes: int | None, exact_below: int) -> dict[str, float]:
    """Wall seconds (of the step, without interpreter start-up) and peak RSS of the step in a fresh process."""
    env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    argv = [sys.executable, __file__, "--work", str(work), "--step", step, "--exact-below", str(exact_below),
            *(["--probes", str(probes)] if probes else [])]  # fmt: skip
    proc = subprocess.Popen([*argv, *(["--exact"] if exact else [])], env=env, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"{step} failed ({status})")
    cpu = usage.ru_utime + usage.ru_stime
    return {**json.loads(out.splitlines()[-1]), "rss_gb": usage.ru_maxrss / 2**20, "cpu": cpu}


def _groups(path: Path, key: str, members: str) -> set[frozenset]:
    table = pq.read_table(path)
    if members == "faces":
        faces = table.column("faces").to_pylist()
        return {frozenset((f["media_id"], f["face_index"]) for f in fs) for fs in faces}
    out: dict[int, set[str]] = {}
    for g, m in zip(table.column(key).to_pylist(), table.column("media_id").to_pylist(), strict=True):
        out.setdefault(g, set()).add(m)
    return {frozenset(m) for m in out.values()}


def recall(work: Path, probes: int | None) -> dict[str, str]:
    """Exact groups reproduced member for member by the index, per step."""
    out = {}
    for step, key, members in (("duplicates", "group_id", "media_id"), ("people", "person_id", "faces")):
        exact = _groups(_out(work, True, probes) / f"{step}.parquet", key, members)
        index = _groups(_out(work, False, probes) / f"{step}.parquet", key, members)
        out[step] = f"{len(exact & index)}/{len(exact)} ({len(exact & index) / max(1, len(exact)):.4f})"
    return out


def pair_recall(work: Path, probes: int | None, sample: int = 2000, seed: int = 7) -> dict[str, str]:
    """At any size: the exact neighbour pairs of ``sample`` random vectors (every other vector compared
    with them; near pairs also within the pHash distance), and how many of them the index's run put in one
    group (duplicates: any kind) or one person."""
    from cl_ml_tools.steps import duplicates, people

    rng = np.random.default_rng(seed)
    t = work / "tables"
    out = {}
    dino = pq.read_table(t / "dino.parquet", columns=["media_id", "frame_index"])
    images = np.flatnonzero(pc.equal(dino.column("frame_index"), 0).to_numpy(zero_copy_only=False))
    media = dino.column("media_id").take(pa.array(images)).to_pylist()
    vectors = tables.embedding_rows(t / "dino.parquet", images)
    hashes = pq.read_table(t / "hashes.parquet", columns=["media_id", "phash"]).to_pydict()
    phash_of = dict(zip(hashes["media_id"], hashes["phash"], strict=True))
    phash = np.array([phash_of[m] for m in media], dtype=np.uint64)
    rows = pq.read_table(_out(work, False, probes) / "duplicates.parquet").to_pydict()
    group: dict[str, set[int]] = {}
    for m, g in zip(rows["media_id"], rows["group_id"], strict=True):
        group.setdefault(m, set()).add(g)
    settings = duplicates.Settings()
    pairs = [
        (a, b)
        for a, b in _exact_pairs(vectors, rng.choice(len(vectors), sample, replace=False), settings.cosine)
        if int(np.bitwise_count(phash[a] ^ phash[b])) <= settings.phash_distance
    ]
    hit = sum(bool(group.get(media[a], set()) & group.get(media[b], set())) for a, b in pairs)
    out["duplicates"] = f"{hit}/{len(pairs)} ({hit / max(1, len(pairs)):.4f})"

    faces = people.read_faces(t / "faces.parquet", t / "face_embeddings.parquet")
    seeds = np.flatnonzero(faces.quality >= people.Settings().min_quality)
    table = pq.read_table(_out(work, False, probes) / "people.parquet", columns=["person_id", "faces"])
    person = {
        (f["media_id"], f["face_index"]): pid
        for pid, fs in zip(table.column("person_id").to_pylist(), table.column("faces").to_pylist(), strict=True)
        for f in fs
    }
    keys = [(faces.keys[i].media_id, faces.keys[i].face_index) for i in seeds]
    pairs = _exact_pairs(faces.matrix[seeds], rng.choice(len(seeds), sample, replace=False),
                         1 - people.Settings().max_distance)  # fmt: skip
    hit = sum(person.get(keys[a], -1) == person.get(keys[b], -2) for a, b in pairs)
    out["people"] = f"{hit}/{len(pairs)} ({hit / max(1, len(pairs)):.4f})"
    return out


def _exact_pairs(vectors: np.ndarray, queries: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    found = []
    for start in range(0, len(vectors), 100_000):
        sims = vectors[queries] @ vectors[start : start + 100_000].T
        q, c = np.nonzero(sims >= threshold)
        found += [(a, b) for a, b in zip(queries[q].tolist(), (start + c).tolist(), strict=True) if a != b]
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--faces", type=int, default=2_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probes", type=int, default=None, help="lists each vector probes (default: the module's)")
    ap.add_argument("--exact-below", type=int, default=None, help="0: the index at any size (default: the module's)")
    ap.add_argument("--recall", action="store_true", help="also run the exact search and compare the groups")
    ap.add_argument("--step", choices=["duplicates", "people"], help=argparse.SUPPRESS)
    ap.add_argument("--exact", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from cl_ml_tools.data import neighbours

    exact_below = neighbours.SEARCH.exact_below if args.exact_below is None else args.exact_below
    if args.step:
        run_step(args.step, args.work, args.exact, args.probes, exact_below)
        return
    make(args.work, args.images, args.faces)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print("| step | search | seconds | CPU seconds | peak RSS (GB) |\n|---|---|---:|---:|---:|")
    total = 0.0
    for exact in (False, True) if args.recall else (False,):
        for step in ("duplicates", "people"):
            m = measure(step, args.work, args.threads, exact, args.probes, exact_below)
            total += 0 if exact else m["seconds"]
            search = "exact" if exact else f"index, {m['probes']} probes"
            print(f"| {step} | {search} | {m['seconds']:.1f} | {m['cpu']:.0f} | {m['rss_gb']:.2f} |", flush=True)
    print(f"duplicates + people with the index: {total:.1f} s; load average after: {os.getloadavg()[0]:.2f}")
    if args.recall:
        print(f"exact groups found by the index: {recall(args.work, args.probes)}")
    print(f"sampled exact pairs kept together by the index: {pair_recall(args.work, args.probes)}")


if __name__ == "__main__":
    main()
