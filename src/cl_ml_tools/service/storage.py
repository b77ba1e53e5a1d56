"""The storage directory's layout, shared by every server process::

jobs.sqlite3          the queue (WAL journal; :mod:`cl_ml_tools.service.jobs`)
jobs/<id>/            upload<ext> (the file; deleted when the job ends unless storage.keep_uploads),
                      out/ (files the job made: thumbnails, crops, HLS renditions), result.json,
                      .attempt-<run>/ (where a run writes them; renamed to out/ when it ends)
tmp/<pid>-<token>/    scratch space of one server process's runs, deleted after each run
archive/              the archive job's pipeline run (config, results, Snakemake's state)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..media.fileio import write_bytes_atomic
from .owner import Owner

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
RESULT_FILE = "result.json"
OUT_DIR = "out"
ATTEMPT_PREFIX = ".attempt-"


class Layout:
    """Paths inside the storage directory. Job ids are checked before they become part of a path."""

    def __init__(self, root: Path):
        self.root = root
        self.database = root / "jobs.sqlite3"
        self.jobs = root / "jobs"
        self.tmp = root / "tmp"
        self.archive = root / "archive"

    def prepare(self) -> None:
        for folder in (self.root, self.jobs, self.tmp, self.archive):
            folder.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.jobs / job_id

    def out_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / OUT_DIR

    def scratch(self, owner: Owner) -> Path:
        return self.tmp / owner.name

    def attempt_dir(self, job_id: str, run: str) -> Path:
        """Where one attempt at a job writes its files, until :meth:`adopt_attempt` makes them its ``out/``."""
        return self.job_dir(job_id) / f"{ATTEMPT_PREFIX}{run}"

    def clear_attempts(self, job_id: str) -> None:
        for folder in self.job_dir(job_id).glob(f"{ATTEMPT_PREFIX}*"):
            shutil.rmtree(folder, ignore_errors=True)

    def adopt_attempt(self, job_id: str, attempt: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Make an attempt's folder the job's ``out/``; ``rows`` with the paths into it changed to match."""
        out = self.out_dir(job_id)
        shutil.rmtree(out, ignore_errors=True)
        if not attempt.is_dir():
            return rows
        os.replace(attempt, out)
        old, new = str(attempt), str(out)

        def moved(value: Any) -> Any:  # HLS variants are a list of structs holding paths
            if isinstance(value, str) and (value == old or value.startswith(old + os.sep)):
                return new + value[len(old) :]
            if isinstance(value, list):
                return [moved(v) for v in value]
            if isinstance(value, dict):
                return {k: moved(v) for k, v in value.items()}
            return value

        return [moved(row) for row in rows]

    def write_result(self, job_id: str, document: Mapping[str, Any]) -> None:
        data = json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        write_bytes_atomic(self.job_dir(job_id) / RESULT_FILE, data)

    def read_result(self, job_id: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.job_dir(job_id) / RESULT_FILE).read_bytes())
        except FileNotFoundError:
            return None

    def remove_job(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def clean_scratch(self, owner: Owner) -> None:
        """Delete the scratch folders of server processes that are gone (killed ones leave theirs)."""
        for entry in self.tmp.iterdir() if self.tmp.is_dir() else []:
            pid, _, token = entry.name.partition("-")
            if entry.name != owner.name and owner.outlived(int(pid) if pid.isdigit() else None, token):
                shutil.rmtree(entry, ignore_errors=True)
