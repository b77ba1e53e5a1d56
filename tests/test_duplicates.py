"""Duplicate groups from hashes and DINOv2 embeddings (rows built here, no model involved)."""

from __future__ import annotations

import numpy as np

from cl_ml_tools.steps import duplicates

RNG = np.random.default_rng(0)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def file_row(media_id: str, kind: str = "image", size: int = 1000) -> dict:
    return {"media_id": media_id, "input": "t", "path": f"/a/{media_id}", "status": "ok", "error": None,
            "kind": kind, "size": size}  # fmt: skip


def hash_row(media_id: str, sha: str, pixel: str | None, phash: int | None) -> dict:
    return {"media_id": media_id, "input": "t", "path": f"/a/{media_id}", "status": "ok", "error": None,
            "sha512": sha, "pixel_sha512": pixel, "phash": phash}  # fmt: skip


def dino_row(media_id: str, frame: int, vector: np.ndarray) -> dict:
    return {"media_id": media_id, "status": "ok", "frame_index": frame, "embedding": vector}


def groups(rows: list[dict]) -> dict[str, set[frozenset[str]]]:
    out: dict[str, dict[int, set[str]]] = {}
    for r in rows:
        out.setdefault(r["kind"], {}).setdefault(r["group_id"], set()).add(r["media_id"])
    return {kind: {frozenset(m) for m in g.values()} for kind, g in out.items()}


def test_exact_pixel_and_near_groups_with_evidence() -> None:
    base = unit(RNG.normal(size=384))
    other = unit(RNG.normal(size=384))
    close = unit(base + 0.05 * unit(RNG.normal(size=384)))  # cosine ~0.999
    phash = 0x0F0F_F0F0_1234_5678
    files = [file_row(m, size=s) for m, s in (("a", 5000), ("b", 5000), ("c", 4000), ("d", 3000), ("e", 100))]
    files.append(file_row("f"))
    hashes = [
        hash_row("a", "s1", "p1", phash),
        hash_row("b", "s1", "p1", phash),  # a byte copy of a
        hash_row("c", "s2", "p1", phash),  # same pixels, other bytes (a re-saved PNG)
        hash_row("d", "s3", "p2", phash ^ 0b111),  # resized copy: close embedding, pHash 3 bits away
        hash_row("e", "s4", "p3", phash ^ 0b1),  # unrelated picture that happens to share the pHash
        hash_row("f", "s5", "p4", ~phash & (2**64 - 1)),  # looks alike to DINOv2, pHash far away
    ]
    dino = [dino_row("a", 0, base), dino_row("b", 0, base), dino_row("c", 0, base), dino_row("d", 0, close),
            dino_row("e", 0, other), dino_row("f", 0, close)]  # fmt: skip
    rows = duplicates.find_duplicates(files, hashes, dino, duplicates.Settings(cosine=0.95, phash_distance=10))
    assert groups(rows) == {
        "exact": {frozenset("ab")},
        "pixel": {frozenset("abc")},
        "near": {frozenset("abcd")},
    }
    near = {r["media_id"]: r for r in rows if r["kind"] == "near"}
    assert {r["representative"] for r in near.values()} == {"a"}  # the largest file; ties: first id
    assert near["a"]["cosine"] == 1.0 and near["a"]["phash_distance"] == 0
    assert near["d"]["phash_distance"] == 3 and near["d"]["cosine"] > 0.99
    assert all(r["group_size"] == 4 for r in near.values())
    assert len({r["group_id"] for r in rows}) == 3


def test_without_embeddings_only_exact_and_pixel_groups() -> None:
    files = [file_row(m) for m in "xyz"]
    hashes = [hash_row("x", "s", "p", 1), hash_row("y", "s", "p", 1), hash_row("z", "t", "q", 1)]
    rows = duplicates.find_duplicates(files, hashes, [], duplicates.Settings())
    assert groups(rows) == {"exact": {frozenset("xy")}}
    assert all(r["cosine"] is None for r in rows)


def test_videos_that_only_share_a_black_opening_are_not_duplicates() -> None:
    black = unit(RNG.normal(size=384))
    scenes = [unit(RNG.normal(size=384)) for _ in range(8)]
    v1 = [black, *scenes[:4]]
    v2 = [black, *scenes[4:]]  # another film, same black first frame
    v3 = [unit(f + 0.03 * unit(RNG.normal(size=384))) for f in v1]  # v1 re-encoded
    files = [file_row(m, kind="video") for m in ("v1", "v2", "v3")]
    hashes = [hash_row(m, f"s{m}", None, None) for m in ("v1", "v2", "v3")]
    dino = []
    for media_id, frames in (("v1", v1), ("v2", v2), ("v3", v3)):
        dino += [dino_row(media_id, i, f) for i, f in enumerate(frames)]
        dino.append(dino_row(media_id, -1, unit(np.mean(frames, axis=0))))
    rows = duplicates.find_duplicates(files, hashes, dino, duplicates.Settings(cosine=0.95))
    assert groups(rows) == {"near": {frozenset(["v1", "v3"])}}
    assert duplicates.video_similarity(np.stack(v1), np.stack(v2)) < 0.5


def test_images_are_never_matched_with_videos() -> None:
    vector = unit(RNG.normal(size=384))
    files = [file_row("img"), file_row("vid", kind="video")]
    hashes = [hash_row("img", "a", "p", 5), hash_row("vid", "b", None, 5)]
    dino = [dino_row("img", 0, vector), dino_row("vid", 0, vector), dino_row("vid", -1, vector)]
    assert duplicates.find_duplicates(files, hashes, dino, duplicates.Settings()) == []


def test_pairs_are_found_across_blocks(monkeypatch) -> None:
    monkeypatch.setattr(duplicates, "BLOCK", 3)
    vectors = np.stack([unit(RNG.normal(size=16)) for _ in range(10)])
    vectors[8] = vectors[1]
    vectors[9] = unit(vectors[4] + 0.01)
    pairs = {(i, j) for i, j, _ in duplicates.similar_pairs(vectors, 0.99)}
    assert pairs == {(1, 8), (4, 9)}


def planted(n_originals: int = 1500, seed: int = 1) -> tuple[list[dict], list[dict], list[dict]]:
    """Row dicts of originals and their copies: byte copies, pixel copies, near copies (close embedding,
    a few pHash bits), look-alikes (close embedding, unrelated pHash), copies about at the cosine threshold
    (0.95) and near misses (about 0.91)."""
    rng = np.random.default_rng(seed)
    files, hashes, dino = [], [], []

    def add(sha: str, pixel: str, phash: int, vector: np.ndarray) -> None:
        media_id = f"m{len(files):05d}"
        files.append(file_row(media_id, size=int(rng.integers(1000, 5000))))
        hashes.append(hash_row(media_id, sha, pixel, phash))
        dino.append(dino_row(media_id, 0, vector))

    # Length of the random step away from the original, by kind of copy (cosine = 1 / sqrt(1 + step²)).
    step = {2: 0.05, 3: 0.05, 4: 0.33, 5: 0.45}
    for i in range(n_originals):
        original, phash = unit(rng.normal(size=384)), int(rng.integers(0, 2**63))
        add(f"s{i}", f"p{i}", phash, original)
        for k, kind in enumerate(rng.choice(6, size=int(rng.integers(0, 3)))):
            if kind < 2:  # a byte copy, or the same pixels in other bytes
                add(f"s{i}" if kind == 0 else f"s{i}-{k}", f"p{i}", phash, original)
                continue
            vector = unit(original + step[kind] * unit(rng.normal(size=384)))
            add(f"s{i}-{k}", f"p{i}-{k}", int(rng.integers(0, 2**63)) if kind == 3 else phash ^ k, vector)
    return files, hashes, dino


def test_the_index_finds_the_groups_of_the_exact_search() -> None:
    files, hashes, dino = planted()
    settings = duplicates.Settings()
    exact = duplicates.find_duplicates(files, hashes, dino, settings)
    assert set(groups(exact)) == {"exact", "pixel", "near"}
    index = duplicates.find_duplicates(files, hashes, dino, settings, duplicates.neighbours.Search(exact_below=0))
    assert index == exact


def test_tables_on_disk_give_the_rows_of_the_dicts(tmp_path) -> None:
    from cl_ml_tools.data import tables

    files, hashes, dino = planted(300, seed=2)
    hashes.append({**hash_row("gone", "s0", "p0", 1), "status": "error"})  # an error row joins nothing
    dino.insert(5, {**dino_row(dino[0]["media_id"], 0, None), "status": "error"})  # a null embedding
    rows = {"files": files, "hashes": hashes, "dino": dino}
    for name, table in rows.items():
        folder = tmp_path / f"{name}.parquet"
        folder.mkdir()
        full = [{"input": "t", "path": "/a", "error": None, **r} for r in table]
        for part, start in enumerate((0, len(full) // 2)):
            chunk = full[start : len(full) // 2] if part == 0 else full[start:]
            tables.write_parquet(tables.to_arrow(name, chunk), folder / f"{part:04d}.parquet")
    on_disk = duplicates.find_duplicates(*(tmp_path / f"{n}.parquet" for n in rows), duplicates.Settings())
    assert on_disk == duplicates.find_duplicates(files, hashes, dino, duplicates.Settings())
    assert on_disk
