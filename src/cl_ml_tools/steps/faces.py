"""Face detection on the preview frames (MediaPipe Tasks BlazeFace), aligned 112×112 crops for ArcFace, and
a quality score per face.

BlazeFace sees its input at 128 px (short range) or 192 px (full range), so on a 1024-px preview a face
under ~80 px shrinks below what the network resolves. Each frame is therefore searched twice: whole, for
large faces, and as a grid of overlapping tiles of ``tile_size`` px (at 320 px a 32-px face reaches the
full-range network at ~19 px), the detections merged by non-maximum suppression. On a 1024×768 preview that
is 13 network calls; docs/performance.md has the recall per face size against the tile size and the cost.
``tile_size: 0`` keeps only the whole-frame pass (six times faster, large faces only).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .. import models
from ..data.config import schema_defaults
from ..data.tables import KEYPOINTS, base_row
from ..media import imaging
from ..media.errors import MediaError
from ..media.fileio import atomic_path
from .common import Job, Row, StepSettings, box_columns, map_files, preview_frames

if TYPE_CHECKING:
    from mediapipe.tasks.python.vision import FaceDetector

log = logging.getLogger(__name__)

CROP_SIZE = 112
# InsightFace's ArcFace template (arcface_dst) for a 112×112 crop: eyes, nose tip, mouth corners. BlazeFace
# gives the mouth centre, which is matched to the midpoint of the two corners.
_ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
TEMPLATE = np.vstack([_ARCFACE_TEMPLATE[:3], _ARCFACE_TEMPLATE[3:].mean(axis=0)])
TEMPLATE_EYE_DISTANCE = float(np.linalg.norm(TEMPLATE[1] - TEMPLATE[0]))


@dataclass(frozen=True)
@schema_defaults("faces")
class Settings(StepSettings):
    model: str
    min_score: float
    min_size: int
    tile_size: int
    min_overlap: int
    nms_iou: float
    refine: bool
    crop_quality: int
    crop_from_original: bool
    max_pixels: int


@dataclass(frozen=True)
class Detection:
    """One face in the coordinates of the image it was found in (pixels)."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    keypoints: np.ndarray  # (6, 2), in KEYPOINTS order

    def scaled(self, sx: float, sy: float) -> Detection:
        x0, y0, x1, y1 = self.box
        return Detection((x0 * sx, y0 * sy, x1 * sx, y1 * sy), self.score, self.keypoints * (sx, sy))

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.keypoints[1] - self.keypoints[0]))


class Detector:
    """MediaPipe's FaceDetector with tiling. One MediaPipe graph per thread: a graph runs one image at a time,
    and its calls release the GIL, so a thread per core scales (measured 2.0× on 2 cores)."""

    def __init__(self, model_path: str | Path, settings: Settings):
        self.model_path = str(model_path)
        self.settings = settings
        self._local = threading.local()
        self._all: list[FaceDetector] = []
        self._lock = threading.Lock()
        # MediaPipe imports matplotlib, which caches a font list in ~/.cache; keep it in our model cache
        # instead, so that a run writes nothing outside results/ and that cache. Before any MediaPipe import.
        os.environ.setdefault("MPLCONFIGDIR", str(models.cache_dir() / "matplotlib"))

    def _graph(self) -> FaceDetector:
        graph = getattr(self._local, "graph", None)
        if graph is None:
            from mediapipe.tasks.python import BaseOptions, vision

            options = vision.FaceDetectorOptions(
                base_options=BaseOptions(model_asset_path=self.model_path),
                min_detection_confidence=self.settings.min_score,
                min_suppression_threshold=self.settings.nms_iou,
            )
            try:
                graph = vision.FaceDetector.create_from_options(options)
            except (RuntimeError, ValueError) as exc:
                raise RuntimeError(f"MediaPipe could not load the face detector {self.model_path}: {exc}") from exc
            self._local.graph = graph
            with self._lock:
                self._all.append(graph)
        return graph

    def close(self) -> None:
        with self._lock:
            for graph in self._all:
                graph.close()
            self._all.clear()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, rgb: np.ndarray, x: int = 0, y: int = 0) -> list[Detection]:
        import mediapipe as mp

        h, w = rgb.shape[:2]
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        found = []
        for d in self._graph().detect(image).detections:
            b = d.bounding_box
            box = (b.origin_x + x, b.origin_y + y, b.origin_x + b.width + x, b.origin_y + b.height + y)
            kps = np.array([(k.x * w + x, k.y * h + y) for k in d.keypoints], dtype=np.float64)
            found.append(Detection(box, float(d.categories[0].score), kps))
        return found

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in an RGB uint8 array (H, W, 3), best first."""
        found = self._run(rgb)
        h, w = rgb.shape[:2]
        tile = self.settings.tile_size
        if tile and max(w, h) > tile:
            for y in tile_starts(h, tile, self.settings.min_overlap):
                for x in tile_starts(w, tile, self.settings.min_overlap):
                    found += self._run(rgb[y : y + tile, x : x + tile], x, y)
        # Tiles let the network answer on 12–19 px patches of texture; on noise it finds "faces" there with
        # scores up to 0.6. A face that small is no use for recognition anyway.
        found = [d for d in found if d.box[2] - d.box[0] >= self.settings.min_size]
        kept = suppress(found, self.settings.nms_iou)
        return [self.refine(rgb, d) for d in kept] if self.settings.refine else kept

    def refine(self, rgb: np.ndarray, det: Detection) -> Detection:
        """``det`` with its box and keypoints measured again on crops framed around the face alone.

        Whichever pass scored a face best, it saw the face small: a 1024-px frame reaches the network at 192
        px, a 100-px face then spans 19 network pixels and its eye line comes out 6–9° off in roll (a tile
        pass, 1–3°). On crops 2.2, 2.5 and 2.8 times the face's width the network sees it at 70–90 px, and
        the framings' keypoints are averaged, each one's jitter being its own: the aligned crops of a face
        pasted anywhere on a frame then agree with the face's own within about a degree (docs/design.md)."""
        h, w = rgb.shape[:2]
        x0, y0, x1, y1 = det.box
        cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0
        boxes, points = [], []
        for factor in REFINE_FRAMINGS:
            half = factor * side / 2
            left, top = max(0, round(cx - half)), max(0, round(cy - half))
            right, bottom = min(w, round(cx + half)), min(h, round(cy + half))
            if max(right - left, bottom - top) >= max(w, h):
                return det  # the crop would be the frame: the face is as large as it gets already
            seen = self._run(rgb[top:bottom, left:right], left, top)
            overlap, best = max(
                ((_iou_and_cover(d.box, det.box)[0], d) for d in seen), key=lambda pair: pair[0], default=(0.0, None)
            )
            if best is None or overlap < REFINE_MIN_IOU:
                return det  # the face is not found alone: keep what the frame gave
            boxes.append(best.box)
            points.append(best.keypoints)
        bx0, by0, bx1, by1 = (float(v) for v in np.mean(boxes, axis=0))
        return Detection((bx0, by0, bx1, by1), det.score, np.mean(points, axis=0))


# Crops around a face for ``Detector.refine``, in face widths, and how much of the frame's box a detection
# on such a crop must share to be that face (the frame's box can be off by a fifth of its width).
REFINE_FRAMINGS = (2.2, 2.5, 2.8)
REFINE_MIN_IOU = 0.3


def tile_starts(length: int, tile: int, min_overlap: int) -> list[int]:
    """Offsets of the fewest tiles of ``tile`` px that cover ``length`` px with at least ``min_overlap`` px
    shared between neighbours, spread evenly (so the overlap is as large as that count allows)."""
    if length <= tile:
        return [0]
    n = math.ceil((length - min_overlap) / (tile - min_overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _iou_and_cover(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float]:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    union = area_a + area_b - inter
    smaller = min(area_a, area_b)
    return (inter / union if union > 0 else 0.0), (inter / smaller if smaller > 0 else 0.0)


def suppress(detections: Sequence[Detection], iou: float) -> list[Detection]:
    """Greedy non-maximum suppression across passes and tiles. A box mostly inside a better one is dropped
    too: a face cut by a tile border yields a smaller, weaker box inside the whole face's box."""
    kept: list[Detection] = []
    for d in sorted(detections, key=lambda d: d.score, reverse=True):
        if all(max(o, 0.0) < iou and c < 0.7 for o, c in (_iou_and_cover(d.box, k.box) for k in kept)):
            kept.append(d)
    return kept


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2×3 least-squares similarity (rotation, uniform scale, translation) taking ``src`` points onto
    ``dst`` (Umeyama's method, as InsightFace's ``norm_crop`` does with scikit-image)."""
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - src_mean, dst - dst_mean
    cov = d.T @ s / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1
    rotation = u @ np.diag(sign) @ vt
    scale = (sigma * sign).sum() / s.var(axis=0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


# Pixel i's centre is at i + 0.5 in Pillow's coordinates (and MediaPipe's keypoints, normalised coordinates
# times the image size), at i in OpenCV's, which InsightFace's template and warp use.
_OPENCV_TO_PILLOW = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])


def align(image: Image.Image, keypoints: np.ndarray, size: int = CROP_SIZE) -> Image.Image:
    """The face warped onto the ArcFace template: eyes, nose tip and mouth centre (keypoints in ``image``'s
    pixels) matched by a similarity transform. The crop is InsightFace's ``norm_crop`` (the transform in
    OpenCV's pixel coordinates, bilinear as its ``cv2.warpAffine``), the one its ArcFace networks were trained
    on: within 0.5 grey levels of it on the sample faces, against 7-14 with the transform in Pillow's
    coordinates and bicubic (docs/models.md)."""
    forward = similarity_transform(keypoints[:4] - 0.5, TEMPLATE * (size / CROP_SIZE))
    in_pillow = _OPENCV_TO_PILLOW @ np.vstack([forward, [0, 0, 1]]) @ np.linalg.inv(_OPENCV_TO_PILLOW)
    # Pillow wants the inverse map: for each output pixel, where to sample in the input.
    inverse = np.linalg.inv(in_pillow)[:2]
    return image.transform((size, size), Image.Transform.AFFINE, tuple(inverse.ravel()), Image.Resampling.BILINEAR)


def frontalness(keypoints: np.ndarray) -> float:
    """1 for a face looking at the camera, towards 0 in profile: how evenly the nose tip sits between the
    eyes, measured along the eye line (so head roll does not count)."""
    right, left, nose = keypoints[0], keypoints[1], keypoints[2]
    axis = left - right
    length = float(np.linalg.norm(axis))
    if length == 0:
        return 0.0
    t = float(np.dot(nose - right, axis)) / length**2  # 0.5 when centred
    return float(np.clip(1.0 - 2.0 * abs(t - 0.5), 0.0, 1.0))


def sharpness(crop: Image.Image) -> float:
    """Variance of the Laplacian of the aligned crop's luma: low for blurred or heavily upscaled faces. The
    3×3 kernel and reflected border of OpenCV's ``cv2.Laplacian``, in floats: on a sharp face the Laplacian
    spans ±1020 grey levels, and an 8-bit filter (Pillow's) would clip it."""
    return imaging.laplacian_variance(np.asarray(crop.convert("L"), dtype=np.float64))


def quality(face_px: float, sharp: float, frontal: float) -> float:
    """0..1, the product of three terms: size (full marks from 112 px, the crop's own size), sharpness
    (half marks at a Laplacian variance of 100) and frontalness."""
    return float(min(1.0, face_px / CROP_SIZE) * (sharp / (sharp + 100.0)) * frontal)


def _load_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


class _Original:
    """The original image, decoded once per file and only if some face is too small in the preview."""

    def __init__(self, file_row: Mapping[str, Any], settings: Settings):
        self.file_row = file_row
        self.settings = settings
        self._image: Image.Image | None = None

    def at_least(self, size: tuple[int, int]) -> Image.Image:
        if self._image is None or self._image.width < size[0]:
            opened = imaging.open_image(self.file_row["path"], self.file_row["format"] or "", self.settings.max_pixels)
            image = opened.image
            if image.format == "JPEG":
                # draft() wants the stored (unrotated) size; a rotated orientation swaps the axes. At most
                # half the stored size: the hashes step already decodes every original once at full size,
                # and a second full decode per photo with a small face costs more than the sharper crop is
                # worth (the face is then scaled up 1.5-2x instead of 3-4x from the preview).
                w, h = size if opened.orientation in (1, 2, 3, 4) else size[::-1]
                image.draft("RGB", (min(w, opened.size[0] // 2), min(h, opened.size[1] // 2)))
            image.load()
            self._image = imaging.to_srgb(imaging.orient(image, opened.orientation))
        return self._image


def faces_of_frame(
    detector: Detector,
    preview: Mapping[str, Any],
    original: _Original | None,
    out_dir: Path,
    settings: Settings,
) -> list[Row]:
    """Detect, align and score the faces of one preview frame."""
    image = _load_rgb(preview["file"])
    detections = detector.detect(np.asarray(image))
    source = (preview["source_width"] or image.width, preview["source_height"] or image.height)
    to_source = (source[0] / image.width, source[1] / image.height)
    rows = []
    for index, det in enumerate(detections):
        crop_from, kps, origin = image, det.keypoints, "preview"
        if original is not None and det.eye_distance < TEMPLATE_EYE_DISTANCE and to_source[0] > 1.0:
            # The preview holds fewer pixels than the crop needs; take them from the original instead,
            # decoded just large enough (JPEG DCT scaling) for this face.
            want = min(to_source[0], TEMPLATE_EYE_DISTANCE / max(det.eye_distance, 1.0))
            target = (math.ceil(image.width * want), math.ceil(image.height * want))
            crop_from = original.at_least(target)
            kps = det.keypoints * (crop_from.width / image.width, crop_from.height / image.height)
            origin = "original"
        crop = align(crop_from, kps)
        target_file = out_dir / f"{preview['media_id']}.f{preview['frame_index']:03d}.{index:02d}.jpg"
        with atomic_path(target_file) as tmp:
            crop.save(tmp, "JPEG", quality=settings.crop_quality)
        in_source = det.scaled(*to_source)
        x0, y0, x1, y1 = in_source.box
        face_px = min(x1 - x0, y1 - y0)
        sharp = sharpness(crop)
        frontal = frontalness(det.keypoints)
        row = {
            **base_row(preview),
            "frame_index": preview["frame_index"],
            "timestamp_s": preview["timestamp_s"],
            "face_index": index,
            "score": det.score,
            **box_columns(x0, y0, x1, y1, source),
            "sharpness": sharp,
            "frontalness": frontal,
            "quality": quality(face_px, sharp, frontal),
            "crop": str(target_file),
            "crop_source": origin,
        }
        for name, (kx, ky) in zip(KEYPOINTS, in_source.keypoints, strict=True):
            row[f"{name}_x"] = float(kx)
            row[f"{name}_y"] = float(ky)
        rows.append(row)
    return rows


def faces_of_file(
    detector: Detector,
    file_row: Mapping[str, Any],
    previews: Sequence[Mapping[str, Any]],
    out_dir: Path,
    settings: Settings,
    thumbnail_error: str | None = None,
) -> list[Row]:
    if not previews:
        raise MediaError(f"no preview frame to search for faces: the thumbnails step failed ({thumbnail_error})")
    # Only still images are re-read: a video frame at full size would cost a seek and decode per frame.
    wanted = file_row["kind"] == "image" and settings.crop_from_original
    original = _Original(file_row, settings) if wanted else None
    rows: list[Row] = []
    for preview in sorted(previews, key=lambda p: p["frame_index"]):
        rows += faces_of_frame(detector, preview, original, out_dir, settings)
    return rows


def faces_shard(
    files: Sequence[Mapping[str, Any]],
    thumbnails: Sequence[Mapping[str, Any]],
    detector: Detector,
    out_dir: Path,
    threads: int = 1,
) -> list[Row]:
    """Faces of every file of a shard that has preview frames, found by ``detector`` with its settings; files
    whose thumbnails failed get an error row, files with no face get no row. The caller owns the detector,
    so that a long-lived process (the service's runner) loads its graphs once, not per call."""
    settings = detector.settings
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted, previews, failed = preview_frames(files, thumbnails)
    return map_files(
        lambda f: faces_of_file(
            detector, f, previews.get(f["media_id"], []), out_dir, settings, failed.get(f["media_id"])
        ),
        wanted,
        threads,
    )


def model(job: Job) -> Detector:
    """A face detector for the job's settings, its MediaPipe graphs loaded once per loader."""
    settings = job.settings
    return job.models.keep(("faces", settings), lambda: Detector(job.models.resolved(settings.model).path, settings))


def shard(job: Job) -> list[Row]:
    assert job.out is not None, "faces writes crops: the job needs an out folder"
    return faces_shard(job.files, job.reads["thumbnails"], model(job), job.out, job.threads)
