"""Issue 26, end to end with the real snakemake CLI: after adds, edits in place, moves and deletes, every table
equals a run from scratch over the final archive, and a rerun computes only the files that changed (the count
each part records), relinking the images of the rest."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLE, snakemake, write_config
from PIL import Image
from test_workflow import comparable

from cl_ml_tools.data import inventory, tables
from cl_ml_tools.steps import registry, reuse

pytestmark = pytest.mark.e2e

SHARDS = 2
# HLS and the report are off to keep the test short: renditions go through the same relinking as images.
# OCR and places, off in most tests, are on here: every per-file step the archive's defaults run is compared.
OPTIONS = {
    "sharding": {"shards": SHARDS, "shard_size": 1000},
    "hls": {"enabled": False},
    "report": {"enabled": False},
    "ocr": {"enabled": True},
    "places": {"enabled": True},
}
# The steps with no ``files`` input work on the files of the part they read.
SOURCE = {"dino": "thumbnails", "clip": "thumbnails", "face_embeddings": "faces"}
STEPS = [
    "files", "hashes", "exif", "places", "thumbnails", "faces", "face_embeddings", "ocr", "quality", "dino", "clip",
]  # fmt: skip


def shard_of(relpath: str) -> str:
    return inventory.shard_names(SHARDS)[inventory.shard_index(inventory.media_id("photos", relpath), SHARDS)]


def add(archive: Path) -> set[str]:
    new = archive / "new" / "gradient.png"
    new.parent.mkdir()
    Image.linear_gradient("L").resize((300, 200)).convert("RGB").save(new)
    return {"new/gradient.png"}


def edit_in_place(archive: Path) -> set[str]:
    """Bytes changed, size kept, mtime moved (a pixel-editing tool that rewrites the file)."""
    target = archive / "2021 holiday" / "coffee.png"
    st = target.stat()
    with Image.open(target) as im:
        flipped = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    flipped.save(target, optimize=True)
    data = target.read_bytes()
    # Pad or trim the ancillary tail so the size is the old one: PNG readers ignore bytes after IEND.
    assert len(data) <= st.st_size, "the flipped PNG must not be larger than the original"
    target.write_bytes(data + b"\0" * (st.st_size - len(data)))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert target.stat().st_size == st.st_size
    return {"2021 holiday/coffee.png"}


def move(archive: Path) -> set[str]:
    """To another folder, in the other shard."""
    old = "2023 reunion/hopper.jpg"
    new = next(f"moved {i}/hopper.jpg" for i in range(100) if shard_of(f"moved {i}/hopper.jpg") != shard_of(old))
    (archive / new).parent.mkdir()
    os.rename(archive / old, archive / new)
    return {new}


def delete(archive: Path) -> set[str]:
    (archive / "misc" / "spinner.gif").unlink()
    (archive / "2021 holiday" / "astronaut.jpg").unlink()
    return set()


def follows_content(step: str) -> bool:
    """A moved file keeps its rows in a step that goes by content and reads only such steps' rows: places
    reads exif, which exiftool makes again for the new path (file dates, permissions), so it computes."""
    declared = registry.STEPS[step]
    return declared.by_content and all(follows_content(read) for read in declared.reads)


def parts_written(results: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (results / "parts").glob("*/*.parquet")}


@pytest.mark.parametrize("sequence", [[add, edit_in_place, move, delete]], ids=["add-edit-move-delete"])
def test_incremental_reruns_equal_a_run_from_scratch(
    tmp_path: Path, sequence: list[Callable[[Path], set[str]]]
) -> None:
    archive = tmp_path / "archive"
    shutil.copytree(SAMPLE, archive)
    work = tmp_path / "incremental"
    work.mkdir()
    write_config(work, {"photos": str(archive)}, **OPTIONS)
    snakemake(work)
    results = work / "results"
    for i, change in enumerate(sequence):
        before = parts_written(results)
        changed = change(archive)
        snakemake(work)
        scratch = tmp_path / f"scratch{i}"
        scratch.mkdir()
        write_config(scratch, {"photos": str(archive)}, **OPTIONS)
        snakemake(scratch)
        for step in [*STEPS, "duplicates", "people", "events"]:
            a = comparable(tables.load(step, results))
            b = comparable(tables.load(step, scratch / "results"))
            pd.testing.assert_frame_equal(a, b, obj=f"{change.__name__}: {step}")
        # Every image a row names is there: reused rows had theirs relinked, not lost with the old folder.
        for step, column in (("thumbnails", "file"), ("faces", "crop")):
            named = tables.load(step, results)[column].dropna()
            assert named.map(os.path.exists).all(), (change.__name__, step)
        changed_ids = {inventory.media_id("photos", p) for p in changed}
        files = tables.load("files", results)
        reused = 0
        for part, mtime in parts_written(results).items():
            if before.get(part) == mtime:
                continue
            step, shard = part.parent.name, part.stem
            counts = json.loads(pq.read_schema(part).metadata[reuse.COUNTS_KEY])
            in_shard = set(files[files.shard == shard].media_id)
            if step in SOURCE:
                in_shard &= set(tables.load(SOURCE[step], results).media_id)
            rows = tables.load(step, results)
            errors = set(rows[rows.status == "error"].media_id) & in_shard
            # A moved file keeps its rows in every step but the listing and exiftool's (by content, from the
            # other shard's reuse folder); files with an error row are always tried again.
            by_content = change is move and follows_content(step)
            arrived = changed_ids & in_shard - errors if by_content else set()
            assert counts["moved"] == len(arrived), (change.__name__, step, shard)
            assert counts["computed"] == len((changed_ids & in_shard) - arrived | errors), (change.__name__, step)
            assert sum(counts.values()) == len(in_shard), (change.__name__, step, shard)
            reused += counts["reused"] + counts["moved"]
        assert reused > 0, change.__name__
