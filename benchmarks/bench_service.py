"""Loopback load test of the service: a real uvicorn on 127.0.0.1, client threads uploading the corpus's
photos (one job per file), each waiting for its job's result.

    python benchmarks/make_corpus.py --out /tmp/bench_corpus --photos 200 --videos 0
    python benchmarks/bench_service.py --corpus /tmp/bench_corpus --work /tmp/bench_service

For each scenario (``hash`` with SHA-512 alone, which is what ``sha512sum`` does; with SHA-512 and MD5, the
default byte hashes; with the defaults, pixel and perceptual hashes included; ``exif``) and each mode
(``closed``: each client waits for its job before sending the next; ``burst``: the clients send every file,
then collect the results) it reports files per second end to end, HTTP requests per second (uploads,
results, status), the p50/p95 of the upload (``POST`` until its 202) and of the job (accepted → finished, by
the server's clock), and the server's CPU per file (its process and its runners'). The reference is
``sha512sum`` over the same files in one process on this machine, and the 120 files/s of ``sha512sum`` on
the machine the targets were set on (docs/performance.md). The client runs on the same machine and costs it
CPU. Every loop is bounded (one job per file, at most three waits of 60 s for each result); the figures also
go to ``WORK/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from bench_steps import machine_info, warm_cache

REPO = Path(__file__).resolve().parents[1]
GUIDE_SHA512SUM_FILES_S = 120.0
BYTES_ONLY = {"pixel": "false", "perceptual": "false", "video": "false"}
SCENARIOS: dict[str, tuple[str, dict[str, str]]] = {
    "hash (sha512 only: what sha512sum does)": ("hash", {**BYTES_ONLY, "bytes": '["sha512"]'}),
    "hash (sha512 + md5)": ("hash", BYTES_ONLY),
    "hash (defaults)": ("hash", {}),
    "exif": ("exif", {}),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(work: Path, corpus: Path, slots: int) -> tuple[subprocess.Popen[bytes], str]:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["inputs"] = {"corpus": str(corpus)}
    config["storage"] = {**config["storage"], "dir": str(work / "storage"), "keep_uploads": False}
    config["worker"] = {**config["worker"], "max_concurrent_jobs": slots}
    config["server"] = {**config["server"], "log_level": "warning"}
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    env = {**os.environ, "CL_ML_TOOLS_CONFIG": str(work / "config.yaml")}
    args = [sys.executable, "-m", "uvicorn", "cl_ml_tools.master:app", "--host", "127.0.0.1", "--port", str(port)]
    log = open(work / "server.log", "ab")  # noqa: SIM115 (the server's stdout for its whole life)
    proc = subprocess.Popen([*args, "--log-level", "warning"], cwd=work, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the server did not start; see {work / 'server.log'}")


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of the children it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(server: int) -> float:
    """The server's CPU time and its runners' (with the exiftool processes they waited for)."""
    children = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == server:
                children.append(int(entry.name))
        except OSError:
            continue
    return cpu_seconds(server) + sum(cpu_seconds(pid) for pid in children)


def upload(client: httpx.Client, plugin: str, options: dict[str, str], path: Path) -> tuple[str, float]:
    """Submit ``path``: (job id, seconds until the 202)."""
    start = time.perf_counter()
    with open(path, "rb") as fh:
        response = client.post(f"/jobs/{plugin}", files={"file": (path.name, fh)}, data=options)
    response.raise_for_status()
    return response.json()["job_id"], time.perf_counter() - start


def finished(client: httpx.Client, job_id: str) -> tuple[int, float]:
    """Wait for the job's result: (HTTP requests made, seconds from its acceptance to its end, by the server's
    clock)."""
    for attempt in range(1, 4):
        result = client.get(f"/jobs/{job_id}/results", params={"wait": 60})
        if result.status_code != 409:
            result.raise_for_status()
            if result.json()["status"] != "ok":
                raise SystemExit(f"job {job_id} failed: {result.json()['error']}")
            status = client.get(f"/jobs/{job_id}/status").json()
            took = datetime.fromisoformat(status["finished_at"]) - datetime.fromisoformat(status["created_at"])
            return attempt + 1, took.total_seconds()
    raise SystemExit(f"job {job_id}: no result after 180 s")


def run(
    url: str, plugin: str, options: dict[str, str], files: Sequence[Path], clients: int, server: int, mode: str
) -> dict[str, Any]:
    """``closed``: each client uploads a file and waits for its result before the next (latency under a steady
    load); ``burst``: the clients upload every file, then collect the results (a bulk import: queued jobs
    are batched)."""
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=120)
        return local.client

    def closed(path: Path) -> tuple[float, int, float]:
        job_id, up = upload(client(), plugin, options, path)
        requests, took = finished(client(), job_id)
        return up, requests + 1, took

    start, cpu = time.perf_counter(), server_cpu_seconds(server)
    with ThreadPoolExecutor(max_workers=clients) as pool:
        if mode == "closed":
            samples = list(pool.map(closed, files))
        else:
            submitted = list(pool.map(lambda path: upload(client(), plugin, options, path), files))
            ends = list(pool.map(lambda s: finished(client(), s[0]), submitted))
            samples = [(up, requests + 1, took) for (_, up), (requests, took) in zip(submitted, ends, strict=True)]
    wall, cpu = time.perf_counter() - start, server_cpu_seconds(server) - cpu
    uploads = sorted(s[0] for s in samples)
    jobs = sorted(s[2] for s in samples)

    def pct(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000

    return {
        "mode": mode,
        "files": len(files),
        "clients": clients,
        "wall_s": wall,
        "files_per_s": len(files) / wall,
        "server_cpu_ms_per_file": cpu / len(files) * 1000,
        "requests_per_s": sum(s[1] for s in samples) / wall,
        "upload_p50_ms": pct(uploads, 50),
        "upload_p95_ms": pct(uploads, 95),
        "job_p50_ms": pct(jobs, 50),
        "job_p95_ms": pct(jobs, 95),
    }


def sha512sum(files: Sequence[Path]) -> tuple[float, float]:
    """``sha512sum`` over the files in one process: (files/s, CPU ms per file)."""
    start, cpu = time.perf_counter(), os.times()
    subprocess.run(["sha512sum", "--", *map(str, files)], check=True, stdout=subprocess.DEVNULL)
    wall, after = time.perf_counter() - start, os.times()
    return len(files) / wall, (
        after.children_user + after.children_system - cpu.children_user - cpu.children_system
    ) / len(files) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="made by make_corpus.py (its photos/ folder)")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (the server's storage)")
    parser.add_argument("--files", type=int, default=200, help="photos per scenario (default 200)")
    parser.add_argument("--clients", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--slots", type=int, default=os.cpu_count() or 2, help="worker.max_concurrent_jobs")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated (default: all)")
    parser.add_argument("--modes", default="closed,burst", help="closed, burst or both (default)")
    args = parser.parse_args(argv)
    files = sorted((args.corpus / "photos").glob("*.jpg"))[: args.files]
    if not files:
        raise SystemExit(f"no photos in {args.corpus / 'photos'}; run benchmarks/make_corpus.py first")
    args.work.mkdir(parents=True, exist_ok=True)
    warm_cache(files)
    reference, reference_cpu = max(sha512sum(files) for _ in range(3))
    proc, url = start_server(args.work, args.corpus, args.slots)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "sha512sum_files_per_s": reference,
        "sha512sum_cpu_ms_per_file": reference_cpu,
        "scenarios": {},
    }
    try:
        for name in args.scenarios.split(","):
            plugin, options = SCENARIOS[name]
            warm = files[: 2 * args.clients]
            run(url, plugin, options, warm, args.clients, proc.pid, "closed")  # runners up, models loaded
            for mode in args.modes.split(","):
                results["scenarios"][f"{name}, {mode}"] = run(url, plugin, options, files, args.clients, proc.pid, mode)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    print(
        f"sha512sum here: {reference:.0f} files/s ({reference_cpu:.1f} CPU ms per file); "
        f"the guide's figure: {GUIDE_SHA512SUM_FILES_S:.0f} files/s"
    )
    print("| scenario | files | clients | files/s | requests/s | upload p50 / p95 ms | job p50 / p95 ms |", end="")
    print(" server CPU ms/file |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results["scenarios"].items():
        print(
            f"| {name} | {r['files']} | {r['clients']} | {r['files_per_s']:.1f} | {r['requests_per_s']:.1f} | "
            f"{r['upload_p50_ms']:.0f} / {r['upload_p95_ms']:.0f} | {r['job_p50_ms']:.0f} / {r['job_p95_ms']:.0f} | "
            f"{r['server_cpu_ms_per_file']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
