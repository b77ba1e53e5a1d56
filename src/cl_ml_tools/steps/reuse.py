"""A shard job keeps the rows of the files it has already processed and computes only the rest (issue 26).

A file's rows are reused when its *inputs digest* is unchanged: the SHA-256 of what the step's rows for it
follow from, and the job's *fingerprint* is unchanged: the step, its table version, its rule's params
(settings, model sha256) and the fingerprints of the parts it reads, so that a change anywhere upstream
reaches every later step. For ``files`` and ``exif`` the digest covers the file's path, size and mtime; for
every other step (``by_content``) it covers the file's bytes (the ``files`` row's SHA-256) and the rows the
step reads for it with the file's own name taken out, so a file moved, renamed or copied, to this shard or
from another, takes the rows made for the same bytes: renamed to its media id and path, its images linked
under its own names. docs/design.md, "Reuse inside a shard", says why this cannot give a stale row.

Snakemake deletes a job's outputs before it runs, so what an earlier job made is kept in a *reuse folder*
under the results, ``results/reuse/<step>/<shard>/``: a hard link to the part, a tree of hard links to
what the step wrote besides its rows (images, crops, renditions), and ``index.json`` (fingerprint, the out
folder, each file's inputs digest). It is replaced whole, by rename, after the new part is written. Files
that left the shard stay in it for one more job of that shard (``departed``), so that the job of the shard
a file moved to finds them whichever of the two runs first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..data import tables
from ..data.inventory import Entry
from ..media.sniff import media_kind
from .common import Row

log = logging.getLogger(__name__)

FINGERPRINT_KEY = b"cl_ml_tools.fingerprint"
DIGESTS_KEY = b"cl_ml_tools.inputs"
"""Part metadata: each file's inputs digest, which a step reading the part folds into its own digest of the
file (dino reads only thumbnails rows, which name a preview, not the bytes it was made from)."""
COUNTS_KEY = b"cl_ml_tools.reuse"
"""Part metadata: ``{"reused": files, "moved": files, "computed": files}`` of the job that wrote it
(``moved``: rows taken from another media id with the same inputs digest)."""
FORMAT = 2
"""Of ``index.json``: a reuse folder of another format is ignored (everything is computed)."""
_FILE_COLUMNS = frozenset({"media_id", "input", "path"})
"""The columns every table repeats from the file's ``files`` row: its name, not its content."""


def media_id(item: Mapping[str, Any] | Entry) -> str:
    return item.media_id if isinstance(item, Entry) else item["media_id"]


def part_fingerprint(path: str | os.PathLike[str]) -> str | None:
    """The fingerprint a part was written with (None for parts from before reuse)."""
    value = (pq.read_schema(path).metadata or {}).get(FINGERPRINT_KEY)
    return value.decode() if value else None


def part_digests(path: str | os.PathLike[str]) -> dict[str, str]:
    """The inputs digests a part was written with (none for parts from before reuse)."""
    value = (pq.read_schema(path).metadata or {}).get(DIGESTS_KEY)
    return json.loads(value) if value else {}


def fingerprint(step: str, params: Mapping[str, Any], reads: Mapping[str, str | os.PathLike[str]]) -> str:
    """What every row of the job depends on besides the file itself and the rows it reads for that file."""
    upstream = {name: part_fingerprint(path) for name, path in sorted(reads.items())}
    text = json.dumps(
        {"step": step, "version": tables.VERSIONS[step], "params": params, "reads": upstream},
        sort_keys=True,
        default=repr,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(row: Mapping[str, Any] | Entry) -> str:
    items = row._asdict().items() if isinstance(row, Entry) else row.items()
    return repr(sorted(items))


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """``value`` with ``fn`` applied to every string in it (HLS variants hold their playlists' paths in a list
    of structs)."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, Mapping):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_map_strings(v, fn) for v in value]
    return value


def _nameless(value: Any, mid: str) -> Any:
    """``value`` with the file's name taken out: what a step wrote for the file is named after its media id
    (``<out>/<id>.preview.jpg``, ``<out>/<id>/master.m3u8``), so such a path keeps only its part from the id
    on, which is the same in every shard's out folder."""

    def cut(text: str) -> str:
        at = text.find(mid)
        return text if at < 0 else "<id>" + text[at + len(mid) :].replace(mid, "<id>")

    return _map_strings(value, cut)


def _content(row: Mapping[str, Any], mid: str) -> str:
    return repr(sorted((k, _nameless(v, mid)) for k, v in row.items() if k not in _FILE_COLUMNS))


def _identity(item: Mapping[str, Any] | Entry, by_content: bool) -> str:
    """What stands for the file itself in its digest: its shard-list entry or ``files`` row (path, size,
    mtime) or, by content, the SHA-256 of its bytes and what they were sniffed as. A ``files`` row without a
    SHA-256 (unreadable) keeps its path; a read row standing for the file (dino's thumbnails row) is covered
    with the rest of the reads."""
    if not by_content or isinstance(item, Entry):
        return _canonical(item)
    if item.get("sha256"):
        content = ("bytes", item["sha256"], item.get("kind"), item.get("format"))
        # Bytes the sniff does not recognise (AVCHD's .MTS, a text file named .jpg) are treated as the kind
        # their name claims, so that kind is part of what they are; recognised bytes keep their old digest.
        claimed = media_kind(str(item.get("kind")), str(item.get("path", "")))
        return repr(content if claimed == item.get("kind") else (*content, claimed))
    return _canonical(item) if "sha256" in item else ""


def by_file(rows: Iterable[Row]) -> dict[str, list[Row]]:
    grouped: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        grouped[row["media_id"]].append(row)
    return grouped


def digests(
    files: Sequence[Mapping[str, Any] | Entry],
    reads: Mapping[str, Sequence[Row]],
    upstream: Mapping[str, Mapping[str, str]],
    by_content: bool = False,
) -> dict[str, str]:
    """Each file's inputs digest: its own entry or row, the rows of the parts read for it, and the inputs
    digests those parts recorded for it (``upstream``: by part, then by media id), so that the chain reaches
    back to the file's bytes (or size and mtime) whatever the rows in between say. ``by_content``: the
    file's name (media id, path) is left out, so the same bytes give the same digest at any path."""
    read_by_file = {name: by_file(rows) for name, rows in sorted(reads.items())}
    out = {}
    for f in files:
        mid = media_id(f)
        h = hashlib.sha256(b"content\0" if by_content else b"")
        h.update(_identity(f, by_content).encode("utf-8", "surrogateescape"))
        for name, grouped in read_by_file.items():
            h.update(f"\0{name}\0".encode())
            for row in grouped.get(mid, []):
                text = _content(row, mid) if by_content else _canonical(row)
                h.update(text.encode("utf-8", "surrogateescape"))
        for name, recorded in sorted(upstream.items()):
            h.update(f"\0{name}\0{recorded.get(mid, '')}".encode())
        out[mid] = h.hexdigest()
    return out


def _strings(value: Any) -> Iterable[str]:
    """Every string inside a row's value (HLS variants hold their playlists' paths in a list of structs)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _link(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_link_or_copy)
    else:
        _link_or_copy(str(src), str(dst))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _owned(folder: Path) -> dict[str, list[Path]]:
    """What each file owns in a step's out folder: every step names what it writes there after the file's
    media id (``<id>.preview.jpg``, ``<id>.f000.00.jpg``, the rendition folder ``<id>/``); hidden names are
    temporary work (``.<id>.tmp``) and belong to no one."""
    owned: dict[str, list[Path]] = defaultdict(list)
    if folder.is_dir():
        for entry in os.scandir(folder):
            if not entry.name.startswith("."):
                owned[entry.name.partition(".")[0]].append(Path(entry.path))
    return owned


def _renamed(value: Any, old: str, new: str, old_out: str | None, new_out: str | None) -> Any:
    """``value`` with file ``old``'s name replaced by ``new``'s, and its paths in ``old_out`` moved to
    ``new_out``."""

    def rename(text: str) -> str:
        if old_out is not None and new_out is not None and text.startswith(old_out + os.sep + old):
            text = new_out + os.sep + new + text[len(old_out) + len(os.sep) + len(old) :]
        return text.replace(old, new)

    return _map_strings(value, rename)


@dataclass
class _Folder:
    """One earlier job's reuse folder, read as it was when opened: it is replaced by rename, never changed in
    place, so ``index.json``'s inode tells whether it has been replaced since."""

    path: Path
    index: dict[str, Any]
    inode: int
    offers: dict[str, str] = field(init=False, repr=False)
    """The digest of every file it can offer: those of its shard, then those that left it in its job."""
    _owned: dict[str, list[Path]] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: Path, fingerprint: str, out: str | None) -> _Folder | None:
        try:
            inode = (path / "index.json").stat().st_ino
            index = json.loads((path / "index.json").read_text())
        except (OSError, ValueError):
            return None
        if index.get("format") != FORMAT or index.get("fingerprint") != fingerprint or index.get("out") != out:
            return None
        return cls(path, index, inode)

    @property
    def out(self) -> str | None:
        return self.index["out"]

    def __post_init__(self) -> None:
        self.offers = {**self.index["departed"], **self.index["files"]}

    def rows(self, mids: set[str]) -> dict[str, list[Row]]:
        kept: dict[str, list[Row]] = {mid: [] for mid in mids}
        for part, offered in (("part.parquet", self.index["files"]), ("departed.parquet", self.index["departed"])):
            if mids & offered.keys():
                for row in tables.read_part(self.path / part):
                    if row["media_id"] in mids and row["media_id"] in offered:
                        kept[row["media_id"]].append(row)
        return kept

    def owned(self) -> dict[str, list[Path]]:
        if self._owned is None:
            self._owned = _owned(self.path / "out")
        return self._owned

    def unchanged(self) -> bool:
        try:
            return (self.path / "index.json").stat().st_ino == self.inode
        except OSError:
            return False


def _take(
    earlier: _Folder,
    wanted: Mapping[str, str],
    sources: Mapping[str, str],
    files: Mapping[str, Mapping[str, Any] | Entry],
    out: Path | None,
    made: list[Path],
) -> dict[str, list[Row]]:
    """The rows of ``earlier``'s file ``sources[mid]`` for each file ``mid``, renamed to it, with what they
    name linked into ``out`` under its names (added to ``made``); a file one of whose named files is gone is
    left out."""
    rows = earlier.rows(set(sources.values()))
    here = str(out.resolve()) if out is not None else None
    result = {}
    for mid, old in sources.items():
        if earlier.offers.get(old) != wanted[mid]:
            continue
        file_rows = rows[old]
        if old != mid:
            f = files[mid]
            name = {"input": f.input, "path": f.path} if isinstance(f, Entry) else {k: f[k] for k in ("input", "path")}
            file_rows = [{**_renamed(r, old, mid, earlier.out, here), "media_id": mid, **name} for r in file_rows]
        if out is None:
            result[mid] = file_rows
            continue
        assert here is not None
        sources_owned = earlier.owned().get(old, [])
        names = {p.name.replace(old, mid, 1) for p in sources_owned}
        prefix = here + os.sep
        mentioned = {s for r in file_rows for s in _strings(r) if s.startswith(prefix)}
        if any(os.path.relpath(s, here).split(os.sep)[0] not in names for s in mentioned):
            continue  # something a row names is gone: compute the file again
        linked = []
        try:
            for src in sources_owned:
                dst = out / src.name.replace(old, mid, 1)
                _link(src, dst)
                linked.append(dst)
        except OSError:
            for dst in linked:  # the folder was replaced under us (another shard's job): compute instead
                _remove(dst)
            continue
        made.extend(linked)
        result[mid] = file_rows
    return result


def reusable(
    folder: Path,
    fingerprint: str,
    wanted: Mapping[str, str],
    out: Path | None,
    files: Mapping[str, Mapping[str, Any] | Entry] | None = None,
    by_content: bool = False,
) -> tuple[dict[str, list[Row]], int]:
    """The rows that may stand for this job's (and how many of them were taken from another media id): those
    of the files whose inputs digest in ``wanted`` the earlier job of this shard (``folder``) recorded
    unchanged, under the same fingerprint, whose written files are all still there; ``by_content``, also
    those of other files with the same digest, in this folder or in another shard's of the same step (a file
    moved, renamed or copied). What the rows name is linked into ``out`` again, under the names they give."""
    files = files if files is not None else {}
    here = str(out.resolve()) if out is not None else None
    out_dir = out.resolve().parent if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    result: dict[str, list[Row]] = {}
    own = _Folder.open(folder, fingerprint, here)
    if own is not None:
        same = {mid: mid for mid, d in wanted.items() if own.offers.get(mid) == d}
        if same:
            result.update(_take(own, wanted, same, files, out, []))
    missing = {mid: d for mid, d in wanted.items() if mid not in result}
    moved = 0
    if not by_content or not missing:
        return result, moved
    others = sorted(p for p in folder.parent.glob("*") if p.is_dir() and p != folder and not p.name.startswith("."))
    for path in ([folder] if own is not None else []) + others:
        earlier = own if path == folder else _Folder.open(path, fingerprint, _sibling(out_dir, path.name))
        if earlier is None:
            continue
        holders = defaultdict(list)
        for old, d in earlier.offers.items():
            holders[d].append(old)
        sources = {mid: old for mid, d in missing.items() if (old := next((o for o in holders[d] if o != mid), None))}
        if not sources:
            continue
        made: list[Path] = []
        taken = _take(earlier, wanted, sources, files, out, made)
        if earlier is not own and not earlier.unchanged():
            for link in made:  # replaced while read (its shard's job saved): its rows may not match its files
                _remove(link)
            continue
        result.update(taken)
        moved += len(taken)
        missing = {mid: d for mid, d in missing.items() if mid not in taken}
        if not missing:
            break
    return result, moved


def _sibling(out_dir: Path | None, shard: str) -> str | None:
    """The out folder another shard's job of the same step writes (``results/<step>/<shard>``)."""
    return str(out_dir / shard) if out_dir is not None else None


def save(
    folder: Path,
    part: Path,
    out: Path | None,
    fingerprint: str,
    digests: Mapping[str, str],
    departed: Mapping[str, str] | None = None,
) -> None:
    """Replace the reuse folder with one for the part just written, keeping from the one it replaces the
    files that left the shard (``departed``: their digests, taken from the old index) for the job of the
    shard they went to. It is built beside and renamed into place; a job killed in between leaves no folder
    (the next job computes everything) or the old one, whose index still describes its own part and files."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    old = folder.with_name(f".{folder.name}.old")
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    _link_or_copy(str(part), str(tmp / "part.parquet"))
    departed = dict(departed or {})
    if departed:
        try:
            _link_or_copy(str(folder / "part.parquet"), str(tmp / "departed.parquet"))
        except OSError:
            departed = {}
    if out is not None:
        (tmp / "out").mkdir()
        sources = [_owned(out)]
        if departed:
            sources.append({mid: paths for mid, paths in _owned(folder / "out").items() if mid in departed})
        for owned in sources:
            for paths in owned.values():
                for src in paths:
                    _link(src, tmp / "out" / src.name)
    index = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "out": str(out.resolve()) if out is not None else None,
        "files": dict(digests),
        "departed": departed,
    }
    (tmp / "index.json").write_text(json.dumps(index))
    if folder.exists():
        os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def departed(folder: Path, fingerprint: str, out: Path | None, files: Iterable[str]) -> dict[str, str]:
    """The files the earlier job of this shard offered that this one no longer has (deleted, or moved to
    another shard), with their digests: :func:`save` keeps them one job longer."""
    earlier = _Folder.open(folder, fingerprint, str(out.resolve()) if out is not None else None)
    if earlier is None:
        return {}
    here = set(files)
    return {mid: d for mid, d in earlier.index["files"].items() if mid not in here}


def run(
    files: Sequence[Mapping[str, Any] | Entry],
    reads: Mapping[str, Sequence[Row]],
    upstream: Mapping[str, Mapping[str, str]],
    fingerprint: str,
    folder: Path,
    out: Path | None,
    compute: Callable[[Sequence[Any], Mapping[str, Sequence[Row]]], list[Row]],
    by_content: bool = False,
) -> tuple[list[Row], dict[str, str], dict[str, str], dict[str, int]]:
    """The job's rows in file order: those of unchanged files from the reuse folders, the rest from
    ``compute(files, reads)`` on the changed files and their read rows only. Also returns every file's
    inputs digest (for the part), those the reuse folder may offer next time (files with an error row are
    left out: an error may be passing, a permission or a file still being copied, and costs little to
    retry) and the counts of files reused (``moved``: of those, from another media id) and computed."""
    if not files:
        # Steps with no ``files`` input (dino, clip, face_embeddings) work on the files their read rows are of.
        files = [rows[0] for rows in by_file(r for name in sorted(reads) for r in reads[name]).values()]
    wanted = digests(files, reads, upstream, by_content)
    by_id = {media_id(f): f for f in files}
    reused, moved = reusable(folder, fingerprint, wanted, out, by_id, by_content)
    todo = [f for f in files if media_id(f) not in reused]
    ids = {media_id(f) for f in todo}
    todo_reads = {name: [r for r in rows if r["media_id"] in ids] for name, rows in reads.items()}
    computed = by_file(compute(todo, todo_reads) if todo else [])
    rows = [r for f in files for r in (reused.get(media_id(f)) or computed.get(media_id(f), []))]
    failed = {r["media_id"] for r in rows if r.get("status") == tables.STATUS_ERROR}
    record = {mid: d for mid, d in wanted.items() if mid not in failed}
    counts = {"reused": len(files) - len(todo) - moved, "moved": moved, "computed": len(todo)}
    log.info("reuse: %d files reused, %d moved, %d computed", counts["reused"], counts["moved"], counts["computed"])
    return rows, wanted, record, counts
