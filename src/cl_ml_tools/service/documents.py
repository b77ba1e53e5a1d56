"""Every document the service sends: the HTTP answers' bodies (a job's status, its result, the error result of
a job that failed as a whole, ``/health``, ``/ready``, a page of ``/jobs``, refusals), the MQTT events'
payloads (``status``, ``progress``, ``result``) and the requests the runners get. docs/service.md describes
them; tests/test_service_hostile.py checks the HTTP ones against the OpenAPI document."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from .. import __version__
from ..data.tables import error_row
from .jobs import FINISHED, QUEUED, RUNNING, Job
from .plugins import ARCHIVE, INPUT, PLUGINS, columns, option_names, table_rows
from .storage import Layout

STATES = (QUEUED, RUNNING, *FINISHED)


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def _public_file(job: Job) -> dict[str, Any] | None:
    """The upload as the client may see it: without the name it has inside the job folder."""
    return {k: v for k, v in (job.file or {}).items() if k != "upload"} or None


def status(job: Job) -> dict[str, Any]:
    """What ``GET /jobs/{id}/status`` answers (and MQTT publishes on ``.../status``)."""
    return {
        "job_id": job.id,
        "plugin": job.plugin,
        "status": job.state,
        "progress": job.progress,
        "message": job.message,
        "error": job.error,
        "attempts": job.attempts,
        "options": job.options,
        "file": _public_file(job),
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "links": {"status": f"/jobs/{job.id}/status", "results": f"/jobs/{job.id}/results"},
    }


def progress(job_id: str, fraction: float, message: str) -> dict[str, Any]:
    """MQTT's ``.../progress`` event."""
    return {"job_id": job_id, "progress": fraction, "message": message}


def page(jobs: Sequence[Job], after: int | None) -> dict[str, Any]:
    """A page of ``GET /jobs``, with the cursor of the next one."""
    return {"jobs": [status(job) for job in jobs], "next_cursor": None if after is None else str(after)}


def deleted(job_id: str, state: str) -> dict[str, Any]:
    """What ``DELETE /jobs/{id}`` answers: the job's state when it was deleted."""
    return {"job_id": job_id, "deleted": True, "status": state}


def refusal(code: str, message: str) -> dict[str, Any]:
    """The body of every 4xx and 5xx answer."""
    return {"error": code, "message": message}


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


def runner_request(layout: Layout, jobs: Sequence[Job], outs: Iterable[str], work: str) -> dict[str, Any]:
    """One call of a runner (:mod:`cl_ml_tools.service.runner`): jobs of one plugin with equal options."""
    return {
        "plugin": jobs[0].plugin,
        "options": jobs[0].options,
        "files": [file_row(layout, job) for job in jobs],
        "outs": list(outs),
        "work": work,
    }


def manifest(layout: Layout, job_id: str) -> dict[str, str]:
    """Every file a job made (under its ``out/``), by name relative to it → its download URL."""
    out = layout.out_dir(job_id)
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) if out.is_dir() else []
    visible = [n for n in names if not any(part.startswith(".") for part in n.split("/"))]
    return {n: f"/jobs/{job_id}/files/{quote(n)}" for n in visible}


def result(
    job: Job, state: str, error: str | None, rows: list[dict[str, Any]], files: Mapping[str, str]
) -> dict[str, Any]:
    """What ``GET /jobs/{id}/results`` answers (and MQTT publishes on ``.../result``)."""
    plugin = PLUGINS.get(job.plugin)
    return {
        "job_id": job.id,
        "plugin": job.plugin,
        "step": plugin.step if plugin else job.plugin,
        "status": state,
        "error": error,
        "file": _public_file(job),
        "columns": columns(job.plugin) if plugin else None,
        "rows": rows,
        "files": dict(files),
    }


def error_result(layout: Layout, job: Job, message: str) -> dict[str, Any]:
    """The result of a job that failed as a whole: the one error row the pipeline's table would have for its
    file (none for the archive job)."""
    if job.plugin not in PLUGINS:
        return result(job, "error", message, [], {})
    rows = table_rows(PLUGINS[job.plugin].step, [error_row(file_row(layout, job), message)])
    return result(job, "error", message, rows, {})


def archive_result(
    job: Job, error: str | None, tables: Mapping[str, Any], log: list[str] | None = None
) -> dict[str, Any]:
    """The archive job's result: the pipeline's tables, and the end of its output when it ran."""
    document = result(job, "error" if error else "ok", error, [], {}) | {"tables": dict(tables)}
    return document if log is None else document | {"log": log}


# --------------------------------------------------------------------------------------------------- operator


def health(
    counts: Mapping[tuple[str, str], int],
    enabled: Sequence[str],
    mqtt: str,
    models: Mapping[str, str],
    disk: Mapping[str, Any],
) -> dict[str, Any]:
    """``GET /health``: liveness, the queue's counts by state, the plugins offered, MQTT, models and disk."""
    queue = {state: sum(n for (_, s), n in counts.items() if s == state) for state in STATES}
    offered = {
        name: {"step": p.step, "accepts": p.describe_kinds(), "options": option_names(p)}
        for name, p in PLUGINS.items()
        if name in enabled
    }
    return {
        "status": "ok",
        "version": __version__,
        "plugins": offered,
        "archive": ARCHIVE in enabled,
        "queue": queue,
        "mqtt": mqtt,
        "models": dict(models),
        "disk": dict(disk),
    }


def ready(
    queue: str, disk: Mapping[str, Any], models: Mapping[str, str], mqtt: str, stopping: bool
) -> tuple[bool, dict[str, Any]]:
    """``GET /ready``: whether this server can take jobs, and each check's state."""
    missing = sorted(m for m, state in models.items() if state in ("missing", "bad-size"))
    checks = {
        "queue": queue,
        "disk": dict(disk),
        "models": {"state": "missing" if missing else "ok", "missing": missing},
        "mqtt": mqtt,
        "stopping": stopping,
    }
    usable = queue == "ok" and disk["state"] == "ok" and not missing and mqtt != "disconnected" and not stopping
    return usable, {"ready": usable, "checks": checks}
