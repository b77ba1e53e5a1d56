"""The ``files`` step: each entry of a shard list sniffed from its bytes, and the SHA-256 of those bytes (what
reuse finds a moved or copied file by, see :mod:`.reuse`)."""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..data.inventory import Entry
from ..media.fileio import displayable
from ..media.sniff import sniff
from .common import Job
from .hashes import byte_hashes


def _raw_path(path: str) -> bytes | None:
    """The path's bytes when they are not valid UTF-8 (the only case the string column cannot hold)."""
    return None if displayable(path) == path else os.fsencode(path)


def files_rows(entries: Iterable[Entry], shard: str) -> list[dict[str, object]]:
    """The ``files`` table rows of one shard: each entry sniffed from its bytes and hashed (``mtime`` as epoch
    nanoseconds, which the table stores as timestamp[ns, UTC])."""
    rows = []
    for e in entries:
        status, error = "ok", None
        kind, fmt, sha256 = "other", None, None
        if e.error:
            status, error = "skipped", e.error
        else:
            try:
                kind, fmt = sniff(e.path)
                sha256 = byte_hashes(e.path, ("sha256",))["sha256"]
            except OSError as exc:
                status, error = "error", f"cannot read: {exc.strerror}"
        rows.append({
            "media_id": e.media_id, "input": e.input, "path": e.path, "status": status, "error": error,
            "relpath": e.relpath, "size": e.size, "mtime": e.mtime_ns,
            "kind": kind, "format": fmt, "sha256": sha256, "shard": shard, "raw_path": _raw_path(e.path),
        })  # fmt: skip
    return rows


def shard(job: Job) -> list[dict[str, object]]:
    return files_rows(job.files, job.shard)
