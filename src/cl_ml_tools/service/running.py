"""Which jobs this server process runs now, and how to stop each: a job that DELETE /jobs/{id} removed is
stopped with what it started, and the slot that ran it drops it."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence

from .jobs import Job
from .storage import Layout

log = logging.getLogger(__name__)


class Running:
    def __init__(self, layout: Layout):
        self.layout = layout
        self._lock = threading.Lock()
        self._stops: dict[str, Callable[[], None]] = {}
        self._cancelled: set[str] = set()

    @contextlib.contextmanager
    def running(self, ids: Sequence[str], stop: Callable[[], None]) -> Iterator[None]:
        """While inside, the jobs ``ids`` run here and ``stop`` kills what runs them."""
        with self._lock:
            self._stops.update(dict.fromkeys(ids, stop))
        try:
            yield
        finally:
            with self._lock:
                for job_id in ids:
                    self._stops.pop(job_id, None)

    def drop_cancelled(self, claimed: Sequence[Job]) -> list[Job]:
        """``claimed`` without the jobs DELETE cancelled; their folders (what a killed runner may have written
        after DELETE removed them) are deleted."""
        with self._lock:
            cancelled = {job.id for job in claimed} & self._cancelled
            self._cancelled -= cancelled
        for job_id in cancelled:
            self.layout.remove_job(job_id)
        return [job for job in claimed if job.id not in cancelled]

    def cancel(self, job_id: str) -> None:
        """Stop a job that DELETE /jobs/{id} removed from the queue, if this process runs it: its runner is
        killed (with what it started), and the slot removes the job's folder."""
        with self._lock:
            stop = self._stops.get(job_id)
            if stop is None:
                return
            self._cancelled.add(job_id)
        log.info("job %s: deleted while running; stopping it", job_id)
        stop()

    def cancel_deleted(self, known: Callable[[Sequence[str]], set[str]]) -> None:
        """Stop the jobs this process runs that another server process deleted (``known``: those still queued)."""
        with self._lock:
            ids = list(self._stops)
        for job_id in set(ids) - known(ids):
            self.cancel(job_id)
