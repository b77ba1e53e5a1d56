"""The steps, each declared once: what it is called (its rule, module, table and config key), the step it reads,
its settings, the model it loads, how it runs, and the service's plugin for it.

Everything else is derived from these entries: ``workflow/rules/common.smk``'s step lists and their
dependencies, each ``workflow/scripts/<step>.py`` (:func:`run_job`), the service's plugins table and its
runner's step graph, the models a plugin loads, and :mod:`cl_ml_tools.plugins` (a step's rows for one file, in
Python). A new step is one module, one entry here and one rule file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..data import inventory, tables
from ..models import Loader
from . import (
    clip,
    dino,
    duplicates,
    events,
    exif,
    face_embeddings,
    faces,
    files,
    hashes,
    hls,
    image_embeddings,
    ocr,
    people,
    reuse,
    thumbnails,
)
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
    name: str
    """The step's rule, module, table, part folder and config section."""
    needs: str | None = None
    """The step whose output it reads, which must therefore be enabled with it."""
    reads: tuple[str, ...] = ()
    """Parts of earlier steps it reads, ``needs`` included (``hashes`` reads ``thumbnails`` when that step runs:
    a video's perceptual hash describes the poster frame thumbnails chose)."""
    settings: type[StepSettings] | None = None
    model: Callable[[Job], Any] | None = None
    """Loads the step's model into ``job.loader`` (its config section's ``model``) and returns it."""
    shard: Callable[[Job], list[Row]] | None = None
    """One shard's rows (or one call's, or one file's); None for a step over the whole archive."""
    archive: Callable[[Mapping[str, Any], str, Any, Mapping[str, Any]], None] | None = None
    """A whole-archive step: (its rule's inputs, its output, settings, its rule's params) → the table written."""
    plugin: Plugin | None = None
    wanted: Callable[[str, list[Mapping[str, Any]], Any], list[Mapping[str, Any]]] = _every_file
    """Of a job's files, those a part it reads is needed for (a step over one file runs that part first)."""

    @property
    def schema(self) -> pa.Schema:
        return tables.SCHEMAS[self.name]

    @property
    def version(self) -> int:
        """The table's version. It stays in :mod:`cl_ml_tools.data.tables`, beside the schema, because writing
        and consolidating parts (the data layer, below this one) stamp and check it."""
        return tables.VERSIONS[self.name]


def _image_embeddings(name: str, settings: type[StepSettings], plugin: str) -> Step:
    """dino and clip: one step function (:mod:`.image_embeddings`) over two config sections and models."""
    return Step(
        name,
        needs="thumbnails",
        reads=("thumbnails",),
        settings=settings,
        model=image_embeddings.model,
        shard=image_embeddings.shard,
        plugin=Plugin(plugin, IMAGES_AND_VIDEOS),
    )


STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        Step("files", settings=None, shard=files.shard),
        Step(
            "hashes",
            reads=("thumbnails",),
            settings=hashes.Settings,
            shard=hashes.shard,
            plugin=Plugin("hash", None, batchable=True),
            wanted=hashes.wanted,
        ),
        Step("exif", shard=exif.shard, plugin=Plugin("exif", None, batchable=True)),
        Step(
            "thumbnails",
            settings=thumbnails.Settings,
            shard=thumbnails.shard,
            plugin=Plugin("media_thumbnail", IMAGES_AND_VIDEOS),
        ),
        Step("hls", settings=hls.Settings, shard=hls.shard, plugin=Plugin("hls_streaming", frozenset({"video"}))),
        Step(
            "faces",
            needs="thumbnails",
            reads=("thumbnails",),
            settings=faces.Settings,
            model=faces.model,
            shard=faces.shard,
            plugin=Plugin("face_detection", IMAGES_AND_VIDEOS),
        ),
        Step(
            "face_embeddings",
            needs="faces",
            reads=("faces",),
            settings=face_embeddings.Settings,
            model=face_embeddings.model,
            shard=face_embeddings.shard,
            plugin=Plugin("face_embedding", IMAGES_AND_VIDEOS),
        ),
        Step(
            "ocr",
            needs="thumbnails",
            reads=("thumbnails",),
            settings=ocr.Settings,
            model=ocr.model,
            shard=ocr.shard,
            plugin=Plugin("ocr", IMAGES_AND_VIDEOS),
        ),
        _image_embeddings("dino", dino.Settings, "dino_embedding"),
        _image_embeddings("clip", clip.Settings, "clip_embedding"),
        Step("duplicates", needs="hashes", settings=duplicates.Settings, archive=duplicates.archive),
        Step("people", needs="face_embeddings", settings=people.Settings, archive=people.archive),
        Step("events", needs="exif", settings=events.Settings, archive=events.archive),
    )
}
SHARD_STEPS = tuple(name for name, s in STEPS.items() if s.shard is not None)
"""Steps run per shard (a part each, then consolidated into a table)."""
ARCHIVE_STEPS = tuple(name for name, s in STEPS.items() if s.archive is not None)
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
    with Loader.from_records(records, snakemake.config, snakemake.threads) as loader:
        job = Job(files=[], settings=settings, threads=snakemake.threads, loader=loader)
        if step.model is not None:
            step.model(job)
        with work():
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
                return step.shard(Job(files, settings, reads, out, snakemake.threads, loader, shard_name))

            upstream = {k: reuse.part_digests(v) for k, v in parts_read.items()}
            rows, digests, offered, counts = reuse.run(source, inputs, upstream, fingerprint, folder, out, compute)
            metadata = {
                reuse.FINGERPRINT_KEY: fingerprint.encode(),
                reuse.DIGESTS_KEY: json.dumps(digests).encode(),
                reuse.COUNTS_KEY: json.dumps(counts).encode(),
            }
            tables.write_part(name, rows, part, metadata)
            reuse.save(folder, part, out, fingerprint, offered)
