"""Running the queue inside a server process: slot threads that claim jobs and hand them to runner processes
(:mod:`cl_ml_tools.service.runner`), the archive job (the pipeline itself), heartbeats, the recovery of jobs
whose server died, and the clean-up of old jobs and scratch files.

``worker.max_concurrent_jobs`` slots run at once across every process sharing the storage folder (the
queue counts running calls, so ``--workers 4`` does not make four times as many). A call is one job, or up
to ``worker.batch_size`` queued ``hash`` or ``exif`` jobs with equal options, which the step then handles
in one go (one exiftool process for all of them, as in the pipeline).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..data.tables import error_row
from ..media.fileio import write_bytes_atomic
from ..steps.common import describe
from . import archive
from .diskspace import DiskSpace
from .jobs import DONE, ERROR, RESULT_FILE, Job, JobStore, Layout
from .mqtt import Events
from .plugins import ARCHIVE, INPUT, PLUGINS, columns, table_rows
from .retention import Retention
from .service_config import ServiceConfig

log = logging.getLogger(__name__)

PARENT_ENV = "CL_ML_TOOLS_PARENT_PID"
PR_SET_PDEATHSIG = 1
PARENT_POLL_S = 0.25
RUNNER_START_S = 120.0
HEARTBEAT_S = 2.0
LEASE_S = 30.0
RECOVER_S = 5.0
SWEEP_S = 60.0
IDLE_POLL_S = 0.5
DISK_POLL_S = 2.0
BATCHABLE = tuple(name for name, p in PLUGINS.items() if p.batchable)


# --------------------------------------------------------------------------------------------------- children


def die_with_parent(group: bool = False) -> None:
    """Have Linux kill this process when the thread that started it ends, so that a server killed with
    SIGKILL leaves no runner or pipeline behind (the setting survives ``execve``); exit at once if that
    parent is already gone. Elsewhere a runner ends when it next reads from its closed pipe.

    ``group``, in a process that leads its own process group (a runner, the archive's guardian): the whole
    group dies with the parent. The children of this process (ffmpeg, exiftool, Snakemake's jobs) do not
    get the parent-death signal themselves, and without this they would run on, orphaned, after a SIGKILL
    of the server. The signal is SIGTERM, handled by killing the group; a watchdog thread does the same
    when the main thread is inside native code that does not return to Python soon."""
    parent = os.environ.get(PARENT_ENV, "")
    expected = int(parent) if parent.isdigit() else os.getppid()
    group = group and os.getpgrp() == os.getpid()  # never the group of a shell that started this by hand
    if group:
        signal.signal(signal.SIGTERM, lambda signum, frame: _kill_own_group())
        threading.Thread(target=_watch_parent, args=(expected,), name="parent-watchdog", daemon=True).start()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM if group else signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != expected:
        _kill_own_group() if group else os._exit(1)


def _kill_own_group() -> None:
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    _kill_own_group()


def guarded(args: Sequence[str]) -> list[str]:
    """``args`` started under a guardian (``python -m cl_ml_tools.service.worker PROGRAM ARGS``, :func:`_guard`)."""
    return [sys.executable, "-m", "cl_ml_tools.service.worker", *args]


def how_it_ended(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


class Lines:
    """Lines from a pipe, with a deadline for each (``select``: the reading thread never blocks past it)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buffer = bytearray()

    def next(self, deadline: float | None) -> bytes | None:
        """The next line without its newline; None at the end of the stream; TimeoutError at the deadline."""
        while (end := self.buffer.find(b"\n")) < 0:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if not ready:
                raise TimeoutError
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                rest, self.buffer = bytes(self.buffer), bytearray()
                return rest or None
            self.buffer += chunk
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        return line


class RunnerTimeout(Exception):
    pass


class RunnerDied(Exception):
    pass


class RunnerProcess:
    """The server's side of one runner: started on first use, restarted after it died or was killed."""

    def __init__(self, config_json: Path, env: Mapping[str, str]):
        self.config_json = config_json
        self.env = dict(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self._lines: Lines | None = None
        self._lock = threading.Lock()

    def _start(self) -> None:
        # Its own process group: a timeout kills the runner together with the ffmpeg or exiftool it started.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cl_ml_tools.service.runner", str(self.config_json)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self.env,
            process_group=0,
        )
        assert self.proc.stdout is not None
        self._lines = Lines(self.proc.stdout.fileno())
        try:
            self._read(self.proc, time.monotonic() + RUNNER_START_S)
        except RunnerTimeout:
            raise RunnerDied(f"the runner process did not start within {RUNNER_START_S:g} s") from None
        except RunnerDied as exc:
            raise RunnerDied(f"the runner process could not start ({exc}); the server's log says why") from None

    def _read(self, proc: subprocess.Popen[bytes], deadline: float) -> dict[str, Any]:
        # ``proc`` rather than self.proc: stop() may kill the runner (and clear self.proc) from another thread
        # while this one waits.
        assert self._lines is not None
        try:
            line = self._lines.next(deadline)
        except TimeoutError:
            self.kill()
            raise RunnerTimeout from None
        try:
            if line is not None:
                return json.loads(line)
        except ValueError:
            pass  # half a message: the runner died while writing it
        # What the runner had started (ffmpeg, exiftool) is still in its process group: end it too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
        with self._lock:
            if self.proc is proc:
                self.proc = None
        raise RunnerDied(how_it_ended(code))

    def call(
        self, request: Mapping[str, Any], timeout: float, progress: Callable[[float, str], None]
    ) -> dict[str, Any]:
        """Send one call; its final message. RunnerTimeout after ``timeout`` s (the runner is killed),
        RunnerDied when it ended on its own."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        proc = self.proc
        assert proc is not None and proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
        except BrokenPipeError:
            self.kill()
            raise RunnerDied(f"the runner process ended ({how_it_ended(proc.wait())}) before the job") from None
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self._read(proc, deadline)
            except RunnerDied as exc:
                raise RunnerDied(f"the process running the job died ({exc}) while reading this file") from None
            if "progress" not in message:
                return message
            progress(float(message["progress"]), str(message.get("message") or ""))

    def kill(self) -> None:
        with self._lock:
            proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()


# --------------------------------------------------------------------------------------------------- results


def file_row(layout: Layout, job: Job) -> dict[str, Any]:
    """The job's upload as a row of the ``files`` table, the input of every step."""
    assert job.file is not None
    return {
        "media_id": job.file["media_id"],
        "input": INPUT,
        "path": str(layout.job_dir(job.id) / job.file["upload"]),
        "status": "ok",
        "kind": job.file["kind"],
        "format": job.file["format"],
    }


def manifest(layout: Layout, job_id: str) -> dict[str, str]:
    """Every file a job made (under its ``out/``), by name relative to it → its download URL."""
    out = layout.out_dir(job_id)
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) if out.is_dir() else []
    visible = [n for n in names if not any(part.startswith(".") for part in n.split("/"))]
    return {n: f"/jobs/{job_id}/files/{quote(n)}" for n in visible}


def result_document(
    job: Job, status: str, error: str | None, rows: list[dict[str, Any]], files: Mapping[str, str]
) -> dict[str, Any]:
    public_file = {k: v for k, v in (job.file or {}).items() if k != "upload"} or None
    plugin = PLUGINS.get(job.plugin)
    return {
        "job_id": job.id,
        "plugin": job.plugin,
        "step": plugin.step if plugin else job.plugin,
        "status": status,
        "error": error,
        "file": public_file,
        "columns": columns(job.plugin) if plugin else None,
        "rows": rows,
        "files": dict(files),
    }


def error_result(layout: Layout, job: Job, message: str) -> dict[str, Any]:
    """The result of a job that failed as a whole: the one error row the pipeline's table would have for its
    file (none for the archive job)."""
    if job.plugin not in PLUGINS:
        return result_document(job, "error", message, [], {})
    rows = table_rows(PLUGINS[job.plugin].step, [error_row(file_row(layout, job), message)])
    return result_document(job, "error", message, rows, {})


# --------------------------------------------------------------------------------------------------- dispatcher


class Dispatcher:
    """Runs this server process's share of the queue (see the module's docstring)."""

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
        self.events = events
        self.finished = finished
        self.scratch = layout.scratch(store.owner)
        storage = config.raw["storage"]
        self.disk = DiskSpace(layout.root, storage["min_free_bytes"])
        self.retention = Retention(layout, store, float(storage["retention_hours"]), storage["max_bytes"])
        self.config_json = self.scratch / "config.json"
        # Children write their temporary files into this process's scratch folder, never /tmp.
        self.env = {**os.environ, PARENT_ENV: str(os.getpid()), "TMPDIR": str(self.scratch)}
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._runners: list[RunnerProcess] = []
        self._pipeline: subprocess.Popen[bytes] | None = None
        self._archive_job: str | None = None  # the archive job whose pipeline runs now, so DELETE can stop it
        self._lock = threading.Lock()
        self._running: dict[str, RunnerProcess] = {}
        self._cancelled: set[str] = set()
        self._unrecorded: dict[str, tuple[Job, str, Mapping[str, Any]]] = {}

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        # The runners need the config but not the API key.
        runner_config = {**self.config.raw, "server": {**self.config.server, "api_key": None}}
        write_bytes_atomic(self.config_json, json.dumps(runner_config).encode())
        self.disk.upkeep()
        self._recover()
        self._sweep()
        slots = self.config.max_concurrent_jobs
        self._threads = [threading.Thread(target=self._slot, name=f"job-slot-{i}", daemon=True) for i in range(slots)]
        self._threads.append(threading.Thread(target=self._maintain, name="job-maintenance", daemon=True))
        # Its own thread: with storage.max_bytes it walks the whole storage folder, which must never hold up
        # the heartbeat (a late heartbeat gets this process's running jobs requeued by the others).
        self._threads.append(threading.Thread(target=self._retain, name="job-retention", daemon=True))
        for thread in self._threads:
            thread.start()
        log.info("dispatcher: %d job slot(s), storage %s", slots, self.layout.root)

    def wake(self) -> None:
        """A job was queued: let an idle slot claim it now rather than at its next poll."""
        with self._wake:
            self._wake.notify()

    def stop(self) -> None:
        """Stop the slots; jobs they were running go back to the queue and run again at the next start."""
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        for runner in self._runners:
            runner.kill()
        if self._pipeline is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._pipeline.pid, signal.SIGKILL)
        for thread in self._threads:
            thread.join(timeout=10)
        self.store.release()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ slots

    def _slot(self) -> None:
        runner = RunnerProcess(self.config_json, self.env)
        self._runners.append(runner)
        try:
            while not self._stopping.is_set():
                claimed: list[Job] = []
                try:
                    if self.disk.low():
                        self._stopping.wait(DISK_POLL_S)  # no job starts that could not store its result
                        continue
                    claimed = self._claim()
                    if not claimed:
                        with self._wake:
                            self._wake.wait(IDLE_POLL_S)
                    elif claimed[0].plugin == ARCHIVE:
                        self._run_archive(claimed[0])
                    else:
                        self._run_files(claimed, runner)
                except Exception as exc:  # a slot must outlive any one failure (a full disk, a locked database)
                    log.exception("job slot: unexpected failure; carrying on")
                    self._give_up(claimed, f"the server failed while running this job: {describe(exc)}")
                    self._stopping.wait(1.0)
        finally:
            runner.close()

    def _give_up(self, claimed: Sequence[Job], message: str) -> None:
        """End jobs a failure left running, with an error result, so that none stays "running" for good."""
        for job in claimed:
            current = self.store.get(job.id)
            if current is None or current.finished:
                continue
            try:
                self._finish(job, error_result(self.layout, job, message))
            except Exception:
                log.exception("job %s: cannot record its failure", job.id)

    def _claim(self) -> list[Job]:
        claimed = self.store.claim(
            self.config.max_concurrent_jobs, BATCHABLE, (ARCHIVE,), self.config.worker["batch_size"]
        )
        for job in claimed:
            self.events.publish(job.id, "status", job.status())
        return claimed

    def _progress(self, ids: Sequence[str], fraction: float, message: str) -> None:
        try:
            self.store.progress(ids, fraction, message)
        except sqlite3.Error as exc:  # a full disk: the job goes on; its end is what must be recorded
            log.warning("jobs %s: cannot record progress: %s", ",".join(ids), exc)
        for job_id in ids:
            self.events.publish(job_id, "progress", {"job_id": job_id, "progress": fraction, "message": message})

    def _drop_cancelled(self, claimed: Sequence[Job]) -> list[Job]:
        """``claimed`` without the jobs DELETE cancelled; their folders (what a killed runner may have written
        after DELETE removed them) are deleted."""
        with self._lock:
            cancelled = {job.id for job in claimed} & self._cancelled
            self._cancelled -= cancelled
        for job_id in cancelled:
            self.layout.remove_job(job_id)
        return [job for job in claimed if job.id not in cancelled]

    def _run_files(self, claimed: Sequence[Job], runner: RunnerProcess) -> None:
        claimed = self._drop_cancelled(claimed)
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
        request = {
            "plugin": first.plugin,
            "options": first.options,
            "files": [file_row(self.layout, job) for job in claimed],
            "outs": [str(folder) for folder in attempts],
            "work": str(work),
        }
        timeout = float(self.config.worker["job_timeout_seconds"])
        ids = [job.id for job in claimed]
        with self._lock:
            self._running.update(dict.fromkeys(ids, runner))
        try:
            reply = runner.call(request, timeout, lambda fraction, stage: self._progress(ids, fraction, stage))
        except (RunnerTimeout, RunnerDied) as exc:
            for folder in attempts:
                shutil.rmtree(folder, ignore_errors=True)  # nothing of a call that was stopped is kept
            if self._stopping.is_set():
                return  # stop() puts these jobs back in the queue
            if len(claimed) > 1:
                # Which file of the batch was at fault is not known: each alone, so it costs that one only.
                for job in claimed:
                    self._run_files([job], runner)
                return
            if isinstance(exc, RunnerTimeout):
                reply = {"error": f"the job did not finish within {timeout:g} s (worker.job_timeout_seconds)"}
            else:
                reply = {"error": str(exc)}
        finally:
            with self._lock:
                for job_id in ids:
                    self._running.pop(job_id, None)
            shutil.rmtree(work, ignore_errors=True)
        kept = {job.id for job in self._drop_cancelled(claimed)}
        for i, (job, folder) in enumerate(zip(claimed, attempts, strict=True)):
            if job.id not in kept:
                continue
            rows = reply["rows"][i] if "rows" in reply else None
            if rows is not None:
                rows = self.layout.adopt_attempt(job.id, folder, rows)
            shutil.rmtree(folder, ignore_errors=True)  # a call that failed as a whole: its files are not kept
            self._complete(job, rows, reply.get("error"))

    def _complete(self, job: Job, rows: list[dict[str, Any]] | None, error: str | None) -> None:
        """Write a job's result and mark it finished. ``rows`` None: the call failed with ``error``, and the
        job's rows are the one error row the pipeline's table would have for the file."""
        if rows is None:
            self._finish(job, error_result(self.layout, job, error or "failed"))
            return
        failed = [r["error"] for r in rows if r.get("status") != "ok"]
        status, message = ("error", error or failed[0]) if error or failed else ("ok", None)
        self._finish(job, result_document(job, status, message, rows, manifest(self.layout, job.id)))

    def _finish(self, job: Job, document: Mapping[str, Any]) -> None:
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
            document = error_result(self.layout, job, message)
            with contextlib.suppress(OSError):
                (self.layout.job_dir(job.id) / RESULT_FILE).unlink()
        state = DONE if document["status"] == "ok" else ERROR
        if job.file and not self.config.raw["storage"]["keep_uploads"]:
            with contextlib.suppress(FileNotFoundError):
                (self.layout.job_dir(job.id) / job.file["upload"]).unlink()
        try:
            finished = self.store.finish(job.id, state, document["error"])
        except sqlite3.Error:
            # The database cannot be written either: the maintenance thread records the end once it can.
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
            self.events.publish(job.id, "status", finished.status())
            self.events.publish(job.id, "result", document)
        self.finished(job.id)

    def _record_unrecorded(self) -> None:
        with self._lock:
            pending = list(self._unrecorded.items())
        for job_id, (job, state, document) in pending:
            finished = self.store.finish(job_id, state, document["error"])
            with self._lock:
                del self._unrecorded[job_id]
            self._announce(job, finished, document)

    def cancel(self, job_id: str) -> None:
        """Stop a job that DELETE /jobs/{id} removed from the queue, if this process runs it: its runner is
        killed (with what it started), and the slot removes the job's folder."""
        with self._lock:
            runner = self._running.get(job_id)
            pipeline = self._pipeline if job_id == self._archive_job else None
            if runner is None and pipeline is None:
                return
            self._cancelled.add(job_id)
        log.info("job %s: deleted while running; stopping it", job_id)
        if runner is not None:
            runner.kill()
        elif pipeline is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pipeline.pid, signal.SIGKILL)  # the guardian's group: Snakemake and its jobs

    def _cancel_deleted(self) -> None:
        """Jobs this process runs that another server process deleted."""
        with self._lock:
            ids = [*self._running, *([self._archive_job] if self._archive_job else [])]
        for job_id in set(ids) - self.store.known(ids):
            self.cancel(job_id)

    # ------------------------------------------------------------------------------------------ archive

    def _run_archive(self, job: Job) -> None:
        folder = self.layout.archive
        try:
            args, _ = archive.command(self.config.raw, folder)
        except archive.ArchiveError as exc:
            self._finish(job, result_document(job, "error", str(exc), [], {}) | {"tables": {}})
            return
        env = {**self.env, "XDG_CACHE_HOME": str(folder / ".cache")}
        timeout = float(self.config.raw["plugins"]["archive"]["timeout_seconds"])
        tail: deque[str] = deque(maxlen=40)
        proc = subprocess.Popen(
            guarded(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,
            process_group=0,
        )
        with self._lock:
            self._pipeline, self._archive_job = proc, job.id
        assert proc.stdout is not None
        lines, deadline, error = Lines(proc.stdout.fileno()), time.monotonic() + timeout, None
        try:
            while (line := lines.next(deadline)) is not None:
                text = line.decode("utf-8", "replace").rstrip()
                tail.append(text)
                fraction = archive.progress(text)
                if fraction is not None:
                    self._progress([job.id], fraction, text.strip())
        except TimeoutError:
            error = f"the pipeline did not finish within {timeout:g} s (plugins.archive.timeout_seconds)"
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
        proc.stdout.close()
        with self._lock:
            self._pipeline = self._archive_job = None
            deleted = job.id in self._cancelled
            self._cancelled.discard(job.id)
        if self._stopping.is_set() or deleted:
            return  # stop() requeues it; DELETE has removed it, and its result is nobody's
        if error is None and code != 0:
            error = f"the pipeline failed ({how_it_ended(code)}); the end of its output is in 'log'"
        document = result_document(job, "error" if error else "ok", error, [], {})
        self._finish(job, document | {"tables": archive.summary(folder), "log": list(tail)})

    # ------------------------------------------------------------------------------------------ upkeep

    def _maintain(self) -> None:
        next_recover = time.monotonic()
        while not self._stopping.wait(HEARTBEAT_S):
            try:
                self.disk.upkeep()
                self.store.heartbeat()
                self._record_unrecorded()
                self._cancel_deleted()
                now = time.monotonic()
                if now >= next_recover:
                    self._recover()
                    next_recover = now + RECOVER_S
            except Exception:
                log.exception("job maintenance: unexpected failure; carrying on")

    def _retain(self) -> None:
        while True:
            try:
                self._sweep()
            except Exception:
                log.exception("retention: unexpected failure; carrying on")
            if self._stopping.wait(SWEEP_S):
                return

    def _recover(self) -> None:
        """Requeue the jobs of server processes that are gone; give up on those tried too often."""
        attempts = self.config.worker["max_attempts"]
        requeued, given_up = self.store.recover(LEASE_S, attempts)
        if requeued:
            log.warning("requeued %d job(s) whose server stopped while running them", len(requeued))
            with self._wake:
                self._wake.notify_all()
        message = f"the server stopped while running this job {attempts} time(s) (worker.max_attempts)"
        self._give_up([job for job in map(self.store.get, given_up) if job is not None], message)

    def _sweep(self) -> None:
        for job_id in self.retention.sweep():
            self.events.forget(job_id)


def _guard(argv: Sequence[str]) -> int:
    """``python -m cl_ml_tools.service.worker PROGRAM ARGS``: PROGRAM as the child of a guardian that leads its process
    group and kills all of it when the server dies (:func:`die_with_parent`); PROGRAM's exit status."""
    die_with_parent(group=True)
    code = subprocess.call(list(argv))
    if code < 0:  # end as PROGRAM did, so that the server reports the same signal
        with contextlib.suppress(OSError, ValueError):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(_guard(sys.argv[1:]))
