"""The ocr step with the real PP-OCR networks of the rapidocr wheel: its lines against the library's own engine
run directly on the same preview, known words drawn with a real font, the pins against the installed files,
and bad input."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, SAMPLE, make_photo
from PIL import Image, ImageDraw, ImageFont

from cl_ml_tools import models, plugins
from cl_ml_tools.steps import ocr

SIGN = SAMPLE / "texts" / "metro sign.jpg"  # 900 x 600 once turned upright (stored sideways, Orientation 6)
PAGE = SAMPLE / "texts" / "phototest.tif"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
# Real word crops of public scene-text benchmarks, with their labels (benchmarks/data/ocr/truth.json)
CROPS = REPO / "benchmarks" / "data" / "ocr" / "crops"
# The library reads the same bytes with the same settings (our threads aside): its boxes must be ours.
BOX_TOLERANCE_PX = 0.5


@pytest.fixture(scope="module", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty model cache: the step's networks must come from the installed rapidocr package."""
    cache = tmp_path_factory.mktemp("model-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(models.CACHE_ENV, str(cache))
        yield cache


def test_the_registry_pins_the_wheels_networks(model_cache: Path) -> None:
    """Each file's pin and size against hashlib over the file the installed rapidocr package holds, and the
    copy the cache made of it."""
    spec = models.spec_of("ppocr_v6_small")
    assert models.cache_state(spec.id)[0] == "installed"
    package = Path(importlib.util.find_spec("rapidocr").origin).parent
    resolved = models.locate(spec.id)
    for f in spec.files:
        installed = package / f.member.removeprefix("rapidocr/")
        assert installed.stat().st_size == f.size
        assert hashlib.sha256(installed.read_bytes()).hexdigest() == f.sha256
        assert resolved.paths[f.name].read_bytes() == installed.read_bytes()
        assert resolved.paths[f.name].is_relative_to(model_cache)
    assert models.cache_state(spec.id)[0] == "verified"


def _preview_and_lines(photo: Path, out: Path) -> tuple[dict, pd.DataFrame]:
    """The thumbnails step's preview of ``photo`` and the ocr step's rows for it, as the pipeline makes them."""
    thumbnails = plugins.media_thumbnail.run(photo, out=out / "thumbnails")
    (preview,) = thumbnails[thumbnails.role == "preview"].to_dict("records")
    return preview, plugins.ocr.run(photo, out=out / "ocr")


@pytest.mark.parametrize("photo", [SIGN, PAGE], ids=["sign", "page"])
def test_lines_are_the_librarys_on_the_same_preview(photo: Path, tmp_path: Path) -> None:
    """rapidocr's ``RapidOCR()`` with its own defaults (the wheel's networks, min score 0.5) on the preview
    file: the same texts in the same order, and boxes that are the library's quadrilaterals' bounds scaled
    from the preview to the oriented original, within ``BOX_TOLERANCE_PX``."""
    from rapidocr import RapidOCR

    preview, rows = _preview_and_lines(photo, tmp_path)
    reference = RapidOCR(params={"Global.log_level": "error"})(preview["file"])
    assert reference.txts, "the library finds text on the sample"
    # Every line it reads on these two holds a letter (the step drops lines of symbols alone).
    assert all(any(c.isalnum() for c in text) for text in reference.txts)
    assert rows.text.tolist() == list(reference.txts)
    with Image.open(preview["file"]) as image:
        scale = np.array([preview["source_width"] / image.width, preview["source_height"] / image.height])
    quads = np.asarray(reference.boxes) * scale
    want = np.column_stack([quads.min(axis=1), quads.max(axis=1) - quads.min(axis=1)])
    got = rows[["x", "y", "width", "height"]].to_numpy(dtype=np.float64)
    assert np.abs(got - want).max() <= BOX_TOLERANCE_PX
    assert rows.score.to_numpy() == pytest.approx(np.asarray(reference.scores), abs=1e-3)
    assert (rows.line_index.tolist(), set(rows.frame_index)) == (list(range(len(rows))), {0})
    assert (rows.status == "ok").all()
    assert (rows.model == f"ppocr_v6_small@sha256:{models.identity('ppocr_v6_small')}").all()


def test_the_sign_stored_sideways_is_read_upright_in_the_oriented_pictures_pixels(tmp_path: Path) -> None:
    """make_archive.py pasted the plate at x 200-670, y 180-380 of the upright 900 x 600 picture (then stored
    it turned 90°): both lines lie inside it, in the oriented picture's pixels, normalised by its size."""
    _, rows = _preview_and_lines(SIGN, tmp_path)
    assert rows.text.tolist() == ["PALAIS ROYAL", "Musée du Louvre"]
    assert (rows.x >= 200).all() and (rows.x + rows.width <= 670).all()
    assert (rows.y >= 180).all() and (rows.y + rows.height <= 380).all()
    assert rows.x_norm.to_numpy() == pytest.approx(rows.x.to_numpy() / 900, rel=1e-5)
    assert rows.height_norm.to_numpy() == pytest.approx(rows.height.to_numpy() / 600, rel=1e-5)


def test_known_words_drawn_on_a_large_photo_are_found_where_they_were_drawn(tmp_path: Path) -> None:
    """Words drawn with DejaVu Sans Bold on a 2400 x 1600 photo (its preview is scaled down 2.3 times): each
    is read exactly, its box within 1 % of the picture's width (24 px) of Pillow's own ``textbbox`` for it. The
    detector grows its boxes around the glyphs (the DB detector's unclip ratio): 11-16 px here."""
    photo = make_photo(tmp_path / "large.png", (2400, 1600))
    image = Image.open(photo).convert("RGB")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, 120)
    drawn = {"HOTEL DE VILLE": (200, 300), "Boulangerie 1921": (300, 1000)}
    boxes = {}
    for text, at in drawn.items():
        draw.rectangle(draw.textbbox(at, text, font=font), fill=(250, 250, 240))  # a plate, so the text reads
        draw.text(at, text, fill=(10, 10, 10), font=font)
        boxes[text] = draw.textbbox(at, text, font=font)
    image.save(photo)
    rows = plugins.ocr.run(photo, out=tmp_path / "out")
    assert sorted(rows.text) == sorted(drawn)
    for row in rows.to_dict("records"):
        x0, y0, x1, y1 = boxes[row["text"]]
        got = (row["x"], row["y"], row["x"] + row["width"], row["y"] + row["height"])
        assert np.abs(np.array(got) - (x0, y0, x1, y1)).max() < 0.01 * 2400, row["text"]


def test_a_photo_without_text_is_one_ok_row_without_a_line(tmp_path: Path) -> None:
    rows = plugins.ocr.run(make_photo(tmp_path / "plain.jpg"), out=tmp_path / "out")
    assert len(rows) == 1 and rows.status[0] == "ok" and pd.isna(rows.error[0])
    assert rows[["frame_index", "line_index", "text", "score", "x"]].isna().all(axis=None)


def test_a_file_the_decoder_refuses_is_an_error_row(tmp_path: Path) -> None:
    bad = tmp_path / "truncated.jpg"
    shutil.copy(SAMPLE / "misc" / "truncated.jpg", bad)
    rows = plugins.ocr.run(bad, out=tmp_path / "out")
    assert len(rows) == 1 and rows.status[0] == "error"
    assert rows.error[0].startswith("no preview frame to read text on: the thumbnails step failed")


def test_lines_of_symbols_alone_are_dropped(tmp_path: Path) -> None:
    """Asterisks drawn alone on a plate: the library reads them as a line; the step keeps no line of them."""
    from rapidocr import RapidOCR

    photo = make_photo(tmp_path / "stars.png", (800, 600))
    image = Image.open(photo).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle((80, 180, 720, 420), fill=(250, 250, 240))
    draw.text((120, 230), "*** +++ ***", fill=(10, 10, 10), font=ImageFont.truetype(FONT, 90))
    image.save(photo)
    read = RapidOCR(params={"Global.log_level": "error"})(str(photo)).txts or ()
    assert read and not any(c.isalnum() for text in read for c in text), read
    rows = plugins.ocr.run(photo, out=tmp_path / "out")
    assert len(rows) == 1 and rows.text.isna().all() and rows.status[0] == "ok"


def test_max_lines_keeps_the_first_lines_in_reading_order(tmp_path: Path) -> None:
    rows = plugins.ocr.run(PAGE, out=tmp_path / "out", max_lines=3)
    assert rows.text.tolist() == [
        "This is a lot of 12 point text to test the",
        "ocr code and see if it works on all types",
        "of file format.",
    ]


def test_the_settings_reach_the_engine() -> None:
    settings = ocr.Settings.from_config({"model": "ppocr_v6_small", "min_score": 0.7, "max_lines": 5, "batch_size": 3})
    with models.Loader.from_cache({}, threads=2) as loader:
        reader = ocr.Reader(loader.resolved("ppocr_v6_small"), settings, threads=2)
    config = reader.engine.cfg
    assert config.Global.text_score == 0.7 and config.Rec.rec_batch_num == 3
    assert config.EngineConfig.onnxruntime.intra_op_num_threads == 2
    assert Path(config.Det.model_path).is_relative_to(models.cache_dir())
    probe = reader.probe.cfg
    assert (probe.Det.limit_side_len, probe.Det.limit_type, probe.Det.model_path) == (320, "max", config.Det.model_path)


@pytest.mark.parametrize(
    ("crop", "word"), [("demo_7.png", "underground"), ("demo_3.png", "London"), ("demo_8.jpg", "RONALDO")]
)
def test_a_tight_word_crop_the_detector_finds_nothing_on_is_read_whole(crop: str, word: str, tmp_path: Path) -> None:
    """Word crops of clovaai/deep-text-recognition-benchmark's demo, labelled in its README: rapidocr's
    ``RapidOCR()`` with its defaults reads nothing on them (its detector finds no line); the step reads the
    label, its box the whole picture."""
    from rapidocr import RapidOCR

    assert RapidOCR(params={"Global.log_level": "error"})(str(CROPS / crop)).txts is None
    rows = plugins.ocr.run(CROPS / crop, out=tmp_path / "out")
    assert [str(text) for text in rows.text] == [word]
    with Image.open(CROPS / crop) as image:
        assert rows[["x", "y", "width", "height"]].iloc[0].tolist() == [0, 0, image.width, image.height]
    assert rows.score[0] >= ocr.WHOLE_FRAME_MIN_SCORE


def test_a_photo_the_probe_finds_no_text_box_on_is_not_read_further() -> None:
    """The sample's astronaut (no text): the cheap pass finds no box, so the full pass's detector and the
    recogniser are never loaded (the library loads each network on its first use); without the probe both run
    and read nothing either."""
    settings = ocr.Settings.from_config({"model": "ppocr_v6_small"})
    preview = SAMPLE / "2021 holiday" / "astronaut.jpg"
    with models.Loader.from_cache({}, threads=1) as loader:
        resolved = loader.resolved("ppocr_v6_small")
    reader = ocr.Reader(resolved, settings, threads=1)
    assert reader.read(str(preview)) == []
    assert reader.probe is not None and reader.probe.text_det is not None
    assert (reader.engine.text_det, reader.engine.text_rec) == (None, None)
    unprobed = ocr.Reader(resolved, ocr.Settings.from_config({"model": "ppocr_v6_small", "probe_size": 0}), threads=1)
    assert unprobed.read(str(preview)) == [] and unprobed.engine.text_det is not None


def test_a_video_is_read_frame_by_frame_where_the_text_is_shown(tmp_path: Path) -> None:
    """A 4-second video whose first half shows a sign drawn with a real font and whose second half shows
    none, encoded by the real ffmpeg: the frames the thumbnails step previews (its own rows) are read one
    by one, the sign on each frame before 2 s, no row for those after (the file has text elsewhere)."""
    frames = tmp_path / "frames"
    frames.mkdir()
    font = ImageFont.truetype(FONT, 56)
    for i in range(40):  # 10 frames a second
        image = Image.linear_gradient("L").resize((640, 360)).convert("RGB")
        if i < 20:
            draw = ImageDraw.Draw(image)
            draw.rectangle((60, 130, 580, 230), fill=(250, 250, 240))
            draw.text((90, 150), "PLATFORM 9", fill=(10, 10, 10), font=font)
        image.save(frames / f"{i:03d}.png")
    video = tmp_path / "sign.mp4"
    ffmpeg = ["ffmpeg", "-v", "error", "-framerate", "10", "-i", str(frames / "%03d.png")]
    subprocess.run([*ffmpeg, "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video)], check=True)
    previews = plugins.media_thumbnail.run(video, out=tmp_path / "thumbs")
    previews = previews[previews.role == "preview"].sort_values("frame_index")
    rows = plugins.ocr.run(video, out=tmp_path / "out")
    assert set(rows.frame_index) <= set(previews.frame_index)  # a frame without text has no row
    assert len(previews) == 8
    assert (previews.timestamp_s < 1.9).sum() >= 3 and (previews.timestamp_s > 2.1).sum() >= 3
    for frame in previews.itertuples():
        lines = rows[rows.frame_index == frame.frame_index]
        assert (lines.timestamp_s == frame.timestamp_s).all()
        read = sorted(lines.text.dropna())
        if frame.timestamp_s < 1.9:
            assert read == ["PLATFORM 9"], frame.timestamp_s
        elif frame.timestamp_s > 2.1:
            assert read == [], frame.timestamp_s
