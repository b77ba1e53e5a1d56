"""A server process's upkeep, each on a thread of its own: the heartbeat of its running jobs (with the
recovery of the jobs of server processes that are gone, and the stopping of jobs that another process
deleted), and the retention sweeps."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .diskspace import DiskSpace
from .jobs import JobStore
from .mqtt import Events
from .reports import Finisher
from .retention import Retention
from .running import Running

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
LEASE_S = 30.0
RECOVER_S = 5.0
SWEEP_S = 60.0


class Heartbeat:
    """Keeps this process's running jobs its own, and takes over the jobs of processes that are gone."""

    def __init__(
        self,
        store: JobStore,
        disk: DiskSpace,
        running: Running,
        finisher: Finisher,
        max_attempts: int,
        requeued: Callable[[], None],
        stopping: threading.Event,
    ):
        self.store = store
        self.disk = disk
        self.running = running
        self.finisher = finisher
        self.max_attempts = max_attempts
        self.requeued = requeued
        self.stopping = stopping
        self._thread = threading.Thread(target=self._beat, name="job-maintenance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _beat(self) -> None:
        next_recover = time.monotonic()
        while not self.stopping.wait(HEARTBEAT_S):
            try:
                self.disk.upkeep()
                self.store.heartbeat()
                self.finisher.record_unrecorded()
                self.running.cancel_deleted(self.store.known)
                now = time.monotonic()
                if now >= next_recover:
                    self.recover()
                    next_recover = now + RECOVER_S
            except Exception:
                log.exception("job maintenance: unexpected failure; carrying on")

    def recover(self) -> None:
        """Requeue the jobs of server processes that are gone; give up on those tried too often."""
        requeued, given_up = self.store.recover(LEASE_S, self.max_attempts)
        if requeued:
            log.warning("requeued %d job(s) whose server stopped while running them", len(requeued))
            self.requeued()
        message = f"the server stopped while running this job {self.max_attempts} time(s) (worker.max_attempts)"
        self.finisher.give_up([job for job in map(self.store.get, given_up) if job is not None], message)


class Sweeps:
    """The retention sweeps (:mod:`.retention`). A thread of their own: with storage.max_bytes they walk the
    whole storage folder, which must never hold up the heartbeat (a late heartbeat gets this process's
    running jobs requeued by the others)."""

    def __init__(self, retention: Retention, events: Events, stopping: threading.Event):
        self.retention = retention
        self.events = events
        self.stopping = stopping
        self._thread = threading.Thread(target=self._sweep_often, name="job-retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def sweep(self) -> None:
        for job_id in self.retention.sweep():
            self.events.forget(job_id)

    def _sweep_often(self) -> None:
        while True:
            try:
                self.sweep()
            except Exception:
                log.exception("retention: unexpected failure; carrying on")
            if self.stopping.wait(SWEEP_S):
                return
