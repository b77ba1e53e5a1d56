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


# Named people (people.names): must-link and cannot-link constraints on the clusters.


def around(centre: np.ndarray, n: int, seed: int, spread: float = 0.25) -> np.ndarray:
    """``n`` unit vectors near the unit vector ``centre`` (cosine to it about 0.97 at this spread)."""
    noise = np.random.default_rng(seed).normal(size=(n, 512)) * spread / np.sqrt(512)
    return l2_normalise(centre + noise).astype(np.float32)


def siblings_and_a_split_person(seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Faces of Ann and Bea, siblings whose centres are 0.8 apart in cosine (DBSCAN at the default
    max_distance 0.5 chains them into one cluster), and of Cy, seen with and without a beard: two centres
    about 0 apart (two clusters). Returns the faces and, written by hand, who each one is."""
    rng = np.random.default_rng(seed)
    ann, other, beard, shaved = l2_normalise(rng.normal(size=(4, 512)))
    other -= (other @ ann) * ann  # orthogonal to ann, then mixed in: cos(ann, bea) = 0.8 exactly
    bea = 0.8 * ann + 0.6 * l2_normalise(other)
    matrix = np.vstack([around(ann, 5, 1), around(bea, 4, 2), around(beard, 3, 3), around(shaved, 3, 4)])
    return matrix, ["Ann"] * 5 + ["Bea"] * 4 + ["Cy"] * 6


def named_partition(rows: list[dict], keys: list[FaceKey]) -> dict[str | None, set[int]]:
    position = {k: i for i, k in enumerate(keys)}
    return {r["name"]: {position[FaceKey(**f)] for f in r["faces"]} for r in rows}


def test_names_split_merged_siblings_and_join_a_split_person() -> None:
    matrix, truth = siblings_and_a_split_person()
    faces = faces_of(matrix)
    # The clusterer alone: Ann and Bea in one person, Cy in two.
    alone = people.cluster(matrix, faces.quality, SETTINGS)
    assert (alone >= 0).all() and len(set(alone[:9].tolist())) == 1
    assert len({alone[9], alone[12]}) == 2 and alone[9] not in (alone[0], alone[12])
    # One example each for the siblings (the second of each), both beard and shaved for Cy.
    names = {"Ann": [1], "Bea": [6], "Cy": [9, 13]}
    rows, next_id = people.find_people(faces, SETTINGS, {}, 1, names=names)
    expected = {name: {i for i, t in enumerate(truth) if t == name} for name in ("Ann", "Bea", "Cy")}
    assert named_partition(rows, faces.keys) == expected
    assert [(r["person_id"], r["name"], r["size"]) for r in rows] == [(1, "Cy", 6), (2, "Ann", 5), (3, "Bea", 4)]
    assert next_id == 4


def test_a_name_on_one_sibling_leaves_the_cluster_whole() -> None:
    matrix, _ = siblings_and_a_split_person()
    rows, _ = people.find_people(faces_of(matrix), SETTINGS, {}, 1, names={"Ann": [1]})
    assert sorted((r["name"] or "", r["size"]) for r in rows) == [("", 3), ("", 3), ("Ann", 9)]


def test_an_example_the_clusterer_left_out_still_makes_its_person() -> None:
    matrix, _ = identities(2, 4)
    stranger = l2_normalise(np.random.default_rng(9).normal(size=(1, 512))).astype(np.float32)
    faces = faces_of(np.vstack([matrix, stranger]))
    rows, _ = people.find_people(faces, SETTINGS, {}, 1, names={"Zoe": [8], "Max": [0]})
    assert [(r["name"], r["size"]) for r in rows] == [("Max", 4), (None, 4), ("Zoe", 1)]


def test_split_faces_go_to_the_name_of_their_nearest_example() -> None:
    """The cannot-link rule on hand-placed vectors (exact in float32): face 2 has cosine 0.8 to Ann's example
    (face 0) and 0 to Bea's (face 1); face 3 has 0.5 to both, so it goes to the name listed first, Bea."""
    ann, bea, face2, face3 = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0.8, 0, 0.6, 0], [0.5, 0.5, 0.5, 0.5]], np.float32)
    matrix = np.vstack([ann, bea, face2, face3])
    labels, named = people.apply_names(np.zeros(4, np.int64), matrix, {"Bea": [1], "Ann": [0]})
    assert [named[label] for label in labels] == ["Ann", "Bea", "Ann", "Bea"]
    labels, named = people.apply_names(np.zeros(4, np.int64), matrix, {"Ann": [0], "Bea": [1]})
    assert [named[label] for label in labels] == ["Ann", "Bea", "Ann", "Ann"]
    # Bea's second example is in another cluster (label 1), and face 2 is nearer it (0.8) than Ann's (0.6):
    # every example of the names counts, so face 2 is Bea's, and one name makes one person of both clusters.
    matrix = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0.6, 0, 0.8, 0], [0, 0, 1, 0], [0, 0, 0.8, 0.6]], np.float32)
    labels, named = people.apply_names(np.array([0, 0, 0, 1, 1]), matrix, {"Ann": [0], "Bea": [1, 3]})
    assert [named.get(label) for label in labels] == ["Ann", "Bea", "Bea", "Bea", "Bea"]


def test_names_and_ids_stay_put_when_photos_are_added(tmp_path: Path) -> None:
    matrix, truth = siblings_and_a_split_person()
    ids_file = tmp_path / people.IDS_FILE

    def run(faces: people.Faces, names: dict[str, list[int]]) -> dict[str | None, int]:
        previous, next_id = people.read_ids(ids_file)
        rows, next_id = people.find_people(faces, SETTINGS, previous, next_id, names=names,
                                           name_ids=people.read_name_ids(ids_file))  # fmt: skip
        people.write_ids(ids_file, rows, next_id)
        return {r["name"]: r["person_id"] for r in rows if r["name"]}

    first = faces_of(matrix)
    # Before any name: the siblings are person 1 (9 faces), Cy persons 2 and 3.
    assert run(first, {}) == {}
    # Named: Ann keeps the siblings' id (most of its faces are hers), Cy the lower of his two, Bea is new.
    assert run(first, {"Ann": [1], "Bea": [6], "Cy": [9, 13]}) == {"Ann": 1, "Cy": 2, "Bea": 4}
    # New photos of everyone, in files that sort first, and a newcomer: names and ids stay.
    more, _ = siblings_and_a_split_person(seed=0)
    more = np.vstack([more[[0, 5, 10]], identities(1, 3, seed=77)[0], matrix])
    second = faces_of(more, prefix="a")
    second.keys[6:] = first.keys
    names = {"Ann": [6 + 1], "Bea": [6 + 6], "Cy": [6 + 9, 6 + 13]}
    assert run(second, names) == {"Ann": 1, "Cy": 2, "Bea": 4}
    rows, _ = people.find_people(second, SETTINGS, *people.read_ids(ids_file), names=names,
                                 name_ids=people.read_name_ids(ids_file))  # fmt: skip
    partition = named_partition(rows, second.keys)
    assert partition["Ann"] == {0, *(6 + i for i, t in enumerate(truth) if t == "Ann")}
    assert partition[None] == {3, 4, 5}


def test_a_named_person_keeps_its_id_when_all_its_old_photos_are_replaced(tmp_path: Path) -> None:
    matrix, _ = identities(3, 4, seed=5)
    ids_file = tmp_path / people.IDS_FILE
    rows, next_id = people.find_people(faces_of(matrix), SETTINGS, {}, 1, names={"Eve": [8]})
    people.write_ids(ids_file, rows, next_id)
    eve = next(r["person_id"] for r in rows if r["name"] == "Eve")
    # Eve's four photos are replaced by three others (new files, so no face overlaps the last run).
    again, _ = identities(3, 3, seed=5)
    faces = faces_of(np.vstack([matrix[:8], again[6:]]))
    faces.keys[8:] = [FaceKey(f"new{i}", 0, 0) for i in range(3)]
    previous, next_id = people.read_ids(ids_file)
    rows, _ = people.find_people(faces, SETTINGS, previous, next_id, names={"Eve": [9]},
                                 name_ids=people.read_name_ids(ids_file))  # fmt: skip
    assert {r["name"]: r["person_id"] for r in rows}["Eve"] == eve


def archive_of(tmp_path: Path, files: dict[tuple[str, str], int]) -> tuple[Path, people.Faces]:
    """A ``files`` table of (input, relpath) → number of faces in frame 0, and those faces. Media ids are
    computed here from their definition in docs/tables.md (SHA-256 of input NUL relpath, 16 hex digits)."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = {f: hashlib.sha256(f"{f[0]}\0{f[1]}".encode()).hexdigest()[:16] for f in files}
    table = pa.table({"input": [f[0] for f in files], "relpath": [f[1] for f in files], "media_id": list(ids.values())})
    pq.write_table(table, tmp_path / "files.parquet")
    keys = sorted(FaceKey(ids[f], 0, i) for f, n in files.items() for i in range(n))
    faces = faces_of(identities(1, len(keys))[0])
    faces.keys[:] = keys
    faces.path[:] = [next(f[1] for f, m in ids.items() if m == k.media_id) for k in keys]
    return tmp_path / "files.parquet", faces


def names_file(tmp_path: Path, text: str) -> Path:
    (tmp_path / "names.yaml").write_text(text)
    return tmp_path / "names.yaml"


def test_names_resolve_paths_in_one_or_several_inputs(tmp_path: Path) -> None:
    files, faces = archive_of(tmp_path, {("a", "x/p.jpg"): 2, ("b", "x/p.jpg"): 1, ("b", "q:r.jpg"): 1})
    at = {(faces.path[i], k.media_id, k.face_index): i for i, k in enumerate(faces.keys)}

    def position(input_name: str, relpath: str, face: int) -> int:
        import hashlib

        media_id = hashlib.sha256(f"{input_name}\0{relpath}".encode()).hexdigest()[:16]
        return at[(relpath, media_id, face)]

    text = 'Ann: ["a:x/p.jpg#1"]\nBea: ["b:x/p.jpg#0/0", "q:r.jpg#0"]\n'
    names = people.read_names(names_file(tmp_path, text), files, faces)
    assert names.problems == []
    assert names.examples == {"Ann": [position("a", "x/p.jpg", 1)],
                              "Bea": [position("b", "x/p.jpg", 0), position("b", "q:r.jpg", 0)]}  # fmt: skip


BEA = "\nBea: ['b:x/p.jpg#0']\n"


@pytest.mark.parametrize(
    ("text", "problem", "named"),
    [
        ('Ann: ["x/p.jpg#0"]' + BEA, "Ann: 'x/p.jpg#0' is in several inputs: write one of 'a:x/p.jpg#0', "
         "'b:x/p.jpg#0'", ["Bea"]),
        ('Ann: ["a:x/p.jpg#5"]' + BEA, "Ann: 'a:x/p.jpg#5': x/p.jpg has no such face (its faces: #0, #1)", ["Bea"]),
        ('Ann: ["nothing.jpg#0"]' + BEA, "Ann: 'nothing.jpg#0': no such file in the archive", ["Bea"]),
        ('Ann: ["c.jpg#0"]' + BEA, "Ann: 'c.jpg#0': c.jpg has no such face (no face was found in it)", ["Bea"]),
        ('Ann: ["a:x/p.jpg"]' + BEA, "Ann: 'a:x/p.jpg' is not '<path>#<face_index>'", ["Bea"]),
        ("Ann: a:x/p.jpg#0" + BEA, "Ann: not a list of example faces like ['folder/photo.jpg#0']", ["Bea"]),
        ("Ann: [x/p.jpg#0" + BEA, "cannot be read (while parsing a flow sequence", []),
        ("- a:x/p.jpg#0", "must map each name to a list of example faces; no person is named", []),
    ],
)  # fmt: skip
def test_a_bad_names_file_is_described_not_fatal(tmp_path: Path, text: str, problem: str, named: list) -> None:
    files, faces = archive_of(tmp_path, {("a", "x/p.jpg"): 2, ("b", "x/p.jpg"): 1, ("a", "c.jpg"): 0})
    path = names_file(tmp_path, text)
    names = people.read_names(path, files, faces)
    assert any(p.startswith(f"names file {path}: {problem}") for p in names.problems), names.problems
    assert list(names.examples) == named
    if named:  # Ann's one example is unusable: her name is reported as unused too, never silently dropped
        assert names.problems[-1].endswith(", so no person is named Ann")


def test_a_missing_names_file_and_a_face_given_two_names(tmp_path: Path) -> None:
    files, faces = archive_of(tmp_path, {("a", "p.jpg"): 2})
    names = people.read_names(tmp_path / "gone.yaml", files, faces)
    assert names == people.Names({}, [f"names file {tmp_path / 'gone.yaml'}: cannot be read (No such file or "
                                      "directory); no person is named"])  # fmt: skip
    path = names_file(tmp_path, "Ann: [p.jpg#0, p.jpg#1]\nBea: [p.jpg#0]\n")
    names = people.read_names(path, files, faces)
    assert names.examples == {"Ann": [1]}
    assert names.problems == [
        f"names file {path}: face #0 of p.jpg is given to Ann and Bea: it is an example of none of them",
        f"names file {path}: Bea: no example face found, so no person is named Bea",
    ]


def test_the_step_names_people_and_reports_a_vanished_example(tmp_path: Path, caplog) -> None:
    """people_table on Parquet tables: the names file names one person, and one example's photo is gone.
    The problem reaches the step's log, the outcome file, and the report's people and errors pages."""
    import json
    from html.parser import HTMLParser

    import pandas as pd

    from cl_ml_tools.data import tables
    from cl_ml_tools.steps import report

    matrix, truth = identities(2, 3, seed=8)
    files, faces = archive_of(tmp_path, {("a", f"{i}.jpg"): 1 for i in range(6)})
    order = sorted(range(6), key=lambda i: faces.keys[i])
    common = [{"media_id": k.media_id, "input": "a", "path": p, "status": "ok", "error": None, "frame_index": 0,
               "face_index": 0} for k, p in zip(faces.keys, faces.path, strict=True)]  # fmt: skip
    for name, rows in (
        ("faces", [{**c, "quality": 0.8, "crop": None} for c in common]),
        ("face_embeddings", [{**c, "embedding": matrix[i], "model": "x"} for i, c in zip(order, common, strict=True)]),
    ):
        tables.write_parquet(tables.to_arrow(name, rows), tmp_path / f"{name}.parquet")
    ann = faces.path[order.index(4)]  # a face of the second identity
    names = names_file(tmp_path, f"Ann: ['{ann}#0', 'gone.jpg#0']\n")
    settings = people.Settings(names=str(names))
    out = tmp_path / "tables" / "people.parquet"
    out.parent.mkdir()
    people.people_table(tmp_path / "faces.parquet", tmp_path / "face_embeddings.parquet", tmp_path / "ids.parquet",
                        out, settings, files=files, names_out=tmp_path / "names.json")  # fmt: skip
    problem = f"names file {names}: Ann: 'gone.jpg#0': no such file in the archive"
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [problem]
    table = pd.read_parquet(out)
    members = {r.name: {f["media_id"] for f in r.faces} for r in table.itertuples()}
    assert members["Ann"] == {faces.keys[i].media_id for i in range(6) if truth[order[i]] == 1}
    ann_id = int(table.person_id[table.name == "Ann"].iloc[0])
    assert json.loads((tmp_path / "names.json").read_text()) == {
        "names_file": str(names), "people": {"Ann": ann_id},
        "problems": [problem],
    }  # fmt: skip
    assert people.read_problems(tmp_path / "names.json") == [problem]

    class Text(HTMLParser):
        def __init__(self, page: str) -> None:
            super().__init__()
            self.text: list[str] = []
            self.feed(page)

        def handle_data(self, data: str) -> None:
            self.text.append(data)

    settings_r = report.Settings()
    shown = Text(report.people_page(tables.load("people", tmp_path), pd.read_parquet(tmp_path / "faces.parquet"),
                                    settings_r, [problem])).text  # fmt: skip
    assert problem in shown and f"Ann (person {ann_id})" in shown and "Person 1" in shown
    empty = pd.DataFrame({"status": [], "path": [], "error": []})
    shown = Text(report.errors_page([("faces", empty)], settings_r, [("people", "people.names", problem)])).text
    assert ["people", "people.names", problem] == shown[shown.index("people") : shown.index("people") + 3]


@pytest.mark.e2e
def test_pipeline_names_a_person_and_reruns_people_when_the_names_file_changes(tmp_path: Path) -> None:
    """The real snakemake: a relative names file names Grace Hopper; editing the file schedules people alone
    (Snakemake's mtime trigger on an input), and a bad or missing file is reported, never fatal."""
    import json
    import shutil

    from conftest import SAMPLE, snakemake, write_config
    from test_workflow import job_counts

    from cl_ml_tools.data import tables

    shutil.copytree(SAMPLE / "2023 reunion", tmp_path / "archive" / "2023")
    names = tmp_path / "names.yaml"
    names.write_text('Grace: ["2023/hopper.jpg#0"]\n')
    off = {"enabled": False}
    write_config(tmp_path, {"photos": "archive"}, hls=off, dino=off, clip=off, report=off,
                 people={"max_distance": 0.35, "names": "names.yaml"})  # fmt: skip
    snakemake(tmp_path)
    results = tmp_path / "results"
    faces = tables.people_faces(results).merge(tables.load("people", results)[["person_id", "name"]])
    files = tables.load("files", results).set_index("media_id").relpath
    assert {n: {files[m] for m in g.media_id} for n, g in faces.groupby("name")} == {
        "Grace": {"2023/hopper.jpg", "2023/together.jpg"}
    }

    names.write_text('Grace: ["2023/hopper.jpg#0"]\nEileen: ["2023/gone.jpg#0"]\n')
    assert job_counts(snakemake(tmp_path, "--dry-run").stdout) == {"all": 1, "people": 1}
    snakemake(tmp_path)
    gone = "names file names.yaml: Eileen: '2023/gone.jpg#0': no such file in the archive"
    outcome = json.loads((results / "people" / "names.json").read_text())
    assert outcome["problems"] == [gone, "names file names.yaml: Eileen: no example face found, so no person "
                                   "is named Eileen"]  # fmt: skip
    assert gone in (results / "logs" / "people" / "people.log").read_text()
    assert set(outcome["people"]) == {"Grace"}

    names.unlink()
    assert job_counts(snakemake(tmp_path, "--dry-run").stdout) == {"all": 1, "people": 1}
    snakemake(tmp_path)
    assert json.loads((results / "people" / "names.json").read_text())["problems"] == [
        "names file names.yaml: cannot be read (No such file or directory); no person is named"
    ]
    assert tables.load("people", results).name.isna().all()
