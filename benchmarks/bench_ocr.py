"""CPU and wall time of the ocr step's engine per preview frame, one ONNX Runtime thread, best of three after
a warm-up, with the cheap first pass (``probe_size``, the schema's default) and without it (``probe_size: 0``),
both in the same process. The previews are the thumbnails step's (1024 px), made first in a temporary folder
from the files or folders given (default: the sample archive's pictures and the photos of
benchmarks/data/ocr/):

    .venv/bin/python benchmarks/bench_ocr.py                       # photos with and without text
    .venv/bin/python benchmarks/bench_ocr.py /tmp/corpus/photos    # 12 MP photos (make_corpus.py)
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cl_ml_tools import models, plugins
from cl_ml_tools.data.config import defaults
from cl_ml_tools.steps import ocr

REPO = Path(__file__).resolve().parents[1]
PICTURES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".gif", ".tif", ".tiff"}


def timed(reader: ocr.Reader, file: str) -> tuple[float, float, int]:
    """CPU and wall seconds of the best of three reads, and the number of lines read."""
    runs = []
    for _ in range(3):
        c, w = time.process_time(), time.perf_counter()
        lines = reader.read(file)
        runs.append((time.process_time() - c, time.perf_counter() - w))
    cpu, wall = min(runs)
    return cpu, wall, len(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("inputs", nargs="*", type=Path)
    args = parser.parse_args()
    inputs = args.inputs or [REPO / "examples" / "archive", REPO / "benchmarks" / "data" / "ocr" / "photos"]
    files = sorted(f for i in inputs for f in ([i] if i.is_file() else i.rglob("*")) if f.suffix.lower() in PICTURES)
    base = defaults("ocr")
    readers = {
        "probe": ocr.Reader(models.locate(base["model"]), ocr.Settings.from_config(base), threads=1),
        "no probe": ocr.Reader(
            models.locate(base["model"]), ocr.Settings.from_config({**base, "probe_size": 0}), threads=1
        ),
    }
    cpu: dict[str, list[float]] = {name: [] for name in readers}
    with tempfile.TemporaryDirectory() as tmp:
        for n, file in enumerate(files):
            thumbnails = plugins.media_thumbnail.run(file, out=Path(tmp) / str(n))
            previews = thumbnails[(thumbnails.role == "preview") & (thumbnails.status == "ok")]
            if previews.empty:
                print(f"{file.name}: no preview", file=sys.stderr)
                continue
            row = previews.iloc[0]
            if n == 0:
                for reader in readers.values():
                    reader.read(row.file)  # warm-up
            cells = []
            for name, reader in readers.items():
                c, w, lines = timed(reader, row.file)
                cpu[name].append(c)
                cells.append(f"{name}: lines={lines:2d} cpu={c * 1000:4.0f} ms wall={w * 1000:5.0f} ms")
            print(f"{file.name:26s} {row.width}x{row.height:<5d} " + " | ".join(cells))
    for name, values in cpu.items():
        print(
            f"{name}: median {statistics.median(values) * 1000:.0f} CPU-ms, mean {statistics.mean(values) * 1000:.0f}"
        )


if __name__ == "__main__":
    main()
