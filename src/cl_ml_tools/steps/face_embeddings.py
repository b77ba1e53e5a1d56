"""ArcFace embeddings of the aligned face crops (onnxruntime), batched across the shard."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .. import models
from ..data.config import schema_defaults
from ..data.tables import STATUS_OK, base_row, error_row
from ..models.encoders import ArcFace
from .common import Job, Row, StepSettings, describe
from .faces import CROP_SIZE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
@schema_defaults("face_embeddings")
class Settings(StepSettings):
    model: str
    batch_size: int


def _face_key(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"frame_index": row["frame_index"], "face_index": row["face_index"]}


def _load_crop(path: str) -> np.ndarray:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    if rgb.size != (CROP_SIZE, CROP_SIZE):
        rgb = rgb.resize((CROP_SIZE, CROP_SIZE), Image.Resampling.BICUBIC)
    return np.asarray(rgb)


def _batches(faces: Sequence[Mapping[str, Any]], size: int) -> Iterator[Sequence[Mapping[str, Any]]]:
    for start in range(0, len(faces), size):
        yield faces[start : start + size]


def face_embeddings_shard(faces: Sequence[Mapping[str, Any]], model: ArcFace, settings: Settings) -> list[Row]:
    """One row per face of the shard's ``faces`` part; a file whose detection failed keeps its error row."""
    rows: list[Row] = []
    found = []
    for face in faces:
        if face["status"] == STATUS_OK:
            found.append(face)
        else:
            rows.append({**error_row(face, f"face detection failed: {face['error']}"), **_face_key(face)})
    for batch in _batches(found, max(1, settings.batch_size)):
        crops, ok = [], []
        for face in batch:
            try:
                crops.append(_load_crop(face["crop"]))
                ok.append(face)
            except Exception as exc:  # a lost or damaged crop costs that face only
                log.warning("%s: %s", face["crop"], describe(exc))
                rows.append({**error_row(face, f"face crop unreadable: {describe(exc)}"), **_face_key(face)})
        if not ok:
            continue
        vectors = model.embed(np.stack(crops))
        for face, vector in zip(ok, vectors, strict=True):
            if problem := models.embedding_problem(vector, model.resolved.id):
                rows.append({**error_row(face, problem), **_face_key(face)})
            else:
                rows.append({**base_row(face), **_face_key(face), "embedding": vector, "model": model.resolved.tag})
    return sorted(rows, key=lambda r: (r["media_id"], r.get("frame_index") or 0, r.get("face_index") or 0))


def model(job: Job) -> ArcFace:
    return job.models.load(ArcFace, job.settings.model)


def shard(job: Job) -> list[Row]:
    settings = dataclasses.replace(job.settings, batch_size=job.models.batch(job.settings.batch_size))
    return face_embeddings_shard(job.reads["faces"], model(job), settings)
