"""Text and example search over the tables of a real pipeline run (stand-in models)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLE, TEST_CACHE, snakemake, write_config
from PIL import Image
from standins import clip_vocab
from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from cl_ml_tools import cli, models, search
from cl_ml_tools.data import tables
from cl_ml_tools.models import encoders
from cl_ml_tools.steps import image_embeddings

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


def reference_ids(vocab_gz: Path, text: str) -> np.ndarray:
    """(1, 77) token ids from Hugging Face's CLIPTokenizer, made from open_clip's vocabulary file as open_clip's
    SimpleTokenizer reads it (byte alphabet, the same with "</w>", the first 48 894 merges, the two special
    tokens), then padded with zeros as open_clip's ``tokenize`` pads (Hugging Face's pad is the end token)."""
    with gzip.open(vocab_gz, "rt", encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1 : 49152 - 256 - 2 + 1]]
    alphabet = list(bytes_to_unicode().values())
    words = [*alphabet, *(a + "</w>" for a in alphabet), *("".join(m) for m in merges)]
    words += ["<|startoftext|>", "<|endoftext|>"]
    tokens = CLIPTokenizer(vocab={w: i for i, w in enumerate(words)}, merges=merges)(text)["input_ids"]
    ids = np.zeros((1, 77), np.int64)
    ids[0, : len(tokens)] = tokens
    return ids


def test_text_search_ranks_by_cosine_with_the_text_tower(results: Path, test_models) -> None:
    """The hits against the ranking recomputed without our code: the query's ids from Hugging Face's
    tokenizer (``reference_ids``), the text stand-in run by onnxruntime directly, cosines in numpy with every
    row of the clip table read by pyarrow, a file scored by its best frame."""
    query = "a cat on a sofa"
    folder = test_models["mobileclip_s2_text"]
    hits = search.by_text(results, query, top=3, overrides={"mobileclip_s2_text": folder})
    ids = reference_ids(clip_vocab(TEST_CACHE), query)
    assert ids[0, :7].tolist() == [49406, 320, 2368, 525, 320, 15723, 49407]  # "a", "cat", "on", "a", "sofa"
    session = onnxruntime.InferenceSession(str(folder / "text_model.onnx"), providers=["CPUExecutionProvider"])
    (text,) = session.run(["text_embeds"], {"input_ids": ids})[0]
    clip_rows = pq.read_table(results / "tables" / "clip.parquet").to_pylist()
    scores: dict[str, float] = {}
    for row in clip_rows:
        if row["status"] == "ok":
            score = float(np.dot(row["embedding"], text) / np.linalg.norm(text))
            scores[row["media_id"]] = max(score, scores.get(row["media_id"], -1.0))
    paths = {r["media_id"]: r["path"] for r in pq.read_table(results / "tables" / "files.parquet").to_pylist()}
    best = sorted(scores, key=scores.__getitem__, reverse=True)[:3]
    assert len(scores) >= 5 and [h.path for h in hits] == [paths[m] for m in best]
    assert [h.score for h in hits] == pytest.approx([scores[m] for m in best], abs=1e-5)
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


def dino_table(tmp_path: Path, encoder: encoders.ImageEncoder) -> tuple[Path, list[dict]]:
    """Results with a files and a dino table of three random-texture photos, embedded by ``encoder``."""
    rng = np.random.default_rng(3)
    files = []
    for i in range(3):
        photo = tmp_path / f"p{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize((640, 480)).save(photo)
        files.append({"media_id": f"m{i}", "input": "t", "path": str(photo), "status": "ok", "error": None})
    previews = [{**f, "role": "preview", "frame_index": 0, "timestamp_s": None, "file": f["path"]} for f in files]
    results = tmp_path / "results"
    for name, rows in (("files", files), ("dino", image_embeddings.embed_shard(previews, encoder, batch_size=8))):
        (results / "tables").mkdir(parents=True, exist_ok=True)
        tables.write_parquet(tables.to_arrow(name, rows), results / "tables" / f"{name}.parquet")
    return results, files


def test_like_embeds_an_outside_file_with_the_tables_model(tmp_path: Path, test_models) -> None:
    """A dino table made with ``dino.model: dinov2_small_int8`` (the stand-in under that id): an image from
    outside the archive is embedded with that model, not the fp32 default, which is not even available."""
    int8 = {"dinov2_small_int8": test_models["dinov2_small"]}
    results, files = dino_table(tmp_path, encoders.ImageEncoder(models.locate("dinov2_small_int8", int8)))
    outside = tmp_path / "outside.jpg"
    Image.open(files[1]["path"]).resize((500, 375)).save(outside, quality=85)
    hits = search.by_example(results, outside, top=3, overrides=int8)
    assert hits[0].path == files[1]["path"] and hits[0].score > 0.95


def test_like_accepts_a_table_made_on_another_runtime(tmp_path: Path, test_models) -> None:
    """A dino table made on OpenVINO at bf16 (tag ``…+openvino-bf16``): the same weights, embeddings within
    cosine 0.999 of ONNX Runtime fp32's, so an outside file embedded on ONNX Runtime is compared with it."""
    over = {"dinov2_small": test_models["dinov2_small"]}
    bf16 = models.Choice("openvino", "bf16")
    encoder = encoders.ImageEncoder(models.locate("dinov2_small", over), 2, "cpu", bf16)
    results, files = dino_table(tmp_path, encoder)
    assert pq.read_table(results / "tables" / "dino.parquet").column("model")[0].as_py().endswith("+openvino-bf16")
    outside = tmp_path / "outside.jpg"
    Image.open(files[1]["path"]).resize((500, 375)).save(outside, quality=85)
    hits = search.by_example(results, outside, top=3, overrides=over)
    assert hits[0].path == files[1]["path"] and hits[0].score > 0.95


def _ocr_results(folder: Path, lines: dict[str, list[str]], results: Path | None = None) -> Path:
    """A results folder whose ``ocr`` table holds ``lines`` (path → its text lines; none: read, no text), with
    ``files`` rows for those paths; or ``results``' tables copied, the ocr rows given by its files' names."""
    out = folder / "results"
    if results is not None:
        shutil.copytree(results / "tables", out / "tables", symlinks=False)
        files = pq.read_table(out / "tables" / "files.parquet").to_pylist()
    else:
        files = [{"media_id": f"{i:016x}", "input": "t", "path": p, "status": "ok", "error": None}
                 for i, p in enumerate(lines)]  # fmt: skip
        (out / "tables").mkdir(parents=True)
        tables.write_parquet(tables.to_arrow("files", files), out / "tables" / "files.parquet")
    rows = []
    for f in files:
        name = Path(f["path"]).name if results is not None else f["path"]
        if name not in lines:
            continue
        base = {"media_id": f["media_id"], "input": "t", "path": f["path"], "status": "ok", "error": None}
        texts = lines[name]
        rows += [{**base, "frame_index": 0, "line_index": i, "text": t, "score": 0.9} for i, t in enumerate(texts)]
        rows += [] if texts else [base]
    shutil.rmtree(out / "tables" / "ocr.parquet", ignore_errors=True)
    tables.write_parquet(tables.to_arrow("ocr", rows), out / "tables" / "ocr.parquet")
    return out


def test_one_wrong_letter_is_levenshtein_distance_one() -> None:
    """search's test against rapidfuzz's Levenshtein distance on every pair of short words over a small
    alphabet (substitutions, insertions, deletions, at the ends and inside)."""
    import itertools

    from rapidfuzz.distance import Levenshtein

    alphabet_words = ["".join(p) for n in range(0, 5) for p in itertools.product("abc", repeat=n)]
    for a, b in itertools.product(alphabet_words, repeat=2):
        assert search._within_one_edit(a, b) == (Levenshtein.distance(a, b) <= 1), (a, b)


def test_words_ignore_case_and_accents() -> None:
    assert search.words("Musée du LOUVRE, Île-de-France — Ça") == ["musee", "du", "louvre", "ile", "de", "france", "ca"]
    assert search.words("STRASSE Straße") == ["strasse", "strasse"]  # casefold, as Unicode folds ß


def test_text_search_ranks_files_by_the_share_of_words_they_hold(tmp_path: Path) -> None:
    """Scores recomputed with rapidfuzz: per query word 1 when the file holds it, 0.75 when a word of the file
    is at Levenshtein distance 1 from it (4 letters or more), averaged over the query's words."""
    from rapidfuzz.distance import Levenshtein

    lines = {
        "/a/sign.jpg": ["PALAIS ROYAL", "Musée du Louvre"],
        "/a/papes.jpg": ["Palais des Papes"],
        "/a/mail.jpg": ["Royal Mail"],
        "/a/plain.jpg": [],
    }
    results = _ocr_results(tmp_path, lines)

    def expected(query: str) -> list[tuple[str, float]]:
        scores = {}
        for path, texts in lines.items():
            words = [w.lower().replace("é", "e") for t in texts for w in t.split()]
            per_word = [
                1.0
                if q in words
                else 0.75
                if len(q) >= 4 and any(Levenshtein.distance(q, w) == 1 for w in words)
                else 0
                for q in query.lower().split()
            ]
            if sum(per_word):
                scores[path] = sum(per_word) / len(per_word)
        return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))

    for query in ("palais royal", "PALAIS ROYL", "musee", "palas", "louvre mail", "de", "du", "dy", "nothing"):
        hits = search.by_words(results, query)
        assert sorted(((h.path, h.score) for h in hits), key=lambda kv: (-kv[1], kv[0])) == expected(query), query
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    (best,) = search.by_words(results, "palais royal", top=1)
    assert (best.path, best.score, best.why) == ("/a/sign.jpg", 1.0, "text: PALAIS ROYAL")


def test_search_text_command_says_why(tmp_path: Path, capsys) -> None:
    results = _ocr_results(tmp_path, {"/a/sign.jpg": ["PALAIS ROYAL", "Musée du Louvre"], "/a/plain.jpg": []})
    assert cli.main(["search", "--text", "musée louvre", "--results", str(results)]) == 0
    assert capsys.readouterr().out == "1.0000\t/a/sign.jpg\t-\ttext: Musée du Louvre\n"


def test_search_lists_text_hits_then_clip_hits_each_marked(results: Path, test_models, tmp_path: Path, capsys) -> None:
    """With an ocr table beside the clip table: the file holding the words first, marked text (and clip when
    MobileCLIP ranks it too), then MobileCLIP's own ranking of the others, marked clip."""
    over = {"mobileclip_s2_text": test_models["mobileclip_s2_text"]}
    query = "cafe de flore"
    clip_only = search.by_text(results, query, top=5, overrides=over)
    with_text = _ocr_results(tmp_path, {"coffee.png": ["Café de Flore"], "astronaut.jpg": []}, results)
    hits = search.by_text_and_words(with_text, query, top=5, overrides=over)
    coffee = next(h for h in clip_only if h.path.endswith("coffee.png"))
    assert (Path(hits[0].path).name, hits[0].score, hits[0].why) == ("coffee.png", 1.0, "text: Café de Flore; clip")
    assert hits[0].thumbnail == coffee.thumbnail
    assert [(h.path, h.score, h.why) for h in hits[1:]] == [
        (h.path, h.score, "clip") for h in clip_only if h.media_id != coffee.media_id
    ]
    config = tmp_path / "config.yaml"
    config.write_text(f"models: {{mobileclip_s2_text: {{path: {test_models['mobileclip_s2_text']}}}}}\n")
    assert cli.main(["search", query, "--results", str(with_text), "--top", "2", "--config", str(config)]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    # "clip" joins the text's reason where the file is among MobileCLIP's own top 2 too.
    top2 = [h.media_id for h in search.by_text(results, query, top=2, overrides=over)]
    first = "text: Café de Flore" + ("; clip" if coffee.media_id in top2 else "")
    assert [line[3] for line in lines] == [first, "clip"]
