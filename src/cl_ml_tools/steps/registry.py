"""The steps, each declared once: what it is called (its rule, module, table and config key), the step it reads,
its settings, the model it loads, how it runs, and the service's plugin for it.

Everything else is derived from these entries: ``workflow/rules/common.smk``'s step lists and their
dependencies, each ``workflow/scripts/<step>.py`` (:func:`run_job`), the service's plugins table and its
runner's step graph, the models a plugin loads, and :mod:`cl_ml_tools.plugins` (a step's rows for one file, in
Python). A new step is one module, one entry here and one rule file.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa

from ..data import inventory, tables
from ..models import Loader
from . import reuse
from .common import Job, Row, StepSettings, log_to, work

IMAGES_AND_VIDEOS = frozenset({"image", "video"})


@dataclass(frozen=True)
class Plugin:
    """The service's job type that runs a step on one uploaded file and answers with the step's rows."""

    name: str
    kinds: frozenset[str] | None
    """File kinds accepted (``sniff.sniff_bytes``); None: every non-empty file."""
    batchable: bool = False
    """Queued jobs with equal options may be handed to one call of the step (one exiftool process for many
    files, as in the pipeline)."""


def _every_file(read: str, files: list[Mapping[str, Any]], settings: Any) -> list[Mapping[str, Any]]:
    return files


@dataclass(frozen=True)
class Step:
    """A step's entry. What it runs is its module's (``steps/<name>.py``), found by name: ``shard(job)`` (one
    shard's rows, or one call's, or one file's) or, over the whole archive, ``archive(inputs, output,
    settings, params)``; and where it has them ``Settings`` (from its config section), ``model(job)`` (loads
    the section's ``model`` into ``job.loader`` and returns it) and ``wanted(read, files, settings)`` (of a
    job's files, those a part it reads is needed for). The module is imported when one of these is first
    used, so that a Snakemake job, a fresh interpreter, imports its own step's code and not every step's
    (0.3-0.6 CPU-s a job, in a rerun where a job's work is a fraction of a second)."""

    name: str
    """The step's rule, module, table, part folder and config section."""
    needs: str | None = None
    """The step whose output it reads, which must therefore be enabled with it."""
    reads: tuple[str, ...] = ()
    """Parts of earlier steps it reads, ``needs`` included (``hashes`` reads ``thumbnails`` when that step runs:
    a video's perceptual hash describes the poster frame thumbnails chose)."""
    over_archive: bool = False
    """It runs once over the consolidated tables (``archive``), not per shard (``shard``)."""
    plugin: Plugin | None = None
    by_content: bool = True
    """Its rows for a file follow from the file's bytes and the rows it reads, not from its path or dates, so
    a moved, renamed or copied file takes the rows made for the same bytes elsewhere (:mod:`.reuse`). Not
    ``files`` (the listing itself) nor ``exif`` (exiftool's File group: dates, permissions)."""

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(f"{__package__}.{self.name}")

    @property
    def shard(self) -> Callable[[Job], list[Row]] | None:
        return None if self.over_archive else self.module.shard

    @property
    def archive(self) -> Callable[[Mapping[str, Any], str, Any, Mapping[str, Any]], None] | None:
        return self.module.archive if self.over_archive else None

    @property
    def settings(self) -> type[StepSettings] | None:
        return getattr(self.module, "Settings", None)

    @property
    def model(self) -> Callable[[Job], Any] | None:
        return getattr(self.module, "model", None)

    @property
    def wanted(self) -> Callable[[str, list[Mapping[str, Any]], Any], list[Mapping[str, Any]]]:
        return getattr(self.module, "wanted", _every_file)

    @property
    def schema(self) -> pa.Schema:
        return tables.SCHEMAS[self.name]

    @property
    def version(self) -> int:
        """The table's version. It stays in :mod:`cl_ml_tools.data.tables`, beside the schema, because writing
        and consolidating parts (the data layer, below this one) stamp and check it."""
        return tables.VERSIONS[self.name]


def _frames(name: str, plugin: str) -> Step:
    """A step over the preview frames thumbnails made, on images and videos."""
    return Step(name, needs="thumbnails", reads=("thumbnails",), plugin=Plugin(plugin, IMAGES_AND_VIDEOS))


STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        Step("files", by_content=False),
        Step("hashes", reads=("thumbnails",), plugin=Plugin("hash", None, batchable=True)),
        Step("exif", plugin=Plugin("exif", None, batchable=True), by_content=False),
        Step("thumbnails", plugin=Plugin("media_thumbnail", IMAGES_AND_VIDEOS)),
        Step("hls", plugin=Plugin("hls_streaming", frozenset({"video"}))),
        _frames("faces", "face_detection"),
        Step("face_embeddings", needs="faces", reads=("faces",), plugin=Plugin("face_embedding", IMAGES_AND_VIDEOS)),
        _frames("ocr", "ocr"),
        _frames("quality", "quality"),
        Step("places", needs="exif", reads=("exif",), plugin=Plugin("places", None, batchable=True)),
        _frames("dino", "dino_embedding"),
        _frames("clip", "clip_embedding"),
        Step("duplicates", needs="hashes", over_archive=True),
        Step("people", needs="face_embeddings", over_archive=True),
        Step("events", needs="exif", over_archive=True),
    )
}
SHARD_STEPS = tuple(name for name, s in STEPS.items() if not s.over_archive)
"""Steps run per shard (a part each, then consolidated into a table)."""
ARCHIVE_STEPS = tuple(name for name, s in STEPS.items() if s.over_archive)
"""Steps over the whole archive, reading the consolidated tables."""
NEEDS = {name: s.needs for name, s in STEPS.items() if s.needs is not None}
PLUGINS = {s.plugin.name: s for s in STEPS.values() if s.plugin is not None}
"""The service's plugins, each the step it runs."""


def chain(step: str) -> list[str]:
    """The steps a job of ``step`` runs on an uploaded file, in order: what it needs first (``face_embeddings``:
    thumbnails, faces, face_embeddings)."""
    needed = STEPS[step].needs
    return [*chain(needed), step] if needed else [step]


def model_keys(step: str) -> tuple[str, ...]:
    """The config sections whose ``model`` a job of ``step`` loads, its own and those of the steps it needs."""
    return tuple(s for s in chain(step) if STEPS[s].model is not None)


def settings_of(step: str, section: Mapping[str, Any]) -> Any:
    """The step's settings from its config section (None for a step that takes none)."""
    cls = STEPS[step].settings
    return cls.from_config(section) if cls is not None else None


def run_with_reads(
    name: str,
    files: Sequence[Mapping[str, Any]],
    sections: Callable[[str], Mapping[str, Any]],
    out: Path,
    scratch: Path,
    threads: int,
    loader: Loader,
    progress: Callable[[float, str], None] = lambda fraction, stage: None,
) -> list[Row]:
    """The rows of step ``name`` for ``files`` where no earlier step's part exists (a service job, a notebook):
    the steps whose parts it reads run first, on the files they are wanted for, each with its config section
    (``sections``), writing what they make under ``scratch``; ``name`` itself writes under ``out``."""
    todo = chain(name)
    done: dict[str, list[Row]] = {}

    def rows(step_name: str, wanted: list[Mapping[str, Any]], out_dir: Path) -> list[Row]:
        step = STEPS[step_name]
        assert step.shard is not None, f"{step_name} runs over the whole archive, not over files"
        settings = settings_of(step_name, sections(step_name))
        reads = {}
        for read in step.reads:
            needed = step.wanted(read, wanted, settings)
            reads[read] = done[read] if read in done else rows(read, needed, scratch / read) if needed else []
        progress(todo.index(step_name) / len(todo) if step_name in todo else 0.0, step_name)
        done[step_name] = step.shard(Job(wanted, settings, reads, out_dir, threads, loader))
        return done[step_name]

    return rows(name, list(files), out)


def _read(path: str | list[str]) -> list[Mapping[str, Any]] | list[inventory.Entry]:
    """An input of a step's rule: a part's rows, a shard list's entries, or nothing (an input left out)."""
    if not path:
        return []
    if str(path).endswith(".jsonl"):
        return inventory.read_shard_list(path)
    return tables.read_part(path)


def run_job(name: str, snakemake: Any) -> None:
    """What the step's Snakemake job does (``workflow/scripts/<step>.py``): load its model, then (the job's work
    proper, see :func:`~cl_ml_tools.steps.common.work`) read its inputs, run it and write its part."""
    step = STEPS[name]
    log_to(snakemake.log[0])
    settings = settings_of(name, snakemake.params.get("settings", {}))
    if step.archive is not None:
        inputs = dict(snakemake.input.items())
        with work():
            step.archive(inputs, snakemake.output[0], settings, dict(snakemake.params.items()))
        return
    assert step.shard is not None
    outputs = dict(snakemake.output.items())
    records = [snakemake.input.model] if "model" in dict(snakemake.input.items()) else []
    with Loader.from_records(records, snakemake.config, snakemake.threads) as loader, work():
        paths = {k: v for k, v in snakemake.input.items() if k != "model"}
        inputs = {k: _read(v) for k, v in paths.items()}
        source = inputs.pop("shard_list", None) or inputs.pop("files", [])
        out = next((Path(v) for k, v in outputs.items() if k != "part"), None)
        part = Path(outputs.get("part") or snakemake.output[0])
        shard_name = snakemake.wildcards.get("shard", "")
        parts_read = {k: v for k, v in paths.items() if k != "shard_list" and v}  # [] for a step left out
        fingerprint = reuse.fingerprint(name, dict(snakemake.params.items()), parts_read)
        folder = part.parents[2] / "reuse" / name / part.stem  # results/reuse/<step>/<shard>

        def compute(files: Sequence[Any], reads: Mapping[str, Sequence[Row]]) -> list[Row]:
            # Only here is the model loaded: a job whose files are all reused (deletes, moves) loads none.
            return step.shard(Job(files, settings, reads, out, snakemake.threads, loader, shard_name))

        # By content, the file's own row stands for it, not the digest the files step recorded from its path.
        upstream = {k: reuse.part_digests(v) for k, v in parts_read.items() if not (step.by_content and k == "files")}
        rows, digests, offered, counts = reuse.run(
            source, inputs, upstream, fingerprint, folder, out, compute, by_content=step.by_content
        )
        metadata = {
            reuse.FINGERPRINT_KEY: fingerprint.encode(),
            reuse.DIGESTS_KEY: json.dumps(digests).encode(),
            reuse.COUNTS_KEY: json.dumps(counts).encode(),
        }
        gone = reuse.departed(folder, fingerprint, out, digests)
        tables.write_part(name, rows, part, metadata)
        reuse.save(folder, part, out, fingerprint, offered, gone)
