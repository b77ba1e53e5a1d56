"""Requests waiting for a job to finish (``?wait=S``): woken when this process's job slots end the job (a
poll catches the jobs that another server process ran), and all answered at once when the server stops."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from starlette.concurrency import run_in_threadpool

from .jobs import Job, JobStore
from .storage import JOB_ID
from .uploads import RequestError, Unavailable

MAX_WAIT_S = 60.0
WAIT_POLL_S = 0.5
RETRY_AFTER_S = 5


class Waiting:
    def __init__(self, store: JobStore):
        self.store = store
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._lock = threading.Lock()
        self.stopping = False

    def finished(self, job_id: str) -> None:
        """The job ended or was deleted (called from any thread): wake the requests waiting for it."""
        with self._lock:
            waiting = list(self._waiters.get(job_id, ()))
        for loop, event in waiting:
            loop.call_soon_threadsafe(event.set)

    def stop(self) -> None:
        """The server was told to stop: answer every request waiting on a job now (503, Retry-After), so
        that the ASGI server, which waits for open requests before it stops, stops at once."""
        self.stopping = True
        with self._lock:
            waiting = [entry for entries in self._waiters.values() for entry in entries]
        for loop, event in waiting:
            loop.call_soon_threadsafe(event.set)

    async def job(self, job_id: str, wait: float = 0.0) -> Job:
        """The job, after waiting up to ``wait`` s for it to finish; 404 for an unknown id."""
        if not JOB_ID.match(job_id):
            raise RequestError(404, "unknown_job", f"no job {job_id[:64]!r}: job ids are 32 hexadecimal digits")
        deadline = time.monotonic() + min(wait, MAX_WAIT_S)
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._lock:
            self._waiters.setdefault(job_id, set()).add(entry)
        try:
            while True:
                job = await run_in_threadpool(self.store.get, job_id)
                if job is None:
                    raise RequestError(
                        404,
                        "unknown_job",
                        f"no job {job_id} (never submitted, or deleted after storage.retention_hours)",
                    )
                remaining = deadline - time.monotonic()
                if job.finished or remaining <= 0:
                    return job
                if self.stopping:
                    raise Unavailable(
                        503, "shutting_down", f"the server is stopping; job {job_id} is {job.state}", RETRY_AFTER_S
                    )
                # Woken by this process's job slots; the poll catches jobs that another process ran.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, WAIT_POLL_S))
        finally:
            with self._lock:
                self._waiters[job_id].discard(entry)
                if not self._waiters[job_id]:
                    del self._waiters[job_id]
