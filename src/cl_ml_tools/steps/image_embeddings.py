"""Image embeddings of the preview frames, shared by the ``dino`` step (DINOv2 ViT-S/14: visual similarity,
near duplicates, ``search --like``) and the ``clip`` step (MobileCLIP-S2: images and text in one space, text
search; the encoders are in :mod:`cl_ml_tools.models.encoders`).

Each step reads its shard's preview frames (images: frame 0; videos: every preview frame), preprocesses them
the way the model's own preprocessor does, runs them through the ONNX image tower in batches that span the
whole shard, and writes one L2-normalised vector per frame, plus one mean-pooled, re-normalised row per video
(``frame_index = -1``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import models
from ..data.tables import STATUS_OK, base_row, error_row
from ..models.encoders import ImageEncoder, Preprocess, load
from .common import Job, Row, StepSettings, describe

log = logging.getLogger(__name__)

VIDEO_MEAN_FRAME = -1


@dataclass(frozen=True)
class Settings(StepSettings):
    """The fields of the dino and clip steps' settings; each step's own class (``dino.Settings``,
    ``clip.Settings``) takes its defaults from its config section."""

    model: str
    batch_size: int


def _prepared(
    frames: Sequence[Mapping[str, Any]], preprocess: Preprocess, batch_size: int, pool: ThreadPoolExecutor, ahead: int
) -> Iterator[tuple[list[Mapping[str, Any]], list[np.ndarray], list[Row]]]:
    """Batches of decoded, preprocessed frames; ``ahead`` next batches are decoded on ``pool`` while the
    caller runs the network on this one (onnxruntime and Pillow both release the GIL)."""

    def prepare(chunk: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[np.ndarray], list[Row]]:
        ok, arrays, failed = [], [], []
        for frame in chunk:
            try:
                arrays.append(load(frame["file"], preprocess))
                ok.append(frame)
            except Exception as exc:  # a lost or damaged preview costs that frame only
                log.warning("%s: %s", frame["file"], describe(exc))
                failed.append(_frame_error(frame, f"preview unreadable: {describe(exc)}"))
        return ok, arrays, failed

    chunks = [frames[i : i + batch_size] for i in range(0, len(frames), batch_size)]
    pending = deque(pool.submit(prepare, chunk) for chunk in chunks[:ahead])
    for i in range(len(chunks)):
        current = pending.popleft().result()
        if i + ahead < len(chunks):
            pending.append(pool.submit(prepare, chunks[i + ahead]))
        yield current


def _frame_error(frame: Mapping[str, Any], message: str) -> Row:
    return {**error_row(frame, message), "frame_index": frame.get("frame_index"), "timestamp_s": None}


def embed_shard(
    thumbnails: Sequence[Mapping[str, Any]], encoder: ImageEncoder, batch_size: int, decoders: int = 1
) -> list[Row]:
    """One row per preview frame of the shard, one mean row per video, and an error row per file whose
    thumbnails failed. ``decoders`` threads prepare batches ahead: on a CPU one is enough (preparing a batch
    costs a fraction of running it), a GPU needs every core decoding to be kept busy."""
    rows: list[Row] = []
    frames = []
    for row in thumbnails:
        if row["status"] != STATUS_OK:
            rows.append(_frame_error(row, f"no preview frame to embed: the thumbnails step failed ({row['error']})"))
        elif row["role"] == "preview":
            frames.append(row)
    frames.sort(key=lambda f: (f["media_id"], f["frame_index"]))
    by_video: dict[str, list[tuple[Mapping[str, Any], np.ndarray]]] = {}
    decoders = max(1, decoders)
    with ThreadPoolExecutor(max_workers=decoders) as pool:
        for ok, arrays, failed in _prepared(frames, encoder.preprocess, max(1, batch_size), pool, decoders):
            rows += failed
            if not ok:
                continue
            vectors = encoder.embed_batch(np.stack(arrays))
            for frame, vector in zip(ok, vectors, strict=True):
                row = _row(frame, frame["frame_index"], frame["timestamp_s"], vector, encoder)
                rows.append(row)
                # Only video frames have a time; a frame without a usable embedding stays out of the mean.
                if frame["timestamp_s"] is not None and row["status"] == STATUS_OK:
                    by_video.setdefault(frame["media_id"], []).append((frame, vector))
    for embedded in by_video.values():
        mean = models.l2_normalise(np.mean([v for _, v in embedded], axis=0))
        rows.append(_row(embedded[0][0], VIDEO_MEAN_FRAME, None, mean, encoder))
    return sorted(rows, key=lambda r: (r["media_id"], -2 if r["frame_index"] is None else r["frame_index"]))


def _row(
    frame: Mapping[str, Any], index: int, timestamp: float | None, vector: np.ndarray, encoder: ImageEncoder
) -> Row:
    problem = models.embedding_problem(vector, encoder.resolved.id)
    if problem:
        return {**error_row(frame, problem), "frame_index": index, "timestamp_s": timestamp}
    return {
        **base_row(frame),
        "frame_index": index,
        "timestamp_s": timestamp,
        "embedding": vector,
        "model": encoder.resolved.tag,
    }


def model(job: Job) -> ImageEncoder:
    return job.models.load(ImageEncoder, job.settings.model)


def shard(job: Job) -> list[Row]:
    encoder = model(job)
    # On a CPU one thread decoding ahead is enough; a GPU needs every core decoding to be kept busy.
    decoders = job.threads if encoder.device != "cpu" else 1
    return embed_shard(job.reads["thumbnails"], encoder, job.models.batch(job.settings.batch_size), decoders)
