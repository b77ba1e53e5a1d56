"""Running the queue inside a server process: slot threads that claim jobs and hand them to runner processes
(:mod:`cl_ml_tools.runner`), the archive job (the pipeline itself), heartbeats, the recovery of jobs whose
server died, and the clean-up of old jobs and scratch files.

``worker.max_concurrent_jobs`` slots run at once across every process sharing the storage folder (the
queue counts running calls, so ``--workers 4`` does not make four times as many). A call is one job, or up
to ``worker.batch_size`` queued ``hash`` or ``exif`` jobs with equal options, which the step then handles
in one go (one exiftool process for all of them, as in the pipeline).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from . import archive, jobs
from .fileio import write_bytes_atomic
from .jobs import DONE, ERROR, Job, JobStore, Layout
from .mqtt import Events
from .plugins import ARCHIVE, INPUT, PLUGINS, columns, table_rows
from .service_config import ServiceConfig
from .steps import describe
from .tables import error_row

log = logging.getLogger(__name__)

PARENT_ENV = "CL_ML_TOOLS_PARENT_PID"
PR_SET_PDEATHSIG = 1
RUNNER_START_S = 120.0
HEARTBEAT_S = 2.0
LEASE_S = 30.0
RECOVER_S = 5.0
SWEEP_S = 600.0
IDLE_POLL_S = 0.5
ORPHAN_AGE_S = 3600.0
BATCHABLE = tuple(name for name, p in PLUGINS.items() if p.batchable)


# --------------------------------------------------------------------------------------------------- children


def die_with_parent() -> None:
    """Have Linux kill this process when the thread that started it ends, so that a server killed with
    SIGKILL leaves no runner or pipeline behind (the setting survives ``execve``); exit at once if that
    parent is already gone. Elsewhere a runner ends when it next reads from its closed pipe."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit() and os.getppid() != int(parent):
        os._exit(1)


def guarded(args: Sequence[str]) -> list[str]:
    """``args`` started through :func:`die_with_parent` (``python -m cl_ml_tools.worker PROGRAM ARGS``)."""
    return [sys.executable, "-m", "cl_ml_tools.worker", *args]


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
            [sys.executable, "-m", "cl_ml_tools.runner", str(self.config_json)],
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
        self.config_json = self.scratch / "config.json"
        # Children write their temporary files into this process's scratch folder, never /tmp.
        self.env = {**os.environ, PARENT_ENV: str(os.getpid()), "TMPDIR": str(self.scratch)}
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._runners: list[RunnerProcess] = []
        self._pipeline: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        # The runners need the config but not the API key.
        runner_config = {**self.config.raw, "server": {**self.config.server, "api_key": None}}
        write_bytes_atomic(self.config_json, json.dumps(runner_config).encode())
        self._recover()
        self._sweep()
        slots = self.config.max_concurrent_jobs
        self._threads = [threading.Thread(target=self._slot, name=f"job-slot-{i}", daemon=True) for i in range(slots)]
        self._threads.append(threading.Thread(target=self._maintain, name="job-maintenance", daemon=True))
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
                if job.plugin == ARCHIVE:
                    self._finish(job, result_document(job, "error", message, [], {}))
                else:
                    self._complete(job, None, message)
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
        self.store.progress(ids, fraction, message)
        for job_id in ids:
            self.events.publish(job_id, "progress", {"job_id": job_id, "progress": fraction, "message": message})

    def _run_files(self, claimed: Sequence[Job], runner: RunnerProcess) -> None:
        first = claimed[0]
        work = self.scratch / (first.run or first.id)
        outs = [self.layout.out_dir(job.id) for job in claimed]
        for out in outs:
            shutil.rmtree(out, ignore_errors=True)  # what an interrupted earlier attempt left
        request = {
            "plugin": first.plugin,
            "options": first.options,
            "files": [file_row(self.layout, job) for job in claimed],
            "outs": [str(out) for out in outs],
            "work": str(work),
        }
        timeout = float(self.config.worker["job_timeout_seconds"])
        ids = [job.id for job in claimed]
        try:
            reply = runner.call(request, timeout, lambda fraction, stage: self._progress(ids, fraction, stage))
        except (RunnerTimeout, RunnerDied) as exc:
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
            shutil.rmtree(work, ignore_errors=True)
        for i, job in enumerate(claimed):
            rows = reply["rows"][i] if "rows" in reply else None
            self._complete(job, rows, reply.get("error"))

    def _complete(self, job: Job, rows: list[dict[str, Any]] | None, error: str | None) -> None:
        """Write a job's result and mark it finished. ``rows`` None: the call failed with ``error``, and the
        job's rows are the one error row the pipeline's table would have for the file."""
        if rows is None:
            rows = table_rows(PLUGINS[job.plugin].step, [error_row(file_row(self.layout, job), error or "failed")])
        failed = [r["error"] for r in rows if r.get("status") != "ok"]
        status, message = ("error", error or failed[0]) if error or failed else ("ok", None)
        self._finish(job, result_document(job, status, message, rows, manifest(self.layout, job.id)))

    def _finish(self, job: Job, document: Mapping[str, Any]) -> None:
        self.layout.write_result(job.id, document)
        finished = self.store.finish(job.id, DONE if document["status"] == "ok" else ERROR, document["error"])
        if job.file and not self.config.raw["storage"]["keep_uploads"]:
            with contextlib.suppress(FileNotFoundError):
                (self.layout.job_dir(job.id) / job.file["upload"]).unlink()
        if finished is not None:
            self.events.publish(job.id, "status", finished.status())
        self.events.publish(job.id, "result", document)
        self.finished(job.id)

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
        self._pipeline = proc = subprocess.Popen(
            guarded(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,
            process_group=0,
        )
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
        self._pipeline = None
        if self._stopping.is_set():
            return
        if error is None and code != 0:
            error = f"the pipeline failed ({how_it_ended(code)}); the end of its output is in 'log'"
        document = result_document(job, "error" if error else "ok", error, [], {})
        self._finish(job, document | {"tables": archive.summary(folder), "log": list(tail)})

    # ------------------------------------------------------------------------------------------ upkeep

    def _maintain(self) -> None:
        next_recover = next_sweep = time.monotonic()
        while not self._stopping.wait(HEARTBEAT_S):
            try:
                self.store.heartbeat()
                now = time.monotonic()
                if now >= next_recover:
                    self._recover()
                    next_recover = now + RECOVER_S
                if now >= next_sweep:
                    self._sweep()
                    next_sweep = now + SWEEP_S
            except Exception:
                log.exception("job maintenance: unexpected failure; carrying on")

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
        """Delete finished jobs past ``storage.retention_hours``, folders of uploads that never became a
        job (a server killed mid-upload), and scratch folders of dead server processes."""
        hours = float(self.config.raw["storage"]["retention_hours"])
        if hours > 0:
            expired = self.store.expired(time.time() - hours * 3600)
            for job_id in expired:
                self.layout.remove_job(job_id)
            self.store.delete(expired)
        folders = [d for d in self.layout.jobs.iterdir() if jobs.JOB_ID.match(d.name)]
        known = self.store.known([d.name for d in folders])
        for folder in folders:
            if folder.name not in known and time.time() - _last_change(folder) > ORPHAN_AGE_S:
                shutil.rmtree(folder, ignore_errors=True)
        self.layout.clean_scratch(self.store.owner)


def _last_change(folder: Path) -> float:
    """The latest mtime of a folder and its files (an upload in progress keeps growing its file)."""
    times = [folder.stat().st_mtime]
    with contextlib.suppress(OSError):
        times += [entry.stat().st_mtime for entry in folder.iterdir()]
    return max(times)


def _exec(argv: Sequence[str]) -> None:
    """``python -m cl_ml_tools.worker PROGRAM ARGS``: PROGRAM under :func:`die_with_parent`."""
    die_with_parent()
    os.execv(argv[0], list(argv))


if __name__ == "__main__":
    _exec(sys.argv[1:])
