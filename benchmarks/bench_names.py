"""Cost of the people step's names (``people.names``) at archive scale: reading the names file against the
``files`` table and the faces, then applying the names to the clusters. No reference tool: a cost check.

    .venv/bin/python benchmarks/bench_names.py --files 1000000 --faces 2000000 --names 200

The ``files`` table is written as Parquet (input and relpath, as the pipeline's); faces are ``faces`` per
file spread over the files, clustered into persons of 20 faces; each name has three example faces, and every
tenth name shares its person with the next name (siblings the clusterer merged: that person is split).
The face matrix is one random unit vector repeated (a read-only view: the products cost what real rows
cost, without 4 GB of memory). Prints seconds for each part and the peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cl_ml_tools.data import inventory
from cl_ml_tools.steps import people
from cl_ml_tools.steps.people import FaceKey


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--faces", type=int, default=2_000_000)
    ap.add_argument("--names", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        relpaths = [f"{y}/{m:02d}/IMG_{i:07d}.jpg" for i, (y, m) in enumerate(zip(
            rng.integers(2000, 2026, args.files), rng.integers(1, 13, args.files), strict=True))]  # fmt: skip
        files = Path(tmp) / "files.parquet"
        pq.write_table(pa.table({"input": ["photos"] * args.files, "relpath": relpaths}), files)
        media = [inventory.media_id("photos", r) for r in relpaths]
        owner = np.sort(rng.integers(0, args.files, args.faces))
        face_index = np.arange(args.faces) - np.searchsorted(owner, owner)
        keys = sorted(FaceKey(media[o], 0, int(f)) for o, f in zip(owner, face_index, strict=True))
        vector = rng.normal(size=512).astype(np.float32)
        matrix = np.broadcast_to(vector / np.linalg.norm(vector), (args.faces, 512))
        faces = people.Faces(keys, matrix, np.full(args.faces, 0.8, np.float32), [""] * args.faces, [None] * args.faces)
        path_of = dict(zip(media, relpaths, strict=True))
        examples = rng.choice(args.faces, (args.names, 3), replace=False)
        names = Path(tmp) / "names.yaml"
        names.write_text("".join(
            f"Name {n}: [{', '.join(repr(f'{path_of[keys[i].media_id]}#{keys[i].face_index}') for i in ex)}]\n"
            for n, ex in enumerate(examples)))  # fmt: skip
        labels = rng.permutation(args.faces) // 20
        for n in range(0, args.names - 1, 10):  # siblings: the next name's examples in this name's person
            labels[examples[n + 1]] = labels[examples[n][0]]

        start = time.perf_counter()
        read = people.read_names(names, files, faces)
        read_s = time.perf_counter() - start
        assert not read.problems and len(read.examples) == args.names, read.problems[:3]
        start = time.perf_counter()
        after, named = people.apply_names(labels, matrix, read.examples)
        apply_s = time.perf_counter() - start
        persons = [set(after[ex].tolist()) for ex in read.examples.values()]
        assert all(len(p) == 1 for p in persons) and len(set.union(*persons)) == args.names
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{args.files} files, {args.faces} faces, {args.names} names ({len(named)} named persons): "
          f"read_names {read_s:.2f} s, apply_names {apply_s:.2f} s, peak RSS {rss:.2f} GB")  # fmt: skip


if __name__ == "__main__":
    main()
