"""The service end to end: a real uvicorn on 127.0.0.1, a real HTTP client (httpx), a real mosquitto broker,
the real steps (exiftool, ffmpeg, MediaPipe, onnxruntime with the stand-in networks) and the real Snakemake
for the archive job. Every request is to 127.0.0.1, and every wait is bounded.

The helpers here (``Server``, ``service_config``, ``wait_for``) are also used by test_service_restart.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from conftest import PLACES, SAMPLE, comparable, make_audio_only, write_config

from cl_ml_tools.service import plugins

API_KEY = "test-key-0123456789abcdef"
PREFIX = "cl_ml_tools_test"
PHOTO = SAMPLE / "2021 holiday" / "astronaut.jpg"
VIDEO = SAMPLE / "videos" / "clip.mp4"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
UPLOAD_LIMIT = 4_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], Any], what: str, seconds: float = 60, every: float = 0.05) -> Any:
    """``check()`` until it returns something true, at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def service_config(work: Path, storage: Path, inputs: dict[str, str] | None = None, **sections: Any) -> Path:
    """The repository's config.yaml with the test models and ``storage``; ``sections`` merged over it."""
    sections.setdefault("storage", {})
    sections["storage"] = {"dir": str(storage), **sections["storage"]}
    return write_config(work, inputs or {"photos": str(SAMPLE)}, **sections)


class Server:
    """A server process on a free 127.0.0.1 port, with HOME and TMPDIR pointed at empty folders (so that
    anything written outside the storage folder and the model cache shows), its output in ``log``."""

    def __init__(self, work: Path, config: Path, command: list[str] | None = None, api_key: str | None = None):
        self.work = work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home, self.tmp, self.cache = work / "home", work / "tmp", work / "model-cache"
        for folder in (self.home, self.tmp, self.cache):
            folder.mkdir(exist_ok=True)
        self.env = {
            **os.environ,
            "HOME": str(self.home),
            "TMPDIR": str(self.tmp),
            "CL_ML_TOOLS_MODEL_CACHE": str(self.cache),
            "CL_ML_TOOLS_CONFIG": str(config),
            "PYTHONUNBUFFERED": "1",
        }
        self.command = command or [
            *(sys.executable, "-m", "uvicorn", "cl_ml_tools.master:app"),
            *("--host", "127.0.0.1", "--port", "{port}"),
        ]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=60)
        self.log_path = work / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        args = [a.replace("{port}", str(self.port)) for a in self.command]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, cwd=self.work, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._up, f"the server on port {self.port}\n{self.log()}", seconds=90, every=0.1)
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited ({self.proc.returncode}):\n{self.log()}")
        try:
            return self.client.get("/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM, as systemd and docker stop send; the exit status (uvicorn ends a graceful stop by raising
        the signal again, so -15 is a clean stop too)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()
        return self.proc.returncode

    def submit(self, plugin: str, path: Path, name: str | None = None, **options: Any) -> dict[str, Any]:
        fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in options.items()}
        with open(path, "rb") as fh:
            response = self.client.post(
                f"/jobs/{plugin}", files={"file": (path.name if name is None else name, fh)}, data=fields
            )
        assert response.status_code == 202, response.text
        return response.json()

    def result(self, job_id: str, seconds: float = 120) -> dict[str, Any]:
        """The job's result, waiting for it (the server waits up to 60 s per request)."""
        deadline = time.monotonic() + seconds
        while True:
            response = self.client.get(f"/jobs/{job_id}/results", params={"wait": 30})
            if response.status_code != 409 or time.monotonic() > deadline:
                assert response.status_code == 200, response.text
                return response.json()


def processes(storage: Path, programs: tuple[bytes, ...] = (b"cl_ml_tools.service.runner", b"snakemake")) -> list[int]:
    """Processes working on ``storage`` (their command lines name it) that run one of ``programs``: by
    default the runners and pipelines a server started."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        if str(storage).encode() in cmdline and any(p in cmdline for p in programs):
            found.append(int(entry.name))
    return found


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A mosquitto (Debian's package) on a free 127.0.0.1 port, for this module only."""
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed: run tools/bootstrap.sh dev (apt-get install mosquitto)")
    folder = tmp_path_factory.mktemp("mosquitto")
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, "mosquitto", seconds=20)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


class Subscriber:
    """Every message on ``<PREFIX>/jobs/#``."""

    def __init__(self, port: int):
        import paho.mqtt.client as paho

        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="cl_ml_tools-test-subscriber")
        self.client.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/jobs/#", qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(20), "no SUBACK from mosquitto"

    def _message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self.messages.append((message.topic, json.loads(message.payload)))

    def of(self, job_id: str) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return [(t.rsplit("/", 1)[1], m) for t, m in self.messages if t.split("/")[2] == job_id]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(scope="module")
def archive_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("archive")
    shutil.copy(PHOTO, folder / PHOTO.name)
    shutil.copy(SAMPLE / "2021 holiday" / "coffee.png", folder / "coffee.png")
    return folder


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, test_models: dict[str, Path], broker: int, archive_inputs: Path
) -> Iterator[Server]:
    """One server for this module: API key, MQTT on, a 4 MB upload limit, and an archive job over two
    photos with the steps every plugin compares against (HLS, duplicates, people and report off; ocr and
    places, which the other tests leave off, on)."""
    work = tmp_path_factory.mktemp("service")
    config = service_config(
        work,
        work / "storage",
        {"photos": str(archive_inputs)},
        hls={"enabled": False},
        duplicates={"enabled": False},
        people={"enabled": False},
        report={"enabled": False},
        ocr={"enabled": True},
        places={"enabled": True},
        server={"api_key": API_KEY, "max_upload_bytes": UPLOAD_LIMIT},
        worker={"max_concurrent_jobs": 2},
        mqtt={"enabled": True, "broker": f"127.0.0.1:{broker}", "topic_prefix": PREFIX},
        plugins={"archive": {"snakefile": str(Path(__file__).parents[1] / "Snakefile"), "cores": 2}},
    )
    running = Server(work, config, api_key=API_KEY).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def subscriber(broker: int) -> Iterator[Subscriber]:
    sub = Subscriber(broker)
    yield sub
    sub.close()


@pytest.fixture(scope="module")
def archive_job(server: Server, subscriber: Subscriber) -> dict[str, Any]:
    """The archive job, run once; its status as it went, and its result."""
    response = server.client.post("/jobs/archive")
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    again = server.client.post("/jobs/archive")
    assert again.status_code == 200 and again.json()["job_id"] == job_id  # the pending one, not a second run
    seen = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = server.client.get(f"/jobs/{job_id}/status").json()
        seen.append(status)
        if status["status"] in ("done", "error"):
            break
        time.sleep(0.5)
    return {"id": job_id, "seen": seen, "result": server.result(job_id)}


# --------------------------------------------------------------------------------------------------- tests


def test_health_needs_no_key_and_describes_the_service(server: Server) -> None:
    health = httpx.get(f"{server.url}/health", timeout=10).json()
    assert health["status"] == "ok"
    assert set(health["plugins"]) == set(plugins.PLUGINS)
    assert health["plugins"]["hash"] == {
        "step": "hashes",
        "accepts": "any file",
        "options": ["bytes", "pixel", "video", "perceptual", "max_pixels", "algorithm"],
    }
    assert health["archive"] is True
    assert health["mqtt"] == "connected"
    assert health["models"]["arcface_w600k_mbf"] == "override"


@pytest.mark.parametrize(
    "method, path",
    [("GET", "/metrics"), ("POST", "/jobs/hash"), ("POST", "/jobs/archive"), ("GET", "/jobs/" + "0" * 32 + "/status")],
)
@pytest.mark.parametrize("header", [None, "Bearer wrong-key-0123456789", f"Basic {API_KEY}"])
def test_everything_but_health_needs_the_api_key(server: Server, method: str, path: str, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = httpx.request(method, f"{server.url}{path}", headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


def test_archive_job_runs_the_pipeline_and_reports_progress(
    archive_job: dict[str, Any], subscriber: Subscriber, archive_inputs: Path
) -> None:
    result = archive_job["result"]
    assert result["status"] == "ok", result["log"]
    assert result["tables"]["files"]["rows"] == 2
    for step in ("hashes", "exif", "thumbnails", "faces", "face_embeddings", "dino", "clip"):
        assert result["tables"][step]["status"].get("error", 0) == 0, (step, result["tables"][step])
    messages = [s["message"] for s in archive_job["seen"] if s["message"]]
    assert any("steps" in m and "done" in m for m in messages), archive_job["seen"]
    progress = [m for event, m in subscriber.of(archive_job["id"]) if event == "progress"]
    assert progress and progress[-1]["progress"] == 1.0
    assert [p["progress"] for p in progress] == sorted(p["progress"] for p in progress)


def _table_rows(result: dict[str, Any], step: str, name: str) -> pd.DataFrame:
    df = pd.read_parquet(result["tables"][step]["path"])
    return df[df.path.map(lambda p: Path(p).name) == name].reset_index(drop=True)


@pytest.mark.parametrize(
    "plugin",
    [
        "hash",
        "exif",
        "media_thumbnail",
        "face_detection",
        "face_embedding",
        "dino_embedding",
        "clip_embedding",
        "ocr",
        "places",
        "quality",
    ],
)
def test_each_plugin_answers_with_the_rows_of_its_pipeline_table(
    server: Server, archive_job: dict[str, Any], plugin: str
) -> None:
    step = plugins.PLUGINS[plugin].step
    job = server.submit(plugin, PHOTO)
    assert job["file"] == {
        "name": PHOTO.name,
        "size": PHOTO.stat().st_size,
        "kind": "image",
        "format": "jpeg",
        "mime": "image/jpeg",
        "media_id": job["file"]["media_id"],
    }
    result = server.result(job["job_id"])
    assert result["status"] == "ok", result
    assert result["step"] == step
    assert result["columns"] == plugins.columns(plugin)
    assert all(list(row) == result["columns"] for row in result["rows"])
    expected = _table_rows(archive_job["result"], step, PHOTO.name)
    assert len(result["rows"]) == len(expected) > 0
    for got, want in zip(result["rows"], expected.to_dict("records"), strict=True):
        for column in result["columns"]:
            if column in PLACES:
                continue
            if column == "raw":  # the tags of the file system (its name, dates, permissions) differ too
                got_tags, want_tags = json.loads(got[column]), json.loads(want[column])
                assert {k: v for k, v in got_tags.items() if not k.startswith("File:")} == {
                    k: v for k, v in want_tags.items() if not k.startswith("File:")
                }
            elif column == "variants":
                continue
            else:
                assert comparable(got[column]) == comparable(want[column]), column
    # Output files are named in the rows and downloadable; nothing else is listed.
    made = [r[c] for r in result["rows"] for c in ("file", "crop") if r.get(c)]
    if plugin in ("media_thumbnail", "face_detection"):
        assert sorted(Path(p).name for p in made) == sorted(result["files"])
        for url in result["files"].values():
            response = server.client.get(url)
            assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
            assert response.content[:3] == b"\xff\xd8\xff"
    else:
        assert result["files"] == {}


def test_hls_streaming_is_playable_through_the_server(server: Server) -> None:
    result = server.result(server.submit("hls_streaming", VIDEO, ladder=[{"height": 240, "video_kbps": 300}])["job_id"])
    assert result["status"] == "ok", result
    (row,) = result["rows"]
    assert row["segment_count"] >= 2 and [v["name"] for v in row["variants"]] == ["240p"]
    master = next(url for name, url in result["files"].items() if name.endswith("master.m3u8"))
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-headers", f"Authorization: Bearer {API_KEY}\r\n", "-show_entries",
         "format=duration:stream=codec_name", "-of", "json", f"{server.url}{master}"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    found = json.loads(probe.stdout)
    assert {s["codec_name"] for s in found["streams"]} == {"h264", "aac"}
    assert float(found["format"]["duration"]) == pytest.approx(4.0, abs=0.5)
    assert server.client.get(master).headers["content-type"] == "application/vnd.apple.mpegurl"


@pytest.mark.parametrize(
    "name",
    ["../../../../etc/passwd", "..", "../result.json", "%2e%2e/result.json", "/etc/passwd", "out/x.jpg", "x" * 300],
)
def test_the_files_endpoint_serves_only_files_the_job_made(server: Server, name: str) -> None:
    job = server.submit("media_thumbnail", PHOTO)
    server.result(job["job_id"])
    response = server.client.get(f"/jobs/{job['job_id']}/files/{name}")
    assert response.status_code in (404, 405), response.text
    assert response.json()["error"] in ("unknown_file", "not_found", "method_not_allowed")


def test_job_events_are_published_on_mqtt(server: Server, subscriber: Subscriber) -> None:
    job = server.submit("face_detection", PHOTO)
    result = server.result(job["job_id"])
    wait_for(lambda: "result" in [event for event, _ in subscriber.of(job["job_id"])], "the result event", 20)
    events = subscriber.of(job["job_id"])
    kinds = [event for event, _ in events]
    statuses = [m["status"] for event, m in events if event == "status"]
    # "queued" comes from the request's handler, "running" from a job slot: either may be first.
    assert sorted(statuses[:2]) == ["queued", "running"] and statuses[2:] == ["done"]
    assert [m["message"] for event, m in events if event == "progress"] == ["thumbnails", "faces"]
    assert kinds[-1] == "result" and events[-1][1] == result


@pytest.mark.parametrize(
    "case",
    ["empty", "text named .jpg", "audio to hls", "image to hls", "not multipart", "no file field", "two files",
     "unknown option", "bad option value", "option not json", "duplicate field", "cut-off body", "huge",
     "huge, streamed", "unknown plugin", "bad job id"],
)  # fmt: skip
def test_bad_requests_get_a_4xx_with_a_json_error_and_the_server_keeps_serving(
    server: Server, tmp_path: Path, case: str
) -> None:
    c = server.client
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo\n")
    photo = PHOTO.read_bytes()
    boundary = "b0undary"
    form = f"multipart/form-data; boundary={boundary}"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'.encode()

    def huge() -> Iterator[bytes]:
        yield part
        for _ in range(UPLOAD_LIMIT // 65536 + 10):
            yield bytes(65536)
        yield f"\r\n--{boundary}--\r\n".encode()

    def post(plugin: str, content: bytes = photo, name: str = "a.jpg", **data: Any) -> httpx.Response:
        return c.post(f"/jobs/{plugin}", files={"file": (name, content)}, data=data)

    requests: dict[str, Callable[[], httpx.Response]] = {
        "empty": lambda: post("hash", b""),
        "text named .jpg": lambda: post("media_thumbnail", text.read_bytes(), "notes.jpg"),
        "audio to hls": lambda: post("hls_streaming", b"ID3" + bytes(600), "a.mp3"),
        "image to hls": lambda: post("hls_streaming"),
        "not multipart": lambda: c.post("/jobs/hash", content=photo, headers={"content-type": "image/jpeg"}),
        "no file field": lambda: c.post("/jobs/hash", data={"pixel": "false"}, files={"other": ("a", b"x")}),
        "two files": lambda: c.post("/jobs/hash", files=[("file", ("a.jpg", photo)), ("file", ("b.jpg", photo))]),
        "unknown option": lambda: post("hash", colour="1"),
        "bad option value": lambda: post("face_detection", min_score="2"),
        "option not json": lambda: post("media_thumbnail", quality="high"),
        "duplicate field": lambda: post("hash", pixel=["true", "false"]),
        "cut-off body": lambda: c.post("/jobs/hash", content=part + photo[:1000], headers={"content-type": form}),
        "huge": lambda: post("hash", photo + bytes(UPLOAD_LIMIT)),
        "huge, streamed": lambda: c.post("/jobs/hash", content=huge(), headers={"content-type": form}),
        "unknown plugin": lambda: post("rm -rf"),
        "bad job id": lambda: c.get("/jobs/../../etc/passwd/status"),
    }
    expected = {"empty": 400, "text named .jpg": 415, "audio to hls": 415, "image to hls": 415, "not multipart": 415,
                "huge": 413, "huge, streamed": 413, "unknown plugin": 404, "bad job id": 404}  # fmt: skip
    before = set((server.work / "storage" / "jobs").iterdir())
    response = requests[case]()
    assert response.status_code == expected.get(case, 400), response.text
    body = response.json()
    assert set(body) == {"error", "message"} and len(body["message"]) > 10, body
    # Nothing was kept of a refused upload, and the server goes on serving.
    assert set((server.work / "storage" / "jobs").iterdir()) == before
    assert c.get("/health").status_code == 200


def _cut_photo(path: Path) -> Path:
    path.write_bytes(PHOTO.read_bytes()[:3000])
    return path


def _noise(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 40)
    return path


@pytest.mark.parametrize(
    "plugin, make, name, message",
    [
        ("media_thumbnail", _cut_photo, "cut.jpg", "truncated"),
        ("face_detection", _cut_photo, "cut.jpg", "thumbnails step failed"),
        ("hls_streaming", make_audio_only, "sound.mp4", "no video stream"),
        ("hash", _noise, "noise.mp4", "ffprobe cannot read this file"),
    ],
)
def test_damaged_files_get_an_error_result(
    server: Server, tmp_path: Path, plugin: str, make: Callable[[Path], Path], name: str, message: str
) -> None:
    path = make(tmp_path / name)
    result = server.result(server.submit(plugin, path)["job_id"])
    assert result["status"] == "error" and message in result["error"], result
    assert result["rows"] and result["rows"][0]["status"] == "error" and result["rows"][0]["error"]
    status = server.client.get(f"/jobs/{result['job_id']}/status").json()
    assert status["status"] == "error" and status["error"] == result["error"]
    if plugin == "hash":  # the byte hashes are still right, as in the pipeline's table
        assert len(result["rows"][0]["sha512"]) == 128


HOSTILE = ["../../../../tmp/PWNED.jpg", "$(touch PWNED).jpg", "-rf.jpg", "a;b & c.jpg", "line\nbreak.jpg",
           "'quoted\".jpg", "nul\x00byte.jpg", "C:\\Windows\\evil.jpg", "é" * 300 + ".jpg", ".jpg", ""]  # fmt: skip


def test_hostile_file_names_are_only_names(server: Server) -> None:
    ids = [server.submit("exif", PHOTO, name=name)["job_id"] for name in HOSTILE]
    for job_id in ids:
        result = server.result(job_id)
        assert result["status"] == "ok", result
        assert result["rows"][0]["make"] == "Canon"
        assert Path(result["rows"][0]["path"]).parent == server.work / "storage" / "jobs" / job_id
        assert len(result["file"]["name"]) <= 255
    assert not list(server.work.rglob("*PWNED*")) and not Path("/tmp/PWNED.jpg").exists()


def test_a_missing_model_gives_an_error_result_saying_where_to_get_it(server: Server) -> None:
    result = server.result(server.submit("face_embedding", PHOTO, model="arcface_w600k_r50")["job_id"])
    assert result["status"] == "error"
    for words in ("arcface_w600k_r50", "buffalo_l.zip", str(server.cache / "arcface_w600k_r50"), "4c06341c33c2"):
        assert words in result["error"], result["error"]
    assert result["rows"][0]["status"] == "error"


def test_metrics_are_prometheus_text_and_count_the_jobs(server: Server, archive_job: dict[str, Any]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    server.result(server.submit("hash", PHOTO)["job_id"])
    response = server.client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[("cl_ml_tools_jobs_finished_total", (("plugin", "hash"), ("state", "done")))] >= 1
    assert samples[("cl_ml_tools_jobs", (("plugin", "archive"), ("state", "done")))] == 1
    assert samples[("cl_ml_tools_mqtt_connected", ())] == 1
    key = ("cl_ml_tools_http_requests_total", (("code", "401"), ("method", "GET"), ("route", "/metrics")))
    assert samples[key] >= 1


def test_uploads_and_scratch_files_are_gone_and_nothing_is_written_elsewhere(server: Server) -> None:
    """Run last in this module: after every job above."""
    storage = server.work / "storage"
    wait_for(lambda: server.client.get("/health").json()["queue"]["running"] == 0, "the queue to drain")
    assert [p.name for p in storage.glob("jobs/*/upload*")] == []  # storage.keep_uploads is off
    scratch = list((storage / "tmp").iterdir())
    assert len(scratch) == 1 and [p.name for p in scratch[0].iterdir()] == ["config.json"]
    assert list(server.home.rglob("*")) == [] and list(server.tmp.rglob("*")) == []
    allowed = {"config.yaml", "storage", "home", "tmp", "model-cache", server.log_path.name}
    assert {p.name for p in server.work.iterdir()} <= allowed
