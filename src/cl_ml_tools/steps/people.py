"""People: the archive's face embeddings clustered into persons, with person ids that survive reruns.

Clustering is DBSCAN on the L2-normalised ArcFace embeddings: two faces are neighbours when their cosine
distance is at most ``max_distance``, and a person is a connected group of faces each with at least
``min_faces`` − 1 neighbours. The labels are scikit-learn's DBSCAN's (``neighbours.dbscan``: the same core
points, clusters and numbering, from neighbour pairs found a block at a time instead of one neighbour list
per face); up to 20 000 faces every pair is compared, above that faiss's inverted file proposes the pairs
(docs/design.md: why, and how many it misses). DBSCAN rather than HDBSCAN:
on well-separated identities HDBSCAN either finds nothing in an archive of one person or, allowed a single
cluster, merges everyone (tests/test_people.py has such identities); DBSCAN's one threshold is also the
one users know from Immich (``max_distance``). Only faces of at least ``min_quality`` seed clusters: blurred,
tiny or profile faces have embeddings that bridge unrelated people. Afterwards every face not in a cluster
(the low-quality ones and DBSCAN's noise) joins the person whose centroid is nearest, if that is within
``max_distance``, and stays unassigned otherwise.

Stable ids: each run records which face got which id (:data:`IDS_FILE` beside the table). The next run gives
a new cluster the id of the earlier person it shares the most faces with (largest overlaps first, each old
id used once); clusters sharing no face with any earlier person get ids never used before. Adding photos
therefore keeps every person's id; two earlier persons merged by new photos keep the id of the one they
share more faces with, and the other id is retired.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..data import neighbours
from ..data.config import schema_defaults
from ..data.tables import FACE, STATUS_OK, embedding_rows, read_columns, write_part
from ..media.fileio import atomic_path
from ..models import l2_normalise
from .common import StepSettings, assign_ids

log = logging.getLogger(__name__)

IDS_FILE = "people_ids.parquet"
"""Which face had which person id in the last run, in ``results/people/``; not a declared Snakemake output,
because Snakemake deletes a job's outputs before running it and the ids must outlive that."""


@dataclass(frozen=True)
@schema_defaults("people")
class Settings(StepSettings):
    min_faces: int
    min_quality: float
    max_distance: float


class FaceKey(NamedTuple):
    media_id: str
    frame_index: int
    face_index: int


@dataclass(frozen=True)
class Faces:
    """The archive's embedded faces: keys, their (n, 512) unit-vector matrix, and what the faces table says."""

    keys: list[FaceKey]
    matrix: np.ndarray
    quality: np.ndarray
    path: list[str]
    crop: list[str | None]


def read_faces(faces: str | os.PathLike[str], face_embeddings: str | os.PathLike[str]) -> Faces:
    """Join the ok rows of the two consolidated tables on the face key, in key order (so the clustering,
    and the ids it leads to, do not depend on shard order)."""
    key = list(FaceKey._fields)
    emb = read_columns("face_embeddings", face_embeddings, [*key, "status"])
    # Row numbers before filtering: they say where each face's embedding is in the table.
    emb = emb.append_column("row", pa.array(np.arange(emb.num_rows)))
    emb = emb.filter(pc.equal(emb.column("status"), STATUS_OK)).drop_columns("status")
    det = pq.read_table(faces, columns=[*key, "status", "path", "quality", "crop"])
    det = det.filter(pc.equal(det.column("status"), STATUS_OK)).drop_columns("status")
    joined = emb.join(det, key, join_type="inner").sort_by([(k, "ascending") for k in key])
    matrix = embedding_rows(face_embeddings, joined.column("row").to_numpy())
    _normalise(matrix)
    return Faces(
        keys=[FaceKey(*k) for k in zip(*(joined.column(c).to_pylist() for c in key), strict=True)],
        matrix=matrix,
        quality=joined.column("quality").to_numpy(zero_copy_only=False).astype(np.float32),
        path=joined.column("path").to_pylist(),
        crop=joined.column("crop").to_pylist(),
    )


def _normalise(matrix: np.ndarray, chunk: int = 65536) -> None:
    """``l2_normalise`` in place, by chunks: at two million faces a normalised copy would be 4 GB more."""
    for start in range(0, len(matrix), chunk):
        part = matrix[start : start + chunk]
        part /= np.maximum(np.linalg.norm(part, axis=-1, keepdims=True), 1e-12)


def cluster(
    matrix: np.ndarray, quality: np.ndarray, settings: Settings, search: neighbours.Search = neighbours.SEARCH
) -> np.ndarray:
    """A cluster label per face (−1: nobody), clusters numbered from 0 in no particular order."""
    labels = np.full(len(matrix), -1, dtype=np.int64)
    seeds = np.flatnonzero(quality >= settings.min_quality)
    if len(seeds) < settings.min_faces:
        return labels
    min_cosine = 1.0 - settings.max_distance
    labels[seeds] = neighbours.dbscan(neighbours.Rows(matrix, seeds), min_cosine, settings.min_faces, search)
    found = np.unique(labels[labels >= 0])
    if not len(found):
        return labels
    lone = np.flatnonzero(labels == -1)
    centroids = _centroids(matrix, labels, found)
    best, cosine = neighbours.nearest(neighbours.Rows(matrix, lone), centroids, search)
    joins = (best >= 0) & (1.0 - cosine <= settings.max_distance)
    labels[lone[joins]] = found[best[joins]]
    return labels


def _centroids(matrix: np.ndarray, labels: np.ndarray, found: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """Unit mean vector of each cluster in ``found``, summed in float64 over faces sorted by cluster, a chunk
    at a time (one pass over the faces, not one per cluster, and no float64 copy of the matrix)."""
    order = np.flatnonzero(labels >= 0)
    order = order[np.argsort(labels[order], kind="stable")]
    sums = np.zeros((len(found), matrix.shape[1]), dtype=np.float64)
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        cluster = np.searchsorted(found, labels[part])
        starts = np.flatnonzero(np.r_[True, cluster[1:] != cluster[:-1]])
        sums[cluster[starts]] += np.add.reduceat(matrix[part].astype(np.float64), starts, axis=0)
    return l2_normalise(sums)


def members_of(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Indices of each cluster's faces, ascending, from one stable sort."""
    order = np.argsort(labels, kind="stable")
    values, starts = np.unique(labels[order], return_index=True)
    groups = np.split(order, starts[1:]) if len(order) else []
    return {int(v): g for v, g in zip(values, groups, strict=True) if v >= 0}


def read_ids(path: str | os.PathLike[str]) -> tuple[dict[FaceKey, int], int]:
    """The face → person id map of the last run, and its next unused id (1 when there was no run)."""
    if not Path(path).exists():
        return {}, 1
    table = pq.read_table(path)
    keys = zip(*(table.column(c).to_pylist() for c in FaceKey._fields), strict=True)
    ids = dict(zip((FaceKey(*k) for k in keys), table.column("person_id").to_pylist(), strict=True))
    next_id = int((table.schema.metadata or {}).get(b"next_id", b"1"))
    return ids, max([next_id, *(i + 1 for i in ids.values())])


def write_ids(path: str | os.PathLike[str], people: Sequence[Mapping[str, Any]], next_id: int) -> None:
    columns: dict[str, list[Any]] = {c: [] for c in (*FaceKey._fields, "person_id")}
    for person in people:
        for face in person["faces"]:
            for c in FaceKey._fields:
                columns[c].append(face[c])
            columns["person_id"].append(person["person_id"])
    schema = pa.schema([*FACE, ("person_id", pa.int64())], metadata={"next_id": str(next_id)})
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns, schema=schema), tmp)


def find_people(
    faces: Faces,
    settings: Settings,
    previous: Mapping[FaceKey, int],
    next_id: int,
    search: neighbours.Search = neighbours.SEARCH,
) -> tuple[list[dict[str, Any]], int]:
    """Rows of the ``people`` table, largest person first, and the next unused id."""
    labels = cluster(faces.matrix, faces.quality, settings, search)
    members = members_of(labels)
    # Largest first, so that a first run numbers people by how often they appear.
    order = sorted(members, key=lambda c: (-len(members[c]), faces.keys[members[c][0]]))
    clusters = [[faces.keys[i] for i in members[c]] for c in order]
    ids, next_id = assign_ids(clusters, previous, next_id)
    rows = []
    for c, pid in zip(order, ids, strict=True):
        idx = members[c]
        centroid = l2_normalise(faces.matrix[idx].mean(axis=0))
        # The most typical face among the good ones: closest to the centroid, weighted by quality.
        rep = idx[int(np.argmax((faces.matrix[idx] @ centroid) * faces.quality[idx]))]
        rows.append(
            {
                "person_id": pid,
                "size": len(idx),
                "photos": len({faces.keys[i].media_id for i in idx}),
                "faces": [faces.keys[i]._asdict() for i in idx],
                **faces.keys[rep]._asdict(),
                "path": faces.path[rep],
                "crop": faces.crop[rep],
                "quality": float(faces.quality[rep]),
            }
        )
    unassigned = int((labels == -1).sum())
    log.info("%d faces: %d people, %d faces unassigned", len(faces.keys), len(rows), unassigned)
    return sorted(rows, key=lambda r: (-r["size"], r["person_id"])), next_id


def people_table(
    faces: str | os.PathLike[str],
    face_embeddings: str | os.PathLike[str],
    ids: str | os.PathLike[str],
    output: str | os.PathLike[str],
    settings: Settings,
    search: neighbours.Search = neighbours.SEARCH,
) -> None:
    """The whole step: the consolidated tables in, the ``people`` part and the id file out."""
    previous, next_id = read_ids(ids)
    rows, next_id = find_people(read_faces(faces, face_embeddings), settings, previous, next_id, search)
    write_ids(ids, rows, next_id)
    write_part("people", rows, output)


def archive(inputs: Mapping[str, Any], output: str, settings: Settings, params: Mapping[str, Any]) -> None:
    """The rule's job: its ``faces`` and ``face_embeddings`` tables, the id file named by its ``ids`` param."""
    people_table(inputs["faces"], inputs["face_embeddings"], params["ids"], output, settings)
