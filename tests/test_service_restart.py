"""The service under stress, each test with its own real server: SIGKILL and restart (no accepted job lost,
unfinished ones rerun, no runner left behind), gunicorn with two uvicorn workers on one queue, and a job
past its timeout while the MQTT broker is down."""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import make_video
from test_service import PHOTO, VIDEO, Server, processes, service_config, wait_for

BIN = Path(sys.executable).parent


def _status(server: Server, job_id: str) -> dict:
    return server.client.get(f"/jobs/{job_id}/status").json()


def test_sigkill_loses_no_accepted_job_and_reruns_the_unfinished_one(
    tmp_path: Path, launch: Callable[..., Server]
) -> None:
    storage = tmp_path / "storage"
    config = service_config(tmp_path, storage, worker={"max_concurrent_jobs": 1})
    serve = [str(BIN / "cl-ml-tools"), "serve", "--config", str(config), "--port", "{port}"]
    first = launch(tmp_path, config, command=serve)
    slow = first.submit("hls_streaming", VIDEO)["job_id"]
    queued = [first.submit("hash", PHOTO)["job_id"] for _ in range(4)] + [first.submit("exif", PHOTO)["job_id"]]
    wait_for(lambda: _status(first, slow)["status"] == "running", "the first job to start", every=0.02)
    early = first.client.get(f"/jobs/{queued[0]}/results")
    assert early.status_code == 409 and early.json()["error"] == "not_finished"

    first.kill()
    # The runner dies with its server (PR_SET_PDEATHSIG), so nothing of the killed server runs on.
    wait_for(lambda: processes(storage) == [], "the killed server's runner to end", seconds=20)

    second = launch(tmp_path, config)  # plain uvicorn this time, same storage
    results = {job_id: second.result(job_id) for job_id in [slow, *queued]}
    assert {r["status"] for r in results.values()} == {"ok"}, results
    assert _status(second, slow)["attempts"] == 2  # started before the kill, run again after it
    hashes = [_status(second, job_id) for job_id in queued[:4]]
    assert {s["attempts"] for s in hashes} == {1}
    # Queued hash jobs with equal options were handed to the step together (one call, one start time).
    assert len({s["started_at"] for s in hashes}) < len(hashes)
    assert {results[j]["rows"][0]["sha512"] for j in queued[:4]} == {results[queued[0]]["rows"][0]["sha512"]}
    assert results[slow]["rows"][0]["segment_count"] >= 2

    assert second.stop() in (0, -15) and "Application shutdown complete" in second.log()
    assert processes(storage) == []


def test_gunicorn_with_two_uvicorn_workers_serves_one_queue(tmp_path: Path, launch: Callable[..., Server]) -> None:
    config = service_config(tmp_path, tmp_path / "storage", worker={"max_concurrent_jobs": 2})
    # --no-control-socket: gunicorn 27 otherwise makes one in ~/.gunicorn.
    gunicorn = [str(BIN / "gunicorn"), "-k", "uvicorn_worker.UvicornWorker", "-w", "2", "--no-control-socket"]
    server = launch(tmp_path, config, command=[*gunicorn, "-b", "127.0.0.1:{port}", "cl_ml_tools.master:app"])
    ids = [server.submit(plugin, PHOTO)["job_id"] for plugin in ("exif", "hash") * 4]
    assert all(server.result(job_id)["status"] == "ok" for job_id in ids)
    # Whichever worker answers, the job counts come from the shared queue.
    for _ in range(4):
        text = server.client.get("/metrics").text
        assert 'cl_ml_tools_jobs_finished_total{plugin="exif",state="done"} 4.0' in text
        assert 'cl_ml_tools_jobs_finished_total{plugin="hash",state="done"} 4.0' in text
    assert server.stop() == 0
    assert list(server.home.rglob("*")) == [] and list(server.tmp.rglob("*")) == []


def test_a_job_past_its_timeout_or_whose_runner_dies_gets_an_error_and_a_broker_that_is_down_stops_nothing(
    tmp_path: Path, launch: Callable[..., Server]
) -> None:
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    storage = tmp_path / "storage"
    config = service_config(
        tmp_path,
        storage,
        worker={"max_concurrent_jobs": 1, "job_timeout_seconds": 2},
        # The slowest preset and the largest rendition a client may ask for are the server's.
        hls={"preset": "veryslow", "ladder": [{"height": 720, "video_kbps": 4000}]},
        mqtt={"enabled": True, "broker": f"127.0.0.1:{dead}"},
    )
    server = launch(tmp_path, config)
    video = make_video(tmp_path / "long.mp4", seconds=8, size="1280x720", audio=False)
    ladder = [{"height": 720, "video_kbps": 4000}]
    stuck = server.result(server.submit("hls_streaming", video, preset="veryslow", ladder=ladder)["job_id"])
    assert stuck["status"] == "error" and "did not finish within 2 s" in stuck["error"], stuck
    assert stuck["rows"][0]["status"] == "error"
    # Nothing of the stopped attempt is left: no partial HLS folder, no files in its result.
    assert stuck["files"] == {}
    assert sorted(p.name for p in (storage / "jobs" / stuck["job_id"]).iterdir()) == ["result.json"]
    # The runner was killed with its ffmpeg; the next job gets a fresh runner.
    assert processes(storage, (b"ffmpeg",)) == []
    assert server.result(server.submit("hash", PHOTO)["job_id"])["status"] == "ok"

    # A runner that dies in the middle of a job (as on a decoder crash) costs that job only.
    crashed = server.submit("hls_streaming", video, preset="veryslow", ladder=ladder)["job_id"]
    wait_for(lambda: processes(storage, (b"ffmpeg",)), "ffmpeg to start", seconds=30)
    (runner,) = processes(storage, (b"cl_ml_tools.service.runner",))
    os.kill(runner, signal.SIGKILL)
    result = server.result(crashed)
    assert result["status"] == "error" and "died (killed by SIGKILL)" in result["error"], result
    wait_for(lambda: processes(storage, (b"ffmpeg",)) == [], "its ffmpeg to end", seconds=10)
    assert server.result(server.submit("exif", PHOTO)["job_id"])["status"] == "ok"

    assert server.client.get("/health").json()["mqtt"] == "disconnected"
    assert f"MQTT broker 127.0.0.1:{dead}: cannot connect" in server.log()
    scratch = list((storage / "tmp").iterdir())
    assert len(scratch) == 1 and [p.name for p in scratch[0].iterdir()] == ["config.json"]
    assert server.stop() in (0, -15) and "Application shutdown complete" in server.log()
    assert processes(storage) == []
