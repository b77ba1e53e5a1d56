"""The verified local cache: where each model file lives, its sha256 checked once and then trusted through a
stamp beside it (size, mtime, inode, sha256), pins recorded in ``lock.json`` for files the registry leaves
unpinned, and the records the workflow's models rule hands to its jobs."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..media.fileio import write_bytes_atomic
from .registry import ModelError, ModelFile, ModelSpec, Resolved, spec_of

log = logging.getLogger(__name__)

CACHE_ENV = "CL_ML_TOOLS_MODEL_CACHE"
LOCK_NAME = "lock.json"
STAMP_SUFFIX = ".verified"


def cache_dir() -> Path:
    """The model cache: ``$CL_ML_TOOLS_MODEL_CACHE`` or ``~/.cache/cl_ml_tools/models``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cl_ml_tools" / "models"


def _target(spec: ModelSpec, f: ModelFile) -> Path:
    return cache_dir() / spec.id / f.name


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + STAMP_SUFFIX)


def _config_hint(model_id: str) -> str:
    return f"or point the config at a local copy:\n  models: {{{model_id}: {{path: /path/to/file}}}}"


def _describe_file(spec: ModelSpec, f: ModelFile, sha: str | None, size: int | None) -> str:
    where = f"  url:      {f.url}\n"
    if f.member:
        where += f"  member:   {f.member} (inside that zip archive)\n"
    where += f"  place at: {_target(spec, f)}\n"
    where += f"  sha256:   {sha or 'not pinned'}"
    if size is not None:
        where += f" ({size} bytes)"
    return where


# --------------------------------------------------------------------------------------------------- hashing


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _stat_key(st: os.stat_result) -> dict[str, int]:
    # The inode is part of the key because a replaced file gets a new one even when size and a coarse mtime
    # happen to match the old file's.
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: Mapping[str, Any]) -> bool:
    try:
        write_bytes_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
    except OSError as exc:
        # A read-only cache still works; it just costs a full hash on every use.
        log.debug("could not write %s: %s", path, exc)
        return False
    return True


def _remembered_sha(stamp: Mapping[str, Any] | None, st: os.stat_result) -> str | None:
    """The sha256 a stamp records, if the stamp describes the file as ``st`` finds it now."""
    key = _stat_key(st)
    if stamp is None or {k: stamp.get(k) for k in key} != key:
        return None
    sha = stamp.get("sha256")
    return sha if isinstance(sha, str) else None


def _stamped_sha(path: Path, st: os.stat_result) -> str | None:
    return _remembered_sha(_read_json(_stamp_path(path)), st)


def _write_stamp(path: Path, sha: str) -> None:
    with contextlib.suppress(OSError):
        _write_json(_stamp_path(path), {**_stat_key(path.stat()), "sha256": sha})


def _drop_stamp(path: Path) -> None:
    with contextlib.suppress(OSError):
        _stamp_path(path).unlink()


def _override_sha(path: Path, fresh: bool = False) -> str:
    """sha256 of a file named in the config, remembered in the cache by path, size, mtime and inode so that
    every workflow parse does not re-read a 170 MB network (``fresh`` ignores what was remembered)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    resolved = str(path.resolve())
    stamp_file = cache_dir() / "overrides" / (hashlib.sha256(resolved.encode()).hexdigest()[:32] + ".json")
    stamp = _read_json(stamp_file)
    if not fresh and stamp and stamp.get("path") == resolved and (sha := _remembered_sha(stamp, st)):
        return sha
    try:
        sha = _sha256_file(path)
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    _write_json(stamp_file, {**_stat_key(st), "path": resolved, "sha256": sha})
    return sha


# --------------------------------------------------------------------------------------------------- lock.json


@contextlib.contextmanager
def _lock_file() -> Iterator[None]:
    """Serialise read-modify-write of lock.json between threads and processes (parallel Snakemake jobs). A
    cache that cannot hold the lock file (read-only) is used unlocked: nothing can be written there anyway."""
    path = cache_dir() / (LOCK_NAME + ".lck")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock: FileLock | contextlib.nullcontext[None] = FileLock(path)
        lock.acquire()
    except OSError as exc:
        log.debug("lock.json unlocked: %s", exc)
        lock = contextlib.nullcontext()
    try:
        yield
    finally:
        if isinstance(lock, FileLock):
            lock.release()


def _lock_key(spec: ModelSpec, f: ModelFile) -> str:
    return f"{spec.id}/{f.name}"


def _locked(spec: ModelSpec, f: ModelFile) -> dict[str, Any] | None:
    data = _read_json(cache_dir() / LOCK_NAME) or {}
    entry = (data.get("files") or {}).get(_lock_key(spec, f))
    # An entry recorded for another URL describes another file: the registry moved on.
    if isinstance(entry, dict) and entry.get("url") == f.url and isinstance(entry.get("sha256"), str):
        return entry
    return None


def _record_lock(spec: ModelSpec, f: ModelFile, sha: str, size: int) -> None:
    path = cache_dir() / LOCK_NAME
    with _lock_file():
        data = _read_json(path) or {}
        files = data.setdefault("files", {})
        files[_lock_key(spec, f)] = {
            "sha256": sha,
            "size": size,
            "url": f.url,
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        data["version"] = 1
        saved = _write_json(path, data)
    log.warning(
        "model %s: %s has no sha256 pin in the registry; %s its sha256 %s (%d bytes), which later runs enforce",
        spec.id,
        f.name,
        f"recorded in {path}" if saved else f"could not record in {path}; this run accepted",
        sha,
        size,
    )


def _expected(spec: ModelSpec, f: ModelFile) -> tuple[str | None, int | None, str]:
    """The sha256 and size a file must have, and where that requirement comes from."""
    if f.sha256:
        return f.sha256, f.size, "pinned in the registry"
    entry = _locked(spec, f)
    if entry:
        size = entry.get("size")
        return entry["sha256"], size if isinstance(size, int) else f.size, f"recorded in {cache_dir() / LOCK_NAME}"
    return None, f.size, "not pinned"


# --------------------------------------------------------------------------------------------------- locate


class _Missing(ModelError):
    pass


class _Bad(ModelError):
    pass


def _installed(f: ModelFile) -> Path | None:
    """Where an installed package holds ``f``: a member of a wheel (a path under site-packages) whose package
    is importable here. The package is found, not imported."""
    if f.member is None or not f.url.endswith(".whl"):
        return None
    top, _, rest = f.member.partition("/")
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    for location in (found.submodule_search_locations or []) if found else []:
        candidate = Path(location) / rest
        if candidate.is_file():
            return candidate
    return None


def _copy_installed(spec: ModelSpec, f: ModelFile) -> bool:
    """Copy ``f`` into the cache from an installed package (the rapidocr wheel's networks), when its bytes
    match the registry's pin: no download for what pip already put on this machine. The cache keeps its own
    copy, so that its stamps and a later upgrade of the package leave each other alone."""
    source = _installed(f)
    if source is None or f.sha256 is None or source.stat().st_size != f.size or _sha256_file(source) != f.sha256:
        return False
    target = _target(spec, f)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _write_stamp(target, f.sha256)
    log.info("model %s: %s copied into the cache from the installed package (%s)", spec.id, f.name, source)
    return True


def _check_cached(spec: ModelSpec, f: ModelFile, *, full: bool) -> str:
    """Return the sha256 of the verified cached file, or raise _Missing / _Bad."""
    path = _target(spec, f)
    sha_pin, size_pin, origin = _expected(spec, f)
    try:
        st = path.stat()
    except FileNotFoundError:
        if _copy_installed(spec, f):
            return _check_cached(spec, f, full=full)
        raise _Missing(
            f"model {spec.id}: {f.name} is not in the cache. Run `cl-ml-tools models fetch {spec.id}` (needs the "
            f"network), or put {f.name}{' (extracted from the archive)' if f.member else ''} there by hand:\n"
            f"{_describe_file(spec, f, sha_pin, size_pin)}\n{_config_hint(spec.id)}"
        ) from None
    except OSError as exc:
        raise _Bad(f"model {spec.id}: cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _Bad(f"model {spec.id}: {path} is not a regular file")
    fix = (
        f"Delete it and run `cl-ml-tools models fetch {spec.id}`, or fetch it by hand:\n"
        f"{_describe_file(spec, f, sha_pin, size_pin)}\n{_config_hint(spec.id)}"
    )
    if size_pin is not None and st.st_size != size_pin:
        _drop_stamp(path)
        raise _Bad(f"model {spec.id}: cached {path} has {st.st_size} bytes, expected {size_pin} ({origin}). {fix}")
    if not full and sha_pin is not None:
        stamped = _stamped_sha(path, st)
        if stamped == sha_pin:
            return stamped
    try:
        sha = _sha256_file(path)
    except OSError as exc:
        raise _Bad(f"model {spec.id}: cannot read {path}: {exc.strerror or exc}") from None
    if sha_pin is None:
        _record_lock(spec, f, sha, st.st_size)
    elif sha != sha_pin:
        _drop_stamp(path)
        raise _Bad(f"model {spec.id}: cached {path} has sha256 {sha}, expected {sha_pin} ({origin}). {fix}")
    _write_stamp(path, sha)
    return sha


def _override_paths(spec: ModelSpec, given: Path) -> dict[str, Path]:
    """Where each file of an overridden model is: a directory holds them all by name; a file is the main
    file, with the others taken from beside it when there, else from the cache."""
    if given.is_dir():
        paths = {f.name: given / f.name for f in spec.files}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise ModelError(
                f"model {spec.id}: the config override {given} is a directory but lacks {', '.join(missing)}; "
                f"it must hold every file of the model: {', '.join(f.name for f in spec.files)}"
            )
        return paths
    if not given.is_file():
        raise ModelError(
            f"model {spec.id}: the config override path {given} does not exist "
            f"(config `models: {{{spec.id}: {{path: ...}}}}`)"
        )
    paths = {spec.files[0].name: given}
    for f in spec.files[1:]:
        beside = given.with_name(f.name)
        paths[f.name] = beside if beside.is_file() else _target(spec, f)
    return paths


def _resolve(model_id: str, overrides: Mapping[str, Path] | None, *, full: bool) -> Resolved:
    spec = spec_of(model_id)
    given = (overrides or {}).get(model_id)
    if given is None:
        shas = [_check_cached(spec, f, full=full) for f in spec.files]
        paths = {f.name: _target(spec, f) for f in spec.files}
        return Resolved(spec, paths[spec.files[0].name], paths, combined(shas), override=False)

    paths = _override_paths(spec, Path(given))
    shas = []
    for f in spec.files:
        path = paths[f.name]
        if path == _target(spec, f):
            sha = _check_cached(spec, f, full=full)
        else:
            sha = _override_sha(path, fresh=full)
            if f.sha256 and sha != f.sha256:
                log.warning(
                    "model %s: using %s from the config override, whose sha256 %s differs from the registry pin %s",
                    spec.id,
                    path,
                    sha,
                    f.sha256,
                )
        shas.append(sha)
    return Resolved(spec, paths[spec.files[0].name], paths, combined(shas), override=True)


def combined(shas: Sequence[str]) -> str:
    """A model's sha256 from its files': the file's own for a model of one file; for several (PP-OCR's three
    networks, the text tower and its tokenizer) the sha256 of theirs in registry order, so that another
    recogniser beside the same detector is another model, in the params and in the ``model`` column."""
    if len(shas) == 1:
        return shas[0]
    return hashlib.sha256(" ".join(shas).encode()).hexdigest()


def locate(model_id: str, overrides: Mapping[str, Path] | None = None) -> Resolved:
    """The model's files, verified, without any network access. A config override is used as given (with a
    warning when it differs from the pin); otherwise the cached files must match their pins."""
    return _resolve(model_id, overrides, full=False)


def verify(model_id: str, overrides: Mapping[str, Path] | None = None) -> Resolved:
    """Like :func:`locate` but re-hashes every file, ignoring the stamps."""
    return _resolve(model_id, overrides, full=True)


def identity(model_id: str, overrides: Mapping[str, Path] | None = None) -> str:
    """The sha256 that identifies the model (:func:`combined` over its files), for Snakemake rule params. Runs
    at every workflow parse, so a pinned registry model costs no file access at all; an overridden file is
    hashed once and remembered."""
    spec = spec_of(model_id)
    given = (overrides or {}).get(model_id)
    paths = _override_paths(spec, Path(given)) if given is not None else {}
    shas = []
    for f in spec.files:
        path = paths.get(f.name)
        if path is not None and path != _target(spec, f):
            shas.append(_override_sha(path))
        elif f.sha256:
            shas.append(f.sha256)
        else:
            # No pin: the sha256 recorded on the first download identifies it (one small read of lock.json).
            entry = _locked(spec, f)
            shas.append(entry["sha256"] if entry else f"unpinned:{f.url}")
    return combined(shas)


def cache_state(model_id: str, overrides: Mapping[str, Path] | None = None) -> tuple[str, Path]:
    """For listings, from ``stat`` alone: ``override``, ``verified`` (every file matches a stamp of its pin),
    ``cached`` (present with the right size, not hashed yet), ``installed`` (some file not in the cache but
    in an installed package, with the right size), ``bad-size`` or ``missing``; and the main file's path."""
    spec = spec_of(model_id)
    given = (overrides or {}).get(model_id)
    if given is not None:
        return "override", Path(given)
    state = "verified"
    for f in spec.files:
        path = _target(spec, f)
        sha_pin, size_pin, _ = _expected(spec, f)
        try:
            st = path.stat()
        except OSError:
            installed = _installed(f)
            if installed is not None and size_pin is not None and installed.stat().st_size == size_pin:
                state = "installed"  # copied into the cache, and verified, on first use
                continue
            return "missing", _target(spec, spec.files[0])
        if size_pin is not None and st.st_size != size_pin:
            state = "bad-size"
        elif state == "verified" and (sha_pin is None or _stamped_sha(path, st) != sha_pin):
            state = "cached"
    return state, _target(spec, spec.files[0])


# --------------------------------------------------------------------------------------------------- records


def write_record(resolved: Resolved, path: str | os.PathLike[str]) -> None:
    """Write what a job needs to load the model without looking anything up again: the workflow's models
    rule fetches on the machine that has the network and hands this record to the jobs."""
    record = {
        "id": resolved.id,
        "version": resolved.spec.version,
        "sha256": resolved.sha256,
        "tag": resolved.tag,
        "override": resolved.override,
        "path": os.path.abspath(resolved.path),
        "files": {
            name: {"path": os.path.abspath(p), "size": Path(p).stat().st_size} for name, p in resolved.paths.items()
        },
    }
    write_bytes_atomic(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


def read_record(path: str | os.PathLike[str]) -> Resolved:
    """The :class:`Resolved` a record describes. Only a ``stat`` per file checks that the files are still
    the ones recorded; the models rule verified their sha256 when it wrote the record."""
    data = _read_json(Path(path))
    if data is None or not isinstance(data.get("files"), dict) or not isinstance(data.get("sha256"), str):
        raise ModelError(f"{path} is not a model record written by cl_ml_tools.models.write_record")
    spec = spec_of(str(data.get("id")))
    paths: dict[str, Path] = {}
    for f in spec.files:
        entry = data["files"].get(f.name)
        if not isinstance(entry, dict) or "path" not in entry:
            raise ModelError(f"model record {path} lacks {f.name}; delete it so that the models rule runs again")
        file_path = Path(entry["path"])
        try:
            size = file_path.stat().st_size
        except OSError:
            size = None
        if size != entry.get("size"):
            now = "missing" if size is None else f"{size} bytes, recorded {entry.get('size')}"
            raise ModelError(
                f"model {spec.id}: {file_path} changed since {path} was written ({now}); delete {path} so that "
                f"the models rule fetches and verifies the model again"
            )
        paths[f.name] = file_path
    return Resolved(spec, paths[spec.files[0].name], paths, data["sha256"], override=bool(data.get("override")))
