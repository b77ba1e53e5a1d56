"""The server's side of a runner process (:mod:`cl_ml_tools.service.runner`): one request per line on its
stdin, progress messages and then the reply on its stdout."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..media.fileio import write_bytes_atomic
from .processes import Lines, how_it_ended, kill_group
from .service_config import ServiceConfig

RUNNER_START_S = 120.0


def write_runner_config(config: ServiceConfig, path: Path) -> None:
    """The config the runners read: the server's, without the API key, which they do not need."""
    runner_config = {**config.raw, "server": {**config.server, "api_key": None}}
    write_bytes_atomic(path, json.dumps(runner_config).encode())


class RunnerTimeout(Exception):
    pass


class RunnerDied(Exception):
    pass


class RunnerProcess:
    """One runner: started on first use, restarted after it died or was killed."""

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
        # ``proc`` rather than self.proc: kill() may kill the runner (and clear self.proc) from another thread
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
        kill_group(proc)
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
        kill_group(proc)
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
