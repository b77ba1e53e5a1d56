"""Time of the people step's clustering on synthetic identities (no reference tool: it is a scaling check).

    .venv/bin/python benchmarks/bench_people.py --people 1000,2500 --faces-per-person 20

Each person is a random direction in 512-d with noisy copies around it (cosine to the centre about 0.85,
random directions about 0 apart); ``people.find_people`` clusters them with the default settings. Prints
faces, people found, seconds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cl_ml_tools.models import l2_normalise
from cl_ml_tools.steps import people


def identities(n_people: int, per_person: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = l2_normalise(rng.normal(size=(n_people, 512)))
    noise = rng.normal(size=(n_people, per_person, 512)) * 0.6 / np.sqrt(512)
    return l2_normalise((centres[:, None, :] + noise).reshape(-1, 512))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--people", default="1000,2500", help="comma-separated person counts")
    ap.add_argument("--faces-per-person", type=int, default=20)
    args = ap.parse_args()
    print("| faces | people found | seconds |\n|---:|---:|---:|")
    for n in (int(x) for x in args.people.split(",")):
        matrix = identities(n, args.faces_per_person)
        faces = people.Faces(
            keys=[people.FaceKey(f"{i:08x}", 0, 0) for i in range(len(matrix))],
            matrix=matrix,
            quality=np.full(len(matrix), 0.8, np.float32),
            path=[""] * len(matrix),
            crop=[None] * len(matrix),
        )
        start = time.perf_counter()
        rows, _ = people.find_people(faces, people.Settings(), {}, 1)
        print(f"| {len(matrix)} | {len(rows)} | {time.perf_counter() - start:.1f} |")


if __name__ == "__main__":
    main()
