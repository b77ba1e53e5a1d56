"""Process plumbing for the server's children (runners, the archive's pipeline): they die with the server,
with whatever they started, and their output is read line by line with a deadline.

``python -m cl_ml_tools.service.processes PROGRAM ARGS`` runs PROGRAM under a guardian (:func:`guarded`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

PARENT_ENV = "CL_ML_TOOLS_PARENT_PID"
PR_SET_PDEATHSIG = 1
PARENT_POLL_S = 0.25


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


def child_env(scratch_dir: str) -> dict[str, str]:
    """The environment of this process's children: they know their parent, and write their temporary
    files into this process's scratch folder, never /tmp."""
    return {**os.environ, PARENT_ENV: str(os.getpid()), "TMPDIR": scratch_dir}


def guarded(args: Sequence[str]) -> list[str]:
    """``args`` started under a guardian (``python -m cl_ml_tools.service.processes PROGRAM ARGS``, :func:`_guard`)."""
    return [sys.executable, "-m", "cl_ml_tools.service.processes", *args]


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the process group that ``proc`` leads (it was started with ``process_group=0``)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


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


def _guard(argv: Sequence[str]) -> int:
    """``python -m cl_ml_tools.service.processes PROGRAM ARGS``: PROGRAM as the child of a guardian that leads its
    process group and kills all of it when the server dies (:func:`die_with_parent`); PROGRAM's exit status."""
    die_with_parent(group=True)
    code = subprocess.call(list(argv))
    if code < 0:  # end as PROGRAM did, so that the server reports the same signal
        with contextlib.suppress(OSError, ValueError):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(_guard(sys.argv[1:]))
