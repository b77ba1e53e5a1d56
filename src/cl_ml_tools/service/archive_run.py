"""The archive job's run (:mod:`cl_ml_tools.service.archive`): Snakemake under a guardian, its progress read
from its output, its result the pipeline's tables and the end of that output."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import archive, documents
from .jobs import Job
from .processes import Lines, guarded, how_it_ended, kill_group
from .reports import Finisher, Progress
from .running import Running
from .service_config import ServiceConfig
from .storage import Layout

LOG_LINES = 40


@dataclass(eq=False)
class ArchiveRun:
    config: ServiceConfig
    layout: Layout
    env: Mapping[str, str]
    running: Running
    progress: Progress
    finisher: Finisher
    stopping: threading.Event
    _pipeline: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __call__(self, job: Job) -> None:
        folder = self.layout.archive
        try:
            args, _ = archive.command(self.config.raw, folder)
        except archive.ArchiveError as exc:
            self.finisher.finish(job, documents.archive_result(job, str(exc), {}))
            return
        env = {**self.env, "XDG_CACHE_HOME": str(folder / ".cache")}
        timeout = float(self.config.raw["plugins"]["archive"]["timeout_seconds"])
        tail: deque[str] = deque(maxlen=LOG_LINES)
        proc = subprocess.Popen(
            guarded(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,
            process_group=0,
        )
        self._pipeline = proc
        assert proc.stdout is not None
        lines, deadline, error = Lines(proc.stdout.fileno()), time.monotonic() + timeout, None
        # The guardian's group: Snakemake and its jobs.
        with self.running.running([job.id], lambda: kill_group(proc)):
            try:
                while (line := lines.next(deadline)) is not None:
                    text = line.decode("utf-8", "replace").rstrip()
                    tail.append(text)
                    fraction = archive.progress(text)
                    if fraction is not None:
                        self.progress([job.id], fraction, text.strip())
            except TimeoutError:
                error = f"the pipeline did not finish within {timeout:g} s (plugins.archive.timeout_seconds)"
                kill_group(proc)
            code = proc.wait()
            proc.stdout.close()
            self._pipeline = None
        if self.stopping.is_set() or not self.running.drop_cancelled([job]):
            return  # stop() requeues it; DELETE has removed it, and its result is nobody's
        if error is None and code != 0:
            error = f"the pipeline failed ({how_it_ended(code)}); the end of its output is in 'log'"
        self.finisher.finish(job, documents.archive_result(job, error, archive.summary(folder), list(tail)))

    def stop(self) -> None:
        """Kill the pipeline that runs now, if one does (the server is stopping)."""
        proc = self._pipeline
        if proc is not None:
            kill_group(proc)
