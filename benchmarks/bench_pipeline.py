"""The whole pipeline, every step enabled, on a corpus of 12 MP photos: photos/s end to end, CPU per step,
the share of wall time outside the steps' own work, and peak memory per job.

    python benchmarks/make_corpus.py --out /tmp/pipe_corpus --photos 200 --heics 10 --videos 3
    python benchmarks/networks.py mobilefacenet /tmp/w600k_mbf_random.onnx
    /tmp/torchvenv/bin/python benchmarks/torch_networks.py dinov2_small /tmp/dinov2_small_random.onnx
    /tmp/torchvenv/bin/python benchmarks/torch_networks.py mobileclip_s2_image /tmp/mobileclip_s2_image_random.onnx
    python benchmarks/bench_pipeline.py --corpus /tmp/pipe_corpus --work /tmp/pipe_work \\
        --arcface /tmp/w600k_mbf_random.onnx --dino /tmp/dinov2_small_random.onnx \\
        --clip /tmp/mobileclip_s2_image_random.onnx

The networks are random-weight copies of the real architectures (speed depends on the graph, not on the
weights); BlazeFace is the real file from the mediapipe 0.10.21 wheel (``--blazeface``, default: the test
suite's download in ``.cache/test-models``). The work directory is wiped; its ``config.yaml`` is the
project's with the corpus's ``photos``, ``heic`` and ``videos`` folders as inputs and those model files, so
sharding, threads and batch sizes are the defaults a user gets. Every corpus file is read once first, so
both the page cache and the numbers are about CPU, not disk.

One ``snakemake --cores N`` (the default profile) runs everything; the whole command is timed, and its CPU
time is that of every process it started. Per step: jobs, wall seconds and the largest peak RSS from
Snakemake's benchmark records (``results/benchmarks/``), and from each job's log the span and CPU seconds of
its own work (``steps.work()``: after the interpreter started and the imports ran, its model load included,
since a job loads its model only when some file is not reused; CPU of all its threads and of the exiftool and
ffmpeg processes it ran). Snakemake's own ``cpu_time`` column is not
used: it samples the process tree and missed a quarter of the CPU of long jobs here. The wall time covered
by no job's work is the overhead (Snakemake's DAG and scheduling, interpreter starts, imports, idle cores
included).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from bench_steps import warm_cache

REPO = Path(__file__).resolve().parents[1]
WORK = re.compile(r"work: start=([0-9.]+) end=([0-9.]+) cpu=([0-9.]+)")


def config(corpus: Path, models: dict[str, Path]) -> dict[str, Any]:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["inputs"] = {name: str(corpus / name) for name in ("photos", "heic", "videos") if (corpus / name).is_dir()}
    cfg["results"] = "results"
    cfg["models"] = {model_id: {"path": str(path)} for model_id, path in models.items()}
    return cfg


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    covered, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        covered += b - max(a, end)
        end = b
    return covered


def read_jobs(results: Path) -> dict[str, list[dict[str, float]]]:
    """Per step, one record per job: Snakemake's benchmark values and the work span from the job's log."""
    jobs: dict[str, list[dict[str, float]]] = defaultdict(list)
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        (row,) = csv.DictReader(tsv.open(), delimiter="\t")
        step = tsv.parent.name
        log = results / "logs" / step / f"{tsv.stem}.log"
        spans = [tuple(map(float, m.groups())) for m in WORK.finditer(log.read_text())] if log.exists() else []
        number = lambda v: float(v) if v not in ("NA", "", None) else 0.0  # noqa: E731
        jobs[step].append(
            {
                "s": number(row["s"]),
                "max_rss": number(row["max_rss"]),
                "work_start": spans[0][0] if spans else 0.0,
                "work_end": spans[0][1] if spans else 0.0,
                "cpu": spans[0][2] if spans else 0.0,
            }
        )
    return jobs


def count_media(results: Path) -> dict[str, int]:
    import pandas as pd

    files = pd.read_parquet(results / "tables" / "files.parquet", columns=["input", "kind", "status"])
    ok = files[files.status == "ok"]
    return {
        "photos": int(((ok.kind == "image") & ok.input.isin(["photos", "heic"])).sum()),
        "videos": int((ok.kind == "video").sum()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--arcface", type=Path, required=True, help="w600k_mbf-shaped ONNX (networks.py)")
    ap.add_argument("--dino", type=Path, required=True, help="dinov2_small-shaped ONNX (torch_networks.py)")
    ap.add_argument("--clip", type=Path, required=True, help="mobileclip_s2_image-shaped ONNX")
    ap.add_argument("--blazeface", type=Path, default=REPO / ".cache" / "test-models")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--dino-int8", action="store_true", help="dino.model dinov2_small_int8: --dino quantised")
    ap.add_argument("--markdown", type=Path, help="also write the tables here")
    ap.add_argument("snakemake_args", nargs="*", help="more snakemake arguments (after --), e.g. --set-threads dino=1")
    args = ap.parse_args(argv)

    models = {
        "face_detection_full_range_sparse": args.blazeface / "face_detection_full_range_sparse.tflite",
        "arcface_w600k_mbf": args.arcface,
        "dinov2_small": args.dino,
        "mobileclip_s2_image": args.clip,
    }
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    cfg = config(args.corpus.resolve(), models)
    if args.dino_int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(args.dino), str(args.work / "dino_int8.onnx"), weight_type=QuantType.QInt8)
        cfg["dino"]["model"] = "dinov2_small_int8"
        cfg["models"]["dinov2_small_int8"] = {"path": str(args.work / "dino_int8.onnx")}
        del cfg["models"]["dinov2_small"]
    (args.work / "config.yaml").write_text(yaml.safe_dump(cfg))
    corpus_bytes, _ = warm_cache(sorted(p for p in args.corpus.rglob("*") if p.is_file()))

    start, cpu0 = time.time(), _children_cpu()
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", str(args.cores)]
    proc = subprocess.run([*command, *args.snakemake_args], cwd=args.work, capture_output=True, text=True, check=False)
    wall, cpu = time.time() - start, _children_cpu() - cpu0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-5000:], sep="\n", file=sys.stderr)
        return proc.returncode

    results = args.work / "results"
    jobs = read_jobs(results)
    media = count_media(results)
    spans = [(j["work_start"], j["work_end"]) for js in jobs.values() for j in js if j["work_end"]]
    covered = union_seconds([(max(a, start), b) for a, b in spans])
    lines = [
        f"Corpus: {media['photos']} photos (12 MP JPEG and HEIC), {media['videos']} videos, "
        f"{corpus_bytes / 1e6:.0f} MB; `snakemake --cores {args.cores} {' '.join(args.snakemake_args)}`, "
        f"every step enabled; dino model {cfg['dino']['model']}.",
        "",
        "| whole run | value |",
        "|---|---:|",
        f"| wall s | {wall:.1f} |",
        f"| photos/s end to end (videos and all steps included) | **{media['photos'] / wall:.2f}** |",
        f"| CPU s (all processes) | {cpu:.1f} |",
        f"| CPU s per photo | {cpu / max(1, media['photos']):.3f} |",
        f"| wall s inside some step's work | {covered:.1f} |",
        f"| overhead: share of wall outside every step's work | **{1 - covered / wall:.1%}** |",
        "",
        "| step | jobs | job wall s | work wall s | CPU s | CPU s per photo | peak RSS MB (largest job) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for step, js in sorted(jobs.items(), key=lambda kv: -sum(j["cpu"] for j in kv[1])):
        step_cpu = sum(j["cpu"] for j in js)
        work = sum(j["work_end"] - j["work_start"] for j in js)
        lines.append(
            f"| {step} | {len(js)} | {sum(j['s'] for j in js):.1f} | {work:.1f} | {step_cpu:.1f} | "
            f"{step_cpu / max(1, media['photos']):.3f} | {max(j['max_rss'] for j in js):.0f} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    (args.work / "bench.json").write_text(json.dumps({"wall": wall, "cpu": cpu, "media": media, "jobs": jobs}))
    return 0


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    sys.exit(main())
