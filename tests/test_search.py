"""Text and example search over the tables of a real pipeline run (stand-in models)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE, snakemake, write_config
from PIL import Image

from cl_ml_tools import cli, clip, embeddings, models, search, tables

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("search")
    shutil.copytree(SAMPLE / "2021 holiday", work / "archive")
    shutil.copytree(SAMPLE / "videos", work / "archive" / "videos")
    write_config(work, {"photos": "archive"}, hls={"enabled": False}, faces={"enabled": False},
                 face_embeddings={"enabled": False}, people={"enabled": False})  # fmt: skip
    snakemake(work)
    return work / "results"


def test_text_search_ranks_by_cosine_with_the_text_tower(results: Path, test_models, capsys) -> None:
    over = {"mobileclip_s2_text": test_models["mobileclip_s2_text"]}
    hits = search.by_text(results, "a cat on a sofa", top=3, overrides=over)
    text = clip.TextEncoder(models.locate("mobileclip_s2_text", over)).embed(["a cat on a sofa"])[0]
    table = tables.load("clip", results)
    files = tables.load("files", results).set_index("media_id").path
    best = (
        table.assign(score=[float(np.dot(e, text)) for e in table.embedding])
        .groupby("media_id")
        .score.max()
        .sort_values(ascending=False)
    )
    assert [h.path for h in hits] == [files[m] for m in best.index[:3]]
    assert [h.score for h in hits] == pytest.approx(best.iloc[:3].tolist(), abs=1e-5)
    assert all(h.thumbnail and Path(h.thumbnail).is_file() for h in hits)


def test_search_command_prints_path_score_and_thumbnail(results: Path, test_models, tmp_path: Path, capsys) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"models: {{mobileclip_s2_text: {{path: {test_models['mobileclip_s2_text']}}}}}\n")
    code = cli.main(["search", "a dog on a beach", "--results", str(results), "--top", "2", "--config", str(config)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 2
    score, path, thumb = lines[0].split("\t")
    assert -1 <= float(score) <= 1 and Path(path).is_file() and Path(thumb).is_file()


def test_like_finds_the_archive_copy_of_a_file_first(results: Path, test_models, tmp_path: Path) -> None:
    over = {"dinov2_small": test_models["dinov2_small"]}
    inside = sorted((results.parent / "archive").glob("*.png"))[0]
    hits = search.by_example(results, inside, top=3, overrides=over)
    assert inside.name not in [Path(h.path).name for h in hits]  # the file itself is not its own match
    outside = tmp_path / "copy.jpg"
    Image.open(inside).convert("RGB").resize((300, 200)).save(outside, quality=80)
    hits = search.by_example(results, outside, top=3, overrides=over)
    assert Path(hits[0].path) == inside.resolve() and hits[0].score > 0.95


def test_like_refuses_a_different_model(results: Path, tmp_path: Path) -> None:
    from standins import dinov2

    other = dinov2(tmp_path / "other.onnx", seed=5)
    photo = tmp_path / "x.jpg"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(photo)
    with pytest.raises(search.SearchError, match="cannot be compared"):
        search.by_example(results, photo, overrides={"dinov2_small": other})


def test_search_without_tables_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(search.SearchError, match="clip"):
        search.by_text(tmp_path, "anything")


def test_like_embeds_an_outside_file_with_the_tables_model(tmp_path: Path, test_models) -> None:
    """A dino table made with ``dino.model: dinov2_small_int8`` (the stand-in under that id): an image from
    outside the archive is embedded with that model, not the fp32 default, which is not even available."""
    int8 = {"dinov2_small_int8": test_models["dinov2_small"]}
    rng = np.random.default_rng(3)
    files = []
    for i in range(3):
        photo = tmp_path / f"p{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize((640, 480)).save(photo)
        files.append({"media_id": f"m{i}", "input": "t", "path": str(photo), "status": "ok", "error": None})
    previews = [{**f, "role": "preview", "frame_index": 0, "timestamp_s": None, "file": f["path"]} for f in files]
    encoder = embeddings.ImageEncoder(models.locate("dinov2_small_int8", int8))
    results = tmp_path / "results"
    for name, rows in (("files", files), ("dino", embeddings.embed_shard(previews, encoder, batch_size=8))):
        (results / "tables").mkdir(parents=True, exist_ok=True)
        tables.write_parquet(tables.to_arrow(name, rows), results / "tables" / f"{name}.parquet")
    outside = tmp_path / "outside.jpg"
    Image.open(files[1]["path"]).resize((500, 375)).save(outside, quality=85)
    hits = search.by_example(results, outside, top=3, overrides=int8)
    assert hits[0].path == files[1]["path"] and hits[0].score > 0.95
