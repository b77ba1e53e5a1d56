"""The runtime and precision each network runs at (models.runtime, models.precision): the config, explicit and
measured (auto) choices, the ``model`` tag, and embeddings at each runtime and precision against ONNX Runtime's
fp32 on the sample photos' previews. The towers are stand-ins with random weights (tests/standins.py): they
check the code path and the numerical closeness of the runtimes on these graphs, never a real model's."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, SAMPLE, TEST_MODELS, file_row, snakemake, write_config
from standins import arcface, dinov2, mobileclip_image

from cl_ml_tools import models
from cl_ml_tools.data import config as config_module
from cl_ml_tools.models import choose, encoders
from cl_ml_tools.models.registry import Choice, ModelError
from cl_ml_tools.steps import image_embeddings, thumbnails

STANDINS = {"dinov2_small": dinov2, "mobileclip_s2_image": mobileclip_image, "arcface_w600k_mbf": arcface}
CHOICES = [Choice("onnxruntime", "fp32"), Choice("openvino", "fp32"), Choice("openvino", "bf16")]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def networks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("standins")
    return {model_id: make(folder / f"{model_id}.onnx") for model_id, make in STANDINS.items()}


def resolved(networks: dict[str, Path], model_id: str) -> models.Resolved:
    return models.locate(model_id, {model_id: networks[model_id]})


def loader(networks: dict[str, Path], **runtime) -> models.Loader:
    return models.Loader(lambda model_id: resolved(networks, model_id), models.Runtime(**runtime), threads=2)


@pytest.fixture(scope="module")
def previews(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The thumbnails step's previews of the sample photos (real photographs, 451×300 to 1024×577)."""
    photos = sorted(SAMPLE.rglob("*.jpg"))[:6]
    files = [file_row(path, media_id=f"{i:016x}") for i, path in enumerate(photos)]
    rows = thumbnails.thumbnail_shard(files, tmp_path_factory.mktemp("previews"), thumbnails.Settings())
    return [row for row in rows if row["status"] == "ok" and row.get("role") == "preview"]


def test_config_runtime_and_precision() -> None:
    assert models.runtime_from_config({}) == models.Runtime("cpu", 256, "onnxruntime", {})
    section = {"runtime": "auto", "precision": {"dinov2_small": "bf16"}, "dinov2_small": {"path": "/m/d.onnx"}}
    runtime = models.runtime_from_config({"models": section})
    assert runtime.runtime == "auto" and runtime.precision == {"dinov2_small": "bf16"}
    assert models.overrides_from_config({"models": section}) == {"dinov2_small": Path("/m/d.onnx")}
    with pytest.raises(ModelError, match=r"'models\.runtime' must be one of auto, onnxruntime, openvino"):
        models.runtime_from_config({"models": {"runtime": "tensorrt"}})
    with pytest.raises(ModelError, match="precision can be set for arcface_w600k_mbf"):
        models.runtime_from_config({"models": {"precision": {"mobileclip_s2_text": "bf16"}}})
    with pytest.raises(ModelError, match="must be one of fp32, bf16, not 'fp8'"):
        models.runtime_from_config({"models": {"precision": {"dinov2_small": "fp8"}}})
    # The schema refuses the same, by the registry's ids.
    shipped = yaml.safe_load((REPO / "config.yaml").read_text())
    assert config_module.validate(dict(shipped))["models"]["runtime"] == "onnxruntime"
    given = {**shipped, "models": {"runtime": "openvino", "precision": {"dinov2_small": "bf16"}}}
    assert config_module.validate(given)["models"]["precision"] == {"dinov2_small": "bf16"}
    for bad in ({"runtime": "fast"}, {"precision": {"dinov2_small": "int4"}}, {"precision": {"nope": "bf16"}}):
        with pytest.raises(config_module.ConfigError, match="models"):
            config_module.validate({**shipped, "models": bad})


def test_explicit_runtime_and_the_model_tag(networks: dict[str, Path], cache: Path) -> None:
    base = resolved(networks, "dinov2_small").tag
    plain = loader(networks).load(encoders.ImageEncoder, "dinov2_small")
    assert plain.resolved.tag == base and plain.choice == Choice()
    ov = loader(networks, runtime="openvino").load(encoders.ImageEncoder, "dinov2_small")
    assert ov.resolved.tag == base + "+openvino-fp32"
    bf16 = loader(networks, runtime="openvino", precision={"dinov2_small": "bf16"})
    assert bf16.load(encoders.ImageEncoder, "dinov2_small").resolved.tag == base + "+openvino-bf16"
    # On a GPU (device: cuda) ONNX Runtime runs the towers whatever the runtime setting.
    on_gpu = models.Runtime(device="cuda", runtime="openvino", precision={"dinov2_small": "bf16"})
    assert choose.choose(resolved(networks, "dinov2_small"), on_gpu, 2) == Choice()
    with pytest.raises(ModelError, match="bf16, which ONNX Runtime does not run"):
        loader(networks, precision={"dinov2_small": "bf16"}).load(encoders.ImageEncoder, "dinov2_small")


def test_what_the_rules_params_record_decides_the_choice(networks: dict[str, Path], cache: Path) -> None:
    """The params (and so the reuse fingerprint) name the runtime and precision: two configs whose choice
    differs must differ there, or a part would mix rows of both (cuda with openvino bf16 once read as
    openvino bf16 on the CPU)."""
    seen: dict[tuple[str, str], Choice] = {}
    for model_id in networks:
        for device in ("cpu", "cuda"):
            for runtime in ("onnxruntime", "openvino"):
                for precision in (None, "fp32", "bf16"):
                    if runtime == "onnxruntime" and precision == "bf16" and device == "cpu":
                        continue  # refused: see test_explicit_runtime_and_the_model_tag
                    config = models.Runtime(
                        device=device, runtime=runtime, precision={model_id: precision} if precision else {}
                    )
                    choice = choose.choose(resolved(networks, model_id), config, 2)
                    key = (model_id, config.decided(model_id))
                    assert seen.setdefault(key, choice) == choice, (key, device, runtime, precision)
    assert models.Runtime().decided("dinov2_small") == "onnxruntime default"  # the value older runs recorded
    assert models.Runtime(runtime="openvino").decided("mobileclip_s2_text") == "onnxruntime default"


def test_the_model_column_records_runtime_and_precision(networks: dict[str, Path], cache: Path, previews) -> None:
    encoder = loader(networks, runtime="openvino", precision={"dinov2_small": "bf16"}).load(
        encoders.ImageEncoder, "dinov2_small"
    )
    rows = image_embeddings.embed_shard(previews, encoder, batch_size=4)
    sha = resolved(networks, "dinov2_small").sha256
    assert {r["model"] for r in rows} == {f"dinov2_small@sha256:{sha}+openvino-bf16"}


def test_auto_measures_once_and_reuses_the_cached_choice(
    networks: dict[str, Path], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = choose.measure

    def counted(*args):
        calls.append(args[1])
        return real(*args)

    monkeypatch.setattr(choose, "measure", counted)
    target = resolved(networks, "arcface_w600k_mbf")
    first = choose.choose(target, models.Runtime(runtime="auto"), 2)
    assert len(calls) == 1 and calls[0][0] == Choice() and Choice("openvino", "fp32") in calls[0]
    (saved,) = (cache / "optimized" / "runtime-choice").glob("arcface_w600k_mbf-*.json")
    record = json.loads(saved.read_text())
    assert Choice(**record["choice"]) == first
    assert all(row["min_cosine"] >= choose.MIN_COSINE for row in record["measured"])
    # A cached measurement is what later loads use, whatever it picked; none measures again.
    record["choice"] = {"runtime": "openvino", "precision": "fp32"}
    saved.write_text(json.dumps(record))
    model = loader(networks, runtime="auto").load(encoders.ArcFace, "arcface_w600k_mbf")
    assert model.resolved.tag.endswith("+openvino-fp32") and len(calls) == 1
    # Another thread count is another key: measured again.
    choose.choose(target, models.Runtime(runtime="auto"), 1)
    assert len(calls) == 2


def test_auto_never_picks_a_candidate_below_the_cosine_floor(
    networks: dict[str, Path], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A candidate twice as fast whose embeddings drift below cosine 0.999 is not picked."""
    target = resolved(networks, "dinov2_small")
    fast_but_off = Choice("openvino", "bf16")

    def network(resolved, threads, device, choice):
        model = models.OnnxModel(resolved, threads, device, Choice())
        if choice == fast_but_off:
            drift = np.random.default_rng(0).normal(size=384).astype(np.float32)
            model.run = lambda batch, run=model.run: run(batch) + 0.2 * drift * np.abs(run(batch)).mean()
        return model

    monkeypatch.setattr(choose, "OnnxModel", network)
    result = choose.measure(target, [Choice(), fast_but_off], 2)
    assert result["measured"][1]["min_cosine"] < choose.MIN_COSINE
    assert result["choice"] == vars(Choice())


@pytest.mark.parametrize("model_id", list(STANDINS))
def test_every_runtime_and_precision_keeps_cosine_to_fp32_on_real_previews(
    networks: dict[str, Path], cache: Path, previews, model_id: str
) -> None:
    """ONNX Runtime at fp32 is the reference; OpenVINO at fp32 and bf16 must stay within cosine 0.999 of it on
    the sample photos' previews (ArcFace: their centre 112×112 crops, standing in for aligned faces)."""
    target = resolved(networks, model_id)
    if model_id.startswith("arcface"):
        recipe = target.spec.image_input
        assert recipe is not None
        batch = encoders.preprocess_crops(np.stack([_centre_crop(p["file"]) for p in previews]), recipe)
    else:
        prepare = encoders.preprocessing(model_id)
        batch = np.stack([encoders.load(p["file"], prepare) for p in previews])
    out = {c: models.OnnxModel(target, 2, "cpu", c).embed_inputs(batch) for c in CHOICES}
    for choice in CHOICES[1:]:
        cosines = np.sum(out[choice] * out[CHOICES[0]], axis=1)
        print(model_id, choice.variant, np.round(cosines, 6).tolist())
        assert cosines.min() >= 0.999, (choice, cosines)


def _centre_crop(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        square = encoders.center_crop(encoders.resize_shortest_edge(image.convert("RGB"), 112, Image.BICUBIC), 112)
        return np.asarray(square)


def test_openvino_missing_is_a_clear_error(
    networks: dict[str, Path], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(ModelError, match=r"models.runtime is openvino, but OpenVINO is not installed \(pip install"):
        loader(networks, runtime="openvino").load(encoders.ImageEncoder, "dinov2_small")
    # auto without OpenVINO has one candidate: ONNX Runtime, nothing measured.
    assert choose.choose(resolved(networks, "dinov2_small"), models.Runtime(runtime="auto"), 2) == Choice()
    assert not (cache / "optimized" / "runtime-choice").exists()


@pytest.mark.e2e
def test_the_workflow_runs_the_configured_runtime(tmp_path: Path) -> None:
    """Through the real snakemake: ``models.runtime`` and ``models.precision`` reach the jobs, and the dino
    rows say what made them; the clip rows, with no precision set, are OpenVINO fp32."""
    shutil.copytree(SAMPLE / "2021 holiday", tmp_path / "archive")
    off = {"enabled": False}
    runtime = {"runtime": "openvino", "precision": {"dinov2_small": "bf16"}}
    write_config(
        tmp_path, {"photos": "archive"}, models={**TEST_MODELS, **runtime},
        hls=off, faces=off, face_embeddings=off, people=off, duplicates=off, report=off,
    )  # fmt: skip
    snakemake(tmp_path)
    for step, suffix in (("dino", "+openvino-bf16"), ("clip", "+openvino-fp32")):
        table = pq.read_table(tmp_path / "results" / "tables" / f"{step}.parquet").to_pylist()
        ok = [row for row in table if row["status"] == "ok"]
        assert ok and all(row["model"].endswith(suffix) for row in ok), {row["model"] for row in ok}
    # Another runtime or precision makes other embeddings: the steps that run the model run again.
    write_config(
        tmp_path, {"photos": "archive"}, models={**TEST_MODELS, "runtime": "openvino"},
        hls=off, faces=off, face_embeddings=off, people=off, duplicates=off, report=off,
    )  # fmt: skip
    planned = snakemake(tmp_path, "--dry-run").stdout
    assert re.search(r"^dino\s+1\s*$", planned, re.M) and not re.search(r"^clip\s", planned, re.M), planned
