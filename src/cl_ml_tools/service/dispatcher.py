"""The job slots of a server process: threads that claim jobs from the queue and run them, on a runner
process each (:mod:`.file_run`) or, for the archive job, as the pipeline itself (:mod:`.archive_run`).

``worker.max_concurrent_jobs`` slots run at once across every process sharing the storage folder (the
queue counts running calls, so ``--workers 4`` does not make four times as many). A call is one job, or up
to ``worker.batch_size`` queued ``hash`` or ``exif`` jobs with equal options, which the step then handles
in one go (one exiftool process for all of them, as in the pipeline).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..steps.common import describe
from . import documents
from .archive_run import ArchiveRun
from .diskspace import DiskSpace
from .file_run import FileRun
from .jobs import Job, JobStore
from .mqtt import Events
from .plugins import ARCHIVE, PLUGINS
from .reports import Finisher
from .runner_process import RunnerProcess
from .service_config import ServiceConfig

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.5
DISK_POLL_S = 2.0
BATCHABLE = tuple(name for name, p in PLUGINS.items() if p.batchable)


@dataclass(eq=False)
class Dispatcher:
    config: ServiceConfig
    store: JobStore
    events: Events
    disk: DiskSpace
    runner_config: Path
    env: Mapping[str, str]
    file_run: FileRun
    archive_run: ArchiveRun
    finisher: Finisher
    stopping: threading.Event
    _wake: threading.Condition = field(default_factory=threading.Condition, init=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False)
    _runners: list[RunnerProcess] = field(default_factory=list, init=False)

    def start(self) -> None:
        slots = self.config.max_concurrent_jobs
        self._threads = [threading.Thread(target=self._slot, name=f"job-slot-{i}", daemon=True) for i in range(slots)]
        for thread in self._threads:
            thread.start()

    def wake(self, every: bool = False) -> None:
        """Jobs were queued: let an idle slot (``every``: all of them) claim them now rather than at its next poll."""
        with self._wake:
            self._wake.notify_all() if every else self._wake.notify()

    def stop(self) -> None:
        """Stop the slots, once ``stopping`` is set: what they run is killed."""
        self.wake(every=True)
        for runner in self._runners:
            runner.kill()
        self.archive_run.stop()
        for thread in self._threads:
            thread.join(timeout=10)

    def _slot(self) -> None:
        runner = RunnerProcess(self.runner_config, self.env)
        self._runners.append(runner)
        try:
            while not self.stopping.is_set():
                claimed: list[Job] = []
                try:
                    if self.disk.low():
                        self.stopping.wait(DISK_POLL_S)  # no job starts that could not store its result
                        continue
                    claimed = self._claim()
                    if not claimed:
                        with self._wake:
                            self._wake.wait(IDLE_POLL_S)
                    elif claimed[0].plugin == ARCHIVE:
                        self.archive_run(claimed[0])
                    else:
                        self.file_run(claimed, runner)
                except Exception as exc:  # a slot must outlive any one failure (a full disk, a locked database)
                    log.exception("job slot: unexpected failure; carrying on")
                    self.finisher.give_up(claimed, f"the server failed while running this job: {describe(exc)}")
                    self.stopping.wait(1.0)
        finally:
            runner.close()

    def _claim(self) -> list[Job]:
        claimed = self.store.claim(
            self.config.max_concurrent_jobs, BATCHABLE, (ARCHIVE,), self.config.worker["batch_size"]
        )
        for job in claimed:
            self.events.publish(job.id, "status", documents.status(job))
        return claimed
