"""CPU and wall time of the ocr step's engine per preview frame (a video's first two), one ONNX Runtime
thread, best of three after a warm-up; from the thumbnails table of a run of the sample archive:

    snakemake --cores 2   # or make run: results/tables/thumbnails.parquet
    .venv/bin/python benchmarks/bench_ocr.py
"""

import time

from cl_ml_tools import models
from cl_ml_tools.data import tables
from cl_ml_tools.steps import ocr

t = tables.load("thumbnails", "results")
previews = t[(t.role == "preview") & (t.status == "ok")]
settings = ocr.Settings.from_config({"model": "ppocr_v6_small", "min_score": 0.5, "max_lines": 200, "batch_size": 6})
reader = ocr.Reader(models.locate("ppocr_v6_small"), settings, threads=1)
reader.read(previews.file.iloc[0])  # warm-up
for row in previews.itertuples():
    if row.frame_index > 1:
        continue
    runs = []
    for _ in range(3):
        c, w = time.process_time(), time.perf_counter()
        lines = reader.read(row.file)
        runs.append((time.process_time() - c, time.perf_counter() - w))
    cpu, wall = min(runs)
    name = row.path.rsplit("/", 1)[-1]
    size = f"{row.width}x{row.height}"
    timing = f"cpu={cpu * 1000:4.0f} ms wall={wall * 1000:5.0f} ms"
    print(f"{name:24s} f{row.frame_index} {size:9s} lines={len(lines):2d} {timing}")
