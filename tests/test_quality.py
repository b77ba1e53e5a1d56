"""The quality step: each measure against an independent computation (OpenCV's filters and statistics,
Pillow's own luma, scikit-image's wavelet noise estimator) on the same working image, controlled changes of
the sample archive's photos (blur, darken, brighten, add noise, desaturate, flatten) that must move each
measure the right way on every photo, the rows per preview frame, and the report's two pages."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE
from PIL import Image, ImageEnhance, ImageFilter
from skimage.restoration import estimate_sigma

from cl_ml_tools import plugins
from cl_ml_tools.data import config, tables
from cl_ml_tools.media import imaging  # noqa: F401  (registers the HEIF opener for rocket.heic)
from cl_ml_tools.steps import quality, report

PHOTOS = sorted(
    p
    for p in SAMPLE.rglob("*")
    if p.suffix in {".jpg", ".webp", ".png", ".heic", ".gif", ".tif"} and "truncated" not in p.name
)
GREY = {"spinner.gif", "phototest.tif"}  # R = G = B: colourfulness 0, which no desaturation can lower


def working(path: Path) -> np.ndarray:
    return np.asarray(quality.working_image(str(path)))


def reference(rgb: np.ndarray) -> dict[str, float]:
    """The documented definitions computed with OpenCV: luma as a 1×3 colour transform, the Laplacian as
    ``cv2.Laplacian`` (ksize 1: the 3×3 4-neighbour kernel, BORDER_REFLECT_101), Immerkær's kernel with
    ``cv2.filter2D`` (its full-neighbourhood pixels kept), statistics with ``cv2.meanStdDev``."""
    y = cv2.transform(rgb.astype(np.float64), np.array([[0.299, 0.587, 0.114]]))
    mean, std = (float(v[0, 0]) for v in cv2.meanStdDev(y))
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    h, w = y.shape
    response = cv2.filter2D(y, cv2.CV_64F, kernel)[1:-1, 1:-1]
    r, g, b = cv2.split(rgb.astype(np.float64))
    (rg_mean, rg_std), (yb_mean, yb_std) = (
        (float(v[0, 0]) for v in cv2.meanStdDev(c)) for c in (r - g, (r + g) / 2 - b)
    )
    return {
        "sharpness": float(cv2.Laplacian(y, cv2.CV_64F, ksize=1).var()),
        "mean_luma": mean / 255,
        "shadows_clipped": cv2.countNonZero((y < 5).astype(np.uint8)) / y.size,
        "highlights_clipped": cv2.countNonZero((y > 250).astype(np.uint8)) / y.size,
        "contrast": std / 255,
        "noise": math.sqrt(math.pi / 2) * float(cv2.norm(response, cv2.NORM_L1)) / (6 * (w - 2) * (h - 2)),
        "colourfulness": math.hypot(rg_std, yb_std) + 0.3 * math.hypot(rg_mean, yb_mean),
    }


@pytest.mark.parametrize("photo", PHOTOS, ids=[p.name for p in PHOTOS])
def test_measures_are_opencvs_on_the_same_working_image(photo: Path) -> None:
    rgb = working(photo)
    got, want = quality.measures(rgb), reference(rgb)
    assert list(got) == list(tables.QUALITY_MEASURES)
    for name in got:
        # float32 luma against OpenCV's float64; a clipped share may differ by a pixel sitting on its level.
        assert got[name] == pytest.approx(want[name], rel=1e-4, abs=2 / rgb[..., 0].size), name


@pytest.mark.parametrize("photo", PHOTOS, ids=[p.name for p in PHOTOS])
def test_luma_is_pillows_rounded_to_levels(photo: Path) -> None:
    """Pillow's convert("L") takes the same Rec. 601 sum, rounded to integers."""
    image = quality.working_image(str(photo))
    assert max(image.size) == min(512, max(Image.open(photo).size))
    luma = quality.luma(np.asarray(image))
    assert np.abs(luma - np.asarray(image.convert("L"), dtype=np.float32)).max() <= 0.51


@pytest.mark.parametrize("factor", [2, 4])
def test_the_working_image_averages_the_pixels_each_one_covers(factor: int, tmp_path: Path) -> None:
    """A JPEG preview ``factor`` times the working size (the thumbnails step's 1024 px previews: 2): each
    working pixel is the mean of a factor × factor block of the full decode, as numpy's block mean and OpenCV's
    INTER_AREA compute it (a reduced JPEG decode, libjpeg's DCT scaling, would be sharper than that)."""
    with Image.open(SAMPLE / "2023 reunion" / "together.jpg") as photo:
        photo.convert("RGB").resize((512 * factor, 288 * factor), Image.Resampling.BICUBIC).save(
            tmp_path / "preview.jpg", quality=85
        )
    got = np.asarray(quality.working_image(str(tmp_path / "preview.jpg")), dtype=np.float64)
    decoded = cv2.cvtColor(cv2.imread(str(tmp_path / "preview.jpg")), cv2.COLOR_BGR2RGB)
    blocks = decoded.astype(np.float64).reshape(288, factor, 512, factor, 3).mean(axis=(1, 3))
    area = cv2.resize(decoded, (512, 288), interpolation=cv2.INTER_AREA)
    assert got.shape == (288, 512, 3)
    # 8 bits (the mean of a 2 × 2 block is a multiple of 0.25: 0.25 off on average once rounded), and Pillow's
    # fixed-point arithmetic puts some pixels a level off.
    assert np.abs(got - blocks).max() <= 1 and np.abs(got - blocks).mean() < 0.4
    assert np.abs(got - area).max() <= 1


@pytest.mark.parametrize("sigma", [2.0, 5.0, 10.0])
def test_noise_recovers_the_sigma_of_added_gaussian_noise_as_scikit_image_does(sigma: float) -> None:
    """On smooth shading plus white Gaussian noise of known σ, Immerkær's estimate and scikit-image's
    wavelet (Donoho's MAD) estimate both find σ within 10 %."""
    rng = np.random.default_rng(23)
    yy, xx = np.mgrid[0:384, 0:512]
    shading = 128 + 60 * np.sin(xx / 90) * np.cos(yy / 70)
    grey = np.clip(np.round(shading + rng.normal(0, sigma, shading.shape)), 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    assert quality.measures(rgb)["noise"] == pytest.approx(sigma, rel=0.1)
    assert estimate_sigma(grey.astype(np.float64)) == pytest.approx(sigma, rel=0.1)


def _noisy(image: Image.Image) -> Image.Image:
    rng = np.random.default_rng(7)
    pixels = np.asarray(image, dtype=np.float64) + rng.normal(0, 8, (image.height, image.width, 1))
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))


# Each controlled change, and how it must move the measures on every photo: -1 down, +1 up (strictly); "<=" and
# ">=" where a measure may already sit at its bound (no clipped pixel to lose, a grey picture's colourfulness).
CHANGES = {
    "blur": (lambda im: im.filter(ImageFilter.GaussianBlur(2)), {"sharpness": -1, "noise": -1}),
    "darken": (
        lambda im: ImageEnhance.Brightness(im).enhance(0.6),
        {"mean_luma": -1, "contrast": -1, "shadows_clipped": ">=", "highlights_clipped": "<="},
    ),
    "brighten": (
        lambda im: ImageEnhance.Brightness(im).enhance(1.5),
        {"mean_luma": +1, "shadows_clipped": "<=", "highlights_clipped": ">="},
    ),
    "add noise": (_noisy, {"noise": +1}),
    "desaturate": (lambda im: ImageEnhance.Color(im).enhance(0.3), {"colourfulness": -1}),
    "flatten": (lambda im: ImageEnhance.Contrast(im).enhance(0.5), {"contrast": -1}),
}


@pytest.mark.parametrize("change", CHANGES)
def test_controlled_changes_move_each_measure_the_right_way_on_every_photo(change: str) -> None:
    apply, moves = CHANGES[change]
    wrong = []
    for photo in PHOTOS:
        image = quality.working_image(str(photo))
        before, after = quality.measures(np.asarray(image)), quality.measures(np.asarray(apply(image)))
        for name, move in moves.items():
            if name == "colourfulness" and photo.name in GREY:
                move = "<="
            b, a = before[name], after[name]
            ok = {-1: a < b, +1: a > b, "<=": a <= b, ">=": a >= b}[move]
            if not ok:
                wrong.append(f"{photo.name}: {name} {b:.4g} -> {a:.4g}")
    assert not wrong, wrong


def test_darkening_clips_shadows_and_brightening_clips_highlights_across_the_archive() -> None:
    """The clipped shares may sit at 0 on a photo and stay there; over the archive each must move."""
    darken, brighten = CHANGES["darken"][0], CHANGES["brighten"][0]
    images = [quality.working_image(str(p)) for p in PHOTOS]
    shadows = [quality.measures(np.asarray(darken(im)))["shadows_clipped"] for im in images]
    highlights = [quality.measures(np.asarray(brighten(im)))["highlights_clipped"] for im in images]
    before = [quality.measures(np.asarray(im)) for im in images]
    assert sum(shadows) > sum(m["shadows_clipped"] for m in before)
    assert sum(highlights) > sum(m["highlights_clipped"] for m in before)


def test_a_video_has_a_row_per_preview_frame(tmp_path: Path) -> None:
    """clip.mp4's eight preview frames, at the thumbnails table's times: its first two are black (the
    sample's fade-in), so flat, dark and colourless; the colour bars after them are sharp and colourful."""
    video = SAMPLE / "videos" / "clip.mp4"
    thumbnails = plugins.media_thumbnail.run(video, out=tmp_path / "t")
    previews = thumbnails[thumbnails.role == "preview"].sort_values("frame_index")
    rows = plugins.quality.run(video, out=tmp_path / "q")
    assert rows.frame_index.tolist() == previews.frame_index.tolist() == list(range(8))
    assert rows.timestamp_s.tolist() == pytest.approx(previews.timestamp_s.tolist())
    assert (rows.width == 320).all() and (rows.height == 240).all()  # smaller than 512: measured as it is
    black, bars = rows[rows.frame_index < 2], rows[rows.frame_index >= 2]
    assert (black.mean_luma < 0.05).all() and (black.sharpness < 1).all() and (black.colourfulness < 1).all()
    assert (bars.sharpness > 100).all() and (bars.colourfulness > 100).all()


def test_a_file_the_decoder_refuses_is_an_error_row(tmp_path: Path) -> None:
    bad = tmp_path / "truncated.jpg"
    shutil.copy(SAMPLE / "misc" / "truncated.jpg", bad)
    rows = plugins.quality.run(bad, out=tmp_path / "out")
    assert len(rows) == 1 and rows.status[0] == "error"
    assert rows.error[0].startswith("no preview frame to measure: the thumbnails step failed")


def _frames(*rows: tuple[str, int, float, float, float, float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A quality table of (media id, frame, sharpness, mean luma, shadows, highlights) and its files."""
    frame = pd.DataFrame(
        rows, columns=["media_id", "frame_index", "sharpness", "mean_luma", "shadows_clipped", "highlights_clipped"]
    )
    frame = frame.assign(status="ok", path=frame.media_id.map(lambda m: f"/a/{m}"))
    files = pd.DataFrame(
        {"media_id": frame.media_id.unique(), "relpath": [f"{m}.jpg" for m in frame.media_id.unique()]}
    )
    return frame, files


def _captions(html: str) -> list[str]:
    return re.findall(r"<figcaption>(.*?)</figcaption>", html)


SETTINGS = report.Settings.from_config(config.defaults("report"))


def test_the_blurry_page_lists_files_blurry_on_every_frame_blurriest_first() -> None:
    quality_table, files = _frames(
        ("soft", 0, 40.0, 0.5, 0, 0),
        ("softer", 0, 12.0, 0.5, 0, 0),
        ("sharp", 0, 900.0, 0.5, 0, 0),
        ("video", 0, 30.0, 0.5, 0, 0),  # one frame sharp: the video is not blurry
        ("video", 1, 300.0, 0.5, 0, 0),
        ("edge", 0, 100.0, 0.5, 0, 0),  # at the threshold: not under it
    )
    html = report.blurry_page(quality_table, files, {}, SETTINGS)
    assert "<title>Blurry: 2</title>" in html
    assert _captions(html) == ["softer.jpg · sharpness 12", "soft.jpg · sharpness 40"]
    fewer = report.Settings.from_config({**config.defaults("report"), "blurry": 1})
    assert len(_captions(report.blurry_page(quality_table, files, {}, fewer))) == 1


def test_the_badly_exposed_page_names_what_is_wrong() -> None:
    quality_table, files = _frames(
        ("night", 0, 500.0, 0.08, 0.6, 0.0),
        ("snow", 0, 500.0, 0.85, 0.0, 0.1),
        ("window", 0, 500.0, 0.55, 0.0, 0.3),
        ("fine", 0, 500.0, 0.45, 0.01, 0.01),
        ("video", 0, 500.0, 0.05, 0.0, 0.0),  # a dark frame, then a good one: not listed
        ("video", 1, 500.0, 0.5, 0.0, 0.0),
    )
    html = report.badly_exposed_page(quality_table, files, {}, SETTINGS)
    assert "<title>Badly exposed: 3</title>" in html
    assert _captions(html) == [
        "night.jpg · dark (mean luma 0.08), 60% black",
        "snow.jpg · bright (mean luma 0.85)",
        "window.jpg · 30% white",
    ]
