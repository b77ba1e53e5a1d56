"""Search the archive's embeddings: by text (MobileCLIP-S2, ``clip`` table) or by example (DINOv2, ``dino``);
and the words in its pictures (``ocr`` table).

A file's score is the best cosine over its rows (an image's frame 0; each preview frame of a video and its
mean row), so a video is found by any of its scenes.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
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
    why: str = "clip"
    """What matched: ``clip`` (the image's embedding is near the query's), ``text: <line>`` (the words are in
    the picture, the best line quoted), or both."""


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
    return _hits(results, ranked, files)


def _hits(results: Path, ranked: list[tuple[str, float]], files: pa.Table, why: Mapping[str, str] = {}) -> list[Hit]:
    hits = [m for m, _ in ranked]
    paths = _column_by_id(files, hits, "path")
    thumbs: dict[str, str] = {}
    if (results / "tables" / "thumbnails.parquet").exists():
        t = _table(results, "thumbnails", ["media_id", "status", "role", "file"])
        thumbs = _column_by_id(t.filter(pc.equal(t.column("role"), "thumb")), hits, "file")
    return [Hit(m, paths.get(m, "?"), s, thumbs.get(m), why.get(m, "clip")) for m, s in ranked]


# Words of fewer letters must match exactly: one wrong letter in "du" or "of" would match half the language.
FUZZY_MIN_LETTERS = 4
# A word one letter off counts for less than the word itself, so that an exact match ranks first.
FUZZY_WEIGHT = 0.75


def words(text: str) -> list[str]:
    """``text``'s words as search compares them: accents dropped (NFKD, combining marks removed), case folded,
    split on anything that is not a letter or digit."""
    bare = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return re.findall(r"\w+", bare.casefold())


def _within_one_edit(a: str, b: str) -> bool:
    """Whether ``a`` becomes ``b`` by at most one substitution, insertion or deletion (Levenshtein ≤ 1)."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    # After the common prefix: skip one letter of the longer word, or one of each (a substitution).
    return a[i:] == b[i + 1 :] or (len(a) == len(b) and a[i + 1 :] == b[i + 1 :])


def word_match(query_word: str, candidates: Iterable[str]) -> float:
    """1 when ``query_word`` is among ``candidates``, ``FUZZY_WEIGHT`` when one is a letter off (words of
    ``FUZZY_MIN_LETTERS`` or more), else 0."""
    found = 0.0
    for word in candidates:
        if word == query_word:
            return 1.0
        if len(query_word) >= FUZZY_MIN_LETTERS and _within_one_edit(query_word, word):
            found = FUZZY_WEIGHT
    return found


def text_score(query: str, lines: Iterable[str]) -> tuple[float, str]:
    """How well a file's text lines match ``query``, 0 to 1: the mean over the query's words of each word's
    best match anywhere in the file; and the line that matched most of them (quoted in the hit)."""
    wanted = words(query)
    lines = list(lines)
    split = [words(line) for line in lines]
    every = {w for line in split for w in line}
    if not wanted or not every:
        return 0.0, ""
    score = sum(word_match(w, every) for w in wanted) / len(wanted)
    best_line = max(range(len(lines)), key=lambda i: sum(word_match(w, split[i]) for w in wanted))
    return score, lines[best_line]


def by_words(results: str | os.PathLike[str], query: str, top: int = 20) -> list[Hit]:
    """Files whose pictures hold the query's words (the ``ocr`` table's lines, every frame of a video),
    case- and accent-insensitive and tolerant of one wrong letter per word (see :func:`text_score`), best
    first; files matching none of the words are left out."""
    results = Path(results)
    table = _table(results, "ocr", ["media_id", "status", "text"])
    table = table.filter(pc.is_valid(table.column("text")))
    lines: dict[str, list[str]] = {}
    for media_id, text in zip(table.column("media_id").to_pylist(), table.column("text").to_pylist(), strict=True):
        lines.setdefault(media_id, []).append(text)
    scored = {m: text_score(query, texts) for m, texts in lines.items()}
    ranked = sorted(((m, s) for m, (s, _) in scored.items() if s > 0), key=lambda kv: (-kv[1], kv[0]))[:top]
    return _hits(results, ranked, _files(results), {m: f"text: {scored[m][1]}" for m, _ in ranked})


def by_text_and_words(
    results: str | os.PathLike[str], query: str, top: int = 20, overrides: Mapping[str, Path] | None = None
) -> list[Hit]:
    """:func:`by_words`' hits first, then :func:`by_text`'s (MobileCLIP) others, ``top`` in all. The two
    scores are not on one scale (a share of the query's words, a cosine), so they are not merged: a file
    that holds the words is better evidence than one that looks like them. A file found both ways (among
    MobileCLIP's own ``top``) is listed once, among the text hits, its ``why`` naming both. Without an
    ``ocr`` table: :func:`by_text` alone."""
    results = Path(results)
    if not (results / "tables" / "ocr.parquet").exists():
        return by_text(results, query, top, overrides)
    text_hits = by_words(results, query, top)
    clip_hits = by_text(results, query, top, overrides) if (results / "tables" / "clip.parquet").exists() else []
    clip_ids = {h.media_id for h in clip_hits}
    seen = {h.media_id for h in text_hits}
    both = [Hit(**{**h.__dict__, "why": f"{h.why}; clip"}) if h.media_id in clip_ids else h for h in text_hits]
    return (both + [h for h in clip_hits if h.media_id not in seen])[:top]


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
