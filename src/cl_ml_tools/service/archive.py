"""The archive job (``POST /jobs/archive``): the Snakemake pipeline itself over the config's ``inputs``, with
its results under ``<storage.dir>/archive/results`` (so that the service writes nothing outside its storage
folder), its progress read from Snakemake's ``N of M steps (P%) done`` lines.

The run is an ordinary pipeline run: a rerun after the service was killed finds the finished shards and
redoes only the rest (``--rerun-incomplete``). One archive job runs at a time, so Snakemake's directory
lock, which a killed run leaves behind, is not needed (``--nolock``).
"""

from __future__ import annotations

import copy
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..data import workflow
from ..media.fileio import write_bytes_atomic
from ..models import RUNTIME_KEYS

PROGRESS = re.compile(r"(\d+) of (\d+) steps \((\d+(?:\.\d+)?)%\) done")
RESULTS = "results"


class ArchiveError(Exception):
    """The archive job cannot start; the message says what to change."""


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def pipeline_config(config: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The service's config for a pipeline run in ``folder``: relative paths (inputs, model overrides) made
    absolute, since the service's working directory is not the run's, and the results inside ``folder``."""
    # Not the server section: the pipeline has no use for it, and it may hold the API key.
    out = copy.deepcopy({k: v for k, v in config.items() if k != "server"})
    out["inputs"] = {name: _absolute(path) for name, path in config["inputs"].items()}
    out["models"] = {
        key: value if key in RUNTIME_KEYS else {**value, "path": _absolute(value["path"])}
        for key, value in (config.get("models") or {}).items()
    }
    out["results"] = str(folder / RESULTS)
    return out


def command(config: Mapping[str, Any], folder: Path) -> tuple[list[str], Path]:
    """The Snakemake command line for an archive run, and the config file it reads (written here)."""
    settings = config["plugins"]["archive"]
    try:
        # By default the pipeline this package carries (the wheel's, or the checkout's).
        snakefile = Path(_absolute(settings["snakefile"])) if settings["snakefile"] else workflow.snakefile()
    except workflow.PipelineError as exc:
        raise ArchiveError(str(exc)) from None
    if not snakefile.is_file():
        raise ArchiveError(f"plugins.archive.snakefile: there is no Snakefile at {snakefile}")
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "config.yaml"
    write_bytes_atomic(config_file, yaml.safe_dump(pipeline_config(config, folder), sort_keys=False).encode())
    cores = settings["cores"] or os.cpu_count() or 1
    args = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(folder)]
    args += ["--configfile", str(config_file), "--cores", str(cores), "--nolock", "--rerun-incomplete"]
    return [*args, "--keep-going"], config_file


def progress(line: str) -> float | None:
    """The fraction done that a line of Snakemake's output reports, if it is a progress line."""
    match = PROGRESS.search(line)
    if not match:
        return None
    done, total = int(match.group(1)), int(match.group(2))
    return done / total if total else 1.0


def summary(folder: Path) -> dict[str, dict[str, Any]]:
    """Each table the run wrote: its path, rows, and rows by status."""
    import pyarrow.parquet as pq

    tables: dict[str, dict[str, Any]] = {}
    for path in sorted((folder / RESULTS / "tables").glob("*.parquet")):
        dataset = pq.ParquetDataset(path)
        names = dataset.schema.names
        table = dataset.read(columns=["status"] if "status" in names else names[:1])
        entry: dict[str, Any] = {"path": str(path), "rows": table.num_rows}
        if "status" in names:
            statuses = table.column("status").to_pylist()
            entry["status"] = {s: statuses.count(s) for s in sorted(set(statuses))}
        tables[path.name.removesuffix(".parquet")] = entry
    return tables
