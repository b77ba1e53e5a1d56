"""Reruns inside one shard (issue 26): a full run over one shard, then one added photo, one photo edited in
place, one moved to another folder and ten deleted, each followed by a rerun; CPU and wall seconds of each
rerun against the first run, and a rerun with nothing changed (Snakemake's parse and DAG alone).

    python benchmarks/make_corpus.py --out /tmp/inc_corpus --photos 1000 --videos 0 --size 1024x768
    python benchmarks/bench_incremental.py --corpus /tmp/inc_corpus --work /tmp/inc_work

The corpus's ``photos`` folder is copied into the work directory (the benchmark changes it), the project's
config is used with one shard and the test suite's models: the real BlazeFace files and the stand-in
ONNX graphs of ``tests/standins.py`` for ArcFace, DINOv2 and MobileCLIP. The stand-ins cost a fraction of
the real networks, which makes the first run cheaper and every share below larger than a user sees; give
``--arcface``, ``--dino`` and ``--clip`` (random-weight exports of the real architectures, made as in
``bench_pipeline.py``) to run what a user runs:

    python benchmarks/make_corpus.py --out /tmp/inc_corpus_12mp --photos 1000 --videos 0
    python benchmarks/bench_incremental.py --corpus /tmp/inc_corpus_12mp --work /tmp/inc_work_12mp \\
        --arcface /tmp/w600k_mbf_random.onnx --dino /tmp/dinov2_small_random.onnx \\
        --clip /tmp/mobileclip_s2_image_random.onnx

CPU is that of
every process ``snakemake`` started (``RUSAGE_CHILDREN``), whole-archive steps and the report included; the
per-step columns are the shard jobs' own work from their logs (``steps.work()``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from standins import arcface, blazeface_files, clip_vocab, dinov2, mobileclip_image, mobileclip_text  # noqa: E402

from cl_ml_tools.steps import reuse  # noqa: E402

WORK = re.compile(r"work: start=([\d.]+) end=([\d.]+) cpu=([\d.]+)")


def models(folder: Path, cache: Path, networks: dict[str, Path | None]) -> dict[str, dict[str, str]]:
    """The real BlazeFace files, and for each network its given file (``networks``) or a stand-in."""
    files = blazeface_files(cache)
    files["arcface_w600k_mbf"] = networks["arcface"] or arcface(folder / "arcface_standin.onnx")
    files["dinov2_small"] = networks["dino"] or dinov2(folder / "dinov2_standin.onnx")
    files["mobileclip_s2_image"] = networks["clip"] or mobileclip_image(folder / "mobileclip_image_standin.onnx")
    files["mobileclip_s2_text"] = mobileclip_text(folder / "mobileclip_text", clip_vocab(cache))
    return {model_id: {"path": str(path)} for model_id, path in files.items()}


def cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run(work: Path) -> tuple[float, float]:
    start, before = time.perf_counter(), cpu()
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2"]
    proc = subprocess.run(command, cwd=work, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return time.perf_counter() - start, cpu() - before


def shard_work(results: Path, since: float) -> tuple[float, int, dict[str, tuple[int, int, int]]]:
    """CPU of the shard jobs' own work that ran after ``since``, how many jobs of any rule ran (each leaves
    a log), and each rewritten part's reuse counts."""
    total, jobs = 0.0, 0
    for log in (results / "logs").glob("*/*.log"):
        if log.stat().st_mtime >= since:
            jobs += 1
            if log.name == "0000.log":
                total += sum(float(m[3]) for m in WORK.finditer(log.read_text()))
    counts = {}
    for part in (results / "parts").glob("*/0000.parquet"):
        if part.stat().st_mtime >= since:
            c = json.loads(pq.read_schema(part).metadata[reuse.COUNTS_KEY])
            counts[part.parent.name] = (c["reused"], c.get("moved", 0), c["computed"])
    return total, jobs, counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=REPO / ".cache" / "test-models")
    ap.add_argument("--arcface", type=Path, help="w600k_mbf-shaped ONNX (default: the stand-in)")
    ap.add_argument("--dino", type=Path, help="dinov2_small-shaped ONNX (default: the stand-in)")
    ap.add_argument("--clip", type=Path, help="mobileclip_s2_image-shaped ONNX (default: the stand-in)")
    args = ap.parse_args(argv)
    networks = {name: getattr(args, name) and getattr(args, name).resolve() for name in ("arcface", "dino", "clip")}
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    photos = work / "archive" / "photos"
    shutil.copytree(args.corpus / "photos", photos)
    for f in photos.iterdir():
        f.read_bytes()  # the page cache, so that the numbers are about CPU, not disk
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["inputs"] = {"photos": str(work / "archive")}
    cfg["models"] = models(work / "models", args.cache, networks)
    cfg["sharding"] = {"shards": 1, "shard_size": 1000}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    names = sorted(p.name for p in photos.iterdir())

    def add() -> None:
        """A new photo (new bytes: a copy would be found by content, like a move)."""
        with Image.open(photos / names[0]) as im:
            im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photos / "added.jpg", quality=90)

    def nothing() -> None:
        pass

    def edit() -> None:
        target = photos / names[1]
        st = target.stat()
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one byte of the entropy-coded data: same size, other pixels
        target.write_bytes(bytes(data))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))

    def move() -> None:
        (work / "archive" / "moved").mkdir()
        (photos / names[2]).rename(work / "archive" / "moved" / names[2])

    def delete() -> None:
        for name in names[10:20]:
            (photos / name).unlink()

    rows = []
    started = time.time()
    wall, total = run(work)
    first_work, first_jobs, _ = shard_work(work / "results", started)
    rows.append(("first run", first_jobs, wall, total, first_work, {}))
    changes = (
        ("nothing changed", nothing),
        ("1 added", add),
        ("1 edited in place", edit),
        ("1 moved", move),
        ("10 deleted", delete),
    )
    for label, change in changes:
        change()
        time.sleep(0.01)  # log mtimes after ``started``
        started = time.time()
        wall, total = run(work)
        own, jobs, counts = shard_work(work / "results", started)
        rows.append((label, jobs, wall, total, own, counts))
    base_wall, base_cpu, base_work = rows[0][2], rows[0][3], rows[0][4]
    print(
        "| run | jobs | wall s | CPU s | CPU vs first | shard jobs' work CPU s | vs first "
        "| files reused / moved / computed (per step) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, jobs, wall, total, own, counts in rows:
        reused = {f"{r}/{m}/{c}" for r, m, c in counts.values()}
        print(
            f"| {label} | {jobs} | {wall:.1f} | {total:.1f} | {100 * total / base_cpu:.1f} % | {own:.2f} | "
            f"{100 * own / base_work:.1f} % | {', '.join(sorted(reused)) or '–'} |"
        )
    print(f"(first run: {base_wall:.1f} s wall)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
