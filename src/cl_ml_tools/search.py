"""Search the archive's embeddings: by text (MobileCLIP-S2, ``clip`` table) or by example (DINOv2, ``dino``).

A file's score is the best cosine over its rows (an image's frame 0; each preview frame of a video and its
mean row), so a video is found by any of its scenes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import models
from .data import tables
from .data.tables import STATUS_OK
from .media import imaging
from .models.encoders import ImageEncoder, TextEncoder


@dataclass(frozen=True)
class Hit:
    media_id: str
    path: str
    score: float
    thumbnail: str | None


class SearchError(Exception):
    """Something missing for a search (a table not computed, a file not in the archive), worded for a person."""


def _existing(results: Path, name: str) -> Path:
    path = results / "tables" / f"{name}.parquet"
    if not path.exists():
        raise SearchError(f"{path} does not exist: run the pipeline with `{name}` enabled first")
    return path


def _table(results: Path, name: str, columns: list[str]) -> pa.Table:
    table = pq.read_table(_existing(results, name), columns=columns)
    return table.filter(pc.equal(table.column("status"), STATUS_OK))


def _embeddings(results: Path, step: str) -> tuple[list[str], np.ndarray, list[str]]:
    """media_id per row, the (rows, dim) matrix, and the model tag of the rows."""
    _existing(results, step)  # says how to make the table when it is missing
    rows, matrix = tables.load_embeddings(step, results)
    return rows.media_id.tolist(), matrix, sorted(rows.model.unique().tolist())


def _table_model(step: str, tags: list[str]) -> models.ModelSpec:
    """The registry entry of the model a table's rows were made with (their ``model`` tags)."""
    model_ids = sorted({tag.partition("@")[0] for tag in tags})
    if len(model_ids) > 1:
        raise SearchError(f"the {step} table mixes embeddings of {', '.join(model_ids)}: rerun the {step} step")
    return models.spec_of(model_ids[0])


def _files(results: Path) -> pa.Table:
    return _table(results, "files", ["media_id", "status", "path"])


def _column_by_id(table: pa.Table, media_ids: list[str], column: str) -> dict[str, str]:
    """``column`` of the rows of ``table`` whose media_id is one of ``media_ids``, filtered in Arrow: the
    tables have a row (or several) per file of the archive, the hits are a handful."""
    picked = table.filter(pc.is_in(table.column("media_id"), pa.array(media_ids, pa.string())))
    return dict(zip(picked.column("media_id").to_pylist(), picked.column(column).to_pylist(), strict=True))


def _rank(
    results: Path, ids: list[str], scores: np.ndarray, top: int, files: pa.Table, exclude: str | None = None
) -> list[Hit]:
    best: dict[str, float] = {}
    for media_id, score in zip(ids, scores.tolist(), strict=True):
        if media_id != exclude and score > best.get(media_id, -2.0):
            best[media_id] = score
    ranked = sorted(best.items(), key=lambda kv: -kv[1])[:top]
    hits = [m for m, _ in ranked]
    paths = _column_by_id(files, hits, "path")
    thumbs: dict[str, str] = {}
    if (results / "tables" / "thumbnails.parquet").exists():
        t = _table(results, "thumbnails", ["media_id", "status", "role", "file"])
        thumbs = _column_by_id(t.filter(pc.equal(t.column("role"), "thumb")), hits, "file")
    return [Hit(m, paths.get(m, "?"), s, thumbs.get(m)) for m, s in ranked]


def by_text(
    results: str | os.PathLike[str], query: str, top: int = 20, overrides: Mapping[str, Path] | None = None
) -> list[Hit]:
    """Files whose MobileCLIP image embedding is closest to the text's, embedded by the text tower of the
    image tower the clip table was made with."""
    results = Path(results)
    ids, matrix, tags = _embeddings(results, "clip")
    if not tags:
        return []  # no embedded file to compare with
    image_tower = _table_model("clip", tags)
    if image_tower.text_tower is None:
        raise SearchError(f"{image_tower.id} has no text tower: the clip table cannot be searched by text")
    text = models.Loader.fetching(overrides).load(TextEncoder, image_tower.text_tower).embed([query])[0]
    return _rank(results, ids, matrix @ text, top, _files(results))


def by_example(
    results: str | os.PathLike[str],
    path: str | os.PathLike[str],
    top: int = 20,
    overrides: Mapping[str, Path] | None = None,
    preview_size: int = 1024,
) -> list[Hit]:
    """Files whose DINOv2 embedding is closest to that of ``path``: its stored rows when the file is in the
    archive, else the file's embedding computed now (images only) with the model the table was made with
    (``dino.model``: fp32 or int8)."""
    results = Path(results)
    ids, matrix, tags = _embeddings(results, "dino")
    files = _files(results)
    wanted = str(Path(path).resolve())
    mask = pc.equal(files.column("path"), wanted)
    known = files.filter(mask).column("media_id").to_pylist()
    if known:
        media_id = known[0]
        rows = [i for i, m in enumerate(ids) if m == media_id]
        if not rows:
            raise SearchError(f"{path} is in the archive but has no DINOv2 embedding (see the dino table's errors)")
        query = models.l2_normalise(matrix[rows].mean(axis=0))
        return _rank(results, ids, matrix @ query, top, files, exclude=media_id)
    if not tags:
        return []  # no embedded file to compare with
    loader = models.Loader.fetching(overrides)
    resolved = loader.resolved(_table_model("dino", tags).id)
    # The weights must match; the runtime and precision that ran them may differ (models.weights_tag).
    if resolved.tag not in {models.weights_tag(tag) for tag in tags}:
        raise SearchError(
            f"the dino table was made with {', '.join(tags)}, not {resolved.tag}: embeddings of different "
            "models cannot be compared"
        )
    opened = imaging.open_image(path, "")
    # The archive's embeddings were made from previews; go through the same size first.
    image = imaging.to_srgb(imaging.orient(imaging.fit(opened.image, preview_size), opened.orientation))
    query = loader.load(ImageEncoder, resolved.id).embed([image])[0]
    return _rank(results, ids, matrix @ query, top, files)
