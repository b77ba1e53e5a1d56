"""Duplicate groups over the whole archive: exact copies, pixel-identical files, near duplicates.

- ``exact``: the same bytes (``hashes.sha512``).
- ``pixel``: the same decoded pixels (``hashes.pixel_sha512``) in files whose bytes differ (a re-saved PNG,
  a JPEG with its metadata stripped).
- ``near``: images whose DINOv2 embeddings have cosine ≥ ``cosine`` *and* whose perceptual hashes are within
  ``phash_distance`` bits (both must agree: DINOv2 alone pairs different shots of one scene, the pHash alone
  pairs unrelated flat pictures); videos whose preview frames match frame by frame (each frame's best match
  in the other video, averaged, both ways), so two videos that merely open on the same black frame are not
  duplicates. Images are never matched with videos.

Every group lists all its members; a group of a weaker kind is only reported when it joins files that are
not already one group of a stronger kind. Each row carries the evidence against the group's representative
(the largest file): Hamming distance of the pHashes and cosine of the embeddings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .embeddings import VIDEO_MEAN_FRAME
from .inventory import media_kind
from .steps import Row, StepSettings
from .tables import STATUS_OK, base_row

EXACT, PIXEL, NEAR = "exact", "pixel", "near"
# Pairs are found by blocks of this many rows of the embedding matrix, so memory stays at block × n floats.
BLOCK = 2048


@dataclass(frozen=True)
class Settings(StepSettings):
    cosine: float = 0.95
    phash_distance: int = 10
    # Videos whose mean embeddings are this much below ``cosine`` are not compared frame by frame.
    video_prefilter_margin: float = 0.15


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return [g for g in out.values() if len(g) > 1]


def similar_pairs(vectors: np.ndarray, threshold: float) -> Iterable[tuple[int, int, float]]:
    """Pairs (i < j) of rows of the L2-normalised ``vectors`` with cosine ≥ ``threshold``, by blocks."""
    n = len(vectors)
    for start in range(0, n, BLOCK):
        block = vectors[start : start + BLOCK] @ vectors.T
        rows, cols = np.nonzero(block >= threshold)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if i < c:
                yield i, c, float(block[r, c])


def video_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Frame-by-frame agreement of two videos' preview-frame embeddings (rows): the mean over each video's
    frames of its best cosine in the other, the smaller of the two directions."""
    sims = a @ b.T
    return float(min(sims.max(axis=1).mean(), sims.max(axis=0).mean()))


def _hamming(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else (int(a) ^ int(b)).bit_count()


class _Embeddings:
    """DINOv2 vectors by file index: frame 0 of images, every preview frame and the mean row of videos."""

    def __init__(self, dino: Sequence[Mapping[str, Any]], index: Mapping[str, int], kinds: Mapping[str, str]):
        self.images: dict[int, np.ndarray] = {}
        self.means: dict[int, np.ndarray] = {}
        frames: dict[int, list[np.ndarray]] = {}
        for row in dino:
            i = index.get(row["media_id"])
            if i is None or row["status"] != STATUS_OK:
                continue
            vector = np.asarray(row["embedding"], dtype=np.float32)
            if kinds.get(row["media_id"]) == "video":
                if row["frame_index"] == VIDEO_MEAN_FRAME:
                    self.means[i] = vector
                else:
                    frames.setdefault(i, []).append(vector)
            elif row["frame_index"] == 0:
                self.images[i] = vector
        self.videos = {i: np.stack(f) for i, f in frames.items()}

    def cosine(self, i: int, j: int) -> float | None:
        if i in self.images and j in self.images:
            return float(self.images[i] @ self.images[j])
        if i in self.videos and j in self.videos:
            return video_similarity(self.videos[i], self.videos[j])
        return None


def find_duplicates(
    files: Sequence[Mapping[str, Any]],
    hashes: Sequence[Mapping[str, Any]],
    dino: Sequence[Mapping[str, Any]],
    settings: Settings,
) -> list[Row]:
    """Rows of the ``duplicates`` table from the ``files``, ``hashes`` and ``dino`` tables (row dicts;
    ``dino`` may be empty, which leaves only exact and pixel groups)."""
    by_id = {h["media_id"]: h for h in hashes if h["status"] == STATUS_OK}
    info = {f["media_id"]: f for f in files}
    ids = sorted(by_id)
    index = {m: i for i, m in enumerate(ids)}
    kinds = {m: media_kind(info[m]["kind"], info[m]["path"]) for m in ids if m in info}
    size = [info.get(m, {}).get("size") or 0 for m in ids]
    vectors = _Embeddings(dino, index, kinds)

    exact = _UnionFind(len(ids))
    _join_equal(exact, [by_id[m].get("sha512") for m in ids])
    pixel = _UnionFind(len(ids))
    _join_equal(pixel, [by_id[m].get("pixel_sha512") for m in ids])
    near = _UnionFind(len(ids))
    _join_near(near, [by_id[m].get("phash") for m in ids], vectors, settings)

    rows: list[Row] = []
    reported: list[set[int]] = []
    for kind, uf in ((EXACT, exact), (PIXEL, pixel), (NEAR, near)):
        for members in sorted(uf.groups(), key=min):
            if any(set(members) <= r for r in reported):
                continue  # already one group of a stronger kind
            reported.append(set(members))
            rep = max(members, key=lambda i: (size[i], -i))
            a = by_id[ids[rep]]
            for i in sorted(members):
                b = by_id[ids[i]]
                rows.append(
                    {
                        **base_row(b),
                        "group_id": len(reported),
                        "kind": kind,
                        "group_size": len(members),
                        "representative": ids[rep],
                        "phash_distance": _hamming(a.get("phash"), b.get("phash")),
                        "cosine": vectors.cosine(rep, i),
                    }
                )
    return rows


def _join_equal(uf: _UnionFind, keys: Sequence[str | None]) -> None:
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key:
            uf.union(first.setdefault(key, i), i)


def _join_near(uf: _UnionFind, phashes: Sequence[int | None], vectors: _Embeddings, settings: Settings) -> None:
    if vectors.images:
        order = sorted(vectors.images)
        matrix = np.stack([vectors.images[i] for i in order])
        for a, b, _ in similar_pairs(matrix, settings.cosine):
            distance = _hamming(phashes[order[a]], phashes[order[b]])
            if distance is not None and distance <= settings.phash_distance:
                uf.union(order[a], order[b])
    if vectors.means:
        order = sorted(vectors.means)
        matrix = np.stack([vectors.means[i] for i in order])
        for a, b, _ in similar_pairs(matrix, settings.cosine - settings.video_prefilter_margin):
            cosine = vectors.cosine(order[a], order[b])
            if cosine is not None and cosine >= settings.cosine:
                uf.union(order[a], order[b])
