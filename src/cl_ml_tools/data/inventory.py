"""Inventory: scan the inputs, sniff each file's real type, and split the archive into shards.

The scan runs when Snakemake parses the workflow; it only lists and stats files, so it stays cheap for
millions of files. A shard list is rewritten only when its content changes, so Snakemake reruns exactly
the shards whose files were added, removed or modified. When a snapshot of the previous scan shows that
nothing changed, the lists are not even rebuilt (see :func:`update_inventory`). Sniffing (which opens every
file) happens in the per-shard ``files`` step.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import operator
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from ..media.fileio import write_bytes_atomic, write_if_changed

LAYOUT_FILE = "layout.json"
# Files per shard, written with the shard lists: rules size their cluster runtime from the largest shard.
SIZES_FILE = "sizes.json"


class Entry(NamedTuple):
    """One regular file found under an input root, as written to a shard list. A named tuple, not a frozen
    dataclass: a million of them are built at every workflow parse, and this is three times cheaper."""

    media_id: str
    input: str
    relpath: str
    path: str
    size: int
    mtime_ns: int
    error: str | None = None


def media_id(input_name: str, relpath: str) -> str:
    """Stable 64-bit id (16 hex digits) from the input's name and the file's path inside it."""
    return hashlib.sha256(f"{input_name}\0{relpath}".encode("utf-8", "surrogateescape")).hexdigest()[:16]


def shard_index(mid: str, n_shards: int) -> int:
    """A file's shard depends on its own id only, so adding files never moves other files."""
    return int(mid, 16) % n_shards


def shard_names(n_shards: int) -> list[str]:
    width = max(4, len(str(n_shards - 1)))
    return [f"{i:0{width}d}" for i in range(n_shards)]


class _Selector:
    """The include/exclude globs compiled into one regular expression each: matching a million paths
    pattern by pattern with ``fnmatch`` costs seconds."""

    def __init__(self, include: Sequence[str], exclude: Sequence[str]):
        everything = not include or "*" in include
        self.include = None if everything else re.compile("|".join(fnmatch.translate(p) for p in include))
        self.exclude = re.compile("|".join(fnmatch.translate(p) for p in exclude)) if exclude else None

    def __call__(self, relpath: str) -> bool:
        if self.include is not None and not self.include.match(relpath):
            return False
        return self.exclude is None or not self.exclude.match(relpath)


def scan(
    inputs: Mapping[str, str | os.PathLike[str]],
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
) -> Iterator[Entry]:
    """Yield every selected file under each input root.

    Directory symlinks are never followed (no loops, no double counting); a file symlink is kept only when
    its target is a regular file inside the same root, otherwise it is reported with ``error`` set. Glob
    patterns match the POSIX path relative to the root, and ``*`` also matches ``/``.
    """
    return _scan(inputs, include, exclude, None)


def _scan(
    inputs: Mapping[str, str | os.PathLike[str]],
    include: Sequence[str],
    exclude: Sequence[str],
    folders: list[_Folder] | None,
) -> Iterator[Entry]:
    for name, root_dir in inputs.items():
        root = Path(root_dir).resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"input {name!r}: {root_dir} is not a directory")
        yield from _scan_root(name, root, include, exclude, folders)


# What the scan does with a directory entry, decided from the listing alone (the d_type readdir returns, so
# no stat on the usual filesystems). One letter each: the snapshot stores it in front of the name.
_DIR, _LINK, _FILE, _OTHER = "d", "l", "f", "o"


def _kind(de: os.DirEntry[str]) -> str:
    if de.is_dir(follow_symlinks=False):
        return _DIR
    if de.is_symlink():
        return _LINK
    if de.is_file(follow_symlinks=False):
        return _FILE
    return _OTHER  # sockets, fifos, devices: never media


class _Folder(NamedTuple):
    """What the scan saw in one folder: enough to tell, without rebuilding any entry, that scanning it
    again would give the same entries (see :func:`_unchanged_shard_count`)."""

    path: str
    # Every entry's kind letter + name, sorted and NUL-joined (names cannot hold NUL); or "!" + the error
    # when the folder could not be listed; or None when the scan met an error it does not snapshot.
    listing: str | None
    files: str  # the selected regular files' names, NUL-joined, in the order of ``stats``
    stats: list[tuple[int, int]]  # their (size, mtime_ns)
    links: list[tuple[str, str, int, int, str | None]]  # selected symlinks: name, root, size, mtime_ns, error


def _scan_root(
    name: str, root: Path, include: Sequence[str], exclude: Sequence[str], folders: list[_Folder] | None = None
) -> Iterator[Entry]:
    root_str = str(root)
    selected = _Selector(include, exclude)
    stack = [root_str]
    while stack:
        directory = stack.pop()
        # Relative paths by string concatenation: os.path.relpath per file is a third of a million-file scan.
        prefix = "" if directory == root_str else os.path.relpath(directory, root_str).replace(os.sep, "/") + "/"
        try:
            with os.scandir(directory) as it:
                entries = list(it)  # unsorted: the shard lists are sorted when written
        except OSError as exc:
            if directory == root_str:
                raise
            # Listed as one skipped entry, so a folder the scan could not enter does not vanish silently.
            rel = os.path.relpath(directory, root_str).replace(os.sep, "/")
            if folders is not None:
                folders.append(_Folder(directory, f"!{exc.strerror}", "", [], []))
            yield Entry(media_id(name, rel), name, rel, directory, 0, 0, f"cannot list folder: {exc.strerror}")
            continue
        listing: list[str] | None = []
        files: list[str] = []
        stats: list[tuple[int, int]] = []
        links: list[tuple[str, str, int, int, str | None]] = []
        for de in entries:
            rel = prefix + de.name
            try:
                kind = _kind(de)
                if listing is not None:
                    listing.append(kind + de.name)
                if kind == _DIR:
                    stack.append(de.path)
                    continue
                if kind == _OTHER or not selected(rel):
                    continue
                error = _symlink_problem(de.path, root_str) if kind == _LINK else None
                st = os.stat(de.path) if error is None else os.lstat(de.path)
            except OSError as exc:
                st, error = None, f"cannot stat: {exc.strerror}"
                listing = None  # rare and possibly passing: this folder is always scanned again
            size, mtime_ns = (st.st_size, st.st_mtime_ns) if st else (0, 0)
            if st and kind == _FILE:
                files.append(de.name)
                stats.append((size, mtime_ns))
            elif st:
                links.append((de.name, root_str, size, mtime_ns, error))
            yield Entry(media_id(name, rel), name, rel, de.path, size, mtime_ns, error)
        if folders is not None:
            joined = None if listing is None else "\0".join(sorted(listing))
            folders.append(_Folder(directory, joined, "\0".join(files), stats, links))


def _symlink_problem(path: str, root: str) -> str | None:
    try:
        target = os.path.realpath(path, strict=True)
    except (OSError, RuntimeError):
        return "broken symlink or symlink loop"
    if os.path.commonpath([target, root]) != root:
        return "symlink points outside the input root"
    mode = os.stat(target).st_mode
    if stat.S_ISDIR(mode):
        return "symlink to a directory (not followed: it could loop or count files twice)"
    if not stat.S_ISREG(mode):
        return "symlink does not point to a regular file"
    return None


def choose_shard_count(n_files: int, shard_size: int) -> int:
    return max(1, math.ceil(n_files / shard_size))


def load_or_create_layout(inventory_dir: Path, n_files: int, shard_size: int, shards: int | None) -> int:
    """Return the shard count of a results directory, fixing it on the first run.

    Changing the count later would move every file to another shard and recompute the whole archive, so
    the count is recorded and a conflicting explicit setting is refused.
    """
    layout_path = inventory_dir / LAYOUT_FILE
    if layout_path.exists():
        return _check_shard_count(layout_path, int(json.loads(layout_path.read_text())["shards"]), shards)
    count = shards if shards is not None else choose_shard_count(n_files, shard_size)
    write_bytes_atomic(layout_path, json.dumps({"shards": count}).encode())
    return count


def _check_shard_count(layout_path: Path, recorded: int, shards: int | None) -> int:
    if shards is not None and shards != recorded:
        raise ValueError(
            f"{layout_path} fixes {recorded} shards but the config asks for {shards}; "
            "use a new results directory to reshard"
        )
    return recorded


def read_layout(inventory_dir: Path) -> int:
    return int(json.loads((inventory_dir / LAYOUT_FILE).read_text())["shards"])


_quote = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _encode_entry(entry: Entry) -> str:
    """The bytes ``json.dumps(entry._asdict(), sort_keys=True, ensure_ascii=True)`` gives, written out by hand:
    three times faster, which is seconds at a million files. ensure_ascii keeps undecodable
    (surrogate-escaped) names representable and the bytes deterministic."""
    error = "null" if entry.error is None else _quote(entry.error)
    return (
        f'{{"error": {error}, "input": {_quote(entry.input)}, "media_id": {_quote(entry.media_id)}, '
        f'"mtime_ns": {entry.mtime_ns}, "path": {_quote(entry.path)}, "relpath": {_quote(entry.relpath)}, '
        f'"size": {entry.size}}}'
    )


_ORDER = operator.attrgetter("input", "relpath")


def write_shard_lists(entries: Iterable[Entry], inventory_dir: Path, n_shards: int) -> list[str]:
    """Write ``<inventory_dir>/<shard>.jsonl`` for every shard; return the names of those rewritten."""
    names = shard_names(n_shards)
    buckets: list[list[Entry]] = [[] for _ in names]
    for entry in entries:
        buckets[shard_index(entry.media_id, n_shards)].append(entry)
    changed = []
    for name, bucket in zip(names, buckets, strict=True):
        bucket.sort(key=_ORDER)
        data = "".join(_encode_entry(e) + "\n" for e in bucket).encode("ascii")
        if write_if_changed(inventory_dir / f"{name}.jsonl", data):
            changed.append(name)
    sizes = {name: len(bucket) for name, bucket in zip(names, buckets, strict=True)}
    write_if_changed(inventory_dir / SIZES_FILE, json.dumps(sizes, sort_keys=True).encode())
    return changed


def largest_shard(inventory_dir: str | os.PathLike[str]) -> int:
    """Files in the fullest shard (0 before the first scan)."""
    try:
        sizes = json.loads((Path(inventory_dir) / SIZES_FILE).read_text())
    except FileNotFoundError:
        return 0
    return max(sizes.values(), default=0)


def read_shard_list(path: str | os.PathLike[str]) -> list[Entry]:
    with open(path, encoding="ascii") as fh:
        return [Entry(**json.loads(line)) for line in fh if line.strip()]


def update_inventory(
    inputs: Mapping[str, str | os.PathLike[str]],
    inventory_dir: str | os.PathLike[str],
    include: Sequence[str],
    exclude: Sequence[str],
    shard_size: int,
    shards: int | None = None,
) -> tuple[int, list[str]]:
    """Scan, fix the shard count on first use, and refresh the shard lists. Returns (count, rewritten).

    When the snapshot of the previous scan shows that nothing a shard list depends on has changed, the
    lists are left as they are without rebuilding them (see :func:`_unchanged_shard_count`).
    """
    inventory_dir = Path(inventory_dir)
    key = _snapshot_key(inputs, include, exclude)
    recorded = _unchanged_shard_count(inventory_dir, key)
    if recorded is not None:
        return _check_shard_count(inventory_dir / LAYOUT_FILE, recorded, shards), []
    folders: list[_Folder] = []
    entries = list(_scan(inputs, include, exclude, folders))
    n_shards = load_or_create_layout(inventory_dir, len(entries), shard_size, shards)
    changed = write_shard_lists(entries, inventory_dir, n_shards)
    _write_snapshot(inventory_dir, key, n_shards, folders)
    return n_shards, changed


# --- snapshot: telling that nothing changed without rebuilding the lists ----------------------------------

SNAPSHOT_FILE = "snapshot.json"
# Part of the snapshot's key: bump it whenever what decides a shard list's bytes changes (the scan's rules,
# the line format), so that a snapshot written by other code is never trusted.
_SNAPSHOT_FORMAT = 1


def _snapshot_key(
    inputs: Mapping[str, str | os.PathLike[str]], include: Sequence[str], exclude: Sequence[str]
) -> tuple[object, ...]:
    """Everything besides the file system that the shard lists depend on. The Python version is in it
    because the globs are compiled by ``fnmatch.translate``, whose output has changed between versions."""
    roots = tuple(sorted((name, str(Path(root).resolve())) for name, root in inputs.items()))
    return (_SNAPSHOT_FORMAT, sys.version_info[:2], roots, tuple(include), tuple(exclude))


def _outputs(inventory_dir: Path, n_shards: int) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file the scan writes: a list deleted or edited by hand means a full scan."""
    names = [f"{shard}.jsonl" for shard in shard_names(n_shards)] + [SIZES_FILE, LAYOUT_FILE]
    return {name: _size_mtime(os.stat(inventory_dir / name)) for name in names}


def _size_mtime(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


def _write_snapshot(inventory_dir: Path, key: tuple[object, ...], n_shards: int, folders: list[_Folder]) -> None:
    # Written last, after the lists it describes: a scan killed before this line leaves the previous
    # snapshot, whose recorded list mtimes no longer match, so the next parse scans in full.
    # JSON rather than pickle: results/ may be shared, and loading a pickle runs whatever it says.
    snapshot = {
        "key": key,
        "shards": n_shards,
        "outputs": _outputs(inventory_dir, n_shards),
        "folders": [tuple(folder) for folder in folders],
    }
    write_bytes_atomic(inventory_dir / SNAPSHOT_FILE, json.dumps(snapshot, separators=(",", ":")).encode())


def _unchanged_shard_count(inventory_dir: Path, key: tuple[object, ...]) -> int | None:
    """The recorded shard count if a scan now would write exactly the shard lists already there, else None.

    A full scan's lists are a function of the config (the key), of every scanned folder's entries (name
    and kind), and of each selected file's size and mtime (for a symlink: its target's, and whether it is
    acceptable). So this lists every recorded folder again (``scandir``: names and kinds, no stat) and
    stats every selected file, and compares both with what the previous scan saw; it builds no entry and
    reads no list. Listings first: added, removed and renamed photos, the usual change, are found before
    the stats, which are three quarters of the cost. Folder mtimes are not used to skip a listing (see
    docs/design.md): the per-file stat cannot be skipped anyway, since a file rewritten in place, or still
    being copied when the last scan ran, changes nothing in its folder.
    """
    try:
        snapshot = json.loads((inventory_dir / SNAPSHOT_FILE).read_bytes())
        if snapshot["key"] != _as_json(key):
            return None
        n_shards = snapshot["shards"]
        if _as_json(_outputs(inventory_dir, n_shards)) != snapshot["outputs"]:
            return None
        folders = snapshot["folders"]
        if not all(_listing_unchanged(path, listing) for path, listing, *_ in folders):
            return None
        if not all(_files_unchanged(path, files, stats, links) for path, _, files, stats, links in folders):
            return None
    except Exception:  # missing, unreadable or from other code: a full scan decides, and rewrites it
        return None
    return int(n_shards)


def _as_json(value: object) -> object:
    """``value`` as it reads back from the snapshot (tuples become lists)."""
    return json.loads(json.dumps(value))


def _listing_unchanged(path: str, listing: str | None) -> bool:
    if listing is None:
        return False
    try:
        with os.scandir(path) as it:
            # _kind written out: a function call per entry is a third of this loop.
            now = "\0".join(sorted([
                (_DIR if de.is_dir(follow_symlinks=False) else _LINK if de.is_symlink()
                 else _FILE if de.is_file(follow_symlinks=False) else _OTHER) + de.name
                for de in it
            ]))  # fmt: skip
    except OSError as exc:
        now = f"!{exc.strerror}"
    return now == listing


def _files_unchanged(
    path: str, files: str, stats: list[list[int]], links: list[tuple[str, str, int, int, str | None]]
) -> bool:
    prefix = path if path.endswith(os.sep) else path + os.sep  # as os.scandir joins a root of "/"
    paths = [prefix + name for name in files.split("\0")] if files else []
    try:
        if [[st.st_size, st.st_mtime_ns] for st in map(os.stat, paths)] != stats:
            return False
        for name, root, size, mtime_ns, error in links:
            problem = _symlink_problem(prefix + name, root)
            st = os.stat(prefix + name) if problem is None else os.lstat(prefix + name)
            if (st.st_size, st.st_mtime_ns, problem) != (size, mtime_ns, error):
                return False
    except OSError:
        return False
    return True
