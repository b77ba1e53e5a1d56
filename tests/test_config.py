"""The configuration schema: the one home of every default, its model choices taken from the registry, the
steps' Settings built from it, and a bad config.yaml refused by the real snakemake with the setting named."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from conftest import REPO, snakemake, write_config

from cl_ml_tools import models
from cl_ml_tools.data import config
from cl_ml_tools.steps import duplicates, face_embeddings, faces, hashes, hls, people, report, thumbnails

SETTINGS = {
    "hashes": hashes.Settings,
    "thumbnails": thumbnails.Settings,
    "hls": hls.Settings,
    "faces": faces.Settings,
    "face_embeddings": face_embeddings.Settings,
    "report": report.Settings,
    "duplicates": duplicates.Settings,
    "people": people.Settings,
}


def shipped() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_model_choices_come_from_the_registry(monkeypatch) -> None:
    schema = config.schema()["properties"]
    for step in ("faces", "face_embeddings", "dino", "clip"):
        assert schema[step]["properties"]["model"]["enum"] == models.step_models(step)
    assert set(schema["models"]["propertyNames"]["enum"]) == {*models.RUNTIME_KEYS, *models.REGISTRY}
    # A new registry entry is a new choice, without touching the schema file.
    monkeypatch.setitem(
        models.REGISTRY, "dinov2_base", dataclasses.replace(models.REGISTRY["dinov2_small"], id="dinov2_base")
    )
    config._schema.cache_clear()
    try:
        assert "dinov2_base" in config.schema()["properties"]["dino"]["properties"]["model"]["enum"]
    finally:
        monkeypatch.undo()
        config._schema.cache_clear()


@pytest.mark.parametrize("section", SETTINGS)
def test_settings_defaults_are_the_schemas(section: str) -> None:
    """Every field of a step's Settings defaults to the schema's value (converted, e.g. lists to tuples), and
    the shipped config.yaml, validated, builds the same Settings where it repeats a default."""
    cls = SETTINGS[section]
    schema_defaults = config.defaults(section)
    built = cls()
    for field in dataclasses.fields(cls):
        assert field.name in schema_defaults, f"{section}.{field.name} has no default in the schema"
        convert = cls.CONVERT.get(field.name, lambda v: v)
        assert getattr(built, field.name) == convert(schema_defaults[field.name])
    assert cls.from_config(schema_defaults) == built


def test_validation_fills_every_default() -> None:
    given = shipped()
    del given["faces"]["min_score"], given["dino"]
    filled = config.validate(given)
    assert filled["faces"]["min_score"] == 0.5 and filled["dino"]["model"] == "dinov2_small"
    assert filled["sharding"]["shard_size"] == 1000


def test_the_defaults_jobs_fill_in_without_jsonschema_are_jsonschemas() -> None:
    """Jobs fill defaults by a walk of the schema (importing jsonschema costs each job a tenth of a
    CPU-second): for every section, empty or partly given, it fills what jsonschema's validator fills."""
    schema = config.schema()
    for section, sub in schema["properties"].items():
        theirs: dict = {}
        list(config._validator()(sub).iter_errors(theirs))  # fills as it walks; "inputs" may not be empty
        assert config.defaults(section) == theirs, section
    partial = shipped()
    del partial["faces"]["min_score"], partial["dino"], partial["hls"]["ladder"][1]["audio_kbps"]
    partial["models"]["runtime"] = "auto"
    ours = config.fill_defaults(schema, yaml.safe_load(yaml.safe_dump(partial)))
    assert ours == config.validate(partial)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"faces": {"model": "arcface_w600k_mbf"}}, "faces.model: 'arcface_w600k_mbf' is not one of"),
        ({"thumbnails": {"quality": 101}}, "thumbnails.quality: 101 is greater than the maximum"),
        ({"hashes": {"pixl": True}}, "hashes: Additional properties are not allowed ('pixl' was unexpected)"),
        ({"models": {"dinov2_smal": {"path": "x.onnx"}}}, "models: 'dinov2_smal' is not one of"),
    ],
)
def test_a_bad_setting_is_named(change: dict, named: str) -> None:
    given = shipped()
    for section, values in change.items():
        given[section] = {**given.get(section, {}), **values}
    with pytest.raises(config.ConfigError, match=r"^error validating config\.yaml: ") as caught:
        config.validate(given)
    assert named in str(caught.value)


@pytest.mark.e2e
def test_snakemake_stops_on_a_typo_with_the_setting_named(tmp_path: Path) -> None:
    (tmp_path / "archive").mkdir()
    write_config(tmp_path, {"photos": "archive"}, thumbnails={"preview_sise": 512})
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert (
        "thumbnails: Additional properties are not allowed ('preview_sise' was unexpected)" in proc.stdout + proc.stderr
    )
