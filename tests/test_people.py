"""People: clustering of face embeddings into persons, and person ids that survive reruns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cl_ml_tools.models import l2_normalise
from cl_ml_tools.steps import people
from cl_ml_tools.steps.people import FaceKey

SETTINGS = people.Settings()


def identities(n_people: int, per_person: int, spread: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in 512-d: ``per_person`` noisy copies of each of ``n_people`` random directions
    (cosine to their centre about 0.85 at the default spread; random directions are about 0 apart)."""
    rng = np.random.default_rng(seed)
    centres = l2_normalise(rng.normal(size=(n_people, 512)))
    noise = rng.normal(size=(n_people, per_person, 512)) * spread / np.sqrt(512) * 4
    vectors = l2_normalise((centres[:, None, :] + noise).reshape(-1, 512)).astype(np.float32)
    return vectors, np.repeat(np.arange(n_people), per_person)


def faces_of(matrix: np.ndarray, quality: np.ndarray | None = None, prefix: str = "m") -> people.Faces:
    n = len(matrix)
    return people.Faces(
        keys=[FaceKey(f"{prefix}{i:04d}", 0, 0) for i in range(n)],
        matrix=matrix,
        quality=np.full(n, 0.8, np.float32) if quality is None else quality,
        path=[f"/a/{i}.jpg" for i in range(n)],
        crop=[f"/c/{i}.jpg" for i in range(n)],
    )


def same_partition(labels: np.ndarray, truth: np.ndarray) -> bool:
    pairs = {(a, b) for a, b in zip(labels.tolist(), truth.tolist(), strict=True)}
    return len(pairs) == len(set(truth.tolist())) == len(set(labels.tolist()))


def test_clusters_recover_the_identities() -> None:
    matrix, truth = identities(6, 5)
    labels = people.cluster(matrix, np.full(len(matrix), 0.8, np.float32), SETTINGS)
    assert (labels >= 0).all()
    assert same_partition(labels, truth)


def test_low_quality_faces_never_seed_but_join_their_person() -> None:
    matrix, truth = identities(3, 4)
    quality = np.full(len(matrix), 0.8, np.float32)
    quality[truth == 2] = 0.05  # a person seen only in blurred faces: no cluster of their own
    quality[0] = 0.05  # a blurred face of person 0: still joins person 0
    labels = people.cluster(matrix, quality, SETTINGS)
    assert (labels[truth == 2] == -1).all()
    assert labels[0] == labels[1] != -1
    assert len(set(labels[truth != 2].tolist())) == 2


def test_a_stranger_far_from_everyone_is_nobody() -> None:
    matrix, _ = identities(2, 4)
    stranger = l2_normalise(np.random.default_rng(9).normal(size=(1, 512))).astype(np.float32)
    labels = people.cluster(np.vstack([matrix, stranger]), np.full(9, 0.8, np.float32), SETTINGS)
    assert labels[-1] == -1 and (labels[:-1] >= 0).all()


def test_first_run_numbers_people_from_1_largest_first() -> None:
    matrix, _ = identities(3, 1)
    matrix = np.vstack([np.repeat(matrix[:1], 2, 0), np.repeat(matrix[1:2], 5, 0), np.repeat(matrix[2:], 3, 0)])
    rows, next_id = people.find_people(faces_of(matrix), SETTINGS, {}, 1)
    assert [(r["person_id"], r["size"]) for r in rows] == [(1, 5), (2, 3), (3, 2)]
    assert next_id == 4
    assert rows[0]["faces"][0] == {"media_id": "m0002", "frame_index": 0, "face_index": 0}
    assert rows[0]["crop"] == "/c/2.jpg" and rows[0]["photos"] == 5


def test_representative_is_the_typical_good_face() -> None:
    matrix, _ = identities(1, 6)
    quality = np.array([0.9, 0.9, 0.05, 0.9, 0.9, 0.9], np.float32)
    centre = l2_normalise(matrix.mean(axis=0))
    ordered = np.argsort(-(matrix @ centre))
    quality[ordered[0]] = 0.05  # the most typical face is blurred: the next one represents the person
    (row,), _ = people.find_people(faces_of(matrix, quality), SETTINGS, {}, 1)
    assert row["media_id"] == f"m{ordered[1]:04d}"


def test_ids_survive_new_photos_and_retire_when_people_merge(tmp_path: Path) -> None:
    matrix, _ = identities(4, 4, seed=3)
    first = faces_of(matrix)
    rows, next_id = people.find_people(first, SETTINGS, {}, 1)
    ids_file = tmp_path / people.IDS_FILE
    people.write_ids(ids_file, rows, next_id)
    before = {r["person_id"]: {f["media_id"] for f in r["faces"]} for r in rows}
    assert len(before) == 4 and next_id == 5

    # New photos: three more faces of each person, and a new person, listed first so clustering order
    # changes; every existing person keeps their id, the newcomer gets 5.
    more, _ = identities(4, 3, seed=3)  # the same centres, other noise
    newcomer, _ = identities(1, 4, seed=77)
    second = faces_of(np.vstack([newcomer, more, matrix]), prefix="n")
    second.keys[len(newcomer) + len(more) :] = first.keys
    previous, next_id = people.read_ids(ids_file)
    rows, next_id = people.find_people(second, SETTINGS, previous, next_id)
    after = {r["person_id"]: {f["media_id"] for f in r["faces"]} for r in rows}
    for pid, members in before.items():
        assert members <= after[pid]
    assert set(after) == {1, 2, 3, 4, 5} and next_id == 6
    people.write_ids(ids_file, rows, next_id)

    # Persons 1 and 2 turn out to be one (say, a better model): the merged person keeps the id it shares
    # most faces with, the other id is retired and never given out again.
    members = {pid: m for pid, m in after.items()}
    keys = [k for k in second.keys]
    merged = second.matrix.copy()
    target = next(i for i, k in enumerate(keys) if k.media_id in members[1])
    for i, k in enumerate(keys):
        if k.media_id in members[2]:
            merged[i] = merged[target]
    previous, next_id = people.read_ids(ids_file)
    rows, next_id = people.find_people(people.Faces(keys, merged, second.quality, second.path, second.crop),
                                       SETTINGS, previous, next_id)  # fmt: skip
    ids = {r["person_id"] for r in rows}
    assert len(ids) == 4 and ids < {1, 2, 3, 4, 5} and len(ids & {1, 2}) == 1
    previous, next_id = people.read_ids(ids_file)
    assert next_id == 6


def test_assign_ids_prefers_the_largest_overlap() -> None:
    a, b, c = (FaceKey(x, 0, 0) for x in "abc")
    previous = {a: 7, b: 7, c: 9}
    ids, next_id = people.assign_ids([[c], [a, b, c]], previous, 10)
    assert ids == [9, 7] and next_id == 10
    ids, next_id = people.assign_ids([[a], [b], [FaceKey("new", 0, 0)]], previous, 10)
    assert ids == [7, 10, 11] and next_id == 12  # one old id per cluster; the second part of 7 is new


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_faces_make_no_people(n: int) -> None:
    matrix, _ = identities(1, n) if n else (np.zeros((0, 512), np.float32), None)
    rows, next_id = people.find_people(faces_of(matrix), SETTINGS, {}, 1)
    assert rows == [] and next_id == 1


@pytest.mark.e2e
def test_pipeline_keeps_person_ids_when_photos_are_added(tmp_path: Path) -> None:
    import shutil

    from conftest import SAMPLE, snakemake, write_config

    from cl_ml_tools.data import tables

    archive = tmp_path / "archive"
    shutil.copytree(SAMPLE / "2021 holiday", archive / "2021")
    shutil.copytree(SAMPLE / "2023 reunion", archive / "2023")
    off = {"enabled": False}
    write_config(tmp_path, {"photos": "archive"}, hls=off, dino=off, clip=off, report=off,
                 people={"max_distance": 0.35})  # fmt: skip
    snakemake(tmp_path)

    def persons() -> dict[int, set[str]]:
        faces = tables.people_faces(tmp_path / "results")
        files = tables.load("files", tmp_path / "results").set_index("media_id").relpath
        return {p: {files[m] for m in g.media_id} for p, g in faces.groupby("person_id")}

    before = persons()
    assert sorted(sorted(m) for m in before.values()) == [
        ["2021/astronaut.jpg", "2023/together.jpg"],
        ["2023/hopper.jpg", "2023/together.jpg"],
    ], before
    # New photos: byte copies of Grace Hopper's portrait, in a folder that sorts first.
    (archive / "0 new").mkdir()
    for i in range(3):
        shutil.copy(archive / "2023" / "hopper.jpg", archive / "0 new" / f"hopper {i}.jpg")
    snakemake(tmp_path)
    after = persons()
    assert set(after) == set(before)
    for pid, members in before.items():
        assert members <= after[pid]
    (hopper,) = [p for p, m in before.items() if "2023/hopper.jpg" in m]
    assert after[hopper] - before[hopper] == {f"0 new/hopper {i}.jpg" for i in range(3)}
    assert (tmp_path / "results" / "people" / "people_ids.parquet").exists()


def test_the_index_gives_the_clusters_of_the_exact_search() -> None:
    from cl_ml_tools.data import neighbours

    rng = np.random.default_rng(40)
    matrix, truth = identities(250, 8, seed=4)
    strangers = l2_normalise(rng.normal(size=(500, 512))).astype(np.float32)
    matrix = np.vstack([matrix, strangers])
    quality = np.where(rng.random(len(matrix)) < 0.15, 0.05, 0.8).astype(np.float32)
    exact = people.cluster(matrix, quality, SETTINGS)
    index = people.cluster(matrix, quality, SETTINGS, neighbours.Search(exact_below=0))
    assert same_partition(index, exact)
    assert len(set(exact.tolist()) - {-1}) == 250 and (exact[len(truth) :] == -1).all()


def test_read_faces_joins_the_tables_in_key_order(tmp_path: Path) -> None:
    from cl_ml_tools.data import tables

    rng = np.random.default_rng(5)
    n = 40
    embeddings = rng.normal(size=(n, 512)).astype(np.float32)
    keys = [(f"m{i // 3:03d}", 0, i % 3) for i in range(n)][::-1]  # not in key order
    common = [{"media_id": m, "input": "t", "path": f"/a/{m}", "status": "ok", "error": None,
               "frame_index": f, "face_index": k} for m, f, k in keys]  # fmt: skip
    faces = [{**c, "quality": float(i), "crop": f"/c/{i}"} for i, c in enumerate(common)]
    emb = [{**c, "embedding": e, "model": "x"} for c, e in zip(common, embeddings, strict=True)]
    emb[3] = {**emb[3], "status": "error", "error": "bad", "embedding": None}  # left out, rows stay aligned
    faces[7] = {**faces[7], "status": "error"}
    for name, rows in (("faces", faces), ("face_embeddings", emb)):
        (tmp_path / name).mkdir()
        for part, chunk in enumerate((rows[:25], rows[25:])):
            tables.write_parquet(tables.to_arrow(name, chunk), tmp_path / name / f"{part:04d}.parquet")
    read = people.read_faces(tmp_path / "faces", tmp_path / "face_embeddings")
    kept = [i for i in range(n) if i not in (3, 7)]
    order = sorted(kept, key=lambda i: keys[i])
    assert read.keys == [FaceKey(*keys[i]) for i in order]
    assert np.allclose(read.matrix, l2_normalise(embeddings[order]))
    assert read.quality.tolist() == [float(i) for i in order]
    assert read.crop == [f"/c/{i}" for i in order]
