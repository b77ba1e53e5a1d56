"""The parts of one server process that run jobs, wired together and started and stopped in order: the job
slots (:mod:`.dispatcher`), what they run (:mod:`.file_run`, :mod:`.archive_run`), what they report
(:mod:`.reports`) and the upkeep threads (:mod:`.upkeep`)."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable

from .archive_run import ArchiveRun
from .diskspace import DiskSpace
from .dispatcher import Dispatcher
from .file_run import FileRun
from .jobs import JobStore
from .mqtt import Events
from .processes import child_env
from .reports import Finisher, Progress
from .retention import Retention
from .runner_process import write_runner_config
from .running import Running
from .service_config import ServiceConfig
from .storage import Layout
from .upkeep import HEARTBEAT_S, SWEEP_S, Heartbeat, Repeating, Sweeps

log = logging.getLogger(__name__)


class ServerProcess:
    def __init__(
        self,
        config: ServiceConfig,
        layout: Layout,
        store: JobStore,
        events: Events,
        finished: Callable[[str], None] = lambda job_id: None,
    ):
        self.config = config
        self.layout = layout
        self.store = store
        self.scratch = layout.scratch(store.owner)
        self.runner_config = self.scratch / "config.json"
        storage = config.raw["storage"]
        self.disk = DiskSpace(layout.root, storage["min_free_bytes"])
        self.running = Running(layout)
        stopping = self.stopping = threading.Event()
        env = child_env(str(self.scratch))
        progress = Progress(store, events)
        finisher = Finisher(layout, store, events, self.disk, storage["keep_uploads"], finished)
        timeout = float(config.worker["job_timeout_seconds"])
        file_run = FileRun(layout, self.scratch, timeout, self.running, progress, finisher, stopping)
        archive_run = ArchiveRun(config, layout, env, self.running, progress, finisher, stopping)
        self.dispatcher = Dispatcher(
            config, store, events, self.disk, self.runner_config, env, file_run, archive_run, finisher, stopping
        )
        max_attempts = config.worker["max_attempts"]
        wake_all = lambda: self.dispatcher.wake(every=True)  # noqa: E731
        self.heartbeat = Heartbeat(store, self.disk, self.running, finisher, max_attempts, wake_all)
        retention = Retention(layout, store, float(storage["retention_hours"]), storage["max_bytes"])
        self.sweeps = Sweeps(retention, events)
        # The sweeps have a thread of their own: with storage.max_bytes they walk the whole storage folder,
        # which must never hold up the heartbeat (a late heartbeat gets this process's running jobs requeued
        # by the others).
        self._upkeep = [
            Repeating("job-maintenance", HEARTBEAT_S, self.heartbeat.beat, stopping),
            Repeating("job-retention", SWEEP_S, self.sweeps.sweep, stopping, at_once=True),
        ]

    def start(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        write_runner_config(self.config, self.runner_config)
        self.disk.upkeep()
        self.heartbeat.recover()
        self.sweeps.sweep()
        self.dispatcher.start()
        for thread in self._upkeep:
            thread.start()
        log.info("dispatcher: %d job slot(s), storage %s", self.config.max_concurrent_jobs, self.layout.root)

    def stop(self) -> None:
        """Stop the slots and the upkeep; jobs the slots were running go back to the queue and run again at
        the next start."""
        self.stopping.set()
        self.dispatcher.stop()
        for thread in self._upkeep:
            thread.join()
        self.store.release()
        shutil.rmtree(self.scratch, ignore_errors=True)
