"""Shared fixtures: the sample archive, media made on the fly with the real tools, and a runner for the
real ``snakemake`` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from standins import arcface, blazeface_files, clip_vocab, dinov2, mobileclip_image, mobileclip_text

from cl_ml_tools.media import sniff

if TYPE_CHECKING:
    from test_service import Server

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "archive"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
# Downloads the tests need (the mediapipe wheel holding the real BlazeFace files) are kept here between runs.
TEST_CACHE = Path(os.environ.get("CL_ML_TOOLS_TEST_CACHE", REPO / ".cache" / "test-models"))
# Model files every snakemake run of the tests uses (config `models:`), set by the session fixture below.
TEST_MODELS: dict[str, dict[str, str]] = {}


@pytest.fixture(scope="session", autouse=True)
def test_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The real BlazeFace networks and stand-ins for the ONNX models, also written into TEST_MODELS so that
    ``write_config`` points every test run at them instead of the (unreachable) model hosts."""
    files = blazeface_files(TEST_CACHE)
    folder = tmp_path_factory.mktemp("models")
    files["arcface_w600k_mbf"] = arcface(folder / "arcface_standin.onnx")
    files["dinov2_small"] = dinov2(folder / "dinov2_standin.onnx")
    files["mobileclip_s2_image"] = mobileclip_image(folder / "mobileclip_image_standin.onnx")
    files["mobileclip_s2_text"] = mobileclip_text(folder / "mobileclip_text", clip_vocab(TEST_CACHE))
    TEST_MODELS.update({model_id: {"path": str(path)} for model_id, path in files.items()})
    return files


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline on the sample archive plus a byte copy of the astronaut photo (HLS off, to save time;
    people.max_distance suited to the stand-in ArcFace; Grace Hopper named), shared by the report and analysis
    tests."""
    import shutil

    work = tmp_path_factory.mktemp("sample")
    shutil.copytree(SAMPLE, work / "archive")
    shutil.copy(SAMPLE / "2021 holiday" / "astronaut.jpg", work / "archive" / "astronaut copy.jpg")
    # One person named (docs/analysis.md shows the name): Grace Hopper, by her portrait's one face.
    (work / "names.yaml").write_text('Grace: ["2023 reunion/hopper.jpg#0"]\n')
    people = {"max_distance": 0.35, "names": str(work / "names.yaml")}
    # The input is named as in the repository's config.yaml: media_id hashes the name, and docs/analysis.md
    # shows what this run prints (ties broken by media_id included).
    write_config(
        work,
        {"sample": "archive"},
        hls={"enabled": False},
        people=people,
        ocr={"enabled": True},
        places={"enabled": True},
    )
    snakemake(work)
    return work


# Columns that name where a row's file lives: a service job's or a notebook's upload and outputs are elsewhere
# than the pipeline's, by design.
PLACES = {"media_id", "input", "path", "file", "crop", "master"}


def comparable(value: Any) -> Any:
    """A table cell as two runs of a step agree on it: floats (embeddings) to 5 decimals, NaN and NaT as
    None."""
    if isinstance(value, np.ndarray | list) and len(value) and isinstance(value[0], float | np.floating):
        return np.round(np.asarray(value, dtype=np.float64), 5).tolist()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if value is pd.NA or value is pd.NaT or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def make_video(path: Path, *, seconds: float = 2, size: str = "320x240", audio: bool = True) -> Path:
    args = ["-f", "lavfi", "-i", f"testsrc2=s={size}:r=25:d={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=330:duration={seconds}"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "25"]
    args += ["-c:a", "aac", "-b:a", "32k", "-shortest"] if audio else []
    ffmpeg(*args, str(path))
    return path


def make_still_first(path: Path) -> tuple[Path, Path]:
    """A Matroska file whose first video stream is a one-frame MJPEG still (red, 640x480: larger than the
    film) ahead of a 3 s 320x240 H.264 film copied from the returned MP4; returns both."""
    film = make_video(path.with_suffix(".film.mp4"), seconds=3, audio=False)
    still = path.with_suffix(".still.png")
    ffmpeg("-f", "lavfi", "-i", "color=red:s=640x480", "-frames:v", "1", str(still))
    ffmpeg("-i", str(film), "-i", str(still), "-map", "1", "-map", "0:v", "-c:v:0", "mjpeg", "-c:v:1", "copy",
           str(path))  # fmt: skip
    return path, film


def make_interlaced(path: Path) -> tuple[Path, np.ndarray]:
    """Two seconds of PAL-sized interlaced H.264 (top field first, 25 frames/s) woven by ffmpeg's ``interlace``
    filter from 50 progressive frames/s of a bright square crossing a grey field 12 px a frame; returns the clip
    and the progressive frames, the truth: frame k's top field is progressive frame 2k, its bottom 2k + 1."""
    width, height = 720, 576
    frames = np.full((50 * 2, height, width), 60, np.uint8)
    for n, frame in enumerate(frames):
        x = n * 12 % (width - 160)
        frame[200:376, x : x + 160] = 220
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{width}x{height}",
         "-r", "50", "-i", "-", "-vf", "interlace=scan=tff:lowpass=off,format=yuv420p", "-c:v", "libx264",
         "-crf", "10", "-flags", "+ildct+ilme", "-x264-params", "tff=1", "-r", "25", str(path)],
        input=frames.tobytes(), check=True,
    )  # fmt: skip
    return path, frames


def combing(picture: np.ndarray) -> float:
    """Mean absolute difference of each line from the mean of its neighbours: large where lines alternate
    between two moments, as in a woven interlaced frame."""
    rows = picture.astype(np.float64)
    return float(np.abs(rows[1:-1] - (rows[:-2] + rows[2:]) / 2).mean())


def exiftool_names_adobe_rgb(path: Path) -> bool:
    """exiftool's reading of a photo's colour space: the DCF option file's Interoperability index (R03) with
    ColorSpace "uncalibrated", or ColorSpace 2."""
    read = subprocess.run(["exiftool", "-j", "-n", "-InteropIndex", "-ColorSpace", str(path)], capture_output=True,
                          check=True).stdout  # fmt: skip
    [tags] = json.loads(read)
    return tags.get("ColorSpace") == 2 or (tags.get("ColorSpace") == 0xFFFF and tags.get("InteropIndex") == "R03")


def adobe_rgb_to_srgb(rgb: np.ndarray) -> np.ndarray:
    """Adobe RGB (1998) values (0-255) as sRGB values (0-255, unrounded), converted by colour-science, out of
    gamut colours clipped in linear light."""
    import colour

    linear = colour.RGB_to_RGB(np.asarray(rgb) / 255, "Adobe RGB (1998)", "sRGB", apply_cctf_decoding=True)
    return colour.cctf_encoding(np.clip(linear, 0, 1), "sRGB") * 255


def make_audio_only(path: Path, seconds: float = 1) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac", "-b:a", "32k", str(path))
    return path


def make_photo(path: Path, size: tuple[int, int] = (640, 480), **save: object) -> Path:
    """A photo-like image (smooth gradients plus detail) so decoders and hashes have real work."""
    w, h = size
    base = Image.radial_gradient("L").resize((w, h))
    image = Image.merge(
        "RGB", (base, Image.linear_gradient("L").resize((w, h)), base.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    )
    image.save(path, **save)
    return path


def file_row(path: Path, media_id: str = "00000000000000aa") -> dict:
    """A row of the ``files`` table for ``path``, sniffed the way the files step does it."""
    kind, fmt = sniff.sniff(path)
    return {"media_id": media_id, "input": "t", "path": str(path), "status": "ok", "kind": kind, "format": fmt}


def write_config(workdir: Path, inputs: dict[str, str], **overrides: object) -> Path:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["inputs"] = inputs
    config["models"] = dict(TEST_MODELS)
    # OCR costs up to half a second of CPU per preview frame (real PP-OCR networks, no stand-in): on only where
    # a test asks for it. Places, cheap, is off for the same tests' sake: they count the jobs and tables of the
    # steps that were there before it.
    config["ocr"] = {**config["ocr"], "enabled": False}
    config["places"] = {**config["places"], "enabled": False}
    for key, value in overrides.items():
        if isinstance(value, dict) and key != "models":
            config[key] = {**config.get(key, {}), **value}
        else:
            config[key] = value
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real snakemake CLI on the project's Snakefile from ``workdir`` (where config.yaml is)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--cores", "2", *args],
        cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_dng(path: Path, width: int = 256, height: int = 192) -> Path:
    """A real (if tiny) DNG: an RGGB Bayer mosaic of a horizontal ramp with the DNG tags LibRaw needs,
    written by tifffile. It has no embedded preview, so readers must demosaic it."""
    import numpy as np
    import tifffile

    ramp = np.tile(np.linspace(0, 4000, width), (height, 1)).astype(np.uint16)
    tags = [
        (271, "s", 0, "Test", True),  # Make
        (272, "s", 0, "DNG", True),  # Model
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, "s", 0, "Test DNG", True),  # UniqueCameraModel
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern: RGGB
        (50717, "I", 1, 4095, True),  # WhiteLevel
        (50721, "2i", 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1), True),  # ColorMatrix1
        (50778, "H", 1, 21, True),  # CalibrationIlluminant1: D65
        (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True),  # AsShotNeutral
    ]
    tifffile.imwrite(path, ramp, photometric=32803, subfiletype=0, extratags=tags)  # 32803: CFA
    return path


@pytest.fixture
def launch() -> Iterator[Callable[..., Server]]:
    """Start a server that is killed after the test if the test did not stop it (a failed assertion)."""
    from test_service import Server  # the service tests' own helper; imported here only when a test asks

    started: list[Server] = []

    def start(*args: Any, **kwargs: Any) -> Server:
        started.append(Server(*args, **kwargs).start())
        return started[-1]

    yield start
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()
