"""A shard job keeps the rows of the files it has already processed and computes only the rest (issue 26).

A file's rows are reused when its *inputs digest* is unchanged: the SHA-256 of its shard-list entry or
``files`` row (media id, input, path, size, mtime in ns, what it was sniffed as) and of every row the step
reads for it (its ``thumbnails`` rows for ``faces``, its ``faces`` rows for ``face_embeddings``), and the
job's *fingerprint* is unchanged: the step, its table version, its rule's params (settings, model sha256)
and the fingerprints of the parts it reads, so that a change anywhere upstream reaches every later step.
docs/design.md, "Reuse inside a shard", says why this cannot give a stale row.

Snakemake deletes a job's outputs before it runs, so what an earlier job made is kept in a *reuse folder*
under the results, ``results/reuse/<step>/<shard>/``: a hard link to the part, a tree of hard links to
what the step wrote besides its rows (images, crops, renditions), and ``index.json`` (fingerprint, the out
folder, each file's inputs digest). It is replaced whole, by rename, after the new part is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..data import tables
from ..data.inventory import Entry
from .common import Row

log = logging.getLogger(__name__)

FINGERPRINT_KEY = b"cl_ml_tools.fingerprint"
DIGESTS_KEY = b"cl_ml_tools.inputs"
"""Part metadata: each file's inputs digest, which a step reading the part folds into its own digest of the
file (dino reads only thumbnails rows, which name a preview, not the bytes it was made from)."""
COUNTS_KEY = b"cl_ml_tools.reuse"
"""Part metadata: ``{"reused": files, "computed": files}`` of the job that wrote it."""
FORMAT = 1
"""Of ``index.json``: a reuse folder of another format is ignored (everything is computed)."""


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


def by_file(rows: Iterable[Row]) -> dict[str, list[Row]]:
    grouped: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        grouped[row["media_id"]].append(row)
    return grouped


def digests(
    files: Sequence[Mapping[str, Any] | Entry],
    reads: Mapping[str, Sequence[Row]],
    upstream: Mapping[str, Mapping[str, str]],
) -> dict[str, str]:
    """Each file's inputs digest: its own entry or row, the rows of the parts read for it, and the inputs
    digests those parts recorded for it (``upstream``: by part, then by media id), so that the chain reaches
    back to the file's size and mtime whatever the rows in between say."""
    read_by_file = {name: by_file(rows) for name, rows in sorted(reads.items())}
    out = {}
    for f in files:
        mid = media_id(f)
        h = hashlib.sha256(_canonical(f).encode("utf-8", "surrogateescape"))
        for name, grouped in read_by_file.items():
            h.update(f"\0{name}\0".encode())
            for row in grouped.get(mid, []):
                h.update(_canonical(row).encode("utf-8", "surrogateescape"))
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


def reusable(folder: Path, fingerprint: str, wanted: Mapping[str, str], out: Path | None) -> dict[str, list[Row]]:
    """The rows of the earlier job (in ``folder``) that may stand for this one's: files whose inputs digest
    is in ``wanted`` unchanged, under the same fingerprint, whose written files are all still there. Those
    files are linked into ``out`` again, under the names the rows give."""
    try:
        index = json.loads((folder / "index.json").read_text())
    except (OSError, ValueError):
        return {}
    here = str(out.resolve()) if out is not None else None
    if index.get("format") != FORMAT or index.get("fingerprint") != fingerprint or index.get("out") != here:
        return {}
    known = index["files"]
    candidates = {mid for mid, d in wanted.items() if known.get(mid) == d}
    if not candidates:
        return {}
    rows = by_file(r for r in tables.read_part(folder / "part.parquet") if r["media_id"] in candidates)
    kept = {mid: rows.get(mid, []) for mid in candidates}
    if out is None:
        return kept
    owned = _owned(folder / "out")
    prefix = here + os.sep
    out.mkdir(parents=True, exist_ok=True)
    result = {}
    for mid, file_rows in kept.items():
        names = {p.name for p in owned.get(mid, [])}
        mentioned = {s for r in file_rows for s in _strings(r) if s.startswith(prefix)}
        if any(os.path.relpath(s, here).split(os.sep)[0] not in names for s in mentioned):
            continue  # something a row names is gone: compute the file again
        for src in owned.get(mid, []):
            _link(src, out / src.name)
        result[mid] = file_rows
    return result


def save(folder: Path, part: Path, out: Path | None, fingerprint: str, digests: Mapping[str, str]) -> None:
    """Replace the reuse folder with one for the part just written. It is built beside and renamed into
    place; a job killed in between leaves no folder (the next job computes everything) or the old one, whose
    index still describes its own part and files."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    old = folder.with_name(f".{folder.name}.old")
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    _link_or_copy(str(part), str(tmp / "part.parquet"))
    if out is not None and out.is_dir():
        (tmp / "out").mkdir()
        for paths in _owned(out).values():
            for src in paths:
                _link(src, tmp / "out" / src.name)
    index = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "out": str(out.resolve()) if out is not None else None,
        "files": dict(digests),
    }
    (tmp / "index.json").write_text(json.dumps(index))
    if folder.exists():
        os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def run(
    files: Sequence[Mapping[str, Any] | Entry],
    reads: Mapping[str, Sequence[Row]],
    upstream: Mapping[str, Mapping[str, str]],
    fingerprint: str,
    folder: Path,
    out: Path | None,
    compute: Callable[[Sequence[Any], Mapping[str, Sequence[Row]]], list[Row]],
) -> tuple[list[Row], dict[str, str], dict[str, str], dict[str, int]]:
    """The job's rows in file order: those of unchanged files from the reuse folder, the rest from
    ``compute(files, reads)`` on the changed files and their read rows only. Also returns every file's
    inputs digest (for the part), those the reuse folder may offer next time (files with an error row are
    left out: an error may be passing, a permission or a file still being copied, and costs little to
    retry) and the counts of files reused and computed."""
    if not files:
        # Steps with no ``files`` input (dino, clip, face_embeddings) work on the files their read rows are of.
        files = [rows[0] for rows in by_file(r for name in sorted(reads) for r in reads[name]).values()]
    wanted = digests(files, reads, upstream)
    reused = reusable(folder, fingerprint, wanted, out)
    todo = [f for f in files if media_id(f) not in reused]
    ids = {media_id(f) for f in todo}
    todo_reads = {name: [r for r in rows if r["media_id"] in ids] for name, rows in reads.items()}
    computed = by_file(compute(todo, todo_reads) if todo else [])
    rows = [r for f in files for r in (reused.get(media_id(f)) or computed.get(media_id(f), []))]
    failed = {r["media_id"] for r in rows if r.get("status") == tables.STATUS_ERROR}
    record = {mid: d for mid, d in wanted.items() if mid not in failed}
    counts = {"reused": len(files) - len(todo), "computed": len(todo)}
    log.info("reuse: %d files reused, %d computed", counts["reused"], counts["computed"])
    return rows, wanted, record, counts
