"""The host's side of tests/container/run.sh: what goes into the build, and the checks of the running image
against references computed here (hashlib, exiftool, MediaPipe's own FaceDetector), never against the
image's own code.

    check.py pip-settings OUT        secrets for the build: the host's package index settings (podman args)
    check.py health URL              wait until the server answers /health (two minutes at most)
    check.py models OUT              a model cache holding the real BlazeFace network (from the mediapipe wheel)
    check.py jobs URL KEY VIDEO MODELS
                                     hash, exif and face_detection jobs checked (MODELS: the cache above);
                                     an hls job of VIDEO started, its id printed
    check.py requeued STORAGE JOB    after a stop: JOB is back in the queue of the storage folder STORAGE
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "archive"
PHOTO = SAMPLE / "2023 reunion" / "together.jpg"
# One face; stored rotated (EXIF Orientation 6), so the upright picture is what both detectors must see.
FACE_PHOTO = SAMPLE / "2021 holiday" / "astronaut.jpg"
BLAZEFACE = "face_detection_full_range_sparse"
# The pip settings that say where packages come from. file:// indexes and find-links folders lie on the
# host's disk, out of the build's reach, and are left out.
PIP_KEYS = ("index-url", "extra-index-url", "trusted-host", "proxy", "cert")


def say(message: str) -> None:
    print(f"container test: {message}", file=sys.stderr, flush=True)


def pip_settings(out: Path) -> None:
    """Write pip.conf (and pip-cert) for the build from the host's effective pip settings, and print the
    podman arguments that pass them as secrets (nothing when the host uses pip's defaults)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    found: dict[str, dict[str, str]] = {}
    for line in listed.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        found.setdefault(key, {})[section] = ast.literal_eval(value)
    settings = {}
    for key in PIP_KEYS:
        # The environment wins over the files, and `install` over `global`, as for `pip install`.
        value = next((found.get(key, {})[s] for s in (":env:", "install", "global") if s in found.get(key, {})), None)
        if value is None:
            continue
        if key.endswith("index-url"):
            value = " ".join(url for url in value.split() if url.startswith(("http://", "https://")))
        if value:
            settings[key] = value
    args = []
    if "cert" in settings:
        shutil.copyfile(settings["cert"], out / "pip-cert")
        settings["cert"] = "/run/secrets/pip-cert"
        args.append(f"--secret=id=pip-cert,src={out / 'pip-cert'}")
    if settings:
        lines = ["[global]", *(f"{key} = {value}" for key, value in settings.items())]
        (out / "pip.conf").write_text("\n".join(lines) + "\n")
        args.append(f"--secret=id=pip.conf,src={out / 'pip.conf'}")
    say(f"pip settings passed to the build: {', '.join(settings) or 'none (pip defaults)'}")
    print("\n".join(args))


def model_cache(out: Path) -> None:
    """The cache layout (<id>/<file>) with the registry's pinned BlazeFace file, which the mediapipe wheel
    ships byte for byte; no stand-in goes in, so every model the image reports present is a real one."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import TEST_CACHE
    from standins import blazeface_files

    folder = out / BLAZEFACE
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(blazeface_files(TEST_CACHE)[BLAZEFACE], folder / f"{BLAZEFACE}.tflite")


def health(url: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"container test: no answer from {url}/health within 120 s")
        time.sleep(0.2)


def submit(client: httpx.Client, plugin: str, path: Path, **options: str) -> str:
    with open(path, "rb") as fh:
        answer = client.post(f"/jobs/{plugin}", files={"file": (path.name, fh)}, data=options)
    assert answer.status_code == 202, answer.text
    return answer.json()["job_id"]


def result(client: httpx.Client, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = client.get(f"/jobs/{job_id}/results", params={"wait": 30})
        if answer.status_code == 200:
            out = answer.json()
            assert out["status"] == "ok", out
            return out
        assert answer.status_code == 409, answer.text
    raise AssertionError(f"job {job_id} did not end within {timeout} s")


def mediapipe_faces(network: Path, image: Image.Image) -> list[tuple[float, tuple[float, ...]]]:
    """(score, box) of each face MediaPipe's plain FaceDetector finds in ``image``, best first."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_path=str(network)))
    rgb = np.asarray(image.convert("RGB"))
    # LiteRT writes a page of notices to the stderr file descriptor; this script's own lines go there too.
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        with vision.FaceDetector.create_from_options(options) as detector:
            found = detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)).detections
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return sorted(
        ((d.categories[0].score, (d.bounding_box.origin_x, d.bounding_box.origin_y, d.bounding_box.width,
          d.bounding_box.height)) for d in found),
        reverse=True,
    )  # fmt: skip


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return iw * ih / (a[2] * a[3] + b[2] * b[3] - iw * ih)


def exiftool(path: Path) -> dict:
    tags = ["-Make", "-Model", "-ImageWidth", "-ImageHeight", "-Orientation", "-DateTimeOriginal"]
    out = subprocess.run(["exiftool", "-j", "-n", *tags, str(path)], capture_output=True, check=True).stdout
    return json.loads(out)[0]


def jobs(url: str, key: str, video: Path, models: Path) -> None:
    """hash, exif and face_detection jobs against the references; then an hls job of ``video`` left running
    (its id printed) for the stop that follows."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=90) as client:
        health = client.get("/health", headers={"Authorization": ""}).json()
        assert health["status"] == "ok", health
        # The image holds no model (MODELS=none); BlazeFace is in the mounted cache, hashed against its pin on use;
        # the PP-OCR networks come with the rapidocr package installed in the image.
        states = health["models"]
        assert states.pop(BLAZEFACE) in ("cached", "verified"), health
        assert {m for m, state in states.items() if state != "missing"} == {"ppocr_v6_small"}, health
        assert states["ppocr_v6_small"] == "installed", health
        anonymous = client.get("/jobs/0123456789abcdef0123456789abcdef/status", headers={"Authorization": ""})
        assert anonymous.status_code == 401, anonymous.text

        ids = {plugin: submit(client, plugin, path) for plugin, path in
               (("hash", PHOTO), ("exif", PHOTO), ("face_detection", FACE_PHOTO))}  # fmt: skip

        (row,) = result(client, ids["hash"])["rows"]
        data = PHOTO.read_bytes()
        assert row["sha512"] == hashlib.sha512(data).hexdigest(), row
        assert row["md5"] == hashlib.md5(data).hexdigest(), row
        say("hash job: sha512 and md5 equal hashlib's")

        (row,) = result(client, ids["exif"])["rows"]
        ref = exiftool(PHOTO)
        assert (row["make"], row["model"]) == (ref["Make"], ref["Model"]), (row, ref)
        assert (row["width"], row["height"]) == (ref["ImageWidth"], ref["ImageHeight"]), (row, ref)
        assert row["orientation"] == ref.get("Orientation"), (row, ref)
        day, hour = ref["DateTimeOriginal"].split(" ")
        assert row["datetime_original"].startswith(f"{day.replace(':', '-')}T{hour}"), (row, ref)
        say("exif job: make, model, size, orientation and DateTimeOriginal equal exiftool's on the host")

        answer = result(client, ids["face_detection"])
        (row,) = answer["rows"]
        upright = ImageOps.exif_transpose(Image.open(FACE_PHOTO))
        ((score, box),) = mediapipe_faces(models / BLAZEFACE / f"{BLAZEFACE}.tflite", upright)
        # The reference sees the photo, the job its preview (re-encoded): close, not equal.
        iou = box_iou((row["x"], row["y"], row["width"], row["height"]), box)
        assert iou >= 0.7 and abs(row["score"] - score) < 0.05, (row, box, score)
        crop = client.get(answer["files"][Path(row["crop"]).name])
        assert crop.status_code == 200 and Image.open(io.BytesIO(crop.content)).size == (112, 112)
        say(
            f"face_detection job: one face, IoU {iou:.2f} and score {row['score']:.3f} against {score:.3f} of "
            "MediaPipe's FaceDetector on the host; its crop served"
        )

        job_id = submit(client, "hls_streaming", video)
        deadline = time.monotonic() + 60
        while (status := client.get(f"/jobs/{job_id}/status").json())["status"] != "running":
            assert status["status"] == "queued" and time.monotonic() < deadline, status
            time.sleep(0.2)
        say(f"hls job {job_id} running")
        print(job_id)


def requeued(storage: Path, job_id: str) -> None:
    """The job is queued again, its interrupted run not counted (jobs.sqlite3 read with the sqlite3 module)."""
    with sqlite3.connect(f"file:{storage / 'jobs.sqlite3'}?mode=ro", uri=True) as db:
        state, attempts, owner = db.execute(
            "SELECT state, attempts, owner_pid FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
    assert (state, attempts, owner) == ("queued", 0, None), (state, attempts, owner)
    say(f"hls job {job_id} back in the queue (state {state}, attempts {attempts})")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "pip-settings":
        pip_settings(Path(args[0]))
    elif command == "health":
        health(args[0])
    elif command == "models":
        model_cache(Path(args[0]))
    elif command == "jobs":
        jobs(args[0], args[1], Path(args[2]), Path(args[3]))
    elif command == "requeued":
        requeued(Path(args[0]), args[1])
    else:
        sys.exit(__doc__)
