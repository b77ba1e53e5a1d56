"""End to end: the real snakemake CLI on a temporary archive, each table checked against independent
computations (hashlib, exiftool's own JSON, ffprobe, Pillow)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, SAMPLE, SNAKEMAKE, TEST_MODELS, make_audio_only, snakemake, write_config
from PIL import Image, ImageOps
from standins import arcface, dinov2
from test_hls import check_against_references
from test_thumbnails import bomb_png

from cl_ml_tools import models as registry
from cl_ml_tools.data import inventory, tables
from cl_ml_tools.media import fileio, sniff

pytestmark = pytest.mark.e2e

STEPS = ["files", "hashes", "exif", "thumbnails", "hls", "faces", "face_embeddings", "quality", "dino", "clip"]
TABLES = [*STEPS, "duplicates", "people"]


def build_archive(root: Path) -> dict[str, str]:
    """The sample archive plus one of each kind of bad input; returns {relpath: what it is}."""
    shutil.copytree(SAMPLE, root)
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("this is not a photo\n")
    (bad / "random.mp4").write_bytes(os.urandom(50_000))
    bomb_png(bad / "bomb.png", 50_000, 50_000)
    make_audio_only(bad / "no video stream.mp4")
    make_audio_only(bad / "song.m4a")
    shutil.copy(SAMPLE / "2021 holiday" / "astronaut.jpg", root / "ünï cødé photo copy.jpg")
    # A Latin-1 name from an old camera card: not valid UTF-8, so Parquet shows it escaped.
    shutil.copy(SAMPLE / "2021 holiday" / "coffee.png", os.fsencode(root) + b"/caf\xe9.png")
    # Same pixels, other bytes; and a smaller, recompressed copy: a pixel and a near duplicate.
    Image.open(SAMPLE / "2021 holiday" / "coffee.png").save(root / "coffee resaved.png", compress_level=1)
    astronaut = ImageOps.exif_transpose(Image.open(SAMPLE / "2021 holiday" / "astronaut.jpg"))
    astronaut.resize((448, 350)).save(root / "astronaut small.jpg", quality=70)
    return {
        "bad/empty.jpg": "empty file (0 bytes)",
        "bad/text.jpg": "not a decodable image",
        "bad/random.mp4": "ffprobe cannot read",
        "bad/bomb.png": "2,500,000,000 pixels",
        "bad/no video stream.mp4": "no video stream",
        "misc/truncated.jpg": "truncated",
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("e2e")
    bad = build_archive(work / "archive")
    write_config(work, {"photos": "archive"}, sharding={"shards": 3, "shard_size": 1000})
    proc = snakemake(work)
    return work, bad, proc


def load(work: Path, name: str) -> pd.DataFrame:
    return tables.load(name, work / "results")


def real_paths(work: Path) -> dict[str, str]:
    """media_id -> the path as the OS knows it (``path`` is escaped for names that are not UTF-8)."""
    files = load(work, "files")
    return {r.media_id: os.fsdecode(r.raw_path) if pd.notna(r.raw_path) else r.path for r in files.itertuples()}


def rel(df: pd.DataFrame, work: Path) -> pd.Series:
    root = str((work / "archive").resolve()) + "/"
    return df.path.str.removeprefix(root)


def test_every_file_is_listed_once(run) -> None:
    work, _, _ = run
    files = load(work, "files")
    on_disk = sorted(
        fileio.displayable(str(p.relative_to(work / "archive"))) for p in (work / "archive").rglob("*") if p.is_file()
    )
    assert sorted(files.relpath) == on_disk
    assert files.media_id.is_unique and set(files.shard) <= {"0000", "0001", "0002"}
    by = files.set_index("relpath")
    assert by.loc["2021 holiday/astronaut.jpg", ["kind", "format"]].tolist() == ["image", "jpeg"]
    assert by.loc["bad/random.mp4", ["kind", "format"]].tolist() == ["other", "unknown"]
    assert by.loc["bad/song.m4a", "kind"] == "audio"
    root = os.fsencode((work / "archive").resolve()) + b"/"
    for row in files.itertuples():
        # docs/tables.md: the first 64 bits of SHA-256 of input + NUL + relpath (the name's own bytes when
        # they are not UTF-8); the shard is media_id as a number modulo the shard count, in 4 digits.
        name = row.raw_path.removeprefix(root) if pd.notna(row.raw_path) else row.relpath.encode()
        assert row.media_id == hashlib.sha256(b"photos\0" + name).hexdigest()[:16]
        assert row.shard == f"{int(row.media_id, 16) % 3:04d}"
        assert row.size == Path(real_paths(work)[row.media_id]).stat().st_size
    assert files.raw_path.notna().sum() == 1  # the Latin-1 name is among them


def test_hashes_match_hashlib(run) -> None:
    work, _, _ = run
    h = load(work, "hashes")
    assert len(h) == len(load(work, "files"))
    paths = real_paths(work)
    for row in h.itertuples():
        data = Path(paths[row.media_id]).read_bytes()
        assert row.sha512 == hashlib.sha512(data).hexdigest() and row.md5 == hashlib.md5(data).hexdigest()
    by = h.assign(rel=rel(h, work)).set_index("rel")
    assert by.loc["ünï cødé photo copy.jpg", "pixel_sha512"] == by.loc["2021 holiday/astronaut.jpg", "pixel_sha512"]
    assert by.loc["caf\\xe9.png", "pixel_sha512"] == by.loc["2021 holiday/coffee.png", "pixel_sha512"]
    assert pd.notna(by.loc["videos/clip.mp4", "video_sha512"]) and pd.notna(by.loc["videos/clip.mp4", "phash"])


def test_exif_matches_exiftool(run) -> None:
    work, _, _ = run
    ex = load(work, "exif")
    assert len(ex) == len(load(work, "files"))
    paths = real_paths(work)
    for row in ex[ex.status == "ok"].itertuples():
        cmd = ["exiftool", "-j", "-n", "-G", paths[row.media_id]]
        ref = json.loads(subprocess.run(cmd, capture_output=True, check=True).stdout)[0]
        assert row.mime == ref.get("File:MIMEType")
        if "EXIF:Make" in ref:
            assert (row.make, row.model) == (ref["EXIF:Make"], ref["EXIF:Model"])
            if "Composite:GPSLatitude" in ref:
                assert row.gps_latitude == pytest.approx(ref["Composite:GPSLatitude"])
            else:
                assert pd.isna(row.gps_latitude)
    assert str(ex.datetime_original.dtype).startswith("datetime64")


def test_thumbnails_exist_with_the_listed_sizes(run) -> None:
    work, _, _ = run
    th = load(work, "thumbnails")
    ok = th[th.status == "ok"]
    for row in ok.itertuples():
        with Image.open(row.file) as im:
            assert im.size == (row.width, row.height)
            assert max(im.size) <= (256 if row.role == "thumb" else 1024)
    kinds = ok.assign(rel=rel(ok, work)).groupby("rel").role.apply(lambda r: sorted(set(r)))
    assert kinds["2021 holiday/coffee.png"] == ["preview", "thumb"]
    assert kinds["videos/clip.mp4"] == ["poster", "preview", "sheet", "thumb"]
    frames = ok[(rel(ok, work) == "videos/clip.mp4") & (ok.role == "preview")]
    assert sorted(frames.frame_index) == list(range(8))
    assert "misc/notes.txt" not in set(rel(th, work)) and "bad/song.m4a" not in set(rel(th, work))


def test_hls_renditions_play(run) -> None:
    work, _, _ = run
    h = load(work, "hls")
    by = h.assign(rel=rel(h, work)).set_index("rel")
    assert set(by.index) == {"videos/clip.mp4", "videos/portrait.mov", "bad/random.mp4", "bad/no video stream.mp4"}
    for name in ("videos/clip.mp4", "videos/portrait.mov"):
        assert by.loc[name, "status"] == "ok"
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-show_streams", "-of", "json", by.loc[name, "master"]],
            capture_output=True, check=True,
        )  # fmt: skip
        assert any(s["codec_type"] == "video" for s in json.loads(probe.stdout)["streams"])
        check_against_references(by.loc[name], work / "archive" / name)


def test_bad_input_gets_error_rows_and_the_rest_is_intact(run) -> None:
    work, bad, _ = run
    files = load(work, "files")
    belongs = {"hashes": set(files.relpath), "exif": set(files.relpath)}
    kind = {r.relpath: sniff.media_kind(r.kind, r.path) for r in files.itertuples()}
    belongs["thumbnails"] = {p for p, k in kind.items() if k in ("image", "video")}
    belongs["hls"] = {p for p, k in kind.items() if k == "video"}
    for step, members in belongs.items():
        df = load(work, step)
        df = df.assign(rel=rel(df, work))
        assert set(df.rel) == members, step
        errors = df[df.status == "error"].groupby("rel").error.first()
        for path, message in bad.items():
            if path in members and step != "exif":
                assert path in errors.index and message in errors[path], (step, path, errors.get(path))
        good = set(members) - set(bad) - {"bad/song.m4a", "bad/random.mp4"}
        assert (df[df.rel.isin(good)].status == "ok").all(), (step, df[df.rel.isin(good) & (df.status != "ok")])


def test_faces_are_found_and_embedded(run, test_models) -> None:
    work, bad, _ = run
    faces = load(work, "faces").assign(rel=lambda d: rel(d, work))
    found = faces[faces.status == "ok"]
    a = found[found.rel == "2021 holiday/astronaut.jpg"]
    b = found[found.rel == "ünï cødé photo copy.jpg"]
    assert len(a) == 1 and len(b) == 1
    box = ["x", "y", "width", "height", "right_eye_x", "mouth_center_y"]
    np.testing.assert_allclose(a[box].to_numpy(float), b[box].to_numpy(float))
    for crop in found.crop:
        with Image.open(crop) as im:
            assert im.size == (112, 112)
    errors = faces[faces.status == "error"].set_index("rel").error
    for path in ("bad/empty.jpg", "bad/text.jpg", "bad/bomb.png", "misc/truncated.jpg"):
        assert "thumbnails step failed" in errors[path] and bad[path] in errors[path], (path, errors.get(path))

    emb = load(work, "face_embeddings").assign(rel=lambda d: rel(d, work))
    ok = emb[emb.status == "ok"]
    assert len(ok) == len(found) and set(emb[emb.status == "error"].rel) == set(errors.index)
    vectors = {r.rel: np.asarray(r.embedding) for r in ok.itertuples() if r.frame_index == 0}
    assert vectors["2021 holiday/astronaut.jpg"].shape == (512,)
    np.testing.assert_allclose(vectors["2021 holiday/astronaut.jpg"], vectors["ünï cødé photo copy.jpg"], atol=1e-4)
    np.testing.assert_allclose([np.linalg.norm(v) for v in vectors.values()], 1.0, atol=1e-5)
    sha = hashlib.sha256(test_models["arcface_w600k_mbf"].read_bytes()).hexdigest()
    assert set(ok.model) == {f"arcface_w600k_mbf@sha256:{sha}"}


@pytest.mark.parametrize(
    ("model_id", "make", "reruns"),
    [
        ("arcface_w600k_mbf", arcface, {"face_embeddings": 3, "tables": 1, "people": 1, "report": 1}),
        ("dinov2_small", dinov2, {"dino": 3, "tables": 1, "duplicates": 1, "report": 1}),
    ],
)
def test_a_new_model_reruns_only_its_step(run, tmp_path: Path, model_id: str, make, reruns: dict) -> None:
    work, _, _ = run
    other = make(tmp_path / "other.onnx", seed=1)
    models = {**TEST_MODELS, model_id: {"path": str(other)}}
    write_config(work, {"photos": "archive"}, sharding={"shards": 3, "shard_size": 1000}, models=models)
    try:
        counts = job_counts(snakemake(work, "--dry-run").stdout)
    finally:
        write_config(work, {"photos": "archive"}, sharding={"shards": 3, "shard_size": 1000})
    assert counts == {"all": 1, "models": 1, **reruns}, counts


def test_offline_run_finishes_every_step_that_needs_no_model(tmp_path: Path) -> None:
    shutil.copytree(SAMPLE / "2021 holiday", tmp_path / "archive")
    write_config(tmp_path, {"photos": "archive"}, hls={"enabled": False}, models={})
    env = {"CL_ML_TOOLS_MODEL_CACHE": str(tmp_path / "cache"), "CL_ML_TOOLS_OFFLINE": "1"}
    proc = snakemake(tmp_path, check=False, env=env)
    assert proc.returncode != 0
    spec = registry.REGISTRY["face_detection_full_range_sparse"]
    target = tmp_path / "cache" / spec.id / spec.files[0].name
    # Repeated at the very end of the output, where a person looks first.
    tail = proc.stderr[-3000:]
    for text in (spec.files[0].url, spec.files[0].sha256, str(target), "models:"):
        assert text in tail, (text, tail)
    assert "Traceback" not in proc.stderr
    for step in ("files", "hashes", "exif", "thumbnails"):
        assert load(tmp_path, step).media_id.nunique() == 3, step
    assert not (tmp_path / "results" / "tables" / "faces.parquet").exists()


def test_image_embeddings_cover_every_preview_frame(run) -> None:
    work, _, _ = run
    previews = load(work, "thumbnails").query("role == 'preview'")
    for step, dim in (("dino", 384), ("clip", 512)):
        emb = load(work, step)
        ok = emb[emb.status == "ok"]
        frames = set(zip(ok.media_id, ok.frame_index, strict=True))
        assert frames >= set(zip(previews.media_id, previews.frame_index, strict=True)), step
        videos = set(previews[previews.timestamp_s.notna()].media_id)
        assert {m for m, f in frames if f == -1} == videos, step
        vectors = np.stack(ok.embedding.to_numpy())
        assert vectors.shape[1] == dim
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_duplicate_groups(run) -> None:
    work, _, _ = run
    dup = load(work, "duplicates").assign(rel=lambda d: rel(d, work))
    groups = {(k, frozenset(g.rel)) for (k, _), g in dup.groupby(["kind", "group_id"])}
    assert groups == {
        ("exact", frozenset({"2021 holiday/astronaut.jpg", "ünï cødé photo copy.jpg"})),
        ("exact", frozenset({"2021 holiday/coffee.png", "caf\\xe9.png"})),
        ("pixel", frozenset({"2021 holiday/coffee.png", "caf\\xe9.png", "coffee resaved.png"})),
        ("near", frozenset({"2021 holiday/astronaut.jpg", "ünï cødé photo copy.jpg", "astronaut small.jpg"})),
    }, dup[["kind", "group_id", "rel", "phash_distance", "cosine"]]
    near = dup[dup.kind == "near"].set_index("rel")
    assert near.loc["astronaut small.jpg", "phash_distance"] <= 10 and near.loc["astronaut small.jpg", "cosine"] >= 0.95
    # The representative is the largest file: the original or its byte copy, not the small one.
    (representative,) = set(near.representative)
    assert representative in set(near.loc[["2021 holiday/astronaut.jpg", "ünï cødé photo copy.jpg"], "media_id"])


def job_counts(dry_run_output: str) -> dict[str, int]:
    block = dry_run_output.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", block, re.M) if m[1] != "total"}


def test_rerun_with_nothing_changed_runs_nothing(run) -> None:
    work, _, _ = run
    proc = snakemake(work, "--dry-run")
    assert "Nothing to be done" in proc.stdout + proc.stderr


# The jobs a change in one shard reruns: every shard step once, each table, every step over the archive.
ONE_SHARD_RERUN = {
    "all": 1,
    **dict.fromkeys(STEPS, 1),
    "tables": len(STEPS),
    "duplicates": 1,
    "people": 1,
    "events": 1,
    "report": 1,
}


def test_adding_one_file_reruns_one_shard_per_step(run) -> None:
    work, _, _ = run
    parts = {p: p.stat().st_mtime_ns for p in (work / "results" / "parts").rglob("*.parquet")}
    new = work / "archive" / "new photo.png"
    shutil.copy(SAMPLE / "2021 holiday" / "coffee.png", new)
    counts = job_counts(snakemake(work, "--dry-run").stdout)
    assert counts == ONE_SHARD_RERUN, counts
    snakemake(work)
    shard = inventory.shard_names(3)[inventory.shard_index(inventory.media_id("photos", new.name), 3)]
    changed = {p for p, t in parts.items() if p.stat().st_mtime_ns != t}
    assert {p.stem for p in changed} == {shard} and len(changed) == len(STEPS)
    assert "new photo.png" in set(load(work, "files").relpath)
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(snakemake(work, "--dry-run"))


def test_a_file_rewritten_in_place_reruns_its_shard(run) -> None:
    """Rewritten in place (same name, same size) a file changes nothing in its folder: only its own mtime
    tells, so the parse's check that nothing changed must stat every file, not trust the folders."""
    work, _, _ = run
    target = work / "archive" / "misc" / "notes.txt"
    parts = {p: p.stat().st_mtime_ns for p in (work / "results" / "parts").rglob("*.parquet")}
    folder = target.parent.stat().st_mtime_ns
    st = target.stat()
    with open(target, "r+b") as fh:
        fh.write(target.read_bytes()[::-1])
    new_mtime = st.st_mtime_ns + 1_000_000_000  # explicit: the write may share the clock tick of a scan
    os.utime(target, ns=(st.st_atime_ns, new_mtime))
    assert target.parent.stat().st_mtime_ns == folder and target.stat().st_size == st.st_size
    counts = job_counts(snakemake(work, "--dry-run").stdout)
    assert counts == ONE_SHARD_RERUN, counts
    snakemake(work)
    shard = inventory.shard_names(3)[inventory.shard_index(inventory.media_id("photos", "misc/notes.txt"), 3)]
    changed = {p for p, t in parts.items() if p.stat().st_mtime_ns != t}
    assert {p.stem for p in changed} == {shard} and len(changed) == len(STEPS)
    files = load(work, "files").set_index("relpath")
    assert files.loc["misc/notes.txt", "mtime"].value == new_mtime
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(snakemake(work, "--dry-run"))


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    """A table without the columns that name files under the results directory, in a fixed order."""
    drop = [c for c in ("file", "crop", "master", "variants", "mtime", "raw") if c in df.columns]
    keys = [c for c in ("media_id", "role", "frame_index", "face_index") if c in df.columns]
    df = df.drop(columns=drop).sort_values(keys).reset_index(drop=True)
    # Categories list the values present, which differ between runs of different archives.
    df = df.astype({c: "string" for c in df.columns if isinstance(df[c].dtype, pd.CategoricalDtype)})
    if "embedding" in df:
        df["embedding"] = df.embedding.map(lambda v: None if v is None else tuple(v))
    return df


KILL_SHARDING = {"shards": 4, "shard_size": 1000}
# Where a run is SIGKILLed: as soon as this appears under its results directory.
KILL_POINTS = {
    "consolidation": "tables/*.parquet",
    "thumbnails": "parts/thumbnails/*.parquet",
    "faces": "parts/faces/*.parquet",
    "dino": "parts/dino/*.parquet",
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sample archive and the results of one run that nobody killed."""
    work = tmp_path_factory.mktemp("uninterrupted")
    shutil.copytree(SAMPLE, work / "archive")
    write_config(work, {"photos": str(work / "archive")}, sharding=KILL_SHARDING)
    snakemake(work)
    return work / "archive", work / "results"


@pytest.mark.parametrize("point", KILL_POINTS)
def test_killed_run_resumes_to_the_same_tables(tmp_path: Path, uninterrupted, point: str) -> None:
    archive, reference = uninterrupted
    write_config(tmp_path, {"photos": str(archive)}, sharding=KILL_SHARDING)
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--cores", "2"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not list(results.glob(KILL_POINTS[point])):
        time.sleep(0.02)
    # Jobs that have finished: Snakemake writes a job's benchmark record when it ends, and marks the job
    # complete just after; the kill comes a moment later, so those marks are in.
    finished = {p: p.stat().st_mtime_ns for p in (results / "benchmarks").rglob("*.tsv")}
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert finished, "nothing had finished: the kill point is too early to test that work is kept"
    assert not (results / "tables" / "duplicates.parquet").exists(), "kill came too late to test resuming"
    # A hard kill leaves Snakemake's directory lock behind; --unlock is the documented way back.
    snakemake(tmp_path, "--unlock")
    snakemake(tmp_path)
    assert [p for p in results.rglob("*") if ".tmp" in p.name or p.name.endswith(".building")] == []
    assert {p: p.stat().st_mtime_ns for p in finished} == finished, "finished jobs were run again"
    for step in TABLES:
        a = comparable(tables.load(step, results))
        b = comparable(tables.load(step, reference))
        pd.testing.assert_frame_equal(a, b, obj=step)


def test_unreadable_file_gets_error_rows(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copy(SAMPLE / "2021 holiday" / "astronaut.jpg", archive / "ok.jpg")
    locked = archive / "locked.jpg"
    shutil.copy(SAMPLE / "2021 holiday" / "astronaut.jpg", locked)
    locked.chmod(0)
    write_config(tmp_path, {"photos": "archive"}, hls={"enabled": False})
    # root reads anything; dropping the two capabilities that bypass file permissions makes it an ordinary
    # user as far as reading is concerned (setpriv is part of util-linux).
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    proc = subprocess.run(
        [*prefix, str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--cores", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    files = load(tmp_path, "files").set_index("relpath")
    assert files.loc["locked.jpg", "status"] == "error" and "Permission denied" in files.loc["locked.jpg", "error"]
    for step in ("hashes", "exif", "thumbnails"):
        df = load(tmp_path, step).assign(rel=lambda d: d.path.str.rsplit("/", n=1).str[-1])
        assert set(df[df.status == "error"].rel) == {"locked.jpg"}, step
        assert df[df.rel == "locked.jpg"].error.str.contains("ermission denied").all(), (step, df.error.tolist())
        assert (df[df.rel == "ok.jpg"].status == "ok").all(), step


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"thumbnail": {"enabled": True}}, "thumbnail"),  # a misspelt section
        ({"thumbnails": {"thumb_size": "big"}}, "big"),  # a wrong type
    ],
)
def test_config_mistakes_stop_with_a_clear_message(tmp_path: Path, override: dict, message: str) -> None:
    (tmp_path / "archive").mkdir()
    write_config(tmp_path, {"photos": "archive"}, **override)
    proc = snakemake(tmp_path, "--dry-run", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "validating" in out.lower() and message in out, out[-2000:]


def test_a_step_without_the_step_it_reads_is_refused(tmp_path: Path) -> None:
    (tmp_path / "archive").mkdir()
    write_config(tmp_path, {"photos": "archive"}, thumbnails={"enabled": False})
    proc = snakemake(tmp_path, "--dry-run", check=False)
    assert proc.returncode != 0
    assert "faces.enabled needs thumbnails.enabled" in proc.stdout + proc.stderr


def test_tables_of_an_older_hashes_definition_are_recomputed(tmp_path: Path) -> None:
    # The hashes rule as it was before its `version` param, and parts as the code of then wrote them: no
    # version recorded, and (for this palette GIF) another pixel hash, the hash of its palette indices. A plain
    # rerun must recompute them rather than keep them beside new ones.
    old = tmp_path / "old"
    for folder in ("workflow", "envs"):
        shutil.copytree(REPO / folder, old / folder)
    shutil.copy(REPO / "Snakefile", old / "Snakefile")
    rule = old / "workflow" / "rules" / "hashes.smk"
    rule.write_text(rule.read_text().replace('version=tables.VERSIONS["hashes"],', ""))
    work = tmp_path / "work"
    (work / "archive").mkdir(parents=True)
    shutil.copy(SAMPLE / "misc" / "spinner.gif", work / "archive")
    off = {"enabled": False}
    others = (
        "exif", "thumbnails", "hls", "faces", "face_embeddings", "quality", "dino", "clip", "duplicates", "people",
        "events", "report",
    )  # fmt: skip
    write_config(work, {"photos": "archive"}, sharding={"shards": 2, "shard_size": 1000}, **dict.fromkeys(others, off))
    snakemake(work, "-s", str(old / "Snakefile"))  # the last -s wins
    for part in (work / "results" / "parts" / "hashes").glob("*.parquet"):
        written = pq.read_table(part)
        column = written.schema.get_field_index("pixel_sha512")
        stale = [None if h is None else "0" * 128 for h in written.column(column).to_pylist()]
        written = written.set_column(column, "pixel_sha512", pa.array(stale, pa.string()))
        pq.write_table(written.replace_schema_metadata(None), part)
    proc = snakemake(work, "--dry-run")
    assert "Job stats:" in proc.stdout, proc.stdout + proc.stderr  # not "Nothing to be done"
    assert job_counts(proc.stdout) == {"all": 1, "hashes": 2, "tables": 1}, proc.stdout
    assert "Params have changed since last execution" in proc.stdout
    snakemake(work)
    with Image.open(SAMPLE / "misc" / "spinner.gif") as im:
        colours = hashlib.sha512(b"RGB 128x128\n" + np.asarray(im.convert("RGB")).tobytes()).hexdigest()
    assert load(work, "hashes").pixel_sha512.tolist() == [colours]
    parts = sorted((work / "results" / "parts" / "hashes").glob("*.parquet"))
    assert [tables.part_version(pq.read_schema(p)) for p in parts] == [tables.VERSIONS["hashes"]] * 2
