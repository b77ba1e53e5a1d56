"""Thumbnails and previews: the single decoded input that every later ML step reads.

Images get a ``thumb`` and a ``preview`` (frame 0). Videos get a ``poster`` (the first frame that is not
blank) and its ``thumb``, a keyframe contact ``sheet``, and K evenly spaced ``preview`` frames with their
timestamps.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..data.config import schema_defaults
from ..data.tables import base_row
from ..media import imaging, video
from ..media.fileio import atomic_path
from ..media.sniff import media_kind
from .common import Job, Row, StepSettings, map_files, select

# Candidate poster times (seconds) tried when the very first frame is black or flat.
POSTER_CANDIDATES_S = (0.5, 1.0, 2.0, 3.0, 5.0)


@dataclass(frozen=True)
@schema_defaults("thumbnails")
class Settings(StepSettings):
    thumb_size: int
    preview_size: int
    format: str  # "jpeg" or "webp"
    quality: int
    video_frames: int
    sheet_grid: int
    max_pixels: int

    @property
    def extension(self) -> str:
        return ".webp" if self.format == "webp" else ".jpg"


def save(image: Image.Image, target: Path, settings: Settings) -> None:
    with atomic_path(target) as tmp:
        if settings.format == "webp":
            image.save(tmp, "WEBP", quality=settings.quality, method=4)
        else:
            image.save(tmp, "JPEG", quality=settings.quality, optimize=False, progressive=False)


def _decode_reduced(opened: imaging.Opened, box: int) -> Image.Image:
    """Decode just enough of the image to fill ``box``: JPEG's DCT scaling (draft mode) so a 12 MP photo
    is decoded at 1/2 or 1/4 scale, then a reducing resize."""
    image = opened.image
    if image.format == "JPEG":
        image.draft("RGB", (box, box))
    image.load()
    return imaging.fit(image, box)


def _row(file_row: Mapping[str, Any], role: str, target: Path, image: Image.Image, source: tuple[int, int],
         frame_index: int | None = None, timestamp_s: float | None = None) -> Row:  # fmt: skip
    return {
        **base_row(file_row),
        "role": role,
        "frame_index": frame_index,
        "timestamp_s": timestamp_s,
        "file": str(target),
        "width": image.width,
        "height": image.height,
        "source_width": source[0],
        "source_height": source[1],
    }


def image_thumbnails(file_row: Mapping[str, Any], out_dir: Path, settings: Settings) -> list[Row]:
    opened = imaging.open_image(file_row["path"], file_row["format"] or "", settings.max_pixels)
    reduced = _decode_reduced(opened, settings.preview_size)
    preview = imaging.to_srgb(imaging.orient(reduced, opened.orientation))
    thumb = imaging.fit(preview, settings.thumb_size)
    stem = out_dir / file_row["media_id"]
    rows = []
    for role, image in (("thumb", thumb), ("preview", preview)):
        target = stem.with_name(f"{stem.name}.{role}{settings.extension}")
        save(image, target, settings)
        rows.append(_row(file_row, role, target, image, opened.oriented_size, frame_index=0, timestamp_s=None))
    return rows


def video_thumbnails(file_row: Mapping[str, Any], out_dir: Path, settings: Settings) -> list[Row]:
    path = file_row["path"]
    info = video.probe(path)
    source = info.oriented_size
    k = max(1, settings.video_frames)
    times = [info.duration * i / k for i in range(k)] if info.duration else [0.0]
    stem = out_dir / file_row["media_id"]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="cl_ml_tools_frames_") as tmp:
        tmp_dir = Path(tmp)
        packets = video.list_packets(path, info.index)
        frames = video.extract_frames(path, info, packets.times, times, settings.preview_size, tmp_dir)
        previews: list[tuple[float, Image.Image]] = []
        for index, (t, frame) in enumerate(zip(times, frames, strict=True)):
            if frame is None:
                continue
            image = Image.open(frame).convert("RGB")
            target = stem.with_name(f"{stem.name}.frame{index:03d}{settings.extension}")
            save(image, target, settings)
            rows.append(_row(file_row, "preview", target, image, source, frame_index=index, timestamp_s=t))
            previews.append((t, image))
        poster_t, poster = _choose_poster(path, info, packets.times, previews, settings, tmp_dir)
        for role, image in (("poster", poster), ("thumb", imaging.fit(poster, settings.thumb_size))):
            target = stem.with_name(f"{stem.name}.{role}{settings.extension}")
            save(image, target, settings)
            rows.append(_row(file_row, role, target, image, source, timestamp_s=poster_t))
        sheet_bmp = video.contact_sheet(
            path, info, packets.keyframes, settings.thumb_size, settings.sheet_grid, tmp_dir / "sheet.bmp"
        )
        sheet = Image.open(sheet_bmp).convert("RGB")
        target = stem.with_name(f"{stem.name}.sheet{settings.extension}")
        save(sheet, target, settings)
        rows.append(_row(file_row, "sheet", target, sheet, source))
    return rows


def _choose_poster(
    path: str,
    info: video.VideoInfo,
    frame_times: list[float],
    previews: list[tuple[float, Image.Image]],
    settings: Settings,
    tmp: Path,
) -> tuple[float, Image.Image]:
    """The first frame that is not blank: frame 0 if it has content, else a few early seconds, else the
    first preview frame with content, else frame 0 anyway."""
    first_t, first = previews[0]
    if not imaging.is_blank(first):
        return first_t, first
    limit = info.duration or 0.0
    times = [t for t in POSTER_CANDIDATES_S if t < limit]
    if times:
        candidates_dir = tmp / "poster"
        candidates_dir.mkdir()
        candidates = video.extract_frames(path, info, frame_times, times, settings.preview_size, candidates_dir)
        for t, frame in zip(times, candidates, strict=True):
            if frame is not None:
                image = Image.open(frame).convert("RGB")
                if not imaging.is_blank(image):
                    return t, image
    for t, image in previews:
        if not imaging.is_blank(image):
            return t, image
    return first_t, first


def thumbnail_file(file_row: Mapping[str, Any], out_dir: Path, settings: Settings) -> list[Row]:
    kind = media_kind(file_row["kind"], file_row["path"])
    if kind == "video":
        return video_thumbnails(file_row, out_dir, settings)
    return image_thumbnails(file_row, out_dir, settings)


def thumbnail_shard(
    files: Sequence[Mapping[str, Any]], out_dir: Path, settings: Settings, threads: int = 1
) -> list[Row]:
    # Absolute paths in the table, so a notebook anywhere can open them.
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    return map_files(lambda f: thumbnail_file(f, out_dir, settings), select(files, ("image", "video")), threads)


def shard(job: Job) -> list[Row]:
    assert job.out is not None, "thumbnails writes images: the job needs an out folder"
    return thumbnail_shard(job.files, job.out, job.settings, job.threads)
