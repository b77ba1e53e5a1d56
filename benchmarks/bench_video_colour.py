"""What HDR tone mapping and deinterlacing cost in the video steps: each clip against its own reference in
the same run, on the same content.

    .venv/bin/python benchmarks/bench_video_colour.py [--seconds 6] [--repeat 3]

Clips (1920x1080, ffmpeg's testsrc2, made in a temporary folder):

- HLG: 10-bit HEVC tagged BT.2020 / arib-std-b67 (a phone's HDR video), against the same stream re-tagged
  BT.709 (its bitstream's colour description rewritten, nothing re-encoded), which the steps take for SDR:
  the difference is the tone mapping alone.
- 1080i: interlaced H.264 (top field first, 25 frames/s woven from 50p), against the same file with
  ``video.deinterlace_filter`` switched off (the fields shown woven, as before the deinterlacing).

For each: wall time of ``hls.encode`` (the default ladder) and of ``thumbnails.video_thumbnails`` (default
settings), best of ``--repeat``, and the ratio to the reference.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cl_ml_tools.media import video
from cl_ml_tools.steps import hls, thumbnails


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def make_clips(folder: Path, seconds: float) -> dict[str, Path]:
    source = ["-f", "lavfi", "-i", f"testsrc2=s=1920x1080:r=50:d={seconds}"]
    hlg, sdr, interlaced = folder / "hlg.mov", folder / "sdr.mov", folder / "interlaced.mp4"
    ffmpeg(*source, "-r", "25", "-pix_fmt", "yuv420p10le", "-c:v", "libx265", "-preset", "ultrafast",
           "-x265-params", "log-level=error", "-color_primaries", "bt2020", "-color_trc", "arib-std-b67",
           "-colorspace", "bt2020nc", "-tag:v", "hvc1", str(hlg))  # fmt: skip
    ffmpeg("-i", str(hlg), "-c", "copy", "-bsf:v",
           "hevc_metadata=colour_primaries=1:transfer_characteristics=1:matrix_coefficients=1",
           "-color_primaries", "bt709", "-color_trc", "bt709", "-colorspace", "bt709", str(sdr))  # fmt: skip
    ffmpeg(*source, "-vf", "interlace=scan=tff,format=yuv420p", "-c:v", "libx264", "-preset", "ultrafast",
           "-flags", "+ildct+ilme", "-x264-params", "tff=1", "-r", "25", str(interlaced))  # fmt: skip
    return {"hlg": hlg, "sdr": sdr, "interlaced": interlaced}


def best_of(repeat: int, work: Callable[[Path], object]) -> float:
    times = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            work(Path(tmp))
            times.append(time.perf_counter() - start)
    return min(times)


def measure(clip: Path, repeat: int) -> tuple[float, float]:
    row = {"media_id": "0000000000000000", "input": "bench", "path": str(clip), "kind": "video", "status": "ok"}

    def encode(out: Path) -> None:
        [result] = hls.encode(row, out / "hls", hls.Settings())
        assert result["status"] == "ok", result["error"]

    return (best_of(repeat, encode),
            best_of(repeat, lambda out: thumbnails.video_thumbnails(row, out, thumbnails.Settings())))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_video_colour_") as tmp:
        clips = make_clips(Path(tmp), args.seconds)
        results = {"HLG (tone-mapped)": measure(clips["hlg"], args.repeat),
                   "same stream tagged SDR": measure(clips["sdr"], args.repeat),
                   "1080i (deinterlaced)": measure(clips["interlaced"], args.repeat)}  # fmt: skip
        deinterlace = video.deinterlace_filter
        video.deinterlace_filter = lambda info, **kw: ""  # the fields woven, as before
        try:
            results["1080i woven"] = measure(clips["interlaced"], args.repeat)
        finally:
            video.deinterlace_filter = deinterlace
    print(f"{args.seconds:g} s clips, best of {args.repeat}, wall seconds")
    print("| clip | hls | thumbnails |\n|---|---:|---:|")
    for name, (encode, thumbs) in results.items():
        print(f"| {name} | {encode:.2f} | {thumbs:.2f} |")
    for clip, reference in (("HLG (tone-mapped)", "same stream tagged SDR"), ("1080i (deinterlaced)", "1080i woven")):
        ratios = [a / b for a, b in zip(results[clip], results[reference], strict=True)]
        print(f"{clip} / {reference}: hls {ratios[0]:.2f}x, thumbnails {ratios[1]:.2f}x")


if __name__ == "__main__":
    main()
