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

Names (``people.names``, a YAML file of name → example faces, :func:`read_names`) constrain the clusters
afterwards (:func:`apply_names`): a cluster holding examples of several names is split, each of its faces
going to the name with the nearest example, among all of those names' examples (highest cosine; ties to
the name listed first); then every
cluster and lone example face holding examples of one name become one person. Faces not in a named cluster
are left as they were. A named person takes the id its name had in the last run before any id is given by
overlap, so names and their ids stay put when photos are added. Problems with the file (missing, not YAML,
an example that matches no face) are logged and written beside the table for the report; they never stop
the step.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from ..data import inventory, neighbours
from ..data.config import schema_defaults
from ..data.tables import FACE, STATUS_OK, embedding_rows, read_columns, write_part
from ..media.fileio import atomic_path, write_bytes_atomic
from ..models import l2_normalise
from . import common
from .common import StepSettings

log = logging.getLogger(__name__)

IDS_FILE = "people_ids.parquet"
"""Which face had which person id in the last run, in ``results/people/``; not a declared Snakemake output,
because Snakemake deletes a job's outputs before running it and the ids must outlive that."""
NAMES_FILE = "names.json"
"""What became of the names file in the last run, in ``results/people/``: the names file, each name's
person id, and the problems found in the file (the report shows them)."""


@dataclass(frozen=True)
@schema_defaults("people")
class Settings(StepSettings):
    min_faces: int
    min_quality: float
    max_distance: float
    names: str | None


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


def assign_ids(
    clusters: Sequence[Sequence[FaceKey]],
    previous: Mapping[FaceKey, int],
    next_id: int,
    names: Sequence[str | None] = (),
    name_ids: Mapping[str, int] | None = None,
) -> tuple[list[int], int]:
    """A person id per cluster (see the module docstring), and the next id never used. ``names`` (one per
    cluster, None for the unnamed) and ``name_ids`` (each name's id in the last run) come first."""
    given = [(name_ids or {}).get(name) if name is not None else None for name in names]
    return common.assign_ids(clusters, previous, next_id, given)


def read_ids(path: str | os.PathLike[str]) -> tuple[dict[FaceKey, int], int]:
    """The face → person id map of the last run, and its next unused id (1 when there was no run)."""
    if not Path(path).exists():
        return {}, 1
    table = pq.read_table(path)
    keys = zip(*(table.column(c).to_pylist() for c in FaceKey._fields), strict=True)
    ids = dict(zip((FaceKey(*k) for k in keys), table.column("person_id").to_pylist(), strict=True))
    next_id = int((table.schema.metadata or {}).get(b"next_id", b"1"))
    return ids, max([next_id, *(i + 1 for i in ids.values())])


def read_name_ids(path: str | os.PathLike[str]) -> dict[str, int]:
    """Each name's person id in the last run (none when there was no run, or no names)."""
    if not Path(path).exists():
        return {}
    return json.loads((pq.read_schema(path).metadata or {}).get(b"names", b"{}"))


def write_ids(path: str | os.PathLike[str], people: Sequence[Mapping[str, Any]], next_id: int) -> None:
    columns: dict[str, list[Any]] = {c: [] for c in (*FaceKey._fields, "person_id")}
    for person in people:
        for face in person["faces"]:
            for c in FaceKey._fields:
                columns[c].append(face[c])
            columns["person_id"].append(person["person_id"])
    named = {p["name"]: p["person_id"] for p in people if p.get("name") is not None}
    metadata = {"next_id": str(next_id), "names": json.dumps(named, ensure_ascii=False)}
    schema = pa.schema([*FACE, ("person_id", pa.int64())], metadata=metadata)
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns, schema=schema), tmp)


ENTRY = re.compile(r"(?P<path>.+)#(?:(?P<frame>\d+)/)?(?P<face>\d+)", re.S)
"""An example face: ``[<input>:]<path>#<face_index>``, or ``#<frame_index>/<face_index>`` in a video."""


@dataclass(frozen=True)
class Names:
    """A names file read against the archive's faces."""

    examples: dict[str, list[int]]
    """Each name's example faces, as positions in :class:`Faces`, names in the file's order."""
    problems: list[str]


def read_names(path: str | os.PathLike[str] | None, files: str | os.PathLike[str] | None, faces: Faces) -> Names:
    """The names file ``path`` (see the module docstring and docs/tables.md), each example looked up in the
    ``files`` table and ``faces``. Whatever cannot be used is left out and described in ``problems``."""
    if path is None:
        return Names({}, [])
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return Names({}, [f"names file {path}: cannot be read ({reason}); no person is named"])
    if document is None:
        return Names({}, [])
    if not isinstance(document, dict):
        return Names({}, [f"names file {path}: must map each name to a list of example faces; no person is named"])
    problems: list[str] = []
    entries: dict[str, list[str]] = {}
    for name, listed in document.items():
        if not isinstance(listed, list) or not all(isinstance(e, str) for e in listed):
            problems.append(
                f"names file {path}: {name}: not a list of example faces like ['folder/photo.jpg#0'], "
                f"so no person is named {name}"
            )
        else:
            entries[str(name)] = listed
    lookup = _Lookup(files, faces, {e for listed in entries.values() for e in listed})
    examples: dict[str, list[int]] = {}
    owners: dict[int, list[str]] = {}
    for name, listed in entries.items():
        examples[name] = []
        for entry in listed:
            found = lookup.face(entry)
            if isinstance(found, str):
                problems.append(f"names file {path}: {name}: {found}")
            elif found not in examples[name]:
                examples[name].append(found)
                owners.setdefault(found, []).append(name)
    for face, named in owners.items():
        if len(named) > 1:
            problems.append(
                f"names file {path}: face #{faces.keys[face].face_index} of {faces.path[face]} is given to "
                f"{' and '.join(named)}: it is an example of none of them"
            )
            for name in named:
                examples[name].remove(face)
    for name in [n for n, found in examples.items() if not found]:
        problems.append(f"names file {path}: {name}: no example face found, so no person is named {name}")
        del examples[name]
    return Names(examples, problems)


class _Lookup:
    """Example entries → positions in :class:`Faces`, through the ``files`` rows of the paths they name."""

    def __init__(self, files: str | os.PathLike[str] | None, faces: Faces, entries: set[str]) -> None:
        self.keys = faces.keys
        paths = {m["path"] for m in map(ENTRY.fullmatch, entries) if m}
        wanted = paths | {p.partition(":")[2] for p in paths}
        self.candidates: dict[str, list[tuple[str, str]]] = {}
        self.inputs: set[str] = set()
        if files is not None:
            table = pq.read_table(files, columns=["input", "relpath"])
            self.inputs = set(pc.unique(table.column("input")).to_pylist())
            table = table.filter(pc.is_in(table.column("relpath"), pa.array(sorted(wanted), pa.string())))
            for input_name, relpath in zip(*(table.column(c).to_pylist() for c in ("input", "relpath")), strict=True):
                self.candidates.setdefault(relpath, []).append((input_name, relpath))

    def face(self, entry: str) -> int | str:
        """The position of the face ``entry`` names, or why there is none."""
        match = ENTRY.fullmatch(entry)
        if match is None:
            return f"'{entry}' is not '<path>#<face_index>'"
        relpath, face = match["path"], entry[match.end("path") :]
        prefix, colon, rest = relpath.partition(":")
        found = self.candidates.get(relpath, [])
        if colon and prefix in self.inputs:
            relpath = rest
            found = [c for c in self.candidates.get(rest, []) if c[0] == prefix]
        if not found:
            return f"'{entry}': no such file in the archive"
        if len(found) > 1:
            return f"'{entry}' is in several inputs: write one of " + ", ".join(f"'{i}:{r}{face}'" for i, r in found)
        media_id = inventory.media_id(*found[0])
        key = FaceKey(media_id, int(match["frame"] or 0), int(match["face"]))
        at = bisect.bisect_left(self.keys, key)
        if at < len(self.keys) and self.keys[at] == key:
            return at
        after = itertools.islice(self.keys, bisect.bisect_left(self.keys, (media_id,)), None)
        seen = list(itertools.takewhile(lambda k: k.media_id == media_id, after))
        listed = ", ".join(
            f"#{k.face_index}" if k.frame_index == 0 else f"#{k.frame_index}/{k.face_index}" for k in seen
        )
        return (
            f"'{entry}': {relpath} has no such face ({f'its faces: {listed}' if seen else 'no face was found in it'})"
        )


def apply_names(
    labels: np.ndarray, matrix: np.ndarray, examples: Mapping[str, Sequence[int]]
) -> tuple[np.ndarray, dict[int, str]]:
    """The cluster labels with the names' constraints applied (module docstring), and the name of each named
    label. Each face is expected to be an example of one name at most (:func:`read_names` sees to it)."""
    labels = labels.copy()
    order = list(examples)
    owner = {face: n for n, name in enumerate(order) for face in examples[name]}
    fresh = int(labels.max(initial=-1)) + 1
    # Different names: split their cluster, each face to the name of its nearest example.
    for label in sorted({int(labels[f]) for f in owner if labels[f] >= 0}):
        inside = np.array(sorted(f for f in owner if labels[f] == label))
        names_here = sorted({owner[f] for f in inside})
        if len(names_here) < 2:
            continue
        members = np.flatnonzero(labels == label)
        # Every example of those names counts, also those the clusterer put elsewhere.
        known = np.array([f for n in names_here for f in examples[order[n]]])
        of_name = np.array([owner[f] for f in known])
        cosine = matrix[members] @ matrix[known].T
        best = np.stack([cosine[:, of_name == n].max(axis=1) for n in names_here], axis=1)
        choice = np.array(names_here)[np.argmax(best, axis=1)]
        choice[np.searchsorted(members, inside)] = [owner[f] for f in inside]  # identical faces tie
        for n in names_here:
            labels[members[choice == n]] = fresh
            fresh += 1
    # One name: every cluster holding its examples, and its examples in no cluster, become one person.
    remap = np.arange(fresh + len(order))
    named: dict[int, str] = {}
    for name in order:
        faces = np.asarray(examples[name])
        clustered = labels[faces] >= 0
        remap[labels[faces[clustered]]] = fresh
        labels[faces[~clustered]] = fresh
        named[fresh] = name
        fresh += 1
    labels[labels >= 0] = remap[labels[labels >= 0]]
    return labels, named


def find_people(
    faces: Faces,
    settings: Settings,
    previous: Mapping[FaceKey, int],
    next_id: int,
    search: neighbours.Search = neighbours.SEARCH,
    names: Mapping[str, Sequence[int]] | None = None,
    name_ids: Mapping[str, int] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Rows of the ``people`` table, largest person first, and the next unused id. ``names``: each name's
    example faces (positions in ``faces``); ``name_ids``: each name's id in the last run."""
    labels = cluster(faces.matrix, faces.quality, settings, search)
    labels, named = apply_names(labels, faces.matrix, names or {})
    members = members_of(labels)
    # Largest first, so that a first run numbers people by how often they appear.
    order = sorted(members, key=lambda c: (-len(members[c]), faces.keys[members[c][0]]))
    clusters = [[faces.keys[i] for i in members[c]] for c in order]
    ids, next_id = assign_ids(clusters, previous, next_id, [named.get(c) for c in order], name_ids)
    rows = []
    for c, pid in zip(order, ids, strict=True):
        idx = members[c]
        centroid = l2_normalise(faces.matrix[idx].mean(axis=0))
        # The most typical face among the good ones: closest to the centroid, weighted by quality.
        rep = idx[int(np.argmax((faces.matrix[idx] @ centroid) * faces.quality[idx]))]
        rows.append(
            {
                "person_id": pid,
                "name": named.get(c),
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
    files: str | os.PathLike[str] | None = None,
    names_out: str | os.PathLike[str] | None = None,
) -> None:
    """The whole step: the consolidated tables in (``files`` to find the names file's examples), the
    ``people`` part, the id file and the names' outcome (``names_out``, :data:`NAMES_FILE`) out."""
    previous, next_id = read_ids(ids)
    found = read_faces(faces, face_embeddings)
    names = read_names(settings.names, files, found)
    for problem in names.problems:
        log.warning("%s", problem)
    rows, next_id = find_people(found, settings, previous, next_id, search, names.examples, read_name_ids(ids))
    write_ids(ids, rows, next_id)
    if names_out is not None:
        outcome = {
            "names_file": settings.names,
            "people": {r["name"]: r["person_id"] for r in rows if r["name"] is not None},
            "problems": names.problems,
        }
        write_bytes_atomic(names_out, json.dumps(outcome, indent=1, ensure_ascii=False).encode())
    write_part("people", rows, output)


def read_problems(names_out: str | os.PathLike[str] | None) -> list[str]:
    """The problems :func:`people_table` found in the names file (none when there is no outcome file)."""
    if not names_out or not Path(names_out).exists():
        return []
    return list(json.loads(Path(names_out).read_text(encoding="utf-8"))["problems"])


def archive(inputs: Mapping[str, Any], output: str, settings: Settings, params: Mapping[str, Any]) -> None:
    """The rule's job: its ``faces``, ``face_embeddings`` and ``files`` tables (``files`` only when names are
    set), the id file and the names' outcome named by its ``ids`` and ``names_out`` params."""
    people_table(
        inputs["faces"],
        inputs["face_embeddings"],
        params["ids"],
        output,
        settings,
        files=inputs.get("files") or None,
        names_out=params["names_out"],
    )
