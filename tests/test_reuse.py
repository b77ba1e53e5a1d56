"""steps/reuse.py on its own: what makes a job reuse a file's rows and what makes it compute them again (the
pipeline end to end: tests/test_incremental.py)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from cl_ml_tools.data import tables
from cl_ml_tools.steps import reuse


def file_row(name: str, size: int = 10, mtime: int = 1, content: str | None = None) -> dict[str, Any]:
    """A ``files`` row; ``content`` names the bytes (the file's own name by default)."""
    sha256 = hashlib.sha256((content or name).encode()).hexdigest()
    return {"media_id": f"{abs(hash(name)) % 16**16:016x}", "input": "photos", "path": f"/a/{name}", "size": size,
            "mtime": mtime, "kind": "image", "format": "jpeg", "sha256": sha256}  # fmt: skip


class Step:
    """A thumbnails-like step: one row per file and one image named after its media id."""

    def __init__(self, out: Path) -> None:
        self.out, self.computed, self.counts = out, [], {}

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


def job(
    tmp: Path, files: list[dict[str, Any]], fingerprint: str = "fp", shard: str = "0000", by_content: bool = False
) -> tuple[list[dict[str, Any]], Step]:
    """One job as run_job does it: Snakemake has emptied the out folder, the rows are made, the part written
    and the reuse folder saved."""
    out, part, folder = tmp / "thumbnails" / shard, tmp / "parts" / f"{shard}.parquet", tmp / "reuse" / shard
    for p in sorted(out.glob("*")):
        p.unlink()
    step = Step(out)
    rows, digests, offered, step.counts = reuse.run(files, {}, {}, fingerprint, folder, out, step, by_content)
    part.parent.mkdir(parents=True, exist_ok=True)
    gone = reuse.departed(folder, fingerprint, out, digests)
    tables.write_part("thumbnails", [{**r, "width": 1, "height": 1} for r in rows], part)
    reuse.save(folder, part, out, fingerprint, offered, gone)
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


def moved(row: dict[str, Any], name: str) -> dict[str, Any]:
    """The same bytes at another path: ``mv``, a rename, a copy (any mtime: the SHA-256 is what counts)."""
    return {**file_row(name, mtime=7, content=Path(row["path"]).name), "size": row["size"]}


def test_a_file_moved_within_the_shard_keeps_its_rows_renamed_and_its_image_relinked(tmp_path: Path) -> None:
    files = [file_row("a.jpg"), file_row("b.jpg")]
    job(tmp_path, files, by_content=True)
    renamed = [files[0], moved(files[1], "2024/b.jpg")]
    rows, step = job(tmp_path, renamed, by_content=True)
    assert step.computed == []
    assert step.counts == {"reused": 1, "moved": 1, "computed": 0}
    new_id, old_id = renamed[1]["media_id"], files[1]["media_id"]
    assert rows[1]["media_id"] == new_id and rows[1]["path"] == "/a/2024/b.jpg"
    image = Path(rows[1]["file"])
    assert image.name == f"{new_id}.thumb.jpg"
    # The very bytes made for b.jpg, linked from the reuse folder, not written again.
    assert image.read_bytes() == b"/a/b.jpg"
    assert image.stat().st_nlink > 1  # its other name is in the reuse folder
    assert not any(old_id in p.name for p in image.parent.iterdir())
    # The rows are those the step gives for the moved file, but for the image's bytes.
    fresh = Step(tmp_path / "x")([renamed[1]], {})[0]
    assert {k: rows[1][k] for k in fresh if k != "file"} == {k: v for k, v in fresh.items() if k != "file"}


def test_a_path_step_computes_a_moved_file_again(tmp_path: Path) -> None:
    files = [file_row("a.jpg")]
    job(tmp_path, files)
    _, step = job(tmp_path, [moved(files[0], "b.jpg")])
    assert step.computed == ["/a/b.jpg"]


def test_the_same_name_with_other_bytes_is_computed(tmp_path: Path) -> None:
    files = [file_row("a.jpg"), file_row("b.jpg")]
    job(tmp_path, files, by_content=True)
    # b.jpg replaced by a copy of a.jpg under a new name, and a.jpg edited: only the copy is found.
    changed = [file_row("a.jpg", content="edited"), moved(files[0], "c.jpg")]
    _, step = job(tmp_path, changed, by_content=True)
    assert step.computed == ["/a/a.jpg"]
    assert step.counts == {"reused": 0, "moved": 1, "computed": 1}


def test_bytes_the_sniff_does_not_know_follow_their_name_on_a_rename(tmp_path: Path) -> None:
    """Unrecognised bytes (AVCHD's 192-byte packets, a text file) are treated as the kind their extension
    claims: a rename that changes that kind changes what the steps make of the file, so it is computed."""

    def unknown(name: str) -> dict[str, Any]:
        return {**file_row(name, content="avchd bytes"), "kind": "other", "format": "unknown"}

    job(tmp_path, [unknown("clip.MTS")], by_content=True)
    _, step = job(tmp_path, [unknown("2024/clip.mts")], by_content=True)
    assert step.counts == {"reused": 0, "moved": 1, "computed": 0}  # still a video by its name
    _, step = job(tmp_path, [unknown("2024/clip.mts.bak")], by_content=True)
    assert step.computed == ["/a/2024/clip.mts.bak"]  # no longer a video: not the video's rows


@pytest.mark.parametrize("first", ["source shard", "destination shard"])
def test_a_file_moved_to_another_shard_is_found_whichever_job_runs_first(tmp_path: Path, first: str) -> None:
    left, right = [file_row("a.jpg"), file_row("b.jpg")], [file_row("c.jpg")]
    job(tmp_path, left, shard="0000", by_content=True)
    job(tmp_path, right, shard="0001", by_content=True)
    arrived = moved(left[1], "new/b.jpg")
    jobs = [(left[:1], "0000"), ([*right, arrived], "0001")]
    for files, shard in jobs if first == "source shard" else jobs[::-1]:
        rows, step = job(tmp_path, files, shard=shard, by_content=True)
        assert step.computed == []
    image = Path(rows[-1]["file"] if first == "source shard" else job(tmp_path, [*right, arrived], shard="0001",
                 by_content=True)[0][-1]["file"])  # fmt: skip
    assert image.parent.name == "0001" and image.read_bytes() == b"/a/b.jpg"
    # The source shard keeps what left it for one job only.
    job(tmp_path, left[:1], shard="0000", by_content=True)
    assert not list((tmp_path / "reuse" / "0000" / "out").glob(f"{left[1]['media_id']}*"))


def test_a_folder_replaced_while_it_is_read_gives_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another shard's job saves its folder (rename) while this job takes a moved file's rows from it: what
    was taken is dropped, links included, and the file is computed."""
    left, right = [file_row("a.jpg"), file_row("b.jpg")], [file_row("c.jpg")]
    job(tmp_path, left, shard="0000", by_content=True)
    job(tmp_path, right, shard="0001", by_content=True)
    rows_of = reuse._Folder.rows

    def rows_then_replaced(self: Any, mids: set[str]) -> Any:
        taken = rows_of(self, mids)
        if self.path.name == "0000":
            monkeypatch.setattr(reuse._Folder, "rows", rows_of)
            job(tmp_path, left, shard="0000", by_content=True)  # that shard's rerun, saved in between
        return taken

    monkeypatch.setattr(reuse._Folder, "rows", rows_then_replaced)
    arrived = moved(left[1], "new/b.jpg")
    rows, step = job(tmp_path, [*right, arrived], shard="0001", by_content=True)
    assert step.computed == ["/a/new/b.jpg"]
    assert step.counts == {"reused": 1, "moved": 0, "computed": 1}
    assert Path(rows[-1]["file"]).read_bytes() == b"/a/new/b.jpg"  # made again, not a stale link
