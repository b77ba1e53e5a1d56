"""Image embeddings of the preview frames: the ``dino`` step (DINOv2 ViT-S/14: visual similarity, near
duplicates, ``search --like``) and the ``clip`` step (MobileCLIP-S2: images and text in one space, text
search; its text tower is in :mod:`cl_ml_tools.clip`).

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
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import models, tables
from .steps import Row, StepSettings, describe, work
from .tables import STATUS_OK, base_row, error_row

log = logging.getLogger(__name__)

VIDEO_MEAN_FRAME = -1
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Preprocess:
    """A registry entry's :class:`~cl_ml_tools.models.ImageInput` applied to a PIL image: the (N, 3, H, W)
    rows the network takes."""

    recipe: models.ImageInput

    @property
    def resize(self) -> int:
        return self.recipe.resize

    def __call__(self, image: Image.Image, box: Box | None = None) -> np.ndarray:
        """``box``: for an image decoded at a reduced JPEG scale, the region of it that the full decode's
        pixels map to (what ``Image.draft`` returns); see :func:`resize_shortest_edge`."""
        r = self.recipe
        resample = Image.Resampling[r.resample.upper()]
        image = center_crop(resize_shortest_edge(image.convert("RGB"), r.resize, resample, box), r.crop)
        x = np.asarray(image, dtype=np.float32) * (1.0 / 255.0)
        return ((x - np.asarray(r.mean, np.float32)) / np.asarray(r.std, np.float32)).transpose(2, 0, 1)


def preprocessing(model_id: str) -> Preprocess:
    """How ``model_id``'s registry entry prepares an image."""
    recipe = models.spec_of(model_id).image_input
    if recipe is None:
        raise models.ModelError(f"model {model_id} takes no image input")
    return Preprocess(recipe)


def resize_shortest_edge(
    image: Image.Image, size: int, resample: Image.Resampling, box: Box | None = None
) -> Image.Image:
    """The shorter side to ``size``, the longer one scaled and truncated to an integer, as
    ``transformers.image_transforms.get_resize_output_image_size`` does.

    With ``box`` (``Image.draft``'s (0, 0, width / scale, height / scale)), the output size and the resize's
    sampling positions are the full decode's: a reduced decode rounds an odd side up (577 px → 289 at 1/2),
    and sizing from that image gives 453 px where the full decode gives 454, shifted and stretched by up to a
    pixel. Dividing by a power of two is exact, so the box's aspect ratio is the full decode's to the bit."""
    w, h = (box[2] - box[0], box[3] - box[1]) if box else image.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if box is None and new == image.size:
        return image
    return image.resize(new, resample, box=box)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """A ``size``×``size`` crop from the centre (offsets rounded down, like Hugging Face's ``center_crop``);
    an image smaller than the crop is padded with black first, as there."""
    w, h = image.size
    if w < size or h < size:
        padded = Image.new("RGB", (max(w, size), max(h, size)))
        padded.paste(image, ((padded.width - w) // 2, (padded.height - h) // 2))
        image, (w, h) = padded, padded.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


class ImageEncoder(models.OnnxModel):
    """An ONNX image tower with its registry entry's preprocessing."""

    def __init__(self, resolved: models.Resolved, threads: int = 1, device: str = "cpu"):
        self.preprocess = preprocessing(resolved.id)
        super().__init__(resolved, threads, device)

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings of preprocessed images (N, 3, H, W)."""
        return self.embed_inputs(batch)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_batch(np.stack([self.preprocess(im) for im in images]))


@dataclass(frozen=True)
class Settings(StepSettings):
    """The settings of the dino and clip steps: two config sections, so the class has no defaults of its own
    (the schema fills them into each section)."""

    model: str
    batch_size: int


def load(path: str | Path, preprocess: Preprocess) -> np.ndarray:
    """A preview file, decoded and preprocessed for the network. A JPEG preview is decoded at the smallest
    DCT scale whose shorter side still covers the resize (1/2 for a 1024 × 768 preview) and resized with the
    full decode's geometry: the input then differs from a full decode's by a few grey levels at edges
    (docs/models.md), and decoding plus resizing cost half as much (8.1 → 3.9 ms per DINOv2 input, 6.0 →
    2.8 ms per MobileCLIP one; docs/performance.md)."""
    with Image.open(path) as image:
        drafted = image.draft("RGB", (preprocess.resize, preprocess.resize))
        return preprocess(image, drafted[1] if drafted else None)


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


def embed_part(
    step: str, thumbnails_part: str, model_record: str, target: str, config: Mapping[str, Any], threads: int
) -> None:
    """What the step's Snakemake job does: load the model, then (the job's work proper, see ``steps.work``)
    embed the shard's preview frames and write the part. ``config`` is the workflow's config: the step's
    section and ``models`` (device, GPU batch)."""
    settings = Settings.from_config(config[step])
    runtime = models.runtime_from_config(config)
    image_encoder = ImageEncoder(models.read_record(model_record), threads, runtime.device)
    decoders = threads if image_encoder.device != "cpu" else 1
    with work():
        thumbnails = tables.read_part(thumbnails_part)
        rows = embed_shard(thumbnails, image_encoder, runtime.batch(settings.batch_size), decoders)
        tables.write_part(step, rows, target)


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
