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
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .. import models
from ..data.tables import error_row
from ..models import encoders
from ..steps import exif, face_embeddings, faces, hashes, hls, image_embeddings, thumbnails
from ..steps.common import Row, describe
from .plugins import PLUGINS, table_rows
from .worker import die_with_parent

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


class Toolbox:
    """What a runner keeps between calls: resolved models, loaded ONNX sessions (keyed by model id) and face
    detectors (keyed by their settings)."""

    def __init__(self, config: Mapping[str, Any], threads: int):
        self.config = config
        self.threads = threads
        self.overrides = models.overrides_from_config(config)
        self.runtime = models.runtime_from_config(config)
        self._loaded: dict[tuple[str, str], Any] = {}

    def _cached(self, kind: str, model_id: str, load: Callable[[], Any]) -> Any:
        if (kind, model_id) not in self._loaded:
            self._loaded[(kind, model_id)] = load()
        return self._loaded[(kind, model_id)]

    def resolved(self, model_id: str) -> models.Resolved:
        """The model's files (no network: a model that is not there is an error naming where to put it)."""
        return self._cached("resolved", model_id, lambda: models.locate(model_id, self.overrides))

    def arcface(self, model_id: str) -> encoders.ArcFace:
        load = lambda: encoders.ArcFace(self.resolved(model_id), self.threads, self.runtime.device)  # noqa: E731
        return self._cached("arcface", model_id, load)

    def detector(self, settings: faces.Settings) -> faces.Detector:
        """A face detector for these settings, its MediaPipe graphs loaded once for every later job."""
        load = lambda: faces.Detector(self.resolved(settings.model).path, settings)  # noqa: E731
        return self._cached("faces", repr(settings), load)

    def encoder(self, step: str, model_id: str) -> encoders.ImageEncoder:
        load = lambda: encoders.ImageEncoder(self.resolved(model_id), self.threads, self.runtime.device)  # noqa: E731
        return self._cached(step, model_id, load)

    def section(self, step: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {**self.config.get(step, {}), **(options or {})}


@dataclasses.dataclass(frozen=True)
class Call:
    plugin: str
    options: dict[str, Any]
    files: list[dict[str, Any]]
    outs: list[Path]
    work: Path


def _previews(call: Call, box: Toolbox) -> list[Row]:
    """The thumbnails step into the scratch folder: the previews the ML steps read."""
    settings = thumbnails.Settings.from_config(box.section("thumbnails"))
    return thumbnails.thumbnail_shard(call.files, call.work / "thumbnails", settings, box.threads)


def run_hash(call: Call, box: Toolbox, progress: Progress) -> list[Row]:
    settings = hashes.Settings.from_config(box.section("hashes", call.options))
    videos = [f for f in call.files if f["kind"] == "video"]
    posters = []
    if settings.perceptual and videos:
        # A video's perceptual hashes describe its poster frame, which the thumbnails step chooses.
        progress(0.0, "thumbnails")
        # A video whose frames cannot be read (truncated, audio only) has an error row here, without a
        # role: it simply has no poster, and its byte and keyframe hashes are made all the same.
        posters = [r for r in _previews(dataclasses.replace(call, files=videos), box) if r["status"] == "ok"]
    progress(0.5, "hashes")
    return hashes.hash_shard(call.files, settings, posters, box.threads)


def run_exif(call: Call, box: Toolbox, progress: Progress) -> list[Row]:
    return exif.exif_shard(call.files, processes=box.threads)


def run_thumbnails(call: Call, box: Toolbox, progress: Progress) -> list[Row]:
    settings = thumbnails.Settings.from_config(box.section("thumbnails", call.options))
    return thumbnails.thumbnail_shard(call.files, call.outs[0], settings, box.threads)


def _faces(call: Call, box: Toolbox, progress: Progress, options: Mapping[str, Any], crops: Path) -> list[Row]:
    settings = faces.Settings.from_config(box.section("faces", options))
    detector = box.detector(settings)
    progress(0.0, "thumbnails")
    previews = _previews(call, box)
    progress(0.4, "faces")
    return faces.faces_shard(call.files, previews, detector, crops, box.threads)


def run_faces(call: Call, box: Toolbox, progress: Progress) -> list[Row]:
    return _faces(call, box, progress, call.options, call.outs[0])


def run_face_embeddings(call: Call, box: Toolbox, progress: Progress) -> list[Row]:
    settings = face_embeddings.Settings.from_config(box.section("face_embeddings", call.options))
    model = box.arcface(settings.model)
    found = _faces(call, box, progress, {}, call.work / "crops")
    progress(0.7, "face_embeddings")
    batch = box.runtime.batch(settings.batch_size)
    return face_embeddings.face_embeddings_shard(found, model, dataclasses.replace(settings, batch_size=batch))


def _image_embeddings(step: str) -> Callable[[Call, Toolbox, Progress], list[Row]]:
    def run(call: Call, box: Toolbox, progress: Progress) -> list[Row]:
        settings = image_embeddings.Settings.from_config(box.section(step, call.options))
        encoder = box.encoder(step, settings.model)
        progress(0.0, "thumbnails")
        previews = _previews(call, box)
        progress(0.5, step)
        return image_embeddings.embed_shard(previews, encoder, box.runtime.batch(settings.batch_size))

    return run


def run_hls(call: Call, box: Toolbox, progress: Progress) -> list[Row]:
    settings = hls.Settings.from_config(box.section("hls", call.options))
    # A job's ffmpeg gets the threads a job may use (worker.threads), or fewer if the job asked for fewer.
    threads = call.options.get("threads") or box.threads
    return hls.hls_shard(call.files, call.outs[0], settings, min(threads, box.threads))


STEPS: dict[str, Callable[[Call, Toolbox, Progress], list[Row]]] = {
    "hashes": run_hash,
    "exif": run_exif,
    "thumbnails": run_thumbnails,
    "faces": run_faces,
    "face_embeddings": run_face_embeddings,
    "dino": _image_embeddings("dino"),
    "clip": _image_embeddings("clip"),
    "hls": run_hls,
}


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
        rows = STEPS[step](call, box, progress)
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
    """The rows of a batch's one file run alone: its error row if even that fails."""
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
