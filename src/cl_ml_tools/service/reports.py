"""What the job slots report about a job: its progress, and its end (the result stored, the end recorded in
the queue and announced over MQTT and to the requests waiting for it)."""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..steps.common import describe
from . import documents
from .diskspace import DiskSpace
from .jobs import DONE, ERROR, Job, JobStore
from .mqtt import Events
from .storage import RESULT_FILE, Layout

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Progress:
    """A running job's progress, recorded in the queue and published."""

    store: JobStore
    events: Events

    def __call__(self, ids: Sequence[str], fraction: float, message: str) -> None:
        try:
            self.store.progress(ids, fraction, message)
        except sqlite3.Error as exc:  # a full disk: the job goes on; its end is what must be recorded
            log.warning("jobs %s: cannot record progress: %s", ",".join(ids), exc)
        for job_id in ids:
            self.events.publish(job_id, "progress", documents.progress(job_id, fraction, message))


@dataclass(eq=False)
class Finisher:
    """Ends jobs: writes the result document, records the end in the queue (later, when the database
    cannot be written now) and announces it."""

    layout: Layout
    store: JobStore
    events: Events
    disk: DiskSpace
    keep_uploads: bool
    finished: Callable[[str], None]
    """Called with the id of every job that ended (the requests waiting for it are woken)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _unrecorded: dict[str, tuple[Job, str, Mapping[str, Any]]] = field(default_factory=dict, init=False)

    def complete(self, job: Job, rows: list[dict[str, Any]] | None, error: str | None) -> None:
        """Write a job's result and mark it finished. ``rows`` None: the call failed with ``error``, and the
        job's rows are the one error row the pipeline's table would have for the file."""
        if rows is None:
            self.finish(job, documents.error_result(self.layout, job, error or "failed"))
            return
        failed = [r["error"] for r in rows if r.get("status") != "ok"]
        status, message = ("error", error or failed[0]) if error or failed else ("ok", None)
        self.finish(job, documents.result(job, status, message, rows, documents.manifest(self.layout, job.id)))

    def give_up(self, claimed: Sequence[Job], message: str) -> None:
        """End jobs a failure left running, with an error result, so that none stays "running" for good."""
        for job in claimed:
            current = self.store.get(job.id)
            if current is None or current.finished:
                continue
            try:
                self.finish(job, documents.error_result(self.layout, job, message))
            except Exception:
                log.exception("job %s: cannot record its failure", job.id)

    def finish(self, job: Job, document: Mapping[str, Any]) -> None:
        try:
            self.layout.write_result(job.id, document)
        except OSError as exc:
            # A full disk, typically. The job ends all the same (an error, recorded in the queue, which
            # GET /results turns into the job's error result): its slot is freed, and nobody waits for good.
            log.error("job %s: cannot write its result: %s", job.id, describe(exc))
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self.disk.release()
            shutil.rmtree(self.layout.out_dir(job.id), ignore_errors=True)
            message = f"the server could not store this job's result ({describe(exc)}); submit the file again"
            document = documents.error_result(self.layout, job, message)
            with contextlib.suppress(OSError):
                (self.layout.job_dir(job.id) / RESULT_FILE).unlink()
        state = DONE if document["status"] == "ok" else ERROR
        if job.file and not self.keep_uploads:
            with contextlib.suppress(FileNotFoundError):
                (self.layout.job_dir(job.id) / job.file["upload"]).unlink()
        try:
            finished = self.store.finish(job.id, state, document["error"])
        except sqlite3.Error:
            # The database cannot be written either: the upkeep thread records the end once it can.
            log.exception("job %s: cannot record its end yet", job.id)
            with self._lock:
                self._unrecorded[job.id] = (job, state, document)
            return
        self._announce(job, finished, document)

    def _announce(self, job: Job, finished: Job | None, document: Mapping[str, Any]) -> None:
        # None: the job is not this run's to end any more. DELETE removed it (and cleared its retained messages:
        # publishing now would leave a retained result of a job that no longer exists), or it was requeued
        # and its rerun will announce its end.
        if finished is not None:
            self.events.publish(job.id, "status", documents.status(finished))
            self.events.publish(job.id, "result", document)
        self.finished(job.id)

    def record_unrecorded(self) -> None:
        """Record the ends that the database could not take when the jobs ended."""
        with self._lock:
            pending = list(self._unrecorded.items())
        for job_id, (job, state, document) in pending:
            finished = self.store.finish(job_id, state, document["error"])
            with self._lock:
                del self._unrecorded[job_id]
            self._announce(job, finished, document)
