"""Atomic writes (a killed job must never leave a half-written target behind) and file names as text."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds.

    The temporary file lives in the target's directory so the final ``os.replace`` is a same-filesystem
    rename (atomic on POSIX). Its name keeps the target's suffix so tools that pick an encoder from the
    extension (Pillow, ffmpeg) still work.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem[:40]}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_if_changed(target: str | os.PathLike[str], data: bytes) -> bool:
    """Write ``data`` atomically unless ``target`` already holds exactly these bytes.

    Snakemake decides what to rerun from modification times, so leaving an unchanged file untouched is
    what keeps a rerun with nothing new from running anything. Returns whether the file was written.
    """
    target = Path(target)
    try:
        if target.stat().st_size == len(data) and target.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_bytes_atomic(target, data)
    return True


def displayable(text: str) -> str:
    """``text`` as valid UTF-8: a file name that is not (Linux allows any bytes) arrives from ``os`` with
    surrogate escapes, which Parquet cannot store; those bytes are shown as ``\\xNN``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text
