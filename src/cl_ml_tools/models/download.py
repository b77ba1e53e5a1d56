"""Downloads into the cache: streamed to a temporary file beside the target, hashed on the way, members taken
out of zip archives safely, and renamed into place only once verified."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import stat
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any

from .cache import (
    _Bad,
    _check_cached,
    _config_hint,
    _describe_file,
    _drop_stamp,
    _expected,
    _Missing,
    _override_paths,
    _record_lock,
    _target,
    _write_stamp,
    locate,
)
from .registry import ModelError, ModelFile, ModelSpec, Resolved, notice, spec_of

log = logging.getLogger(__name__)

# Set (to anything but "" or "0") on machines that must never try the network, e.g. cluster nodes: a missing
# model then fails at once with the same message instead of waiting on a connection.
OFFLINE_ENV = "CL_ML_TOOLS_OFFLINE"
TIMEOUT_S = 30
CHUNK = 1 << 20


def _progress_bar(total: int | None, desc: str, progress: bool) -> Any:
    enabled = progress and sys.stderr.isatty()
    try:
        from tqdm import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        return contextlib.nullcontext(None)
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False)


def _stream(src: IO[bytes], dst: IO[bytes], limit: int | None, bar: Any) -> tuple[str, int]:
    """Copy src to dst, hashing; stop as soon as more than ``limit`` bytes arrive (a wrong file)."""
    h = hashlib.sha256()
    n = 0
    while chunk := src.read(CHUNK):
        n += len(chunk)
        if limit is not None and n > limit:
            return h.hexdigest(), n
        h.update(chunk)
        dst.write(chunk)
        if bar is not None:
            bar.update(len(chunk))
    return h.hexdigest(), n


def _temp_beside(target: Path, suffix: str) -> tuple[IO[bytes], Path]:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    return os.fdopen(fd, "wb"), Path(name)


def _download(spec: ModelSpec, f: ModelFile, dest: IO[bytes], limit: int | None, progress: bool) -> tuple[str, int]:
    sha_pin, size_pin, _ = _expected(spec, f)

    def failure(reason: str) -> ModelError:
        return ModelError(
            f"model {spec.id}: cannot download {f.name}: {reason}\n{_describe_file(spec, f, sha_pin, size_pin)}\n"
            f"Put a copy of {f.name}{' (extracted from that archive)' if f.member else ''} at that path by hand, "
            f"{_config_hint(spec.id)}"
        )

    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise failure(f"downloads are switched off ({OFFLINE_ENV} is set)")
    from .. import __version__  # read from the package metadata only when something is downloaded

    request = urllib.request.Request(f.url, headers={"User-Agent": f"cl_ml_tools/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with _progress_bar(total, f"{spec.id}/{f.name}", progress) as bar:
                sha, n = _stream(response, dest, limit, bar)
    except urllib.error.HTTPError as exc:
        raise failure(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise failure(str(exc.reason)) from None
    except TimeoutError:
        raise failure(f"no answer within {TIMEOUT_S} s") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise failure(str(exc) or type(exc).__name__) from None
    # http.client returns a short body without complaint when the connection drops early.
    if total is not None and n < total:
        raise failure(f"the connection closed after {n} of {total} bytes")
    return sha, n


def _check_download(spec: ModelSpec, f: ModelFile, sha: str, size: int, what: str) -> None:
    sha_pin, size_pin, origin = _expected(spec, f)
    problem = None
    if size_pin is not None and size != size_pin:
        problem = f"{what} has {'at least ' if size > size_pin else ''}{size} bytes, expected {size_pin} ({origin})"
    elif sha_pin is not None and sha != sha_pin:
        problem = f"{what} has sha256 {sha}, expected {sha_pin} ({origin})"
    if problem:
        raise ModelError(
            f"model {spec.id}: {f.name} from {f.url} failed verification: {problem}. Nothing was saved. If the "
            f"upstream file changed on purpose, update the registry pin{' (or lock.json)' if not f.sha256 else ''}; "
            f"otherwise place a good copy by hand:\n{_describe_file(spec, f, sha_pin, size_pin)}\n"
            f"{_config_hint(spec.id)}"
        )
    if sha_pin is None:
        _record_lock(spec, f, sha, size)


def _zip_entry(spec: ModelSpec, f: ModelFile, archive: zipfile.ZipFile) -> zipfile.ZipInfo:
    """The archive entry holding ``f.member``: the exact path, else the one entry with that base name.
    Entries that could escape a folder or are links are refused even though the bytes are written to a path
    of our choosing, because such an archive is not the one the pin describes."""
    assert f.member is not None
    wanted = PurePosixPath(f.member.replace("\\", "/")).name
    infos = archive.infolist()
    matches = [i for i in infos if i.filename == f.member]
    if not matches:
        matches = [i for i in infos if PurePosixPath(i.filename.replace("\\", "/")).name == wanted]
    if not matches:
        raise ModelError(
            f"model {spec.id}: the archive at {f.url} has no member {f.member!r}; it holds "
            f"{', '.join(i.filename for i in infos[:20]) or 'nothing'}"
        )
    if len(matches) > 1:
        raise ModelError(
            f"model {spec.id}: the archive at {f.url} has several members named {wanted!r}: "
            f"{', '.join(i.filename for i in matches)}"
        )
    info = matches[0]
    name = info.filename.replace("\\", "/")
    mode = info.external_attr >> 16
    reason = None
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        reason = "an absolute path"
    elif ".." in name.split("/"):
        reason = "a '..' component"
    elif stat.S_ISLNK(mode):
        reason = "a symbolic link"
    elif info.is_dir() or stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # archives made on Windows carry no type
        reason = "not a regular file"
    if reason:
        raise ModelError(f"model {spec.id}: refusing archive member {info.filename!r} from {f.url}: it is {reason}")
    return info


def _fetch_file(spec: ModelSpec, f: ModelFile, progress: bool) -> None:
    target = _target(spec, f)
    sha_pin, size_pin, _ = _expected(spec, f)
    temps: list[Path] = []
    try:
        if f.member is None:
            fh, tmp = _temp_beside(target, ".part")
            temps.append(tmp)
            with fh:
                sha, size = _download(spec, f, fh, size_pin, progress)
            _check_download(spec, f, sha, size, "the download")
        else:
            zfh, ztmp = _temp_beside(target, ".zip.part")
            temps.append(ztmp)
            with zfh:
                _download(spec, f, zfh, None, progress)
            fh, tmp = _temp_beside(target, ".part")
            temps.append(tmp)
            with fh:
                try:
                    with zipfile.ZipFile(ztmp) as archive:
                        info = _zip_entry(spec, f, archive)
                        if size_pin is not None and info.file_size != size_pin:
                            sha, size = "", info.file_size
                        else:
                            with archive.open(info) as src:
                                sha, size = _stream(src, fh, size_pin, None)
                except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError) as exc:
                    raise ModelError(
                        f"model {spec.id}: the download from {f.url} is not a readable zip archive ({exc})\n"
                        f"{_describe_file(spec, f, sha_pin, size_pin)}\nPlace the file there by hand, "
                        f"{_config_hint(spec.id)}"
                    ) from None
            ztmp.unlink()
            _check_download(spec, f, sha, size, f"archive member {info.filename!r}")
        os.chmod(tmp, 0o644)  # mkstemp made it private; a shared cache must be readable by every user
        _drop_stamp(target)
        os.replace(tmp, target)
        _write_stamp(target, sha)
    finally:
        for path in temps:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def fetch(model_id: str, overrides: Mapping[str, Path] | None = None, progress: bool = True) -> Resolved:
    """:func:`locate`, downloading every cached file that is missing or fails verification first."""
    spec = spec_of(model_id)
    given = (overrides or {}).get(model_id)
    paths = _override_paths(spec, Path(given)) if given is not None else {}
    for f in spec.files:
        if f.name in paths and paths[f.name] != _target(spec, f):
            continue
        try:
            _check_cached(spec, f, full=False)
            continue
        except _Missing:
            pass
        except _Bad:
            log.warning("model %s: cached %s failed verification; downloading it again", spec.id, f.name)
        notice(spec)
        log.info("model %s: downloading %s from %s", spec.id, f.name, f.url)
        _fetch_file(spec, f, progress)
    return locate(model_id, overrides)
