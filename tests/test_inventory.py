from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLE, make_audio_only, make_video
from PIL import Image

from cl_ml_tools.data import inventory
from cl_ml_tools.media import sniff
from cl_ml_tools.steps.files import files_rows


@pytest.mark.parametrize(
    ("head", "ext", "expected"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", ".jpg", ("image", "jpeg")),
        (b"\x89PNG\r\n\x1a\n\x00\x00", ".png", ("image", "png")),
        (b"GIF89a\x01\x00", ".gif", ("image", "gif")),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", ".webp", ("image", "webp")),
        (b"\x00\x00\x00\x18ftypheic\x00\x00", ".heic", ("image", "heic")),
        (b"\x00\x00\x00\x18ftypisom\x00\x00", ".mp4", ("video", "mp4")),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00", ".mov", ("video", "mov")),
        (b"\x00\x00\x00\x18ftypM4A \x00\x00", ".m4a", ("audio", "m4a")),
        (b"II*\x00\x08\x00\x00\x00", ".dng", ("image", "dng")),
        (b"II*\x00\x10\x00\x00\x00CR\x02\x00", ".cr2", ("image", "cr2")),
        (b"\x1a\x45\xdf\xa3\x01\x00webm", ".webm", ("video", "webm")),
        (b"", ".jpg", ("other", "empty")),
        (b"hello, this is text\n", ".jpg", ("other", "text")),
        (bytes(range(200, 256)) * 3, ".mp4", ("other", "unknown")),
    ],
)
def test_sniff_reads_bytes_not_names(head: bytes, ext: str, expected: tuple[str, str]) -> None:
    assert sniff.sniff_bytes(head, ext) == expected


def test_sniff_real_files(tmp_path: Path) -> None:
    kinds = {p.name: sniff.sniff(p) for p in SAMPLE.rglob("*") if p.is_file()}
    assert kinds["astronaut.jpg"] == ("image", "jpeg")
    assert kinds["rocket.heic"] == ("image", "heic")
    assert kinds["clip.mp4"] == ("video", "mp4")
    assert kinds["portrait.mov"][0] == "video"
    assert kinds["notes.txt"] == ("other", "text")
    assert sniff.sniff(make_audio_only(tmp_path / "a.m4a"))[0] == "audio"
    # A video renamed .jpg is still a video.
    renamed = make_video(tmp_path / "v.mp4", seconds=1).rename(tmp_path / "v.jpg")
    assert sniff.sniff(renamed) == ("video", "mp4")


def test_media_kind_follows_bytes_then_name() -> None:
    assert sniff.media_kind("video", "x.jpg") == "video"
    assert sniff.media_kind("other", "x.jpg") == "image"  # text named .jpg reaches the image steps
    assert sniff.media_kind("other", "x.txt") is None


@pytest.mark.parametrize(("name", "relpath"), [("photos", "2020/a.jpg"), ("other", "2020/a.jpg"), ("p", "é/☃ x.png")])
def test_media_id_and_shard_follow_their_definitions(name: str, relpath: str) -> None:
    """docs/tables.md: the first 64 bits (16 hex digits) of SHA-256 of input + NUL + relpath in UTF-8; the
    shard, media_id as a number modulo the shard count, named with 4 digits."""
    mid = inventory.media_id(name, relpath)
    assert mid == hashlib.sha256(f"{name}\0{relpath}".encode()).hexdigest()[:16]
    assert inventory.shard_names(7)[inventory.shard_index(mid, 7)] == f"{int(mid, 16) % 7:04d}"
    # A name that is not UTF-8 (os.fsdecode keeps its bytes as surrogates) is hashed with its own bytes.
    raw = os.fsencode(relpath) + b"\xe9"
    assert inventory.media_id(name, os.fsdecode(raw)) == hashlib.sha256(name.encode() + b"\0" + raw).hexdigest()[:16]


def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"\xff\xd8\xff")
    (root / "sub" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "sub" / "deeper" / "c d é.txt").write_text("x")
    (root / ".hidden").write_text("x")


def test_scan_lists_files_and_applies_globs(tmp_path: Path) -> None:
    make_tree(tmp_path)
    rel = {e.relpath for e in inventory.scan({"in": tmp_path}, ["*"], [".*", "*/.*"])}
    assert rel == {"a.jpg", "sub/b.png", "sub/deeper/c d é.txt"}
    only_sub = {e.relpath for e in inventory.scan({"in": tmp_path}, ["sub/*"], [])}
    assert only_sub == {"sub/b.png", "sub/deeper/c d é.txt"}


def test_scan_never_follows_loops_or_leaves_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"\xff\xd8\xff")
    os.symlink(root, root / "sub" / "loop")  # directory loop
    os.symlink(outside, root / "escape.jpg")
    os.symlink(root / "a.jpg", root / "inside-link.jpg")
    os.symlink(root / "missing", root / "dangling.jpg")
    entries = {e.relpath: e for e in inventory.scan({"in": root}, ["*"], [".*"])}
    assert not any(r.startswith("sub/loop/") for r in entries)
    assert entries["sub/loop"].error.startswith("symlink to a directory (not followed")
    assert entries["escape.jpg"].error == "symlink points outside the input root"
    assert entries["dangling.jpg"].error == "broken symlink or symlink loop"
    assert entries["inside-link.jpg"].error is None and entries["inside-link.jpg"].size == 3


def test_shard_lists_are_rewritten_only_when_changed(tmp_path: Path) -> None:
    root, inv = tmp_path / "root", tmp_path / "inv"
    make_tree(root)
    n, changed = inventory.update_inventory({"in": root}, inv, ["*"], [], shard_size=1, shards=None)
    assert n == 4  # one per file on the first run (hidden file included: nothing excluded)
    assert sorted(changed) == inventory.shard_names(4)
    before = {p.name: p.stat().st_mtime_ns for p in inv.glob("*.jsonl")}
    assert inventory.update_inventory({"in": root}, inv, ["*"], [], shard_size=1, shards=None) == (4, [])
    sizes = {p.stem: len(p.read_text().splitlines()) for p in inv.glob("*.jsonl")}
    assert inventory.largest_shard(inv) == max(sizes.values()) and sum(sizes.values()) == 4
    assert before == {p.name: p.stat().st_mtime_ns for p in inv.glob("*.jsonl")}

    (root / "new.jpg").write_bytes(b"\xff\xd8\xff")
    n, changed = inventory.update_inventory({"in": root}, inv, ["*"], [], shard_size=1, shards=None)
    new_id = inventory.media_id("in", "new.jpg")
    assert n == 4, "the shard count is fixed for a results directory"
    assert changed == [inventory.shard_names(4)[inventory.shard_index(new_id, 4)]]
    listed = [e.relpath for name in inventory.shard_names(4) for e in inventory.read_shard_list(inv / f"{name}.jsonl")]
    assert sorted(listed) == sorted([".hidden", "a.jpg", "new.jpg", "sub/b.png", "sub/deeper/c d é.txt"])


def test_conflicting_shard_count_is_refused(tmp_path: Path) -> None:
    make_tree(tmp_path / "root")
    inventory.update_inventory({"in": tmp_path / "root"}, tmp_path / "inv", ["*"], [], 1000, shards=3)
    assert json.loads((tmp_path / "inv" / "layout.json").read_text()) == {"shards": 3}
    with pytest.raises(ValueError, match="fixes 3 shards"):
        inventory.update_inventory({"in": tmp_path / "root"}, tmp_path / "inv", ["*"], [], 1000, shards=5)


def test_missing_input_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="input 'x'"):
        list(inventory.scan({"x": tmp_path / "nope"}))


def test_files_rows_sniff_and_report(tmp_path: Path) -> None:
    make_tree(tmp_path / "root")
    (tmp_path / "root" / "empty.jpg").write_bytes(b"")
    entries = list(inventory.scan({"in": tmp_path / "root"}, ["*"], [".*"]))
    rows = {r["relpath"]: r for r in files_rows(entries, "0000")}
    assert rows["a.jpg"]["kind"] == "image" and rows["a.jpg"]["format"] == "jpeg"
    assert rows["empty.jpg"]["format"] == "empty" and rows["empty.jpg"]["status"] == "ok"
    assert rows["sub/deeper/c d é.txt"]["kind"] == "other"
    assert all(r["shard"] == "0000" and r["path"].startswith(str((tmp_path / "root").resolve())) for r in rows.values())
    # The content hash reuse finds moved files by, against coreutils' sha256sum on the same files.
    listed = subprocess.run(["sha256sum", *(r["path"] for r in rows.values())], capture_output=True, check=True)
    expected = dict(reversed(line.split("  ", 1)) for line in listed.stdout.decode().splitlines())
    assert {r["path"]: r["sha256"] for r in rows.values()} == expected
    assert rows["empty.jpg"]["sha256"] == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_excluded_links_stay_out_and_unlistable_folders_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    os.symlink(tmp_path, root / ".escape-but-hidden")
    locked = root / "locked"
    locked.mkdir()
    (locked / "x.jpg").write_bytes(b"\xff\xd8\xff")
    locked.chmod(0)
    try:
        script = (
            "import json, sys; from cl_ml_tools.data import inventory;"
            "print(json.dumps({e.relpath: e.error for e in inventory.scan({'in': sys.argv[1]}, ['*'], ['.*'])}))"
        )
        # As root, drop the capabilities that ignore file permissions (see test_workflow).
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
        out = subprocess.run([*prefix, sys.executable, "-c", script, str(root)], capture_output=True, check=True)
        errors = json.loads(out.stdout)
    finally:
        locked.chmod(0o755)
    assert ".escape-but-hidden" not in errors
    assert errors["locked"] == "cannot list folder: Permission denied"
    assert errors["a.jpg"] is None


def test_shard_list_lines_are_canonical_json() -> None:
    """The hand-written encoder gives exactly json.dumps' bytes, so lists written by either stay identical."""
    import json

    from cl_ml_tools.data.inventory import Entry, _encode_entry

    for entry in (
        Entry("00ff", "in", "a/b.jpg", "/r/a/b.jpg", 12, 3, None),
        Entry("00ff", 'in"x', 'quote " back\\slash\ttab\nnl é \udcff', "/r/ü", 0, 0, "cannot stat: Permission denied"),
    ):
        assert _encode_entry(entry) == json.dumps(entry._asdict(), sort_keys=True, ensure_ascii=True)


def test_a_file_that_vanishes_after_the_scan_gets_error_rows(tmp_path: Path) -> None:
    """Listed by the inventory (at workflow parse), deleted before its shard's jobs run."""
    from cl_ml_tools.steps import exif, hashes, thumbnails

    root = tmp_path / "root"
    root.mkdir()
    for name in ("kept.png", "gone.png"):
        Image.new("RGB", (32, 24), (40, 80, 120)).save(root / name)
    entries = list(inventory.scan({"in": root}))
    (root / "gone.png").unlink()
    files = files_rows(entries, "0000")
    by_name = {Path(r["path"]).name: r for r in files}
    assert by_name["kept.png"]["status"] == "ok"
    assert by_name["gone.png"]["status"] == "error" and "No such file" in by_name["gone.png"]["error"]
    steps = {
        "hashes": hashes.hash_shard(files, hashes.Settings()),
        "exif": exif.exif_shard(files),
        "thumbnails": thumbnails.thumbnail_shard(files, tmp_path / "thumbs", thumbnails.Settings()),
    }
    for step, rows in steps.items():
        gone = [r for r in rows if Path(r["path"]).name == "gone.png"]
        kept = [r for r in rows if Path(r["path"]).name == "kept.png"]
        assert len(gone) == 1 and gone[0]["status"] == "error" and "No such file" in gone[0]["error"], (step, gone)
        assert kept and all(r["status"] == "ok" for r in kept), step


def shard_files(inv: Path) -> dict[str, bytes]:
    """Every file the scan writes that Snakemake or a rule reads: the lists and their sizes."""
    return {p.name: p.read_bytes() for p in sorted(inv.glob("*.jsonl"))} | {
        inventory.SIZES_FILE: (inv / inventory.SIZES_FILE).read_bytes()
    }


def count_scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The roots the full scan walks from now on (none when the snapshot shows that nothing changed)."""
    walked: list[str] = []
    real = inventory._scan_root

    def spy(name, root, *args):
        walked.append(name)
        yield from real(name, root, *args)

    monkeypatch.setattr(inventory, "_scan_root", spy)
    return walked


def test_an_unchanged_archive_is_not_scanned_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, inv = tmp_path / "root", tmp_path / "inv"
    make_tree(root)
    os.symlink(root / "a.jpg", root / "sub" / "link.jpg")
    first = inventory.update_inventory({"in": root}, inv, ["*"], [".*"], shard_size=1)
    written = shard_files(inv)
    mtimes = {p.name: p.stat().st_mtime_ns for p in inv.iterdir()}
    walked = count_scans(monkeypatch)
    assert inventory.update_inventory({"in": root}, inv, ["*"], [".*"], shard_size=1) == (first[0], [])
    assert walked == [], "nothing changed, yet the archive was scanned again"
    assert shard_files(inv) == written and {p.name: p.stat().st_mtime_ns for p in inv.iterdir()} == mtimes


def _rewrite_in_place(root: Path) -> None:
    """New bytes of the same length, the inode kept: the folder's own entry does not change."""
    path = root / "sub" / "b.png"
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.write(b"\x00" * st.st_size)
    # An explicit later mtime: the write may land in the clock tick of the file's creation.
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _replace_excluded_file_by_folder(root: Path) -> None:
    (root / "Thumbs.db").unlink()
    (root / "Thumbs.db").mkdir()  # the glob "Thumbs.db" excludes the file, not what is inside the folder
    (root / "Thumbs.db" / "x.jpg").write_bytes(b"\xff\xd8\xff")


def _folder_becomes_a_link(root: Path) -> None:
    (root / "sub" / "deeper" / "c d é.txt").rename(root / "moved.txt")
    (root / "sub" / "deeper").rmdir()
    os.symlink(root / "other", root / "sub" / "deeper")


def _fifo_becomes_a_file(root: Path) -> None:
    (root / "pipe.jpg").unlink()
    (root / "pipe.jpg").write_bytes(b"\xff\xd8\xff")


CHANGES = {
    "file added": lambda root: (root / "sub" / "new.jpg").write_bytes(b"\xff\xd8\xff"),
    "file removed": lambda root: (root / "a.jpg").unlink(),
    "file rewritten in place": _rewrite_in_place,
    "mtime changed only": lambda root: os.utime(root / "a.jpg", ns=(0, 1_000_000_000)),
    "file renamed": lambda root: (root / "a.jpg").rename(root / "sub" / "a.jpg"),
    "excluded file replaced by a folder": _replace_excluded_file_by_folder,
    "folder replaced by a symlink": _folder_becomes_a_link,
    "symlink retargeted": lambda root: (
        (root / "link.jpg").unlink() or os.symlink(root / "sub" / "b.png", root / "link.jpg")
    ),
    "symlink target rewritten": lambda root: (root / "other" / "target.jpg").write_bytes(b"\xff\xd8\xff longer"),
    "fifo replaced by a file": _fifo_becomes_a_file,
    "file added in a new folder": lambda root: (root / "new").mkdir() or (root / "new" / "n.jpg").write_bytes(b"x"),
}


@pytest.mark.parametrize("change", CHANGES)
def test_every_change_is_noticed(tmp_path: Path, change: str) -> None:
    """After each change the lists are exactly those a scan into a fresh directory writes, and exactly the
    lists whose bytes changed were rewritten."""
    root, inv = tmp_path / "root", tmp_path / "inv"
    make_tree(root)
    (root / "Thumbs.db").write_bytes(b"excluded")
    (root / "other").mkdir()
    (root / "other" / "target.jpg").write_bytes(b"\xff\xd8\xff")
    os.symlink(root / "other" / "target.jpg", root / "link.jpg")
    os.mkfifo(root / "pipe.jpg")
    settings = (["*"], [".*", "Thumbs.db"])
    n, _ = inventory.update_inventory({"in": root}, inv, *settings, shard_size=1)
    assert inventory.update_inventory({"in": root}, inv, *settings, shard_size=1) == (n, [])
    before = shard_files(inv)
    CHANGES[change](root)
    _, rewritten = inventory.update_inventory({"in": root}, inv, *settings, shard_size=1)
    inventory.update_inventory({"in": root}, tmp_path / "fresh", *settings, shard_size=1, shards=n)
    after = shard_files(inv)
    assert after == shard_files(tmp_path / "fresh")
    assert after != before, "the change should show in some list"
    differ = {name.removesuffix(".jsonl") for name in after if name.endswith(".jsonl") and after[name] != before[name]}
    assert sorted(rewritten) == sorted(differ)


def test_a_deleted_list_or_a_changed_setting_means_a_full_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, inv = tmp_path / "root", tmp_path / "inv"
    make_tree(root)
    n, _ = inventory.update_inventory({"in": root}, inv, ["*"], [], shard_size=1)
    written = shard_files(inv)
    walked = count_scans(monkeypatch)
    (inv / "0001.jsonl").unlink()
    assert inventory.update_inventory({"in": root}, inv, ["*"], [], shard_size=1) == (n, ["0001"])
    assert shard_files(inv) == written and walked == ["in"]
    _, rewritten = inventory.update_inventory({"in": root}, inv, ["*"], [".*"], shard_size=1)
    assert walked == ["in", "in"] and len(rewritten) == 1, "the exclude setting changed: one list loses .hidden"
    (inv / inventory.SNAPSHOT_FILE).write_bytes(b"not a snapshot")
    assert inventory.update_inventory({"in": root}, inv, ["*"], [".*"], shard_size=1) == (n, [])
    assert walked == ["in", "in", "in"]
    assert inventory.update_inventory({"in": root}, inv, ["*"], [".*"], shard_size=1) == (n, [])
    assert walked == ["in", "in", "in"], "the snapshot the last full scan wrote is used again"
