"""CPU time of the quality step per preview frame (one thread, best of five after a warm-up): the thumbnails
step's previews of the sample archive's photos and videos (a video's first two frames), plus the 1024-px
preview of a 12 MP photo (together.jpg enlarged to 4000 x 2254), the size most archive photos' previews have.
Each row splits the time into decoding the working image and computing the measures:

    .venv/bin/python benchmarks/bench_quality.py
"""

import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cl_ml_tools import plugins
from cl_ml_tools.steps import quality

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "archive"
MEDIA = [*sorted((SAMPLE / "2021 holiday").iterdir()), *sorted((SAMPLE / "2023 reunion").iterdir())]
MEDIA += [SAMPLE / "misc" / "rocket.heic", SAMPLE / "misc" / "spinner.gif", *sorted((SAMPLE / "texts").iterdir())]
MEDIA += sorted((SAMPLE / "videos").iterdir())


def best_cpu_ms(fn, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times) * 1000


with tempfile.TemporaryDirectory() as tmp:
    large = Path(tmp) / "large.jpg"
    with Image.open(SAMPLE / "2023 reunion" / "together.jpg") as photo:
        photo.convert("RGB").resize((4000, 2254), Image.Resampling.BICUBIC).save(large, quality=90)
    for path in [*MEDIA, large]:
        thumbnails = plugins.media_thumbnail.run(path, out=Path(tmp) / path.stem)
        previews = thumbnails[(thumbnails.role == "preview") & (thumbnails.frame_index <= 1)]
        for preview in previews.to_dict("records"):
            quality.measure_frame(preview)  # warm-up
            image = quality.working_image(preview["file"])
            rgb = np.asarray(image)
            decode = best_cpu_ms(lambda p=preview: quality.working_image(p["file"]))
            measures = best_cpu_ms(lambda rgb=rgb: quality.measures(rgb))
            total = best_cpu_ms(lambda p=preview: quality.measure_frame(p))
            size = f"{preview['width']}x{preview['height']}"
            work = f"{image.width}x{image.height}"
            print(
                f"{path.name:22s} f{preview['frame_index']} preview {size:9s} working {work:8s} "
                f"decode {decode:4.1f} ms  measures {measures:4.1f} ms  total {total:4.1f} CPU-ms"
            )
