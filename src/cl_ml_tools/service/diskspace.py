"""Free space in the storage folder. Below ``storage.min_free_bytes`` the service takes no new uploads
(507), starts no job (a job that could not store its result would be wasted), and ``GET /ready`` answers 503;
``/health`` and ``/metrics`` show the figure.

The queue's database lives on the same filesystem, and SQLite cannot commit anything on a full one, not
even the end of a job. So the folder holds a reserve file (``.reserve``, :data:`RESERVE_BYTES`) that is
deleted the moment the filesystem is found full, which lets the queue record the jobs that failed, and
written again once there is room."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

RESERVE_BYTES = 1 << 20
RESERVE_FILE = ".reserve"


class DiskSpace:
    def __init__(self, folder: Path, min_free_bytes: int):
        self.folder = folder
        self.min_free_bytes = min_free_bytes
        self.reserve = folder / RESERVE_FILE

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.folder).free

    def low(self) -> bool:
        return self.free_bytes() < self.min_free_bytes

    def describe(self) -> dict[str, int | str]:
        free = self.free_bytes()
        state = "low" if free < self.min_free_bytes else "ok"
        return {"state": state, "free_bytes": free, "min_free_bytes": self.min_free_bytes}

    def release(self) -> None:
        """The filesystem is full: give the reserve to the queue."""
        with contextlib.suppress(FileNotFoundError):
            self.reserve.unlink()

    def upkeep(self) -> None:
        """Release the reserve when the filesystem is (nearly) full; write it again once there is room."""
        free = self.free_bytes()
        if free < RESERVE_BYTES:
            self.release()
        elif free >= self.min_free_bytes + RESERVE_BYTES and not self.reserve.exists():
            part = self.reserve.with_suffix(".part")
            try:
                with open(part, "wb") as fh:
                    fh.write(b"\0" * RESERVE_BYTES)  # real blocks: a sparse file would reserve nothing
                os.replace(part, self.reserve)
            except OSError:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
