"""steps/reuse.py on its own: what makes a job reuse a file's rows and what makes it compute them again (the
pipeline end to end: tests/test_incremental.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cl_ml_tools.data import tables
from cl_ml_tools.steps import reuse


def file_row(name: str, size: int = 10, mtime: int = 1) -> dict[str, Any]:
    return {"media_id": f"{abs(hash(name)) % 16**16:016x}", "input": "photos", "path": f"/a/{name}", "size": size,
            "mtime": mtime}  # fmt: skip


class Step:
    """A thumbnails-like step: one row per file and one image named after its media id."""

    def __init__(self, out: Path) -> None:
        self.out, self.computed = out, []

    def __call__(self, files: Sequence[Mapping[str, Any]], reads: Mapping[str, Any]) -> list[dict[str, Any]]:
        self.out.mkdir(parents=True, exist_ok=True)
        rows = []
        for f in files:
            self.computed.append(f["path"])
            image = self.out / f"{f['media_id']}.thumb.jpg"
            image.write_bytes(f["path"].encode())
            status = "error" if "broken" in f["path"] else "ok"
            rows.append({**tables.base_row(f), "status": status, "file": str(image.resolve()), "role": "thumb"})
        return rows


def job(tmp: Path, files: list[dict[str, Any]], fingerprint: str = "fp") -> tuple[list[dict[str, Any]], Step]:
    """One job as run_job does it: Snakemake has emptied the out folder, the rows are made, the part written
    and the reuse folder saved."""
    out, part, folder = tmp / "thumbnails" / "0000", tmp / "parts" / "0000.parquet", tmp / "reuse" / "0000"
    for p in sorted(out.glob("*")):
        p.unlink()
    step = Step(out)
    rows, _, offered, _ = reuse.run(files, {}, {}, fingerprint, folder, out, step)
    part.parent.mkdir(parents=True, exist_ok=True)
    tables.write_part("thumbnails", [{**r, "width": 1, "height": 1} for r in rows], part)
    reuse.save(folder, part, out, fingerprint, offered)
    return rows, step


def test_unchanged_files_are_reused_with_their_images_relinked(tmp_path: Path) -> None:
    files = [file_row("a.jpg"), file_row("b.jpg"), file_row("broken.jpg")]
    _, step = job(tmp_path, files)
    assert step.computed == ["/a/a.jpg", "/a/b.jpg", "/a/broken.jpg"]
    edited = [file_row("a.jpg"), file_row("b.jpg", mtime=2), file_row("broken.jpg"), file_row("new.jpg")]
    rows, step = job(tmp_path, edited)
    # b changed, new is new, and a file with an error row is always tried again.
    assert step.computed == ["/a/b.jpg", "/a/broken.jpg", "/a/new.jpg"]
    assert [r["path"] for r in rows] == [f["path"] for f in edited]
    image = Path(rows[0]["file"])
    assert image.read_bytes() == b"/a/a.jpg"
    assert image.stat().st_ino == (tmp_path / "reuse" / "0000" / "out" / image.name).stat().st_ino


def test_another_fingerprint_or_a_lost_image_computes_again(tmp_path: Path) -> None:
    files = [file_row("a.jpg"), file_row("b.jpg")]
    job(tmp_path, files)
    _, step = job(tmp_path, files, fingerprint="other settings")
    assert step.computed == ["/a/a.jpg", "/a/b.jpg"]
    for kept in (tmp_path / "reuse" / "0000" / "out").glob(f"{files[0]['media_id']}.*"):
        kept.unlink()
    _, step = job(tmp_path, files, fingerprint="other settings")
    assert step.computed == ["/a/a.jpg"]


def test_a_job_killed_while_saving_leaves_a_folder_that_is_right_or_none(tmp_path: Path) -> None:
    files = [file_row("a.jpg")]
    job(tmp_path, files)
    folder = tmp_path / "reuse" / "0000"
    # Killed between the two renames: the old folder moved away, the new one not yet in place.
    os.rename(folder, folder.with_name(".0000.old"))
    (folder.with_name(".0000.tmp")).mkdir()
    _, step = job(tmp_path, files)
    assert step.computed == ["/a/a.jpg"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["0000"]
    _, step = job(tmp_path, files)
    assert step.computed == []


def test_the_fingerprint_follows_settings_version_and_the_parts_read(tmp_path: Path) -> None:
    upstream = tmp_path / "thumbnails.parquet"
    tables.write_part("thumbnails", [], upstream, {reuse.FINGERPRINT_KEY: b"one"})
    base = reuse.fingerprint("faces", {"settings": {"min_score": 0.5}}, {"thumbnails": upstream})
    assert base == reuse.fingerprint("faces", {"settings": {"min_score": 0.5}}, {"thumbnails": upstream})
    assert base != reuse.fingerprint("faces", {"settings": {"min_score": 0.6}}, {"thumbnails": upstream})
    assert base != reuse.fingerprint(
        "faces", {"settings": {"min_score": 0.5}, "model_sha256": "x"}, {"thumbnails": upstream}
    )
    tables.write_part("thumbnails", [], upstream, {reuse.FINGERPRINT_KEY: b"two"})
    assert base != reuse.fingerprint("faces", {"settings": {"min_score": 0.5}}, {"thumbnails": upstream})


def test_a_step_that_reads_only_rows_sees_the_file_change_behind_them(tmp_path: Path) -> None:
    """dino reads only thumbnails rows; a photo edited in place gets a preview row that reads the same (same
    path and size), so the change must come through the digest thumbnails recorded for the file."""
    preview = {**tables.base_row(file_row("a.jpg")), "file": "/r/a.preview.jpg", "role": "preview"}
    mid = preview["media_id"]
    computed = []

    def embed(files: Sequence[Mapping[str, Any]], reads: Mapping[str, Any]) -> list[dict[str, Any]]:
        computed.extend(r["media_id"] for r in reads["thumbnails"])
        return [dict(r) for r in reads["thumbnails"]]

    folder, part = tmp_path / "reuse", tmp_path / "dino.parquet"
    for recorded, expected in (("before", [mid]), ("before", [mid]), ("after the edit", [mid, mid])):
        rows, _, offered, _ = reuse.run([], {"thumbnails": [preview]}, {"thumbnails": {mid: recorded}}, "fp", folder,
                                        None, embed)  # fmt: skip
        tables.write_part("thumbnails", [{**r, "width": 1, "height": 1} for r in rows], part)
        reuse.save(folder, part, None, "fp", offered)
        assert computed == expected
