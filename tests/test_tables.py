from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from cl_ml_tools.data import tables
from cl_ml_tools.media import fileio
from cl_ml_tools.steps.files import files_rows


def test_every_table_of_files_shares_the_common_columns() -> None:
    for name, schema in tables.SCHEMAS.items():
        if name in ("people", "events"):  # a row per person or event, not per file
            continue
        assert schema.names[:5] == ["media_id", "input", "path", "status", "error"], name


def test_parts_consolidate_in_shard_order_and_load_with_nullable_dtypes(tmp_path: Path) -> None:
    base = {"input": "t", "path": "/x", "status": "ok", "error": None}
    tables.write_part(
        "hashes", [{**base, "media_id": "b", "sha512": "s", "phash": 2**63 + 5}], tmp_path / "0001.parquet"
    )
    tables.write_part(
        "hashes", [{**base, "media_id": "a", "status": "error", "error": "boom"}], tmp_path / "0000.parquet"
    )
    tables.write_part("hashes", [], tmp_path / "0002.parquet")  # a shard with no files still has the schema
    assert pq.read_schema(tmp_path / "0002.parquet").equals(tables.SCHEMAS["hashes"])
    n = tables.consolidate(
        "hashes", [tmp_path / f"000{i}.parquet" for i in (2, 1, 0)], tmp_path / "tables" / "hashes.parquet"
    )
    assert n == 2
    # A dataset of hard links to the parts: nothing is rewritten.
    table_dir = tmp_path / "tables" / "hashes.parquet"
    assert sorted(p.name for p in table_dir.iterdir()) == ["0000.parquet", "0001.parquet", "0002.parquet"]
    assert (table_dir / "0001.parquet").stat().st_ino == (tmp_path / "0001.parquet").stat().st_ino
    df = tables.load("hashes", tmp_path)
    assert list(df.media_id) == ["a", "b"]
    assert str(df.phash.dtype) == "UInt64" and df.phash.iloc[1] == 2**63 + 5 and pd.isna(df.phash.iloc[0])
    assert df.error.iloc[0] == "boom"


def test_consolidating_again_replaces_the_dataset_and_refuses_foreign_parts(tmp_path: Path) -> None:
    base = {"input": "t", "path": "/x", "status": "ok", "error": None}
    target = tmp_path / "tables" / "hashes.parquet"
    target.parent.mkdir()
    target.write_bytes(b"a single-file table of an earlier version")
    for shard in ("0000", "0001"):
        tables.write_part("hashes", [{**base, "media_id": shard}], tmp_path / f"{shard}.parquet")
    assert tables.consolidate("hashes", [tmp_path / "0000.parquet", tmp_path / "0001.parquet"], target) == 2
    assert tables.consolidate("hashes", [tmp_path / "0001.parquet"], target) == 1
    assert [p.name for p in target.iterdir()] == ["0001.parquet"]
    tables.write_part("exif", [], tmp_path / "0002.parquet")
    with pytest.raises(ValueError, match="forcerun hashes"):
        tables.consolidate("hashes", [tmp_path / "0002.parquet"], target)
    assert [p.name for p in target.iterdir()] == ["0001.parquet"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["hashes.parquet"]


def test_a_part_of_another_table_version_is_not_mixed_in(tmp_path: Path) -> None:
    """A part written before the table's values changed meaning (no version recorded, as every part before
    versions existed) has the same columns, and is refused by its version, naming the rerun."""
    row = {"media_id": "a", "input": "t", "path": "/x", "status": "ok", "error": None}
    old = tables.to_arrow("hashes", [row]).replace_schema_metadata(None)
    pq.write_table(old, tmp_path / "0000.parquet")
    tables.write_part("hashes", [{**row, "media_id": "b"}], tmp_path / "0001.parquet")
    assert tables.part_version(pq.read_schema(tmp_path / "0001.parquet")) == tables.VERSIONS["hashes"] > 1
    target = tmp_path / "tables" / "hashes.parquet"
    with pytest.raises(ValueError, match=r"version 1 of the hashes table.*forcerun hashes"):
        tables.consolidate("hashes", [tmp_path / "0000.parquet", tmp_path / "0001.parquet"], target)
    assert not target.exists() and not list((tmp_path / "tables").iterdir())


def test_load_names_the_known_tables(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="known tables: files, hashes"):
        tables.load("nope", tmp_path)


def test_atomic_writes_leave_nothing_behind_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), fileio.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_write_if_changed_keeps_mtime(tmp_path: Path) -> None:
    target = tmp_path / "list.jsonl"
    assert fileio.write_if_changed(target, b"a\n")
    before = target.stat().st_mtime_ns
    assert not fileio.write_if_changed(target, b"a\n")
    assert target.stat().st_mtime_ns == before
    assert fileio.write_if_changed(target, b"b\n") and target.read_bytes() == b"b\n"


def test_every_column_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "tables.md").read_text()
    for name, schema in tables.SCHEMAS.items():
        assert f"## {name}" in doc
        for column in schema.names:
            assert f"`{column}`" in doc, f"{name}.{column} is not described in docs/tables.md"


def test_names_that_are_not_utf8_survive_the_round_trip(tmp_path: Path) -> None:
    from cl_ml_tools.data import inventory
    from cl_ml_tools.steps import hashes

    root = tmp_path / "root"
    root.mkdir()
    raw = os.fsencode(root) + b"/caf\xe9 \xff.jpg"  # Latin-1 bytes, as old cameras and Windows shares write
    with open(raw, "wb") as fh:
        fh.write(b"\xff\xd8\xff not really a jpeg")
    entries = list(inventory.scan({"in": root}))
    tables.write_part("files", files_rows(entries, "0000"), tmp_path / "files.parquet")
    stored = pq.read_table(tmp_path / "files.parquet").to_pylist()[0]
    assert stored["path"].endswith("/caf\\xe9 \\xff.jpg") and stored["raw_path"] == raw
    [row] = tables.read_part(tmp_path / "files.parquet")
    assert os.fsencode(row["path"]) == raw  # the real name again: steps can open it
    [hashed] = hashes.hash_file(row, hashes.Settings())
    assert hashed["md5"] == hashlib.md5(b"\xff\xd8\xff not really a jpeg").hexdigest()
    tables.write_part("hashes", [hashed], tmp_path / "hashes.parquet")
    assert pq.read_table(tmp_path / "hashes.parquet").column("path")[0].as_py() == stored["path"]
