"""Run one step over the files of a shard: a thread pool, and every failure turned into an error row.

Threads suffice because the heavy work (Pillow decoding and resizing, hashlib, waiting on ffmpeg or
exiftool) releases the GIL; they also keep one interpreter and its imports per job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import resource
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

from ..data.tables import STATUS_OK, STATUS_SKIPPED, error_row
from ..media.errors import MediaError
from ..media.sniff import media_kind
from ..models.loader import Loader

log = logging.getLogger(__name__)

Row = dict[str, Any]
Converters = Mapping[str, Callable[[Any], Any]]


class StepSettings:
    """Base of each step's frozen settings dataclass. ``from_config`` builds it from the step's config
    section, ignoring keys it does not take (``enabled``) and converting the values named in ``CONVERT``
    (YAML gives lists where the settings keep tuples, so that they stay hashable)."""

    CONVERT: ClassVar[Converters] = {}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        values = {k: cls.CONVERT.get(k, lambda v: v)(v) for k, v in cfg.items() if k in names}
        return cls(**values)


@dataclass(frozen=True)
class Job:
    """One run of a step over some files: a shard in the pipeline, a call in the service, one file in a
    notebook. Each step's ``shard(job)`` takes it (see :mod:`.registry`)."""

    files: Sequence[Any]
    """The ``files`` rows of the files to process (for the ``files`` step: the shard list's entries)."""
    settings: Any = None
    reads: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    """The rows of the parts of earlier steps the step reads, by step."""
    out: Path | None = None
    """The folder for what the step writes besides its rows (images, renditions, crops)."""
    threads: int = 1
    loader: Loader | None = None
    shard: str = ""

    @property
    def models(self) -> Loader:
        assert self.loader is not None, "a step that loads a model needs a job with a loader"
        return self.loader


def log_to(path: str) -> None:
    """Send this job's log records (one warning per failed file) to its Snakemake log file."""
    logging.basicConfig(
        filename=path, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


@contextlib.contextmanager
def work() -> Iterator[None]:
    """Mark a job's own work in its log: what the job is for, after the interpreter started and the imports
    ran (its model is loaded inside, only when some file is not reused). benchmarks/bench_pipeline.py reads
    these lines to tell overhead from work."""
    start, cpu = time.time(), _cpu_seconds()
    yield
    log.info("work: start=%.3f end=%.3f cpu=%.3f", start, time.time(), _cpu_seconds() - cpu)


def _cpu_seconds() -> float:
    """CPU time of this process's threads and of the children it waited for (exiftool, ffmpeg)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def describe(exc: BaseException) -> str:
    if isinstance(exc, MediaError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _guarded(fn: Callable[[Mapping[str, Any]], list[Row]]) -> Callable[[Mapping[str, Any]], list[Row]]:
    def run(file_row: Mapping[str, Any]) -> list[Row]:
        try:
            return fn(file_row)
        except MemoryError:
            return [error_row(file_row, "out of memory while processing this file")]
        except Exception as exc:  # one bad file must never lose the other rows of the shard
            log.warning("%s: %s", file_row["path"], describe(exc))
            return [error_row(file_row, describe(exc))]

    return run


def map_files(
    fn: Callable[[Mapping[str, Any]], list[Row]],
    files: Iterable[Mapping[str, Any]],
    threads: int = 1,
) -> list[Row]:
    """Apply ``fn`` (one file → its rows) to every file, keeping input order."""
    guarded = _guarded(fn)
    files = list(files)
    if threads <= 1 or len(files) <= 1:
        results = [guarded(f) for f in files]
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(pool.map(guarded, files))
    return [row for rows in results for row in rows]


def select(files: Sequence[Mapping[str, Any]], kinds: Iterable[str]) -> list[Mapping[str, Any]]:
    """The files a step handles: those whose ``media_kind`` is one of ``kinds``, leaving out the entries
    inventory skipped (symlinks out of the root and the like)."""
    wanted = set(kinds)
    return [f for f in files if f["status"] != STATUS_SKIPPED and media_kind(f["kind"], f["path"]) in wanted]


def preview_frames(
    files: Sequence[Mapping[str, Any]], thumbnails: Sequence[Mapping[str, Any]]
) -> tuple[list[Mapping[str, Any]], dict[str, list[Mapping[str, Any]]], dict[str, str]]:
    """What a per-frame step reads of the thumbnails part: the shard's files it has rows for (not images or
    videos have none), each file's preview rows, and the thumbnails step's error for the files it failed on;
    the last two by media id."""
    previews: dict[str, list[Mapping[str, Any]]] = {}
    failed: dict[str, str] = {}
    for row in thumbnails:
        if row["status"] != STATUS_OK:
            failed[row["media_id"]] = row["error"]
        elif row["role"] == "preview":
            previews.setdefault(row["media_id"], []).append(row)
    return [f for f in files if f["media_id"] in previews or f["media_id"] in failed], previews, failed


def box_columns(x0: float, y0: float, x1: float, y1: float, source: tuple[int, int]) -> dict[str, float]:
    """A box's columns in a per-frame table (faces, ocr): in pixels of the oriented original, ``source`` its
    size, and normalised by it."""
    w, h = source
    return {
        "x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0,
        "x_norm": x0 / w, "y_norm": y0 / h, "width_norm": (x1 - x0) / w, "height_norm": (y1 - y0) / h,
    }  # fmt: skip


K = TypeVar("K", bound=Hashable)


def assign_ids(
    clusters: Sequence[Sequence[K]], previous: Mapping[K, int], next_id: int, given: Sequence[int | None] = ()
) -> tuple[list[int], int]:
    """Ids that survive reruns (``people``' persons, ``events``): each cluster (a list of member keys) gets the
    id ``given`` for it, if any and not yet taken (people's named persons); then the id of the earlier cluster
    it shares the most members with (largest overlaps first, each old id used once); clusters left get ids
    never used before, in the order given. Returns the ids and the next id never used."""
    ids: list[int | None] = [None] * len(clusters)
    taken: set[int] = set()
    for c, pid in enumerate(given):
        if pid is not None and pid not in taken:
            ids[c] = pid
            taken.add(pid)
    overlaps = Counter((c, previous[k]) for c, members in enumerate(clusters) for k in members if k in previous)
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
