"""The service as an operator runs it, each test with its own real server on 127.0.0.1: SIGKILL with ffmpeg
encoding, SIGTERM with clients waiting (cl-ml-tools serve, uvicorn, gunicorn), a storage folder that fills
up (a real tmpfs), the job list, cancelling and the queue cap, a broker outage (a real mosquitto stopped and
started again), and the metrics an operator watches (parsed by prometheus-client's parser)."""

from __future__ import annotations

import contextlib
import errno
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
import pytest
from conftest import SAMPLE, make_video, write_config
from prometheus_client.parser import text_string_to_metric_families
from test_service import API_KEY, MOSQUITTO, PHOTO, Server, free_port, processes, service_config, wait_for

from cl_ml_tools.service import jobs
from cl_ml_tools.service.jobs import DONE, JobStore
from cl_ml_tools.service.owner import Owner
from cl_ml_tools.service.storage import Layout

BIN = Path(sys.executable).parent
# A client may ask for no slower preset and no taller rendition than the server's own settings allow, so the
# servers that get SLOW jobs are configured with it.
SLOW = {"preset": "veryslow", "ladder": [{"height": 720, "video_kbps": 4000}]}
GUNICORN = [str(BIN / "gunicorn"), "-k", "uvicorn_worker.UvicornWorker", "--no-control-socket"]


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clip that takes ffmpeg tens of seconds to encode with ``SLOW``: it is still running when the test acts."""
    return make_video(tmp_path_factory.mktemp("video") / "long.mp4", seconds=8, size="1280x720", audio=False)


def ffmpegs(storage: Path) -> list[int]:
    return processes(storage, (b"ffmpeg",))


def output_folder(pid: int, job_dir: Path) -> str:
    """The folder of ``job_dir`` an ffmpeg writes into (the first part of its output path below the job)."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    below = {Path(a).relative_to(job_dir).parts[0] for a in args if a.startswith(f"{job_dir}/")}
    (folder,) = {name for name in below if not name.startswith("upload")}  # the input is the upload
    return folder


def _status(server: Server, job_id: str) -> dict[str, Any]:
    return server.client.get(f"/jobs/{job_id}/status").json()


def _metrics(server: Server) -> dict[str, Any]:
    """Every sample of ``/metrics`` by (name, sorted labels)."""
    text = server.client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# --------------------------------------------------------------------------------------------------- kill -9


def test_sigkill_of_the_server_ends_its_jobs_ffmpeg_and_the_rerun_writes_a_fresh_folder(
    tmp_path: Path, long_video: Path, launch: Callable[..., Server]
) -> None:
    storage = tmp_path / "storage"
    config = service_config(tmp_path, storage, worker={"max_concurrent_jobs": 1}, hls=SLOW)
    serve = [str(BIN / "cl-ml-tools"), "serve", "--config", str(config), "--port", "{port}"]
    first = launch(tmp_path, config, command=serve)
    job_id = first.submit("hls_streaming", long_video, **SLOW)["job_id"]
    job_dir = storage / "jobs" / job_id
    (old,) = wait_for(lambda: ffmpegs(storage), "ffmpeg to start", seconds=30)
    old_folder = output_folder(old, job_dir)

    first.kill()
    # ffmpeg is the runner's child: only the runner had the parent-death signal, so it used to run on.
    wait_for(lambda: ffmpegs(storage) == [], "the killed server's ffmpeg to end", seconds=10)

    second = launch(tmp_path, config)
    (new,) = wait_for(lambda: ffmpegs(storage), "the rerun's ffmpeg to start", seconds=30)
    assert output_folder(new, job_dir) != old_folder
    assert not (job_dir / old_folder).exists()  # the stale attempt's folder was removed before the rerun
    assert _status(second, job_id)["attempts"] == 2

    # DELETE of a running job kills its runner with its ffmpeg and removes its files.
    response = second.client.delete(f"/jobs/{job_id}")
    assert response.status_code == 200 and response.json()["status"] == "running", response.text
    wait_for(lambda: ffmpegs(storage) == [], "the deleted job's ffmpeg to end", seconds=10)
    wait_for(lambda: not job_dir.exists(), "the deleted job's folder to go", seconds=10)
    assert second.client.get(f"/jobs/{job_id}/status").status_code == 404
    assert second.result(second.submit("hash", PHOTO)["job_id"])["status"] == "ok"  # the slot is free
    assert second.stop() in (0, -15)
    assert processes(storage) == [] and ffmpegs(storage) == []


def working_in(folder: Path) -> list[int]:
    """Processes whose working directory is inside ``folder`` (the archive's pipeline and every job of it)."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")).is_relative_to(folder):
                found.append(int(entry.name))
    return found


def test_delete_of_the_archive_job_and_sigkill_of_the_server_end_its_pipeline_with_its_jobs(
    tmp_path: Path, long_video: Path, launch: Callable[..., Server]
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(long_video, inputs / long_video.name)
    storage = tmp_path / "storage"
    config = service_config(
        tmp_path,
        storage,
        {"videos": str(inputs)},
        hls={"enabled": True, **SLOW},
        plugins={"archive": {"snakefile": str(Path(__file__).parents[1] / "Snakefile"), "cores": 1}},
    )
    server = launch(tmp_path, config)
    deleted = server.client.post("/jobs/archive")
    assert deleted.status_code == 202
    # Snakemake runs each rule's script as a child process; the HLS one runs ffmpeg for a long while.
    wait_for(lambda: ffmpegs(storage), "the pipeline's ffmpeg to start", seconds=90)
    # DELETE stops the pipeline at once (it used to run on, and a new archive job beside it), and its result
    # is never written.
    response = server.client.delete(f"/jobs/{deleted.json()['job_id']}")
    assert response.status_code == 200 and response.json()["status"] == "running", response.text
    wait_for(lambda: working_in(storage) == [], "the deleted archive job's pipeline to end", seconds=10)
    again = server.client.post("/jobs/archive")
    assert again.status_code == 202 and again.json()["job_id"] != deleted.json()["job_id"], again.text
    wait_for(lambda: ffmpegs(storage), "the new archive job's ffmpeg to start", seconds=90)
    assert not (storage / "jobs" / deleted.json()["job_id"]).exists()
    server.kill()
    wait_for(lambda: working_in(storage) == [], "the pipeline and its jobs to end", seconds=10)


# --------------------------------------------------------------------------------------------------- SIGTERM


@pytest.mark.parametrize("how", ["cl-ml-tools serve", "uvicorn", "gunicorn"])
def test_sigterm_answers_waiting_clients_at_once_and_the_server_stops_within_seconds(
    tmp_path: Path, long_video: Path, how: str, launch: Callable[..., Server]
) -> None:
    storage = tmp_path / "storage"
    config = service_config(tmp_path, storage, worker={"max_concurrent_jobs": 1}, hls=SLOW)
    commands = {
        "cl-ml-tools serve": [str(BIN / "cl-ml-tools"), "serve", "--config", str(config), "--port", "{port}"],
        "uvicorn": None,
        "gunicorn": [*GUNICORN, "-w", "2", "-b", "127.0.0.1:{port}", "cl_ml_tools.master:app"],
    }
    server = launch(tmp_path, config, command=commands[how])
    slow = server.submit("hls_streaming", long_video, **SLOW)["job_id"]
    queued = server.submit("hash", PHOTO)["job_id"]
    wait_for(lambda: _status(server, slow)["status"] == "running", "the slow job to start")

    answers: dict[str, httpx.Response | Exception] = {}

    def wait_on(job_id: str) -> None:
        try:
            answers[job_id] = httpx.get(f"{server.url}/jobs/{job_id}/results", params={"wait": 60}, timeout=30)
        except httpx.HTTPError as exc:
            answers[job_id] = exc

    waiting = [threading.Thread(target=wait_on, args=(j,)) for j in (slow, queued)]
    for thread in waiting:
        thread.start()
    time.sleep(1.5)  # both requests are inside their wait now
    assert server.proc is not None
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    for thread in waiting:
        thread.join(timeout=40)
    answered = time.monotonic() - start
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
    stopped = time.monotonic() - start
    for job_id in (slow, queued):
        response = answers.get(job_id)
        assert isinstance(response, httpx.Response), f"{job_id}: {response!r} after {answered:.1f} s"
        assert response.status_code == 503, (response.status_code, response.text, f"{answered:.1f} s")
        assert response.json()["error"] == "shutting_down" and int(response.headers["Retry-After"]) > 0
    assert answered < 3, f"waiting clients answered {answered:.1f} s after SIGTERM"
    assert stopped < 10, f"{how} stopped {stopped:.1f} s after SIGTERM"
    # the log names the cause of any other status (gunicorn's arbiter ends with 3 when a worker failed to boot)
    assert server.proc.returncode in (0, -15), server.log()
    assert processes(storage) == [] and ffmpegs(storage) == []


# --------------------------------------------------------------------------------------------------- disk full


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 48 MB tmpfs (root only: a test machine without the right to mount cannot run this test)."""
    folder = tmp_path / "storage"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        for _ in range(20):  # a server's last file handles may close a moment after it exits
            if subprocess.run(["umount", str(folder)], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)


def _fill(folder: Path, name: str = "filler") -> Path:
    """A file that takes every free byte of ``folder``'s filesystem (none when it is full already)."""
    filler = folder / name
    chunk = b"\0" * (1 << 16)
    try:
        fh = open(filler, "wb")  # noqa: SIM115
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
        return filler
    with fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(chunk)
                fh.flush()
        try:
            while True:  # the last part of a chunk
                os.write(fh.fileno(), b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_job_that_cannot_store_its_result_ends_frees_its_slot_and_low_space_is_reported(
    tmp_path: Path, small_disk: Path, long_video: Path, launch: Callable[..., Server]
) -> None:
    config = write_config(
        tmp_path,
        {"photos": str(SAMPLE)},
        storage={"dir": str(small_disk), "min_free_bytes": 4 << 20},
        worker={"max_concurrent_jobs": 1},
        hls={**SLOW, "segment_s": 1},
    )
    server = launch(tmp_path, config)
    # An encoding that writes a segment every second or so, for several seconds.
    slow = server.submit("hls_streaming", long_video, preset="medium", segment_s=1, ladder=SLOW["ladder"])["job_id"]
    wait_for(lambda: _status(server, slow)["status"] == "running", "the slow job to start")
    filler = _fill(small_disk)

    # The full disk fails the job (its ffmpeg cannot write, nor can its result be): it ends, it does not
    # stay "running" on the strength of its heartbeat.
    ended = wait_for(lambda: (s := _status(server, slow))["status"] != "running" and s, "the job to end", seconds=60)
    assert ended["status"] == "error", ended
    # What the failed job held (its upload, its partial files, the reserve the queue used to record its
    # end) is free again: fill that too, as more writers would.
    more = _fill(small_disk, "filler2")
    health = server.client.get("/health")
    assert health.status_code == 200 and health.json()["disk"]["state"] == "low", health.text
    ready = server.client.get("/ready")
    assert ready.status_code == 503 and ready.json()["checks"]["disk"]["state"] == "low", ready.text
    refused = server.client.post("/jobs/hash", files={"file": ("a.jpg", PHOTO.read_bytes())})
    assert refused.status_code == 507 and refused.json()["error"] == "storage_full", refused.text
    assert int(refused.headers["Retry-After"]) > 0
    samples = _metrics(server)
    assert samples[("cl_ml_tools_storage_low", ())] == 1
    assert samples[("cl_ml_tools_storage_free_bytes", ())] < 4 << 20
    cause = (("cause", "storage_full"), ("code", "507"), ("route", "/jobs/{plugin}"))
    assert samples[("cl_ml_tools_http_server_errors_total", cause)] == 1

    filler.unlink()
    more.unlink(missing_ok=True)
    result = server.client.get(f"/jobs/{slow}/results")
    assert result.status_code == 200, result.text
    assert result.json()["status"] == "error" and result.json()["rows"][0]["status"] == "error"
    assert server.result(server.submit("hash", PHOTO)["job_id"])["status"] == "ok"  # the slot was freed
    assert server.client.get("/ready").json()["checks"]["disk"]["state"] == "ok"
    assert server.stop() in (0, -15)


# --------------------------------------------------------------------------------------------------- operator


def test_list_delete_queue_cap_readiness_and_metrics(
    tmp_path: Path, long_video: Path, launch: Callable[..., Server]
) -> None:
    storage = tmp_path / "storage"
    config = service_config(
        tmp_path,
        storage,
        worker={"max_concurrent_jobs": 1, "max_queued_jobs": 3},
        hls=SLOW,
        mqtt={"enabled": True, "broker": f"127.0.0.1:{free_port()}"},  # nothing listens there
        server={"api_key": API_KEY},
    )
    server = launch(tmp_path, config, api_key=API_KEY)
    for method in ("GET", "DELETE"):  # the operator's endpoints need the key; the probes do not
        path = "/jobs" if method == "GET" else f"/jobs/{'0' * 32}"
        assert httpx.request(method, server.url + path).status_code == 401
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"  # alive, however the broker is
    ready = httpx.get(f"{server.url}/ready")
    assert ready.status_code == 503, ready.text
    assert ready.json()["checks"]["mqtt"] == "disconnected" and ready.json()["checks"]["disk"]["state"] == "ok"

    slow = server.submit("hls_streaming", long_video, **SLOW)["job_id"]
    wait_for(lambda: _status(server, slow)["status"] == "running", "the slow job to start")
    queued = [server.submit(plugin, PHOTO)["job_id"] for plugin in ("hash", "exif", "hash")]
    full = server.client.post("/jobs/hash", files={"file": ("a.jpg", PHOTO.read_bytes())})
    assert full.status_code == 429 and full.json()["error"] == "queue_full", full.text
    assert 1 <= int(full.headers["Retry-After"]) <= 300
    nosuch = server.client.post("/jobs/nosuch", files={"file": ("a.jpg", PHOTO.read_bytes())})
    assert nosuch.status_code == 404, nosuch.text  # not 429: no queue would take it

    listed = server.client.get("/jobs").json()
    assert [j["job_id"] for j in listed["jobs"]] == [*reversed(queued), slow] and listed["next_cursor"] is None
    first = server.client.get("/jobs", params={"status": "queued", "limit": 2}).json()
    assert [j["job_id"] for j in first["jobs"]] == [queued[2], queued[1]]
    rest = server.client.get("/jobs", params={"status": "queued", "limit": 2, "cursor": first["next_cursor"]}).json()
    assert [j["job_id"] for j in rest["jobs"]] == [queued[0]] and rest["next_cursor"] is None
    assert [j["job_id"] for j in server.client.get("/jobs", params={"plugin": "exif"}).json()["jobs"]] == [queued[1]]
    assert server.client.get("/jobs", params={"status": "finished"}).status_code == 400
    for cursor in ("abc", "²", "9" * 20):  # "²" passes str.isdigit, 20 digits overflow SQLite: both were 500s
        assert server.client.get("/jobs", params={"cursor": cursor}).status_code == 400, cursor

    # Age of the oldest queued job, while it waits.
    time.sleep(1.1)
    assert _metrics(server)[("cl_ml_tools_oldest_queued_job_age_seconds", ())] >= 1

    deleted = server.client.delete(f"/jobs/{queued[1]}")
    assert deleted.status_code == 200 and deleted.json() == {"job_id": queued[1], "deleted": True, "status": "queued"}
    assert server.client.get(f"/jobs/{queued[1]}/status").status_code == 404
    assert not (storage / "jobs" / queued[1]).exists()
    assert server.client.delete(f"/jobs/{queued[1]}").status_code == 404
    assert server.client.delete(f"/jobs/{slow}").status_code == 200
    wait_for(lambda: ffmpegs(storage) == [], "the deleted job's ffmpeg to end", seconds=10)
    results = [server.result(job_id) for job_id in (queued[0], queued[2])]
    assert {r["status"] for r in results} == {"ok"}

    samples = _metrics(server)
    assert samples[("cl_ml_tools_oldest_queued_job_age_seconds", ())] == 0
    assert samples[("cl_ml_tools_job_duration_seconds_count", (("plugin", "hash"),))] == 2
    assert samples[("cl_ml_tools_job_duration_seconds_bucket", (("le", "+Inf"), ("plugin", "hash")))] == 2
    assert samples[("cl_ml_tools_job_duration_seconds_sum", (("plugin", "hash"),))] > 0
    # Every start waited: the slow job a moment, the hash jobs until it was deleted (over a second).
    assert samples[("cl_ml_tools_job_queue_wait_seconds_count", (("plugin", "hash"),))] == 2
    assert samples[("cl_ml_tools_job_queue_wait_seconds_bucket", (("le", "1.0"), ("plugin", "hash")))] == 0
    assert samples[("cl_ml_tools_job_queue_wait_seconds_count", (("plugin", "hls_streaming"),))] == 1
    assert server.stop() in (0, -15)


# --------------------------------------------------------------------------------------------------- MQTT


class Broker:
    """A mosquitto on a fixed 127.0.0.1 port, which the test stops and starts again (no persistence: the
    restarted broker remembers nothing)."""

    def __init__(self, folder: Path):
        if not Path(MOSQUITTO).exists():
            pytest.fail("mosquitto is not installed: run tools/bootstrap.sh dev (apt-get install mosquitto)")
        self.port = free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stderr=subprocess.DEVNULL)
        wait_for(self.listening, "mosquitto", seconds=20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def test_the_final_status_of_jobs_that_ended_during_a_broker_outage_reaches_a_later_subscriber(
    tmp_path: Path, launch: Callable[..., Server]
) -> None:
    import paho.mqtt.client as paho

    broker = Broker(tmp_path)
    broker.start()
    try:
        config = service_config(
            tmp_path, tmp_path / "storage", mqtt={"enabled": True, "broker": f"127.0.0.1:{broker.port}"}
        )
        server = launch(tmp_path, config)
        wait_for(lambda: server.client.get("/health").json()["mqtt"] == "connected", "the server's MQTT connection")
        before = server.result(server.submit("hash", PHOTO)["job_id"])["job_id"]
        broker.stop()
        wait_for(lambda: server.client.get("/health").json()["mqtt"] == "disconnected", "the outage to show")
        during = [server.submit(plugin, PHOTO)["job_id"] for plugin in ("hash", "exif", "hash")]
        assert {server.result(job_id)["status"] for job_id in during} == {"ok"}
        broker.start()
        wait_for(lambda: server.client.get("/health").json()["mqtt"] == "connected", "the reconnection", seconds=40)

        finals: dict[str, dict[str, Any]] = {}
        retained: list[str] = []
        lock = threading.Lock()

        def message(client: Any, userdata: Any, msg: Any) -> None:
            with lock:
                finals[msg.topic.split("/")[2]] = json.loads(msg.payload)
                if msg.retain:
                    retained.append(msg.topic)

        late = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="cl_ml_tools-test-late")
        late.on_connect = lambda c, *_: c.subscribe("cl_ml_tools/jobs/+/status", qos=1)
        late.on_message = message
        late.connect("127.0.0.1", broker.port)
        late.loop_start()
        try:
            wait_for(lambda: set(during) <= set(finals), f"the final statuses of {during}", seconds=20)
        finally:
            late.loop_stop()
            late.disconnect()
        assert {finals[job_id]["status"] for job_id in during} == {"done"}
        assert {t.split("/")[2] for t in retained} >= set(during)
        assert before not in finals  # published to the broker before its restart, which forgot it
        server.stop()
    finally:
        broker.stop()


# --------------------------------------------------------------------------------------------------- retention


def test_retention_keeps_the_storage_folder_under_its_size_limit_oldest_finished_jobs_first(tmp_path: Path) -> None:
    from cl_ml_tools.service.retention import Retention  # here: a module that older versions lack fails this test only

    layout = Layout(tmp_path)
    layout.prepare()
    store = JobStore(layout, Owner.this_process())
    finished = []
    for _ in range(4):
        job_id = jobs.uuid.uuid4().hex
        store.submit(job_id, "hash", {}, {"name": "a.jpg"})
        (layout.out_dir(job_id)).mkdir(parents=True)
        (layout.out_dir(job_id) / "big.bin").write_bytes(os.urandom(2 << 20))
        store.claim(1, (), (), 1)
        store.finish(job_id, DONE, None)
        finished.append(job_id)
        time.sleep(0.01)  # distinct end times
    waiting = jobs.uuid.uuid4().hex
    store.submit(waiting, "hash", {}, {"name": "a.jpg"})
    layout.job_dir(waiting).mkdir()
    (layout.job_dir(waiting) / "upload.jpg").write_bytes(os.urandom(2 << 20))
    logs = layout.archive / ".snakemake" / "log"
    logs.mkdir(parents=True)
    old_log, new_log = logs / "2020-01-01T000000.snakemake.log", logs / "2026-01-01T000000.snakemake.log"
    old_log.write_text("old run\n")
    new_log.write_text("new run\n")
    week_ago = time.time() - 8 * 24 * 3600
    os.utime(old_log, (week_ago, week_ago))

    # 10 MiB of files and the database; a limit of 7 MiB leaves room for two of the four finished jobs.
    deleted = Retention(layout, store, hours=168, max_bytes=7 << 20).sweep()
    assert deleted == finished[:2]
    assert store.known([*finished, waiting]) == {*finished[2:], waiting}
    assert not layout.job_dir(finished[0]).exists() and layout.job_dir(finished[3]).exists()
    assert not old_log.exists() and new_log.exists()
    assert Retention(layout, store, hours=168, max_bytes=7 << 20).sweep() == []
