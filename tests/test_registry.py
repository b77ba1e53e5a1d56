"""The step registry is the one declaration of the steps: the config schema's plugin list agrees with it, and
``cl_ml_tools.plugins.<plugin>.run(path)`` (made from it) gives the rows the pipeline's table has for a file."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import PLACES, comparable, file_row, make_video

from cl_ml_tools import plugins
from cl_ml_tools.data import config, tables
from cl_ml_tools.steps import hls, registry


def test_the_schema_offers_the_registrys_plugins() -> None:
    enabled = config.section_schema("plugins")["properties"]["enabled"]
    offered = sorted([*registry.PLUGINS, "archive"])
    assert sorted(enabled["items"]["enum"]) == sorted(enabled["default"]) == offered


def test_every_plugin_is_a_module_with_run() -> None:
    from cl_ml_tools.plugins import clip_embedding, dino_embedding, face_detection, face_embedding  # noqa: F401

    guide = ["hash", "media_thumbnail", "face_detection", "face_embedding", "dino_embedding", "clip_embedding"]
    assert sorted(registry.PLUGINS) == sorted([*guide, "exif", "hls_streaming", "ocr", "places", "quality"])
    for name in registry.PLUGINS:
        assert callable(getattr(plugins, name).run)


def _same_rows(got: pd.DataFrame, want: pd.DataFrame, skip: set[str] = PLACES) -> None:
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want) > 0
    for g, w in zip(got.to_dict("records"), want.to_dict("records"), strict=True):
        for column in got.columns:
            if column in skip:
                continue
            if column == "raw":  # exiftool's File: tags name the file system's facts (its name, dates)
                g[column] = {k: v for k, v in json.loads(g[column]).items() if not k.startswith("File:")}
                w[column] = {k: v for k, v in json.loads(w[column]).items() if not k.startswith("File:")}
            assert comparable(g[column]) == comparable(w[column]), column


@pytest.mark.parametrize(
    ("plugin", "name"),
    [(p, "astronaut.jpg") for p in registry.PLUGINS if p != "hls_streaming"]
    + [("hash", "clip.mp4"), ("dino_embedding", "clip.mp4"), ("ocr", "metro sign.jpg"), ("quality", "clip.mp4")],
)
def test_run_gives_the_pipeline_tables_rows(sample_run: Path, plugin: str, name: str, tmp_path: Path) -> None:
    """The sample run's config (models, settings) and the same file: its rows in the step's table."""
    step = registry.PLUGINS[plugin].name
    run_config = yaml.safe_load((sample_run / "config.yaml").read_text())
    (path,) = (sample_run / "archive").rglob(name)
    got = getattr(plugins, plugin).run(path, config=run_config, out=tmp_path)
    table = tables.load(step, sample_run / "results")
    want = table[table.path == str(path.resolve())].reset_index(drop=True)
    _same_rows(got, want)


def test_hls_streaming_gives_the_steps_rows(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", seconds=2)
    ladder = [{"height": 240, "video_kbps": 300, "audio_kbps": 64}]
    got = plugins.hls_streaming.run(video, out=tmp_path / "plugin", ladder=ladder, segment_s=1)
    settings = hls.Settings.from_config({**config.defaults("hls"), "ladder": ladder, "segment_s": 1})
    rows = hls.hls_shard([{**file_row(video), "shard": ""}], tmp_path / "step", settings)
    want = tables.frame("hls", rows)
    _same_rows(got, want, PLACES | {"variants"})
