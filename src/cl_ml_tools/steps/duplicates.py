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

The tables are read as Arrow columns and the embeddings as one float32 matrix (``tables.embedding_rows``),
never as a Python object per row; near pairs come from ``neighbours`` (every pair compared up to 20 000
images, faiss's inverted file above), and the pHash test is applied to the pairs it finds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..data import neighbours
from ..data.config import schema_defaults
from ..data.tables import STATUS_OK, Source, base_row, embedding_rows, read_columns, write_part
from ..media.sniff import media_kind
from .common import Row, StepSettings
from .image_embeddings import VIDEO_MEAN_FRAME

EXACT, PIXEL, NEAR = "exact", "pixel", "near"
# Pairs are found by blocks of this many rows of the embedding matrix, so memory stays at block × n floats.
BLOCK = 2048


@dataclass(frozen=True)
@schema_defaults("duplicates")
class Settings(StepSettings):
    cosine: float
    phash_distance: int
    # Videos whose mean embeddings are this much below ``cosine`` are not compared frame by frame.
    video_prefilter_margin: float


def similar_pairs(vectors: np.ndarray, threshold: float) -> Iterator[tuple[int, int, float]]:
    """Pairs (i < j) of rows of the L2-normalised ``vectors`` with cosine ≥ ``threshold``, every pair
    compared, by blocks of :data:`BLOCK` rows."""
    for b in neighbours.exact_blocks(vectors, block=BLOCK, once=True):
        r, c = np.nonzero(b.once & (b.sims >= threshold))
        yield from zip(b.rows[r].tolist(), b.cols[c].tolist(), b.sims[r, c].tolist(), strict=True)


def video_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Frame-by-frame agreement of two videos' preview-frame embeddings (rows): the mean over each video's
    frames of its best cosine in the other, the smaller of the two directions."""
    sims = a @ b.T
    return float(min(sims.max(axis=1).mean(), sims.max(axis=0).mean()))


class _Embeddings:
    """DINOv2 vectors by file index: frame 0 of images, every preview frame and the mean row of videos."""

    def __init__(self, dino: Source | None, media: pa.Array, video: np.ndarray):
        columns = ["media_id", "status", "frame_index"]
        on_disk = isinstance(dino, str | os.PathLike)
        table = read_columns("dino", [] if dino is None else dino, columns if on_disk else [*columns, "embedding"])
        file = pc.index_in(table.column("media_id"), value_set=media).to_numpy(zero_copy_only=False)
        ok = pc.equal(table.column("status"), STATUS_OK).to_numpy(zero_copy_only=False)
        keep = np.flatnonzero(ok & ~np.isnan(file))
        file = file[keep].astype(np.int64)
        frame = table.column("frame_index").to_numpy(zero_copy_only=False)[keep]
        is_video = video[file]
        images = _last(file, ~is_video & (frame == 0))
        means = _last(file, is_video & (frame == VIDEO_MEAN_FRAME))
        frames = np.flatnonzero(is_video & (frame != VIDEO_MEAN_FRAME))
        frames = frames[np.argsort(file[frames], kind="stable")]
        # One pass over the table for all three.
        matrix = embedding_rows(dino if on_disk else table, keep[np.concatenate([images, means, frames])])
        self.images, self.means, frame_matrix = np.split(matrix, [len(images), len(images) + len(means)])
        self.image_files, self.mean_files = file[images], file[means]
        files = file[frames]
        starts = _starts(files)
        self.videos = (
            dict(zip(files[starts].tolist(), np.split(frame_matrix, starts[1:]), strict=True)) if len(files) else {}
        )
        self.image_row = np.full(len(video), -1, dtype=np.int64)
        self.image_row[self.image_files] = np.arange(len(self.image_files))

    def cosine(self, i: int, j: int) -> float | None:
        a, b = self.image_row[i], self.image_row[j]
        if a >= 0 and b >= 0:
            return float(self.images[a] @ self.images[b])
        if i in self.videos and j in self.videos:
            return video_similarity(self.videos[i], self.videos[j])
        return None


def _last(file: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Of the ``wanted`` rows, each file's last one (files ascending): the later row won when these were
    dicts filled in table order."""
    picked = np.flatnonzero(wanted)[::-1]
    return picked[np.unique(file[picked], return_index=True)[1]]


def find_duplicates(
    files: Source,
    hashes: Source,
    dino: Source | None,
    settings: Settings,
    search: neighbours.Search = neighbours.SEARCH,
) -> list[Row]:
    """Rows of the ``duplicates`` table from the ``files``, ``hashes`` and ``dino`` tables (paths, Arrow
    tables or row dicts; ``dino`` may be empty, which leaves only exact and pixel groups)."""
    hashes_table = _ok_hashes(hashes)
    media = hashes_table.column("media_id").combine_chunks()
    size, video = _file_facts(files, media)
    vectors = _Embeddings(dino, media, video)
    phash = hashes_table.column("phash").combine_chunks()
    phash_ok = phash.is_valid().to_numpy(zero_copy_only=False)
    phash = phash.fill_null(0).to_numpy(zero_copy_only=False)

    labels = (
        (EXACT, _equal(hashes_table.column("sha512"))),
        (PIXEL, _equal(hashes_table.column("pixel_sha512"))),
        (NEAR, _near(phash, phash_ok, vectors, settings, search)),
    )
    # Which reported group of each stronger kind every file is in (-1: none): a group is left out when all
    # its files are in one of those.
    reported: list[np.ndarray] = []
    groups: list[tuple[str, np.ndarray]] = []
    for kind, label in labels:
        mine = np.full(len(media), -1, dtype=np.int64)
        for members in _groups(label):
            if any(r[members[0]] >= 0 and (r[members] == r[members[0]]).all() for r in reported):
                continue
            mine[members] = len(groups)
            groups.append((kind, members))
        reported.append(mine)

    wanted = np.concatenate([m for _, m in groups]) if groups else np.zeros(0, np.int64)
    base = dict(zip(wanted.tolist(), hashes_table.take(pa.array(wanted)).to_pylist(), strict=True))
    rows: list[Row] = []
    for group_id, (kind, members) in enumerate(groups, start=1):
        rep = int(members[np.lexsort((members, -size[members]))[0]])  # the largest file; ties: the first
        for i in members.tolist():
            distance = int(np.bitwise_count(phash[rep] ^ phash[i])) if phash_ok[rep] and phash_ok[i] else None
            rows.append(
                {
                    **base_row(base[i]),
                    "group_id": group_id,
                    "kind": kind,
                    "group_size": len(members),
                    "representative": base[rep]["media_id"],
                    "phash_distance": distance,
                    "cosine": vectors.cosine(rep, i),
                }
            )
    return rows


def duplicates_table(
    files: Source, hashes: Source, dino: Source | None, output: str | os.PathLike[str], settings: Settings
) -> None:
    """The whole step: the consolidated tables in, the ``duplicates`` part out."""
    write_part("duplicates", find_duplicates(files, hashes, dino, settings), output)


def _ok_hashes(hashes: Source) -> pa.Table:
    """The ok ``hashes`` rows, one per file (its last row), sorted by media_id: file ``i`` is row ``i``."""
    table = read_columns("hashes", hashes, ["media_id", "input", "path", "status", "sha512", "pixel_sha512", "phash"])
    table = table.append_column("row", pa.array(np.arange(table.num_rows)))
    table = table.filter(pc.equal(table.column("status"), STATUS_OK))
    table = table.sort_by([("media_id", "ascending"), ("row", "descending")])
    ids = table.column("media_id").combine_chunks()
    if len(ids) > 1:
        first = np.r_[True, pc.not_equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)]
        table = table.filter(pa.array(first))
    return table.drop_columns("row")


def _file_facts(files: Source, media: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Size (0 when unknown) and whether it is a video (``inventory.media_kind``), for each file."""
    table = read_columns("files", files, ["media_id", "path", "raw_path", "kind", "size"])
    at = pc.index_in(media, value_set=table.column("media_id").combine_chunks())
    found = at.is_valid().to_numpy(zero_copy_only=False)
    table = table.take(at.fill_null(0)) if table.num_rows else table
    size = np.zeros(len(media), dtype=np.int64)
    video = np.zeros(len(media), dtype=bool)
    if not found.any():
        return size, video
    size[found] = table.column("size").fill_null(0).to_numpy(zero_copy_only=False)[found]
    kind = table.column("kind").to_numpy(zero_copy_only=False)
    video[found] = kind[found] == "video"
    # Files whose bytes were not recognised count as what their name says; only those need their path.
    named = np.flatnonzero(found & ~np.isin(kind, ["image", "video", "audio"]))
    paths = table.column("path").take(pa.array(named)).to_pylist()
    raw = table.column("raw_path").take(pa.array(named)).to_pylist()
    for i, path, raw_path in zip(named.tolist(), paths, raw, strict=True):
        video[i] = media_kind(kind[i], os.fsdecode(raw_path) if raw_path else path) == "video"
    return size, video


def _equal(keys: pa.ChunkedArray) -> np.ndarray:
    """A label per file, equal for equal non-empty keys (-1: no key)."""
    encoded = keys.combine_chunks().dictionary_encode()
    label = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    empty = pc.index_in(pa.array([""]), value_set=encoded.dictionary)[0].as_py()
    if empty is not None:
        label[label == empty] = -1
    return label


def _groups(label: np.ndarray) -> list[np.ndarray]:
    """Files sharing a label (≥ 0), two or more, ascending; groups in the order of their first file."""
    # Most near labels are singletons: keep the shared ones before splitting.
    files = np.flatnonzero(label >= 0)
    files = files[np.bincount(label[files])[label[files]] > 1] if len(files) else files
    files = files[np.argsort(label[files], kind="stable")]
    groups = [g for g in np.split(files, _starts(label[files])[1:]) if len(g) > 1] if len(files) else []
    return sorted(groups, key=lambda g: g[0])


def _starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Where each run of equal values begins."""
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]) if len(sorted_keys) else sorted_keys


def _near(
    phash: np.ndarray, phash_ok: np.ndarray, vectors: _Embeddings, settings: Settings, search: neighbours.Search
) -> np.ndarray:
    """Near-duplicate components (a label per file; groups of one are singletons)."""
    forest = neighbours.Forest(len(phash))
    files = vectors.image_files
    for b in neighbours.SelfSearch(vectors.images, search).blocks():
        r, c = np.nonzero(b.sims >= settings.cosine)
        i, j = files[b.rows[r]], files[b.cols[c]]
        close = phash_ok[i] & phash_ok[j] & (np.bitwise_count(phash[i] ^ phash[j]) <= settings.phash_distance)
        forest.join(i[close], j[close])
    files = vectors.mean_files
    for b in neighbours.SelfSearch(vectors.means, search).blocks():
        r, c = np.nonzero((b.sims >= settings.cosine - settings.video_prefilter_margin) & (b.rows[:, None] < b.cols))
        for i, j in zip(files[b.rows[r]].tolist(), files[b.cols[c]].tolist(), strict=True):
            cosine = vectors.cosine(i, j)
            if cosine is not None and cosine >= settings.cosine:
                forest.join(np.array([i]), np.array([j]))
    return forest.labels()


def archive(inputs: Mapping[str, Any], output: str, settings: Settings, params: Mapping[str, Any]) -> None:
    """The rule's job: its ``files``, ``hashes`` and (when that step runs) ``dino`` tables."""
    duplicates_table(inputs["files"], inputs["hashes"], inputs.get("dino") or None, output, settings)
