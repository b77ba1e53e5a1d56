"""What the service keeps, and for how long: the periodic sweep of the storage folder.

- Finished jobs (their row, upload, result and files, the archive job's included) are deleted
  ``storage.retention_hours`` after they ended.
- With ``storage.max_bytes``, when the folder (queue, jobs, scratch, the archive run) is larger than that,
  finished jobs are deleted oldest first until it fits. Queued and running jobs are never deleted; the
  archive run's tables are the pipeline's state (a rerun redoes only what changed) and are not either.
- Snakemake's logs of the archive runs (``archive/.snakemake/log``) follow ``storage.retention_hours`` too.
- Folders of uploads that never became a job (a server killed mid-upload) and scratch folders of dead
  server processes are removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from .jobs import JobStore
from .storage import JOB_ID, Layout

ORPHAN_AGE_S = 3600.0
SNAKEMAKE_LOGS = Path(".snakemake") / "log"


def folder_bytes(folder: Path) -> int:
    """Bytes in the files under ``folder`` (allocated blocks, as ``du`` counts them)."""
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def _last_change(folder: Path) -> float:
    """The latest mtime of a folder and its files (an upload in progress keeps growing its file)."""
    times = [folder.stat().st_mtime]
    with contextlib.suppress(OSError):
        times += [entry.stat().st_mtime for entry in folder.iterdir()]
    return max(times)


class Retention:
    def __init__(self, layout: Layout, store: JobStore, hours: float, max_bytes: int | None):
        self.layout = layout
        self.store = store
        self.hours = hours
        self.max_bytes = max_bytes

    def sweep(self) -> list[str]:
        """One pass; the ids of the jobs it deleted."""
        now = time.time()
        deleted: list[str] = []
        if self.hours > 0:
            deleted += self._delete(self.store.expired(now - self.hours * 3600))
            self._old_logs(now - self.hours * 3600)
        if self.max_bytes is not None:
            deleted += self._shrink(self.max_bytes)
        folders = [d for d in self.layout.jobs.iterdir() if JOB_ID.match(d.name)]
        known = self.store.known([d.name for d in folders])
        for folder in folders:
            if folder.name not in known and now - _last_change(folder) > ORPHAN_AGE_S:
                shutil.rmtree(folder, ignore_errors=True)
        self.layout.clean_scratch(self.store.owner)
        return deleted

    def _delete(self, job_ids: list[str]) -> list[str]:
        for job_id in job_ids:
            self.layout.remove_job(job_id)
        self.store.delete(job_ids)
        return job_ids

    def _old_logs(self, before: float) -> None:
        logs = self.layout.archive / SNAKEMAKE_LOGS
        for path in logs.glob("*.log") if logs.is_dir() else []:
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < before:
                    path.unlink()

    def _shrink(self, limit: int) -> list[str]:
        """Delete finished jobs, oldest first, until the storage folder holds at most ``limit`` bytes."""
        excess = folder_bytes(self.layout.root) - limit
        deleted: list[str] = []
        if excess <= 0:
            return deleted
        for job_id in self.store.expired(time.time() + 1):  # every finished job, oldest first
            excess -= folder_bytes(self.layout.job_dir(job_id))
            deleted.append(job_id)
            if excess <= 0:
                break
        return self._delete(deleted)
