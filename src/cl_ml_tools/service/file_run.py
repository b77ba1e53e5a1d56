"""One call of a runner: a claimed job, or a batch of ``hash`` or ``exif`` jobs with equal options."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import documents
from .jobs import Job
from .reports import Finisher, Progress
from .runner_process import RunnerDied, RunnerProcess, RunnerTimeout
from .running import Running
from .storage import Layout


@dataclass(eq=False)
class FileRun:
    layout: Layout
    scratch: Path
    timeout: float
    running: Running
    progress: Progress
    finisher: Finisher
    stopping: threading.Event

    def __call__(self, claimed: Sequence[Job], runner: RunnerProcess) -> None:
        claimed = self.running.drop_cancelled(claimed)
        if not claimed:
            return
        first = claimed[0]
        run = first.run or first.id
        work = self.scratch / run
        # Each attempt writes into a folder of its own, which becomes the job's out/ only when the call
        # returns: a process of an earlier attempt that is still writing never mixes its files with this
        # one's, and a job that times out or dies leaves no partial files behind.
        attempts = [self.layout.attempt_dir(job.id, run) for job in claimed]
        for job in claimed:
            self.layout.clear_attempts(job.id)
        request = documents.runner_request(self.layout, claimed, map(str, attempts), str(work))
        ids = [job.id for job in claimed]
        with self.running.running(ids, runner.kill):
            try:
                reply = runner.call(request, self.timeout, lambda fraction, stage: self.progress(ids, fraction, stage))
            except (RunnerTimeout, RunnerDied) as exc:
                for folder in attempts:
                    shutil.rmtree(folder, ignore_errors=True)  # nothing of a call that was stopped is kept
                if self.stopping.is_set():
                    return  # the dispatcher's stop puts these jobs back in the queue
                if len(claimed) > 1:
                    # Which file of the batch was at fault is not known: each alone, so it costs that one only.
                    for job in claimed:
                        self([job], runner)
                    return
                if isinstance(exc, RunnerTimeout):
                    reply = {"error": f"the job did not finish within {self.timeout:g} s (worker.job_timeout_seconds)"}
                else:
                    reply = {"error": str(exc)}
            finally:
                shutil.rmtree(work, ignore_errors=True)
        kept = {job.id for job in self.running.drop_cancelled(claimed)}
        for i, (job, folder) in enumerate(zip(claimed, attempts, strict=True)):
            if job.id not in kept:
                continue
            rows = reply["rows"][i] if "rows" in reply else None
            if rows is not None:
                rows = self.layout.adopt_attempt(job.id, folder, rows)
            shutil.rmtree(folder, ignore_errors=True)  # a call that failed as a whole: its files are not kept
            self.finisher.complete(job, rows, reply.get("error"))
