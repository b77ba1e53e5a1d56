"""The service's HTTP surface as clients use it (issue 20): the production guide's own curl command, a batch
that holds broken videos, options that would raise the server's cost limits, and each job's rows checked
against hashlib, exiftool and PIL run here on the uploaded file. A real uvicorn on 127.0.0.1, real curl,
ffmpeg and exiftool; every wait is bounded."""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import shutil
import socket
import struct
import subprocess
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import imagehash
import pytest
from conftest import SAMPLE, file_row, make_audio_only, make_video, write_config
from PIL import Image, ImageOps
from test_service import PHOTO, VIDEO, Server, processes, service_config, wait_for

from cl_ml_tools.service import plugins, runner
from cl_ml_tools.service.service_config import load as load_config

GUIDE_CURL = 'curl -X POST http://localhost:8000/jobs/hash -F "file=@image.jpg" -F "algorithm=sha512"'
BOMB_LIMIT = 1_000_000
PNG = SAMPLE / "2021 holiday" / "coffee.png"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No API key (the guide's curl command sends none), one job slot (so that queued jobs form a batch), two
    threads a job, a decompression-bomb guard of 1 MP for the hash plugin, and faces without refinement."""
    work = tmp_path_factory.mktemp("api")
    config = service_config(
        work,
        work / "storage",
        hashes={"max_pixels": BOMB_LIMIT},
        faces={"refine": False},  # work a client may not turn back on
        worker={"max_concurrent_jobs": 1, "threads": 2},
        plugins={"enabled": [p for p in plugins.PLUGINS]},
    )
    running = Server(work, config).start()
    yield running
    running.stop()


def _hashes(path: Path) -> dict[str, str]:
    data = path.read_bytes()
    return {"sha512": hashlib.sha512(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}


def _when(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    assert when.tzinfo is not None and when.utcoffset().total_seconds() == 0, text
    return when


# --------------------------------------------------------------------------------------------------- item 1


def test_the_guides_curl_command_works_verbatim(server: Server, tmp_path: Path) -> None:
    shutil.copy(PHOTO, tmp_path / "image.jpg")
    # The guide's command as written; only the port is this test server's.
    command = shlex.split(GUIDE_CURL.replace("localhost:8000", f"localhost:{server.port}"))
    done = subprocess.run([*command, "-sS", "-w", "\n%{http_code}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    body, _, code = done.stdout.rpartition("\n")
    assert done.returncode == 0 and code == "202", (done.stdout, done.stderr)
    job = json.loads(body)
    assert job["options"] == {"bytes": ["sha512"]}
    (row,) = server.result(job["job_id"])["rows"]
    assert row["status"] == "ok"
    assert row["sha512"] == _hashes(tmp_path / "image.jpg")["sha512"] and row["md5"] is None


@pytest.mark.parametrize(
    "fields, asked",
    [
        ({"algorithm": "md5"}, ["md5"]),
        ({"algorithm": '["sha512", "md5"]'}, ["sha512", "md5"]),
        ({"bytes": "md5"}, ["md5"]),  # a bare string wherever a one-item list is expected
        ({"bytes": '"md5"'}, ["md5"]),
    ],
)
def test_algorithm_is_one_name_or_a_list(server: Server, fields: dict[str, str], asked: list[str]) -> None:
    job = server.submit("hash", PHOTO, **fields)
    assert job["options"]["bytes"] == asked
    (row,) = server.result(job["job_id"])["rows"]
    want = _hashes(PHOTO)
    assert {k: row[k] for k in ("sha512", "md5")} == {k: want[k] if k in asked else None for k in ("sha512", "md5")}


def test_algorithm_and_bytes_together_or_an_unknown_algorithm_are_refused(server: Server) -> None:
    for fields, words in (({"algorithm": "md5", "bytes": "md5"}, "'algorithm' and 'bytes'"),
                          ({"algorithm": "sha1"}, "option algorithm.0: 'sha1' is not one of")):  # fmt: skip
        response = server.client.post("/jobs/hash", files={"file": ("a.jpg", PHOTO.read_bytes())}, data=fields)
        assert response.status_code == 400 and words in response.json()["message"], response.text


# --------------------------------------------------------------------------------------------------- item 2


def _truncated_mkv(path: Path) -> Path:
    whole = make_video(path.with_name("whole.mkv"), seconds=2)
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def test_a_batch_with_broken_videos_costs_only_those_files_and_keeps_their_byte_hashes(
    server: Server, tmp_path: Path
) -> None:
    broken = {"cut.mkv": _truncated_mkv(tmp_path / "cut.mkv"), "sound.mp4": make_audio_only(tmp_path / "sound.mp4")}
    # What each one's row must say (from ffprobe, via the video module).
    messages = {"cut.mkv": "damaged or truncated", "sound.mp4": "no video stream"}
    good = {"photo.jpg": PHOTO, "coffee.png": PNG, "clip.mp4": VIDEO}
    # The one job slot is busy with this, so the hash jobs below wait in the queue and go as one batch.
    slow = make_video(tmp_path / "slow.mp4", seconds=6, size="640x360", audio=False)
    busy = server.submit("hls_streaming", slow, ladder=[{"height": 360, "video_kbps": 800}])["job_id"]
    ids = {name: server.submit("hash", path, name=name)["job_id"] for name, path in {**good, **broken}.items()}
    assert server.result(busy)["status"] == "ok"
    results = {name: server.result(job_id) for name, job_id in ids.items()}
    started = {server.client.get(f"/jobs/{job_id}/status").json()["started_at"] for job_id in ids.values()}
    assert len(started) < len(ids)  # at least some of them ran in one call

    for name, path in {**good, **broken}.items():
        (row,) = results[name]["rows"]
        # Byte hashes are always recorded, against hashlib on the very file.
        assert {k: row[k] for k in ("sha512", "md5")} == _hashes(path), results[name]
        if name in good:
            assert results[name]["status"] == "ok" and row["status"] == "ok", results[name]
            assert row["phash"] is not None, name
        else:
            assert results[name]["status"] == "error" and row["status"] == "error", results[name]
            assert results[name]["error"] == row["error"] and messages[name] in row["error"], results[name]


def test_a_batch_whose_step_fails_as_a_whole_is_run_again_file_by_file(tmp_path: Path) -> None:
    """The runner's side of the isolation: a step that raises over a batch (here on a row it cannot read)
    costs that row's file alone, and the other file's rows are the step's own."""
    config = load_config(write_config(tmp_path, {"photos": str(SAMPLE)})).raw
    good = file_row(PHOTO, "00000000000000a1")
    bad = {k: v for k, v in file_row(PNG, "00000000000000a2").items() if k != "status"}
    call = runner.Call("hash", {}, [good, bad], [tmp_path / "a", tmp_path / "b"], tmp_path / "work")
    # What the failed batch call wrote (the step here writes no files: put there as a step would have) is
    # not left beside what the file's own run writes.
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "partial.jpg").write_bytes(b"half a thumbnail")
    rows = runner.execute(call, runner.Toolbox(config, 1), lambda fraction, stage: None)
    assert [[r["status"] for r in file_rows] for file_rows in rows] == [["ok"], ["error"]]
    assert rows[0][0]["sha512"] == _hashes(PHOTO)["sha512"] and "KeyError" in rows[1][0]["error"]
    assert not (tmp_path / "a" / "partial.jpg").exists()


# --------------------------------------------------------------------------------------------------- item 6


def _png_bomb(path: Path, side: int) -> Path:
    """A grey PNG of side × side pixels, all zero: a few KB that decode to side² bytes."""
    raw = zlib.compress(b"".join(b"\x00" + bytes(side) for _ in range(side)), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


def test_a_client_cannot_lift_the_decompression_bomb_guard(server: Server, tmp_path: Path) -> None:
    bomb = _png_bomb(tmp_path / "bomb.png", 2000)  # 4 MP against the server's 1 MP
    with Image.open(bomb) as im:
        assert im.size == (2000, 2000)
    response = server.client.post(
        "/jobs/hash", files={"file": ("bomb.png", bomb.read_bytes())}, data={"max_pixels": "1000000000000"}
    )
    assert response.status_code == 400, response.text
    assert "hashes.max_pixels" in response.json()["message"] and str(BOMB_LIMIT) in response.json()["message"]
    # Without the option the guard holds and the file is an error row; a tighter limit is the client's right.
    for options in ({}, {"max_pixels": BOMB_LIMIT // 2}):
        result = server.result(server.submit("hash", bomb, **options)["job_id"])
        assert result["status"] == "error" and "pixels" in result["error"], result
        assert result["rows"][0]["sha512"] == _hashes(bomb)["sha512"]


@pytest.mark.parametrize(
    "plugin, fields, words",
    [
        ("hls_streaming", {"segment_s": "0.01"}, "hls.segment_s"),
        ("hls_streaming", {"threads": "3"}, "worker.threads"),
        ("hls_streaming", {"preset": "veryslow"}, "hls.preset"),
        ("hls_streaming", {"ladder": json.dumps([{"height": 240, "video_kbps": 300}] * 4)}, "hls.ladder"),
        ("hls_streaming", {"ladder": json.dumps([{"height": 2160, "video_kbps": 9000}])}, "hls.ladder"),
        ("hls_streaming", {"ladder": json.dumps([{"height": 240, "video_kbps": 500000}])}, "a video_kbps above"),
        ("hls_streaming", {"ladder": json.dumps([{"height": 240, "video_kbps": 400, "audio_kbps": 4000}])}, "audio"),
        ("face_detection", {"refine": "true"}, "faces.refine"),
        ("face_detection", {"min_size": "1"}, "faces.min_size"),
        ("face_detection", {"min_score": "0.01"}, "faces.min_score"),
        ("media_thumbnail", {"preview_size": "8192"}, "thumbnails.preview_size"),
        ("face_detection", {"tile_size": "16"}, "faces.tile_size"),
        ("dino_embedding", {"batch_size": "4096"}, "dino.batch_size"),
    ],
)
def test_options_that_would_raise_a_cost_limit_are_refused(
    server: Server, tmp_path: Path, plugin: str, fields: dict[str, str], words: str
) -> None:
    upload = make_video(tmp_path / "v.mp4", seconds=1) if plugin == "hls_streaming" else PHOTO
    response = server.client.post(f"/jobs/{plugin}", files={"file": (upload.name, upload.read_bytes())}, data=fields)
    assert response.status_code == 400, response.text
    assert words in response.json()["message"], response.text


def test_hls_threads_is_honoured(server: Server, tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", seconds=6, size="640x360", audio=False)
    ladder = [{"height": 360, "video_kbps": 800}]
    storage = server.work / "storage"
    for asked, expected in ((1, "1"), (None, "2")):
        options = {"ladder": ladder} | ({"threads": asked} if asked else {})
        job_id = server.submit("hls_streaming", video, **options)["job_id"]
        seen: set[str] = set()

        def finished(job_id: str = job_id, seen: set[str] = seen) -> bool:
            for pid in processes(storage, (b"ffmpeg",)):
                try:
                    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"-threads" in args:
                    seen.add(args[args.index(b"-threads") + 1].decode())
            return server.client.get(f"/jobs/{job_id}/status").json()["status"] in ("done", "error")

        wait_for(finished, "the HLS job", seconds=120, every=0.01)
        assert server.result(job_id)["status"] == "ok"
        assert seen == {expected}, (asked, seen)


# --------------------------------------------------------------------------------------------------- issue 27


def test_rows_match_hashlib_imagehash_exiftool_and_pil_run_on_the_upload(server: Server) -> None:
    before = datetime.now(UTC)
    hashed = server.submit("hash", PHOTO)
    exif = server.submit("exif", PHOTO)
    thumbs = server.submit("media_thumbnail", PHOTO)
    results = {name: server.result(job["job_id"]) for name, job in (("hash", hashed), ("exif", exif),
                                                                     ("thumbs", thumbs))}  # fmt: skip
    after = datetime.now(UTC)

    (row,) = results["hash"]["rows"]
    assert {k: row[k] for k in ("sha512", "md5")} == _hashes(PHOTO)
    with Image.open(PHOTO) as im:
        im.load()
        header = f"{im.mode} {im.width}x{im.height}\n".encode()
        assert row["pixel_sha512"] == hashlib.sha512(header + im.tobytes()).hexdigest()  # docs/tables.md
        upright = ImageOps.exif_transpose(im).convert("RGB")
    assert imagehash.hex_to_hash(f"{row['phash']:016x}") - imagehash.phash(upright) <= 4
    assert imagehash.hex_to_hash(f"{row['dhash']:016x}") - imagehash.dhash(upright) <= 6

    tool = json.loads(subprocess.run(["exiftool", "-j", "-n", str(PHOTO)], capture_output=True, text=True,
                                     check=True, timeout=60).stdout)[0]  # fmt: skip
    (tags,) = results["exif"]["rows"]
    assert (tags["make"], tags["model"]) == (tool["Make"], tool["Model"])
    assert (tags["width"], tags["height"]) == (tool["ImageWidth"], tool["ImageHeight"])

    rows = {r["role"]: r for r in results["thumbs"]["rows"]}
    for role, r in rows.items():
        content = server.client.get(results["thumbs"]["files"][Path(r["file"]).name]).content
        with Image.open(io.BytesIO(content)) as made:
            assert made.size == (r["width"], r["height"]), role
        assert (r["source_width"], r["source_height"]) == upright.size
    assert max(rows["preview"]["width"], rows["preview"]["height"]) == min(1024, max(upright.size))

    for job in (hashed, exif, thumbs):
        status = server.client.get(f"/jobs/{job['job_id']}/status").json()
        created, started, finished = (_when(status[k]) for k in ("created_at", "started_at", "finished_at"))
        assert before.replace(microsecond=0) <= created <= started <= finished <= after, status


# --------------------------------------------------------------------------------------------------- item 7


def _partial_upload(port: int, api_key: str | None = None, sent: int = 1000) -> socket.socket:
    """A connection that has sent the headers of an upload and ``sent`` bytes of its body, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    head = (f"POST /jobs/hash HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
            f"{key}Content-Length: 1000000\r\n\r\n").encode()  # fmt: skip
    part = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
    sock.sendall(head + part + bytes(sent))
    return sock


def _code(server: Server, route: str, method: str = "POST") -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(server.client.get("/metrics").text):
        for s in family.samples:
            labels = s.labels
            if s.name == "cl_ml_tools_http_requests_total" and (labels["route"], labels["method"]) == (route, method):
                counts[labels["code"]] = counts.get(labels["code"], 0) + s.value
    return counts


def test_a_client_hanging_up_mid_upload_is_no_server_error(server: Server) -> None:
    before = _code(server, "/jobs/{plugin}")
    jobs = server.work / "storage" / "jobs"
    folders = set(jobs.iterdir())
    for _ in range(3):
        _partial_upload(server.port).close()
    counted = lambda: sum(_code(server, "/jobs/{plugin}").values()) >= sum(before.values()) + 3  # noqa: E731
    wait_for(counted, "the three cut-off uploads to be counted", seconds=20)
    after = _code(server, "/jobs/{plugin}")
    assert not any(code.startswith("5") and after[code] > before.get(code, 0) for code in after), (before, after)
    assert server.log().count("the client hung up") == 3 and "Traceback" not in server.log()
    wait_for(lambda: set(jobs.iterdir()) == folders, "the cut-off uploads to be removed", seconds=20)
