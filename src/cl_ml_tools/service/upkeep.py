"""A server process's upkeep, each on a thread of its own (:class:`Repeating`): the heartbeat of its running
jobs (with the recovery of the jobs of server processes that are gone, and the stopping of jobs that another
process deleted), and the retention sweeps."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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


class Repeating:
    """``action`` every ``period`` s (``at_once``: and when the thread starts) on a thread of its own, until
    ``stopping`` is set; a failure is logged and the next round goes on."""

    def __init__(
        self, name: str, period: float, action: Callable[[], None], stopping: threading.Event, at_once: bool = False
    ):
        self.period = period
        self.action = action
        self.stopping = stopping
        self.at_once = at_once
        self._thread = threading.Thread(target=self._repeat, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _repeat(self) -> None:
        if self.at_once:
            self._once()
        while not self.stopping.wait(self.period):
            self._once()

    def _once(self) -> None:
        try:
            self.action()
        except Exception:
            log.exception("%s: unexpected failure; carrying on", self._thread.name)


@dataclass(eq=False)
class Heartbeat:
    """Keeps this process's running jobs its own, and takes over the jobs of processes that are gone."""

    store: JobStore
    disk: DiskSpace
    running: Running
    finisher: Finisher
    max_attempts: int
    requeued: Callable[[], None]
    """Called when jobs went back to the queue."""
    _next_recover: float = field(default=0.0, init=False)

    def beat(self) -> None:
        self.disk.upkeep()
        self.store.heartbeat()
        self.finisher.record_unrecorded()
        self.running.cancel_deleted(self.store.known)
        now = time.monotonic()
        if now >= self._next_recover:
            self.recover()
            self._next_recover = now + RECOVER_S

    def recover(self) -> None:
        """Requeue the jobs of server processes that are gone; give up on those tried too often."""
        requeued, given_up = self.store.recover(LEASE_S, self.max_attempts)
        if requeued:
            log.warning("requeued %d job(s) whose server stopped while running them", len(requeued))
            self.requeued()
        message = f"the server stopped while running this job {self.max_attempts} time(s) (worker.max_attempts)"
        self.finisher.give_up([job for job in map(self.store.get, given_up) if job is not None], message)


@dataclass(eq=False)
class Sweeps:
    """The retention sweeps (:mod:`.retention`), and the MQTT messages of the jobs they deleted."""

    retention: Retention
    events: Events

    def sweep(self) -> None:
        for job_id in self.retention.sweep():
            self.events.forget(job_id)
