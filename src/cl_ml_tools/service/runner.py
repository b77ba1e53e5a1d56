"""A runner: the child process of a server that runs plugin calls, one at a time, with the pipeline's own step
functions, keeping the models it has loaded for the next call.

Steps run in a separate process so that a job can be stopped at its timeout (its process group is killed,
ffmpeg and exiftool included) and so that a file that crashes a native library (a decoder, MediaPipe) costs
that job, never the server. The server talks to it over a pipe, one JSON object per line:

- the runner says ``{"ready": true}`` once its imports are done;
- the server sends ``{"plugin", "options", "files": [files-table rows], "outs": [folder per file], "work"}``;
- the runner answers ``{"progress": fraction, "message": stage}`` lines, then ``{"rows": [[rows] per file]}``,
  or ``{"error": message}`` when the call as a whole failed (a missing model, say).

The rows are the step's table rows for each file (``tables.to_arrow`` with the table's schema, so the same
columns and types as the pipeline's table), made JSON-safe: timestamps in ISO 8601, embeddings as lists.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .. import models
from ..data.tables import error_row
from ..steps import registry
from ..steps.common import Row, describe
from .plugins import PLUGINS, table_rows
from .processes import die_with_parent

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


class Toolbox:
    """What a runner keeps between calls: the server's config and its models (:class:`models.Loader`: ONNX
    sessions and face detectors, loaded on first use)."""

    def __init__(self, config: Mapping[str, Any], threads: int):
        self.config = config
        self.threads = threads
        self.loader = models.Loader.from_cache(config, threads)

    def section(self, step: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {**self.config.get(step, {}), **(options or {})}


@dataclasses.dataclass(frozen=True)
class Call:
    plugin: str
    options: dict[str, Any]
    files: list[dict[str, Any]]
    outs: list[Path]
    work: Path


def execute(call: Call, box: Toolbox, progress: Progress) -> list[list[dict[str, Any]]]:
    """Run the call's plugin; the table rows of each of its files, in order."""
    step = PLUGINS[call.plugin].step
    for out in call.outs:
        out.mkdir(parents=True, exist_ok=True)
    call.work.mkdir(parents=True, exist_ok=True)
    # Scratch files of the steps (exiftool's link folder, video frames) go to the call's folder, which the
    # server deletes afterwards, even when it had to kill this process.
    tempfile.tempdir = str(call.work)
    try:
        target = registry.PLUGINS[call.plugin].name
        # A job's ffmpeg or exiftool gets the threads a job may use (worker.threads), or fewer if it asked.
        threads = min(call.options.get("threads") or box.threads, box.threads)
        rows = registry.run_with_reads(
            target,
            call.files,
            lambda step: box.section(step, call.options if step == target else None),
            call.outs[0],
            call.work,
            threads,
            box.loader,
            progress,
        )
    except models.ModelError:
        raise  # the same for every file: the error of the whole call
    except Exception as exc:
        if len(call.files) == 1:
            raise
        # Which file of the batch failed is not known: each alone, so that it costs that file only.
        log.warning("%s call over %d files failed (%s); each file again alone", call.plugin, len(call.files), exc)
        return [
            _alone(dataclasses.replace(call, files=[f], outs=[out]), box)
            for f, out in zip(call.files, call.outs, strict=True)
        ]
    finally:
        tempfile.tempdir = None
    by_file: dict[str, list[Row]] = {f["media_id"]: [] for f in call.files}
    for row in rows:
        by_file[row["media_id"]].append(row)
    return [table_rows(step, by_file[f["media_id"]]) for f in call.files]


def _alone(call: Call, box: Toolbox) -> list[dict[str, Any]]:
    """The rows of a batch's one file run alone: its error row if even that fails. Its folder starts empty
    again: the failed batch may have written part of what this run writes."""
    for out in call.outs:
        shutil.rmtree(out, ignore_errors=True)
    try:
        return execute(call, box, lambda fraction, stage: None)[0]
    except Exception as exc:
        return table_rows(PLUGINS[call.plugin].step, [error_row(call.files[0], describe(exc))])


def _send(out: IO[str], message: Mapping[str, Any]) -> None:
    out.write(json.dumps(message, allow_nan=False, separators=(",", ":")) + "\n")
    out.flush()


def serve(requests: IO[str], out: IO[str], box: Toolbox) -> None:
    _send(out, {"ready": True})
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        call = Call(
            plugin=request["plugin"],
            options=request["options"],
            files=request["files"],
            outs=[Path(p) for p in request["outs"]],
            work=Path(request["work"]),
        )
        try:
            rows = execute(call, box, lambda fraction, stage: _send(out, {"progress": fraction, "message": stage}))
        except models.ModelError as exc:
            _send(out, {"error": str(exc)})
        except Exception as exc:  # one call's failure is its jobs' error result, never the runner's end
            log.warning("%s call failed: %s", call.plugin, describe(exc))
            _send(out, {"error": describe(exc)})
        else:
            _send(out, {"rows": rows})


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cl_ml_tools.service.runner CONFIG_JSON``: the config as the server validated it."""
    args = list(sys.argv[1:] if argv is None else argv)
    die_with_parent(group=True)
    # The protocol gets its own copy of stdout; stdout itself then points at stderr, so that whatever a
    # library prints cannot corrupt the protocol.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    config = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    level = str(config["server"]["log_level"]).upper()
    logging.basicConfig(
        stream=sys.stderr, level=level, format=f"runner[{os.getpid()}] %(levelname)s %(name)s: %(message)s"
    )
    serve(sys.stdin, out, Toolbox(config, config["worker"]["threads"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
