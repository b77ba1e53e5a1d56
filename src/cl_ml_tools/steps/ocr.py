"""Text lines on the preview frames: PP-OCR detection, direction classification and recognition, run by the
``rapidocr`` library (its pre- and post-processing: resizing, the DB detector's box extraction, the CTC
decoding) on the networks of our model registry, with our thread count and batch. Two things are ours: a
cheap first pass (the detector on the frame scaled down to ``probe_size``) that lets only frames with a
line-shaped box on to the full pass, and tight crops of a word or a line, on which the detector finds
nothing, recognised whole (docs/performance.md, "OCR").

Boxes are axis-aligned, around the detector's quadrilateral (text on a slant gets a box that also holds some
background), in pixels of the oriented original as the ``faces`` table's are, and normalised to its size.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..data.config import schema_defaults
from ..data.tables import base_row
from ..media.errors import MediaError
from ..models import Resolved
from .common import Job, Row, StepSettings, box_columns, map_files, preview_frames

if TYPE_CHECKING:
    from rapidocr import RapidOCR

log = logging.getLogger(__name__)


@dataclass(frozen=True)
@schema_defaults("ocr")
class Settings(StepSettings):
    model: str
    min_score: float
    max_lines: int
    batch_size: int
    probe_size: int


@dataclass(frozen=True)
class Line:
    """One text line in the coordinates of the image it was read from (pixels)."""

    text: str
    score: float
    quad: np.ndarray  # (4, 2): the detector's corners, clockwise from top left


# A word or a line of text cut out of a picture (a tight crop): the detector, which looks for text among other
# things, often finds none when the text fills the frame. Twice as wide as tall at least, and no taller than a
# panorama's preview (4:1 gives 1024 x 256). Read whole, a strip of a photo without text comes out as one to
# three characters, scored up to 0.9 (11 of 95 strips of the sample's photos at 0.5 or more, one at 0.9 or
# more); the public word crops of benchmarks/data/ocr are read at 0.95 or more.
LINE_ASPECT = 2.0
LINE_MAX_HEIGHT = 200
WHOLE_FRAME_MIN_SCORE = 0.9
# The probe's boxes on photos without text (texture, faces: 40 12-MP photos of make_corpus.py, 24 with a box)
# are blobs, at most 1.48 times as long as wide; on the photos of signs and the page of benchmarks/data/ocr,
# some line is 3.1 to 16 times as long (the sample's name tag on hopper.jpg: 1.9). A single character alone
# (a square box) is missed.
PROBE_MIN_ELONGATION = 1.75


class Reader:
    """A RapidOCR engine on the registry's files. One engine runs one image at a time on ``threads`` ONNX
    Runtime threads (its sessions are not shared between calls in flight)."""

    def __init__(self, resolved: Resolved, settings: Settings, threads: int):
        from rapidocr import RapidOCR

        det, rec, cls = (resolved.paths[f.name] for f in resolved.spec.files)
        self.settings = settings
        self.tag = resolved.tag
        params = {
            "Global.log_level": "error",
            "Global.text_score": settings.min_score,
            "Det.model_path": str(det),
            "Rec.model_path": str(rec),
            "Cls.model_path": str(cls),
            "Rec.rec_batch_num": settings.batch_size,
            "Cls.cls_batch_num": settings.batch_size,
            "EngineConfig.onnxruntime.intra_op_num_threads": max(1, threads),
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
        self.engine: RapidOCR = RapidOCR(params=params)
        # The cheap first pass: the same detector on the frame scaled down so that its longer side is
        # probe_size (the full pass scales its shorter side up to 736), its recogniser never loaded.
        self.probe: RapidOCR | None = None
        if settings.probe_size:
            probe = {"Det.limit_side_len": settings.probe_size, "Det.limit_type": "max", "Global.use_cls": False}
            self.probe = RapidOCR(params={**params, **probe, "Global.use_rec": False})

    def read(self, path: str) -> list[Line]:
        """The lines of an image file holding a letter or digit, in the library's reading order, at most
        ``max_lines``. A frame on which the probe finds no box shaped like a line is not read further; a tight
        crop of a word or a line on which the detector finds nothing is recognised whole."""
        image = self.engine.load_img(path)
        lines = []
        # use_det is passed on every call: the library keeps the last call's value.
        if self.probe is None or _holds_a_line(self.probe(image).boxes):
            result = self.engine(image, use_det=True)
            if result.txts is not None and result.boxes is not None:
                lines = [
                    Line(str(text), float(score), np.asarray(box, dtype=np.float64))
                    for text, score, box in zip(result.txts, result.scores, result.boxes, strict=True)
                ]
        height, width = image.shape[:2]
        if not lines and width >= LINE_ASPECT * height and height <= LINE_MAX_HEIGHT:
            whole = self.engine(image, use_det=False)
            frame = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
            lines = [
                Line(str(text), float(score), frame)
                for text, score in zip(whole.txts or (), whole.scores or (), strict=True)
                if score >= max(self.settings.min_score, WHOLE_FRAME_MIN_SCORE)
            ]
        # Texture read as text comes out as symbols ("***", "￥**" on the sample portraits, scored 0.7):
        # a line without a letter or digit is nothing anyone searches for.
        lines = [line for line in lines if any(c.isalnum() for c in line.text)]
        return lines[: self.settings.max_lines]


def _holds_a_line(quads: np.ndarray | None) -> bool:
    """Whether one of the detector's boxes is elongated as a line of text is, along it or across it."""
    if quads is None:
        return False
    quads = np.asarray(quads, dtype=np.float64)
    along = np.linalg.norm(quads[:, 1] - quads[:, 0], axis=1)
    across = np.linalg.norm(quads[:, 3] - quads[:, 0], axis=1)
    return bool((np.maximum(along, across) >= PROBE_MIN_ELONGATION * np.minimum(along, across)).any())


def lines_of_frame(reader: Reader, preview: Mapping[str, Any]) -> list[Row]:
    """The text lines of one preview frame, in pixels of the oriented original."""
    with Image.open(preview["file"]) as image:
        size = image.size  # the header only: the library decodes the file itself
    source = (preview["source_width"] or size[0], preview["source_height"] or size[1])
    scale = np.array([source[0] / size[0], source[1] / size[1]])
    rows = []
    for index, line in enumerate(reader.read(preview["file"])):
        quad = line.quad * scale
        (x0, y0), (x1, y1) = quad.min(axis=0), quad.max(axis=0)
        rows.append(
            {
                **base_row(preview),
                "frame_index": preview["frame_index"],
                "timestamp_s": preview["timestamp_s"],
                "line_index": index,
                "text": line.text,
                "score": line.score,
                **box_columns(x0, y0, x1, y1, source),
                "model": reader.tag,
            }
        )
    return rows


def lines_of_file(
    reader: Reader, file_row: Mapping[str, Any], previews: Sequence[Mapping[str, Any]], thumbnail_error: str | None
) -> list[Row]:
    if not previews:
        raise MediaError(f"no preview frame to read text on: the thumbnails step failed ({thumbnail_error})")
    rows: list[Row] = []
    for preview in sorted(previews, key=lambda p: p["frame_index"]):
        rows += lines_of_frame(reader, preview)
    # Read, and no text: a row of its own, so that a file without text is told from one never read.
    return rows or [{**base_row(file_row), "model": reader.tag}]


def ocr_shard(files: Sequence[Mapping[str, Any]], thumbnails: Sequence[Mapping[str, Any]], reader: Reader) -> list[Row]:
    """The text lines of every file of a shard that has preview frames; files whose thumbnails failed get an
    error row. Files run one after the other: the engine's ONNX Runtime threads use the job's cores."""
    wanted, previews, failed = preview_frames(files, thumbnails)
    return map_files(
        lambda f: lines_of_file(reader, f, previews.get(f["media_id"], []), failed.get(f["media_id"])), wanted
    )


def model(job: Job) -> Reader:
    """A RapidOCR engine for the job's settings, loaded once per loader."""
    settings = job.settings
    return job.models.keep(
        ("ocr", settings), lambda: Reader(job.models.resolved(settings.model), settings, job.models.threads)
    )


def shard(job: Job) -> list[Row]:
    return ocr_shard(job.files, job.reads["thumbnails"], model(job))
