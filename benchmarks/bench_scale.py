"""Scale: inventory, DAG, no-op rerun and add-one-file rerun on an archive of a million tiny files.

    .venv/bin/python benchmarks/bench_scale.py --work /tmp/scale --files 1000000

The archive: ``--files`` files of 1 byte each (``x``), 1000 per folder, named ``*.jpg`` so that every step
has them to handle (4 KiB of disk each on ext4: about 4 GB for a million). It is made once and reused.

Measured, each as a separate process where Snakemake is involved (wall seconds):

1. inventory: ``inventory.update_inventory`` on a fresh results directory (writes 1000 shard lists), then
   again with nothing changed (rewrites none).
2. ``snakemake -n`` with every step enabled and nothing done yet: parse, inventory, DAG of all jobs.
3. A finished run, materialised: running ~9000 jobs for real would take hours of interpreter start-ups on
   2 cores and measure nothing about scale, so the script writes every job's output itself, in DAG order (the
   real ``files`` rows; schema-valid placeholder rows for the other steps, one per file; the model records;
   the tables via the real consolidation; empty duplicates and people tables and placeholder report
   pages), leaving the results directory as a finished run leaves it, minus
   Snakemake's per-job metadata records. Then ``snakemake -n`` and a real ``snakemake`` with nothing to do.
4. One file added: ``snakemake -n`` again, and the job counts it schedules.
5. Consolidation at 1e6 rows: ``tables.consolidate`` of the 1000 parts of ``files``.

Models are never run: the config points each model at a small placeholder file (``models:`` overrides).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from cl_ml_tools import models
from cl_ml_tools.data import inventory, tables
from cl_ml_tools.steps import report
from cl_ml_tools.steps.files import files_rows

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
PER_FOLDER = 1000
# In DAG order (hashes reads the thumbnails part), so the materialised outputs have a finished run's mtimes.
SHARD_STEPS = ("files", "thumbnails", "hashes", "exif", "hls", "faces", "face_embeddings", "dino", "clip")


def make_archive(root: Path, n: int) -> None:
    marker = root / ".complete"
    if marker.exists() and int(marker.read_text()) == n:
        return
    shutil.rmtree(root, ignore_errors=True)
    for folder in range(0, n, PER_FOLDER):
        d = root / f"d{folder // PER_FOLDER:04d}"
        d.mkdir(parents=True)
        for i in range(folder, min(n, folder + PER_FOLDER)):
            fd = os.open(d / f"p{i:07d}.jpg", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, b"x")
            os.close(fd)
    marker.write_text(str(n))


def write_config(work: Path, archive: Path, repo: Path = REPO) -> dict:
    """``repo``'s config.yaml with every step on, ``archive`` as input and placeholder model files (the
    scale benchmarks never run a model)."""
    config = yaml.safe_load((repo / "config.yaml").read_text())
    config["inputs"] = {"big": str(archive)}
    config["results"] = str(work / "results")
    placeholders = work / "models"
    placeholders.mkdir(exist_ok=True)
    config["models"] = {}
    for step in ("faces", "face_embeddings", "dino", "clip"):
        model_id = config[step]["model"]
        path = placeholders / models.REGISTRY[model_id].files[0].name
        path.write_bytes(b"placeholder: the scale benchmarks never run a model\n")
        config["models"][model_id] = {"path": str(path)}
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    return config


def snakemake(work: Path, *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--cores", "2", *args],
        cwd=work, capture_output=True, text=True, check=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout + proc.stderr


def job_counts(output: str) -> dict[str, int]:
    if "Job stats:" not in output:
        return {}
    block = output.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", block, re.M) if m[1] != "total"}


def materialise(config: dict) -> float:
    """Write every output of a finished run, in DAG order; returns the seconds it took."""
    start = time.perf_counter()
    results = Path(config["results"])
    for model_id, entry in config["models"].items():
        resolved = models.locate(model_id, {model_id: Path(entry["path"])})
        models.write_record(resolved, results / "models" / f"{model_id}.json")
    shards = inventory.shard_names(inventory.read_layout(results / "inventory"))
    for shard in shards:
        entries = inventory.read_shard_list(results / "inventory" / f"{shard}.jsonl")
        rows = files_rows(entries, shard)
        tables.write_part("files", rows, results / "parts" / "files" / f"{shard}.parquet")
        for step in SHARD_STEPS[1:]:
            placeholder = [tables.error_row(r, "placeholder written by bench_scale.py") for r in rows]
            tables.write_part(step, placeholder, results / "parts" / step / f"{shard}.parquet")
        for folder in ("thumbnails", "faces"):  # the image folders those steps output
            (results / folder / shard).mkdir(parents=True, exist_ok=True)
    for step in SHARD_STEPS:
        parts = [results / "parts" / step / f"{shard}.parquet" for shard in shards]
        tables.consolidate(step, parts, results / "tables" / f"{step}.parquet")
    tables.write_part("duplicates", [], results / "tables" / "duplicates.parquet")
    tables.write_part("people", [], results / "tables" / "people.parquet")
    for page in report.PAGES:  # last: the report reads every table
        (results / "report").mkdir(parents=True, exist_ok=True)
        (results / "report" / page).write_text("placeholder written by bench_scale.py\n")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--files", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    archive = work / "archive"
    start = time.perf_counter()
    make_archive(archive, args.files)
    print(f"archive: {args.files} files of 1 byte ({time.perf_counter() - start:.1f} s to make or check)")
    for extra in archive.glob("added*.jpg"):
        extra.unlink()
    shutil.rmtree(work / "results", ignore_errors=True)
    shutil.rmtree(work / ".snakemake", ignore_errors=True)
    config = write_config(work, archive)
    results = Path(config["results"])

    rows = []
    t = time.perf_counter()
    scan = (config["inputs"], results / "inventory", config["include"], config["exclude"])
    n_shards, rewritten = inventory.update_inventory(*scan, config["sharding"]["shard_size"])
    rows.append(("inventory, first scan (writes every shard list)", time.perf_counter() - t, f"{n_shards} shards"))
    t = time.perf_counter()
    _, rewritten = inventory.update_inventory(*scan, config["sharding"]["shard_size"])
    rows.append(("inventory, nothing changed", time.perf_counter() - t, f"{len(rewritten)} lists rewritten"))
    elapsed, out = snakemake(work, "-n")
    counts = job_counts(out)
    rows.append(("`snakemake -n`, nothing done yet", elapsed, f"{sum(counts.values())} jobs"))
    rows.append(("materialising a finished run (not Snakemake)", materialise(config), ""))
    elapsed, out = snakemake(work, "-n")
    rows.append(("`snakemake -n`, nothing to do", elapsed, "nothing to be done" if "Nothing to be done" in out
                 else f"{job_counts(out)}"))  # fmt: skip
    elapsed, out = snakemake(work)
    rows.append(("`snakemake`, nothing to do (no-op rerun)", elapsed, "nothing to be done" if "Nothing to be done"
                 in out else f"{job_counts(out)}"))  # fmt: skip
    (archive / "added.jpg").write_bytes(b"x")
    elapsed, out = snakemake(work, "-n")
    rows.append(("`snakemake -n` after adding one file", elapsed, str(job_counts(out))))
    t = time.perf_counter()
    parts = sorted((results / "parts" / "files").glob("*.parquet"))
    n = tables.consolidate("files", parts, results / "tables" / "files.parquet")
    rows.append((f"`tables.consolidate` of files ({n:,} rows, {len(parts)} parts)", time.perf_counter() - t, ""))
    (archive / "added.jpg").unlink()

    print("| measurement | s | notes |")
    print("|---|---:|---|")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds:.1f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
