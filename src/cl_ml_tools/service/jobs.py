"""The service's durable job queue: one SQLite database in the storage directory (:mod:`.storage`), shared by
every server process (``cl-ml-tools serve --workers N``, gunicorn).

A job is committed to the database before the client hears that it was accepted, so a server killed at any
moment loses none. A running job names its owner (process id plus a random token per server process,
:class:`.owner.Owner`) and is given a heartbeat every few seconds; any server process requeues a running job
whose owner is gone (dead process id, or a stale heartbeat), up to ``worker.max_attempts`` runs.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .owner import Owner
from .storage import Layout

QUEUED, RUNNING, DONE, ERROR = "queued", "running", "done", "error"
FINISHED = (DONE, ERROR)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    plugin TEXT NOT NULL,
    options TEXT NOT NULL,
    file TEXT,
    state TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    message TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    run TEXT,
    owner_pid INTEGER,
    owner_token TEXT,
    heartbeat_at REAL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS finished (
    plugin TEXT NOT NULL,
    state TEXT NOT NULL,
    count INTEGER NOT NULL,
    seconds REAL NOT NULL,
    PRIMARY KEY (plugin, state)
);
CREATE TABLE IF NOT EXISTS histograms (
    name TEXT NOT NULL,
    plugin TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    count INTEGER NOT NULL,
    total REAL NOT NULL,
    PRIMARY KEY (name, plugin, bucket)
);
"""
# Upper bounds (seconds) of the buckets of the histograms /metrics reports; the last one is +Inf.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
RUN_SECONDS, WAIT_SECONDS = "run", "wait"


def _observe(db: sqlite3.Connection, name: str, plugin: str, value: float) -> None:
    bucket = next(i for i, bound in enumerate(BUCKETS) if value <= bound)
    db.execute(
        "INSERT INTO histograms (name, plugin, bucket, count, total) VALUES (?, ?, ?, 1, ?) "
        "ON CONFLICT (name, plugin, bucket) DO UPDATE SET count = count + 1, total = total + excluded.total",
        (name, plugin, bucket, value),
    )


@dataclass(frozen=True)
class Job:
    id: str
    plugin: str
    options: dict[str, Any]
    file: dict[str, Any] | None
    """The upload as the server received it: display ``name`` (never used as a path), ``size``, sniffed
    ``kind``, ``format`` and ``mime``, and ``upload``, the file's name inside the job folder."""
    state: str
    progress: float
    message: str | None
    error: str | None
    attempts: int
    run: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


_COLUMNS = (
    "id, plugin, options, file, state, progress, message, error, attempts, run, created_at, started_at, finished_at"
)


def _job(row: Sequence[Any]) -> Job:
    values = list(row)
    values[2] = json.loads(values[2])
    values[3] = json.loads(values[3]) if values[3] else None
    return Job(*values)


class JobStore:
    """The queue. Every method is one short transaction; the connection is shared by the process's threads
    behind a lock (SQLite serialises writers anyway)."""

    def __init__(self, layout: Layout, owner: Owner):
        self.layout = layout
        self.owner = owner
        self._lock = threading.Lock()
        # Autocommit mode: transactions are opened explicitly (BEGIN IMMEDIATE takes the write lock up
        # front, so two processes claiming at once never both read the same queued job).
        self._db = sqlite3.connect(layout.database, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL loses nothing when a process is killed (SIGKILL, the OOM killer), only when the
        # machine itself stops, as the uploads (written without fsync) would be lost then too. FULL would
        # sync the journal at every commit: 10 % fewer hash jobs per second, measured (docs/service.md).
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # Also when COMMIT itself failed (a full disk): else the connection would stay inside this
                # transaction, and every later BEGIN would fail.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # ------------------------------------------------------------------------------------------ jobs

    def submit(self, job_id: str, plugin: str, options: Mapping[str, Any], file: Mapping[str, Any] | None) -> Job:
        now = time.time()
        options_json = json.dumps(options, sort_keys=True, separators=(",", ":"))
        with self._transaction() as db:
            db.execute(
                "INSERT INTO jobs (id, plugin, options, file, state, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, plugin, options_json, json.dumps(file) if file else None, QUEUED, now),
            )
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def pending(self, plugin: str) -> Job | None:
        """The oldest job of ``plugin`` that is queued or running, if any."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM jobs WHERE plugin = ? AND state IN (?, ?) ORDER BY seq LIMIT 1",
            (plugin, QUEUED, RUNNING),
        )
        return _job(rows[0]) if rows else None

    def claim(self, max_running: int, batchable: Sequence[str], exclusive: Sequence[str], batch_size: int) -> list[Job]:
        """Mark the oldest queued job running for this process and return it, with up to ``batch_size`` − 1
        more queued jobs of the same plugin and options when that plugin is ``batchable``. Nothing when
        ``max_running`` runs (across all processes) are going, or when the only queued jobs are of an
        ``exclusive`` plugin that is already running."""
        now = time.time()
        with self._transaction() as db:
            (running,) = db.execute("SELECT count(DISTINCT run) FROM jobs WHERE state = ?", (RUNNING,)).fetchone()
            if running >= max_running:
                return []
            busy = {p for (p,) in db.execute("SELECT DISTINCT plugin FROM jobs WHERE state = ?", (RUNNING,))}
            blocked = [p for p in exclusive if p in busy]
            marks = ",".join("?" * len(blocked))
            first = db.execute(
                f"SELECT seq, id, plugin, options FROM jobs WHERE state = ? AND plugin NOT IN ({marks}) "
                "ORDER BY seq LIMIT 1",
                (QUEUED, *blocked),
            ).fetchone()
            if first is None:
                return []
            seq, job_id, plugin, options = first
            ids = [job_id]
            if plugin in batchable and batch_size > 1:
                ids += [
                    i
                    for (i,) in db.execute(
                        "SELECT id FROM jobs WHERE state = ? AND plugin = ? AND options = ? AND seq > ? "
                        "ORDER BY seq LIMIT ?",
                        (QUEUED, plugin, options, seq, batch_size - 1),
                    )
                ]
            run = uuid.uuid4().hex
            db.executemany(
                "UPDATE jobs SET state = ?, run = ?, owner_pid = ?, owner_token = ?, heartbeat_at = ?, "
                "started_at = ?, attempts = attempts + 1, progress = 0, message = NULL WHERE id = ?",
                [(RUNNING, run, self.owner.pid, self.owner.token, now, now, i) for i in ids],
            )
            rows = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE run = ? ORDER BY seq", (run,)).fetchall()
            jobs = [_job(r) for r in rows]
            for job in jobs:
                _observe(db, WAIT_SECONDS, job.plugin, max(0.0, now - job.created_at))
        return jobs

    def progress(self, job_ids: Sequence[str], fraction: float, message: str | None) -> None:
        with self._transaction() as db:
            db.executemany(
                "UPDATE jobs SET progress = ?, message = ? WHERE id = ? AND state = ?",
                [(fraction, message, i, RUNNING) for i in job_ids],
            )

    def finish(self, job_id: str, state: str, error: str | None) -> Job | None:
        """Record a job's end (``done`` or ``error``) and count it in the totals ``/metrics`` reports."""
        assert state in FINISHED
        now = time.time()
        with self._transaction() as db:
            # Only a running job: one requeued meanwhile (its server looked dead) ends when its rerun does.
            row = db.execute(
                "SELECT plugin, started_at FROM jobs WHERE id = ? AND state = ?", (job_id, RUNNING)
            ).fetchone()
            if row is None:
                return None
            plugin, started = row
            db.execute(
                "UPDATE jobs SET state = ?, error = ?, progress = 1, finished_at = ?, run = NULL, "
                "owner_pid = NULL, owner_token = NULL WHERE id = ?",
                (state, error, now, job_id),
            )
            db.execute(
                "INSERT INTO finished (plugin, state, count, seconds) VALUES (?, ?, 1, ?) "
                "ON CONFLICT (plugin, state) DO UPDATE SET count = count + 1, seconds = seconds + excluded.seconds",
                (plugin, state, max(0.0, now - (started or now))),
            )
            _observe(db, RUN_SECONDS, plugin, max(0.0, now - (started or now)))
        return self.get(job_id)

    def heartbeat(self) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET heartbeat_at = ? WHERE state = ? AND owner_token = ?",
                (time.time(), RUNNING, self.owner.token),
            )

    def release(self) -> None:
        """Put this process's running jobs back in the queue (a graceful stop: not counted as an attempt)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, run = NULL, owner_pid = NULL, owner_token = NULL, "
                "attempts = max(0, attempts - 1), progress = 0, message = NULL WHERE state = ? AND owner_token = ?",
                (QUEUED, RUNNING, self.owner.token),
            )

    def recover(self, lease_s: float, max_attempts: int) -> tuple[list[str], list[str]]:
        """Requeue running jobs whose owner is gone; a job that has already been started ``max_attempts``
        times is given up instead. Returns (requeued ids, given-up ids)."""
        now = time.time()
        requeued, given_up = [], []
        with self._transaction() as db:
            rows = db.execute(
                "SELECT id, owner_pid, owner_token, heartbeat_at, attempts FROM jobs WHERE state = ?", (RUNNING,)
            ).fetchall()
            for job_id, pid, token, heartbeat, attempts in rows:
                if token == self.owner.token:
                    continue
                if not (self.owner.outlived(pid, token) or (heartbeat or 0) < now - lease_s):
                    continue
                if attempts >= max_attempts:
                    given_up.append(job_id)
                else:
                    requeued.append(job_id)
                    db.execute(
                        "UPDATE jobs SET state = ?, run = NULL, owner_pid = NULL, owner_token = NULL, progress = 0, "
                        "message = ? WHERE id = ?",
                        (QUEUED, "requeued: the server running it stopped", job_id),
                    )
        return requeued, given_up

    def expired(self, before: float) -> list[str]:
        """Finished jobs that ended before ``before``, the oldest first."""
        marks = ",".join("?" * len(FINISHED))
        return [
            i
            for (i,) in self._query(
                f"SELECT id FROM jobs WHERE state IN ({marks}) AND finished_at < ? ORDER BY finished_at",
                (*FINISHED, before),
            )
        ]

    def delete(self, job_ids: Sequence[str]) -> None:
        with self._transaction() as db:
            db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in job_ids])

    def remove(self, job_id: str) -> Job | None:
        """Delete a job from the queue, whatever its state (DELETE /jobs/{id}); the job as it was, if it was
        there. A running job's owner notices at its next heartbeat and stops it."""
        with self._transaction() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return _job(row) if row else None

    def page(
        self, state: str | None, plugin: str | None, before: int | None, limit: int
    ) -> tuple[list[Job], int | None]:
        """Jobs newest first, optionally of one state and plugin, older than the cursor ``before``; with the
        cursor of the next page (None on the last)."""
        where, params = ["1 = 1"], []
        for column, value in (("state", state), ("plugin", plugin)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if before is not None:
            where.append("seq < ?")
            params.append(before)
        rows = self._query(
            f"SELECT seq, {_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?",
            [*params, limit + 1],
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return [_job(r[1:]) for r in rows], (rows[-1][0] if more else None)

    def queued(self) -> tuple[int, float | None]:
        """How many jobs are queued, and when the oldest of them was created."""
        ((count, oldest),) = self._query("SELECT count(*), min(created_at) FROM jobs WHERE state = ?", (QUEUED,))
        return count, oldest

    def known(self, job_ids: Sequence[str]) -> set[str]:
        if not job_ids:
            return set()
        marks = ",".join("?" * len(job_ids))
        return {i for (i,) in self._query(f"SELECT id FROM jobs WHERE id IN ({marks})", list(job_ids))}

    # ------------------------------------------------------------------------------------------ metrics

    def counts(self) -> dict[tuple[str, str], int]:
        """Jobs in the queue now, by (plugin, state)."""
        rows = self._query("SELECT plugin, state, count(*) FROM jobs GROUP BY plugin, state")
        return {(plugin, state): n for plugin, state, n in rows}

    def totals(self) -> dict[tuple[str, str], tuple[int, float]]:
        """Jobs ever finished, by (plugin, state): (count, seconds spent running them). Kept apart from the
        jobs themselves so that deleting old jobs never makes a counter go down."""
        rows = self._query("SELECT plugin, state, count, seconds FROM finished")
        return {(plugin, state): (n, s) for plugin, state, n, s in rows}

    def histograms(self) -> dict[tuple[str, str], list[tuple[int, float]]]:
        """By (histogram name, plugin): (count, sum of values) of each bucket of :data:`BUCKETS`."""
        found: dict[tuple[str, str], list[tuple[int, float]]] = {}
        rows = self._query("SELECT name, plugin, bucket, count, total FROM histograms")
        for name, plugin, bucket, count, total in rows:
            found.setdefault((name, plugin), [(0, 0.0)] * len(BUCKETS))[bucket] = (count, total)
        return found
