"""People: the archive's face embeddings clustered into persons, with person ids that survive reruns.

Clustering is scikit-learn's DBSCAN on the L2-normalised ArcFace embeddings: two faces are neighbours when
their cosine distance is at most ``max_distance`` (computed as the Euclidean distance of unit vectors,
|a − b|² = 2 − 2·cos, which scikit-learn computes in bounded chunks with BLAS), and a person is a connected
group of faces each with at least ``min_faces`` − 1 neighbours. DBSCAN rather than HDBSCAN:
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
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .fileio import atomic_path
from .models import l2_normalise
from .steps import StepSettings
from .tables import FACE, STATUS_OK, embedding_matrix

log = logging.getLogger(__name__)

IDS_FILE = "people_ids.parquet"
"""Which face had which person id in the last run, in ``results/people/``; not a declared Snakemake output,
because Snakemake deletes a job's outputs before running it and the ids must outlive that."""


@dataclass(frozen=True)
class Settings(StepSettings):
    min_faces: int = 2
    min_quality: float = 0.2
    max_distance: float = 0.5


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
    emb = pq.read_table(face_embeddings, columns=[*key, "status", "embedding"])
    emb = emb.filter(pc.equal(emb.column("status"), STATUS_OK))
    det = pq.read_table(faces, columns=[*key, "status", "path", "quality", "crop"])
    det = det.filter(pc.equal(det.column("status"), STATUS_OK)).drop_columns("status")
    # Arrow cannot carry a fixed-size list through a join: join the keys with a row number, then take.
    rows = emb.select(key).append_column("row", pa.array(np.arange(emb.num_rows)))
    joined = rows.join(det, key, join_type="inner").sort_by([(k, "ascending") for k in key])
    matrix = embedding_matrix(emb)
    return Faces(
        keys=[FaceKey(*k) for k in zip(*(joined.column(c).to_pylist() for c in key), strict=True)],
        matrix=l2_normalise(matrix[joined.column("row").to_numpy()]),
        quality=joined.column("quality").to_numpy(zero_copy_only=False).astype(np.float32),
        path=joined.column("path").to_pylist(),
        crop=joined.column("crop").to_pylist(),
    )


def cluster(matrix: np.ndarray, quality: np.ndarray, settings: Settings) -> np.ndarray:
    """A cluster label per face (−1: nobody), clusters numbered from 0 in no particular order."""
    from sklearn.cluster import DBSCAN  # ~0.5 s of imports, only in this step

    labels = np.full(len(matrix), -1, dtype=np.int64)
    seeds = np.flatnonzero(quality >= settings.min_quality)
    if len(seeds) >= settings.min_faces:
        radius = float(np.sqrt(2.0 * settings.max_distance))  # Euclidean distance of unit vectors at that cosine
        labels[seeds] = DBSCAN(eps=radius, min_samples=settings.min_faces, metric="euclidean").fit_predict(
            matrix[seeds]
        )
    found = np.array(sorted(set(labels.tolist()) - {-1}), dtype=np.int64)
    if not len(found):
        return labels
    centroids = _centroids(matrix, labels, found)
    for start in range(0, len(matrix), 4096):  # blocks: faces x people can be far larger than memory
        block = slice(start, start + 4096)
        cosine = matrix[block] @ centroids.T
        best = cosine.argmax(axis=1)
        joins = 1.0 - cosine[np.arange(len(cosine)), best] <= settings.max_distance
        labels[block] = np.where(labels[block] >= 0, labels[block], np.where(joins, found[best], -1))
    return labels


def _centroids(matrix: np.ndarray, labels: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Unit mean vector of each cluster in ``found``, in one pass over the faces (not one per cluster)."""
    labelled = labels >= 0
    sums = np.zeros((len(found), matrix.shape[1]), dtype=np.float64)
    np.add.at(sums, np.searchsorted(found, labels[labelled]), matrix[labelled])
    return l2_normalise(sums)


def members_of(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Indices of each cluster's faces, ascending, from one stable sort."""
    order = np.argsort(labels, kind="stable")
    values, starts = np.unique(labels[order], return_index=True)
    groups = np.split(order, starts[1:]) if len(order) else []
    return {int(v): g for v, g in zip(values, groups, strict=True) if v >= 0}


def assign_ids(
    clusters: Sequence[Sequence[FaceKey]], previous: Mapping[FaceKey, int], next_id: int
) -> tuple[list[int], int]:
    """A person id per cluster (see the module docstring), and the next id never used."""
    overlaps = Counter((c, previous[k]) for c, members in enumerate(clusters) for k in members if k in previous)
    ids: list[int | None] = [None] * len(clusters)
    taken: set[int] = set()
    for (c, pid), _ in sorted(overlaps.items(), key=lambda kv: (-kv[1], kv[0][1], kv[0][0])):
        if ids[c] is None and pid not in taken:
            ids[c] = pid
            taken.add(pid)
    out = []
    for pid in ids:
        if pid is None:
            pid, next_id = next_id, next_id + 1
        out.append(pid)
    return out, next_id


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
    faces: Faces, settings: Settings, previous: Mapping[FaceKey, int], next_id: int
) -> tuple[list[dict[str, Any]], int]:
    """Rows of the ``people`` table, largest person first, and the next unused id."""
    labels = cluster(faces.matrix, faces.quality, settings)
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
