"""The model manager against a local HTTP server serving bytes and zip archives the tests make: downloads,
verification, the stamp that spares re-hashing, zip safety, lock.json for unpinned files, config overrides,
ONNX Runtime sessions of a tiny generated graph, and the ``cl-ml-tools models`` command."""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import socket
import stat
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from cl_ml_tools import cli, models
from cl_ml_tools.models import ModelError, ModelFile, ModelSpec, TensorSpec, encoders

REPO = Path(__file__).resolve().parents[1]


class Server:
    """Serves ``routes`` (path → bytes) on 127.0.0.1 and counts requests per path. A route whose value is a
    tuple ``(bytes, declared_length)`` announces a longer body than it sends, like a dropped connection."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes | tuple[bytes, int]] = {}
        self.hits: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                body = server.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                data, length = body if isinstance(body, tuple) else (body, len(body))
                self.send_response(200)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv(models.CACHE_ENV, str(path))
    monkeypatch.setattr(models.registry, "_noticed", set())
    return path


def payload(n: int = 300_000, seed: int = 1) -> bytes:
    return np.random.default_rng(seed).bytes(n)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def register(
    monkeypatch: pytest.MonkeyPatch,
    model_id: str,
    *files: ModelFile,
    inputs: tuple[TensorSpec, ...] = (TensorSpec("x", ("N", 3, 8, 8)),),
    outputs: tuple[TensorSpec, ...] = (TensorSpec("y", ("N", 192)),),
    notice: str | None = None,
) -> ModelSpec:
    spec = ModelSpec(
        id=model_id,
        version="test",
        files=files,
        licence="test licence",
        source="https://example.invalid/model",
        runtime="onnxruntime",
        inputs=inputs,
        outputs=outputs,
        description="made by the tests",
        notice=notice,
    )
    monkeypatch.setitem(models.REGISTRY, model_id, spec)
    return spec


def served(server: Server, path: str, data: bytes, *, pinned: bool = True, name: str = "net.onnx") -> ModelFile:
    server.routes[path] = data
    return ModelFile(name, server.url(path), sha(data) if pinned else None, len(data) if pinned else None)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def make_zip(*entries: tuple[zipfile.ZipInfo | str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return buf.getvalue()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------- download


def test_fetch_downloads_verifies_and_renames_into_place(server: Server, cache: Path, monkeypatch) -> None:
    data = payload()
    register(monkeypatch, "m", served(server, "/m/net.onnx", data))

    resolved = models.fetch("m", progress=True)  # stderr is not a tty under pytest: the bar stays off

    target = cache / "m" / "net.onnx"
    assert resolved.path == target and resolved.paths == {"net.onnx": target}
    assert target.read_bytes() == data
    assert resolved.sha256 == sha(data) and not resolved.override
    assert resolved.id == "m" and resolved.tag == f"m@sha256:{sha(data)}"
    assert files_in(cache / "m") == ["net.onnx", "net.onnx.verified"]  # no temporary file left behind
    stamp = json.loads((cache / "m" / "net.onnx.verified").read_text())
    assert stamp["sha256"] == sha(data) and stamp["size"] == len(data)

    # Present and verified: neither fetch nor locate downloads again.
    assert models.fetch("m", progress=False).sha256 == sha(data)
    assert models.locate("m").path == target
    assert server.hits == {"/m/net.onnx": 1}


def test_locate_trusts_the_stamp_and_verify_ignores_it(server: Server, cache: Path, monkeypatch) -> None:
    data = payload()
    register(monkeypatch, "m", served(server, "/net.onnx", data))
    models.fetch("m", progress=False)
    hashed: list[Path] = []
    real = models.cache._sha256_file
    monkeypatch.setattr(models.cache, "_sha256_file", lambda p: hashed.append(p) or real(p))

    for _ in range(3):
        assert models.locate("m").sha256 == sha(data)
    assert hashed == []  # only a stat

    target = cache / "m" / "net.onnx"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched: hashed once more
    models.locate("m")
    models.locate("m")
    assert hashed == [target]

    models.verify("m")
    assert hashed == [target, target]


def test_corrupted_cached_file_is_rejected_and_fetch_repairs_it(server: Server, cache: Path, monkeypatch) -> None:
    data = payload()
    register(monkeypatch, "m", served(server, "/net.onnx", data))
    models.fetch("m", progress=False)
    target = cache / "m" / "net.onnx"
    target.write_bytes(payload(len(data), seed=2))  # same size, other bytes
    (cache / "m" / "net.onnx.verified").unlink()

    with pytest.raises(ModelError) as err:
        models.locate("m")
    assert f"expected {sha(data)}" in str(err.value) and str(target) in str(err.value)
    with pytest.raises(ModelError):
        models.verify("m")
    assert models.cache_state("m")[0] == "cached"  # stat alone cannot tell

    assert models.fetch("m", progress=False).sha256 == sha(data)
    assert target.read_bytes() == data and server.hits["/net.onnx"] == 2
    assert models.cache_state("m")[0] == "verified"


def test_corruption_behind_a_stale_stamp_is_noticed(server: Server, cache: Path, monkeypatch) -> None:
    data = payload()
    register(monkeypatch, "m", served(server, "/net.onnx", data))
    models.fetch("m", progress=False)
    target = cache / "m" / "net.onnx"
    st = target.stat()
    target.write_bytes(payload(len(data), seed=3))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # the stamp no longer matches the stat

    with pytest.raises(ModelError, match="has sha256"):
        models.locate("m")


def test_cached_file_of_the_wrong_size_is_rejected(server: Server, cache: Path, monkeypatch) -> None:
    data = payload()
    register(monkeypatch, "m", served(server, "/net.onnx", data))
    models.fetch("m", progress=False)
    (cache / "m" / "net.onnx").write_bytes(data[:-1])

    with pytest.raises(ModelError, match=f"has {len(data) - 1} bytes, expected {len(data)}"):
        models.locate("m")
    assert models.cache_state("m")[0] == "bad-size"


def test_download_of_the_wrong_size_or_sha_leaves_no_file(server: Server, cache: Path, monkeypatch) -> None:
    data = payload()
    good = served(server, "/net.onnx", data)
    server.routes["/net.onnx"] = data + b"x"
    register(monkeypatch, "m", good)
    with pytest.raises(ModelError, match="failed verification") as err:
        models.fetch("m", progress=False)
    assert "Nothing was saved" in str(err.value)
    assert files_in(cache) == []

    server.routes["/net.onnx"] = payload(len(data), seed=9)  # right size, wrong bytes
    with pytest.raises(ModelError, match=f"has sha256 .* expected {sha(data)}"):
        models.fetch("m", progress=False)
    assert files_in(cache) == []
    with pytest.raises(ModelError, match="not in the cache"):
        models.locate("m")


def test_connection_dropped_half_way_leaves_nothing_a_later_run_trusts(server: Server, cache: Path, monkeypatch):
    data = payload()
    register(monkeypatch, "m", ModelFile("net.onnx", server.url("/cut"), sha(data), len(data)))
    server.routes["/cut"] = (data[:1000], len(data))
    with pytest.raises(
        ModelError, match=r"cannot download net\.onnx: the connection closed after 1000 of 300000 bytes"
    ):
        models.fetch("m", progress=False)
    assert files_in(cache) == []


def test_unreachable_url_gives_a_complete_message_and_no_file(cache: Path, monkeypatch) -> None:
    url = f"http://127.0.0.1:{closed_port()}/net.onnx"
    pin = sha(b"whatever")
    register(monkeypatch, "gone", ModelFile("net.onnx", url, pin, 8))

    with pytest.raises(ModelError) as err:
        models.fetch("gone", progress=False)
    text = str(err.value)
    for part in ("gone", url, str(cache / "gone" / "net.onnx"), pin, "models: {gone: {path: /path/to/file}}"):
        assert part in text
    assert "Traceback" not in text and err.value.__cause__ is None and err.value.__suppress_context__
    assert files_in(cache) == []


def test_http_error_and_missing_model_messages(server: Server, cache: Path, monkeypatch) -> None:
    register(monkeypatch, "m", ModelFile("net.onnx", server.url("/nothing-here"), None, None))
    with pytest.raises(ModelError, match="HTTP 404") as err:
        models.fetch("m", progress=False)
    assert "sha256:   not pinned" in str(err.value)

    with pytest.raises(ModelError, match="cl-ml-tools models fetch m") as err:
        models.locate("m")
    assert str(cache / "m" / "net.onnx") in str(err.value)
    with pytest.raises(ModelError, match=r"unknown model id 'nope'; known ids: .*blaze_face_short_range"):
        models.locate("nope")


# --------------------------------------------------------------------------------------------------- zip archives


def test_zip_member_is_extracted_and_the_archive_deleted(server: Server, cache: Path, monkeypatch, caplog) -> None:
    data = payload()
    # Members in a sub-folder are found by base name, as some InsightFace packs nest them.
    server.routes["/pack.zip"] = make_zip(("pack/det.onnx", payload(1000, seed=5)), ("pack/w.onnx", data))
    f = ModelFile("w.onnx", server.url("/pack.zip"), sha(data), len(data), member="w.onnx")
    register(monkeypatch, "arc", f, notice="non-commercial research use only")

    with caplog.at_level(logging.WARNING, logger="cl_ml_tools"):
        resolved = models.fetch("arc", progress=False)
    assert resolved.path.read_bytes() == data and resolved.sha256 == sha(data)
    assert files_in(cache / "arc") == ["w.onnx", "w.onnx.verified"]
    assert "non-commercial research use only" in caplog.text

    # The exact path is preferred over the base name.
    other = payload(2000, seed=6)
    server.routes["/two.zip"] = make_zip(("a/w.onnx", data), ("b/w.onnx", other))
    register(monkeypatch, "exact", dataclasses.replace(f, url=server.url("/two.zip"), member="a/w.onnx"))
    assert models.fetch("exact", progress=False).path.read_bytes() == data

    register(monkeypatch, "ambiguous", dataclasses.replace(f, url=server.url("/two.zip"), member="w.onnx"))
    with pytest.raises(ModelError, match="several members"):
        models.fetch("ambiguous", progress=False)
    assert files_in(cache / "ambiguous") == []


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("entry", "reason"),
    [("../w.onnx", "'..' component"), ("/w.onnx", "absolute path"), (_symlink("w.onnx"), "symbolic link")],
)
def test_unsafe_zip_members_are_refused(server: Server, cache: Path, monkeypatch, entry, reason) -> None:
    data = b"/etc/passwd" if isinstance(entry, zipfile.ZipInfo) else payload(1000)
    server.routes["/evil.zip"] = make_zip((entry, data))
    register(monkeypatch, "evil", ModelFile("w.onnx", server.url("/evil.zip"), sha(data), len(data), member="w.onnx"))

    with pytest.raises(ModelError, match=f"refusing archive member .*{reason}"):
        models.fetch("evil", progress=False)
    assert files_in(cache) == [] and not (cache.parent / "w.onnx").exists()


def test_not_a_zip_is_a_model_error(server: Server, cache: Path, monkeypatch) -> None:
    server.routes["/page.zip"] = b"<html>not found</html>"
    register(monkeypatch, "z", ModelFile("w.onnx", server.url("/page.zip"), sha(b"x"), 1, member="w.onnx"))
    with pytest.raises(ModelError, match="not a readable zip archive"):
        models.fetch("z", progress=False)
    assert files_in(cache) == []


def mediapipe_wheel() -> Path | None:
    """The mediapipe==0.10.21 wheel if this machine has one: named by CL_ML_TOOLS_TEST_MEDIAPIPE_WHEEL, or
    in the test download cache that conftest fills (CL_ML_TOOLS_TEST_CACHE, default .cache/test-models)."""
    named = os.environ.get("CL_ML_TOOLS_TEST_MEDIAPIPE_WHEEL")
    folder = Path(os.environ.get("CL_ML_TOOLS_TEST_CACHE", REPO / ".cache" / "test-models"))
    candidates = [Path(named)] if named else sorted(folder.glob("mediapipe-0.10.21-*.whl"))
    return next((p for p in candidates if p.is_file()), None)


def test_full_range_pin_matches_the_file_in_the_mediapipe_wheel(server: Server, cache: Path, monkeypatch) -> None:
    """The registry pin of face_detection_full_range_sparse is checked against the real bytes, which the
    mediapipe==0.10.21 wheel from PyPI ships (a wheel is a zip archive, so this also extracts a real one)."""
    wheel = mediapipe_wheel()
    if wheel is None:
        pytest.skip("no mediapipe-0.10.21 wheel here (pip download mediapipe==0.10.21 --no-deps)")
    server.routes["/mediapipe.whl"] = wheel.read_bytes()
    spec = models.REGISTRY["face_detection_full_range_sparse"]
    member = "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite"
    wheel_file = dataclasses.replace(spec.files[0], url=server.url("/mediapipe.whl"), member=member)
    monkeypatch.setitem(models.REGISTRY, spec.id, dataclasses.replace(spec, files=(wheel_file,)))

    resolved = models.fetch(spec.id, progress=False)
    assert resolved.sha256 == spec.files[0].sha256 and resolved.path.stat().st_size == spec.files[0].size


# --------------------------------------------------------------------------------------------------- lock.json


def test_unpinned_file_is_recorded_in_lock_json_then_enforced(server: Server, cache: Path, monkeypatch, caplog):
    data = payload()
    register(monkeypatch, "free", served(server, "/net.onnx", data, pinned=False))
    assert models.identity("free") == f"unpinned:{server.url('/net.onnx')}"

    with caplog.at_level(logging.WARNING, logger="cl_ml_tools"):
        assert models.fetch("free", progress=False).sha256 == sha(data)
    assert "no sha256 pin" in caplog.text and sha(data) in caplog.text
    lock = json.loads((cache / "lock.json").read_text())
    assert lock["files"]["free/net.onnx"]["sha256"] == sha(data)
    assert lock["files"]["free/net.onnx"]["size"] == len(data)
    assert models.identity("free") == sha(data)

    # Upstream changed: the recorded sha256 now refuses the new bytes.
    (cache / "free" / "net.onnx").unlink()
    server.routes["/net.onnx"] = payload(len(data), seed=4)
    with pytest.raises(ModelError, match=f"expected {sha(data)} \\(recorded in .*lock.json\\)"):
        models.fetch("free", progress=False)
    assert files_in(cache / "free") == ["net.onnx.verified"]  # the stale stamp of the deleted file, no download

    # A cached copy swapped by hand is refused as well.
    (cache / "free" / "net.onnx").write_bytes(payload(len(data), seed=4))
    with pytest.raises(ModelError, match="recorded in"):
        models.locate("free")


# --------------------------------------------------------------------------------------------------- overrides


def test_override_file_is_used_as_given_with_a_warning(
    server: Server, cache: Path, tmp_path: Path, monkeypatch, caplog
):
    data = payload()
    register(monkeypatch, "m", served(server, "/net.onnx", data))
    own = tmp_path / "mine.onnx"
    own.write_bytes(b"a re-exported network")

    with caplog.at_level(logging.WARNING, logger="cl_ml_tools"):
        resolved = models.locate("m", {"m": own})
    assert resolved.path == own and resolved.override and resolved.sha256 == sha(own.read_bytes())
    assert "differs from the registry pin" in caplog.text and str(own) in caplog.text
    assert models.identity("m", {"m": own}) == sha(own.read_bytes())
    assert models.fetch("m", {"m": own}, progress=False).path == own
    assert server.hits == {} and files_in(cache / "m") == []  # nothing downloaded for an overridden model

    caplog.clear()
    same = tmp_path / "same.onnx"
    same.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="cl_ml_tools"):
        assert models.locate("m", {"m": same}).sha256 == sha(data)
    assert caplog.text == ""

    with pytest.raises(ModelError, match="does not exist"):
        models.locate("m", {"m": tmp_path / "absent.onnx"})


def test_override_directory_holds_every_file(server: Server, cache: Path, tmp_path: Path, monkeypatch) -> None:
    net, tok = payload(), b'{"model": "tokenizer"}'
    register(
        monkeypatch,
        "text",
        served(server, "/t.onnx", net, pinned=False, name="text.onnx"),
        served(server, "/tok.json", tok, pinned=False, name="tokenizer.json"),
    )
    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "text.onnx").write_bytes(net)
    with pytest.raises(ModelError, match=r"lacks .*tokenizer\.json"):
        models.locate("text", {"text": folder})
    (folder / "tokenizer.json").write_bytes(tok)

    resolved = models.locate("text", {"text": folder})
    assert resolved.paths == {"text.onnx": folder / "text.onnx", "tokenizer.json": folder / "tokenizer.json"}
    assert not (cache / "lock.json").exists()  # overrides never record pins


def test_identity_of_a_pinned_model_touches_no_file(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "never"))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"file access: {args}")

    with monkeypatch.context() as m:
        for target, name in ((os, "stat"), (os, "lstat"), (os, "open"), (os, "scandir"), (builtins, "open")):
            m.setattr(target, name, refuse)
        m.setattr(io, "open", refuse)
        pins = {i: models.identity(i) for i in models.REGISTRY}
    assert len(pins) == 9
    assert pins["arcface_w600k_r50"] == "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43"
    assert pins["blaze_face_short_range"] == models.REGISTRY["blaze_face_short_range"].files[0].sha256
    assert not (tmp_path / "never").exists()


def test_identity_of_an_override_is_hashed_once(cache: Path, tmp_path: Path, monkeypatch) -> None:
    own = tmp_path / "mine.onnx"
    own.write_bytes(b"some weights")
    hashed: list[Path] = []
    real = models.cache._sha256_file
    monkeypatch.setattr(models.cache, "_sha256_file", lambda p: hashed.append(p) or real(p))
    for _ in range(3):
        assert models.identity("dinov2_small", {"dinov2_small": own}) == sha(b"some weights")
    assert hashed == [own]
    own.write_bytes(b"other weights!")
    assert models.identity("dinov2_small", {"dinov2_small": own}) == sha(b"other weights!")


def test_every_file_of_a_model_is_part_of_its_identity(cache: Path, tmp_path: Path) -> None:
    """PP-OCR is three networks: another recogniser beside the same detector is another model, in the rules'
    params (identity) and in the rows' tag (Resolved.sha256) alike."""
    spec = models.REGISTRY["ppocr_v6_small"]
    folder = tmp_path / "ppocr"
    folder.mkdir()
    for f in spec.files:
        (folder / f.name).write_bytes(f.name.encode())
    before = models.identity(spec.id, {spec.id: folder})
    assert models.locate(spec.id, {spec.id: folder}).sha256 == before
    (folder / spec.files[1].name).write_bytes(b"another recogniser")
    after = models.identity(spec.id, {spec.id: folder})
    assert after != before and models.locate(spec.id, {spec.id: folder}).sha256 == after
    assert len({models.identity(spec.id), before, after}) == 3
    # A model of one file keeps that file's sha256, as older tables recorded it.
    assert models.identity("dinov2_small") == models.REGISTRY["dinov2_small"].files[0].sha256


def test_record_round_trip_and_staleness(server: Server, cache: Path, tmp_path: Path, monkeypatch) -> None:
    data = payload()
    register(monkeypatch, "m", served(server, "/net.onnx", data))
    resolved = models.fetch("m", progress=False)
    record = tmp_path / "results" / "models" / "m.json"
    models.write_record(resolved, record)

    back = models.read_record(record)
    assert back == resolved and back.tag == f"m@sha256:{sha(data)}"

    own = tmp_path / "own.onnx"
    own.write_bytes(b"weights")
    models.write_record(models.locate("m", {"m": str(own)}), record)  # the workflow passes str paths
    back = models.read_record(record)
    assert back.override and back.path == own and back.sha256 == sha(b"weights")

    own.write_bytes(b"other weights")
    with pytest.raises(ModelError, match=r"changed since .*m\.json was written .*delete"):
        models.read_record(record)
    own.unlink()
    with pytest.raises(ModelError, match=r"\(missing\)"):
        models.read_record(record)
    record.write_text("[]")
    with pytest.raises(ModelError, match="is not a model record"):
        models.read_record(record)


def test_overrides_from_config(tmp_path: Path) -> None:
    assert models.overrides_from_config({}) == {}
    assert models.overrides_from_config({"models": None}) == {}
    got = models.overrides_from_config({"models": {"dinov2_small": {"path": str(tmp_path / "d.onnx")}}})
    assert got == {"dinov2_small": tmp_path / "d.onnx"}
    with pytest.raises(ModelError, match=r"unknown model id.*dinov3.*known ids: .*arcface_w600k_mbf"):
        models.overrides_from_config({"models": {"dinov3": {"path": "x"}}})
    with pytest.raises(ModelError, match="must be \\{path"):
        models.overrides_from_config({"models": {"dinov2_small": "x.onnx"}})


# --------------------------------------------------------------------------------------------------- ONNX Runtime


def tiny_onnx(path: Path, in_shape: list, out_shape: list, elem: int | None = None) -> Path:
    """A Flatten graph: (N, 3, 8, 8) float → (N, 192)."""
    import onnx
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT if elem is None else elem
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["pixels"], ["features"], axis=1)],
        "tiny",
        [helper.make_tensor_value_info("pixels", elem, in_shape)],
        [helper.make_tensor_value_info("features", elem, out_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_onnx_session_and_check_io(cache: Path, tmp_path: Path, monkeypatch) -> None:
    spec = register(monkeypatch, "tiny", ModelFile("tiny.onnx", "http://127.0.0.1:9/tiny.onnx", None, None))
    net = tiny_onnx(tmp_path / "tiny.onnx", ["batch", 3, 8, 8], ["batch", 192])
    resolved = models.locate("tiny", {"tiny": net})
    session = models.onnx_session(resolved, threads=2)
    models.check_io(session, spec)  # names differ from the spec's: only shapes and types count

    x = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
    (y,) = session.run(None, {session.get_inputs()[0].name: x})
    assert y.shape == (2, 192) and np.array_equal(y, x.reshape(2, -1))

    wrong = [
        dataclasses.replace(spec, inputs=(TensorSpec("x", ("N", 3, 16, 16)),)),  # fixed dim differs
        dataclasses.replace(spec, inputs=(TensorSpec("x", ("N", 192)),)),  # rank differs
        dataclasses.replace(spec, outputs=(TensorSpec("y", ("N", 192)), TensorSpec("z", ("N",)))),  # count
        dataclasses.replace(spec, inputs=(TensorSpec("x", ("N", 3, 8, 8), dtype="int64"),)),  # element type
    ]
    for bad in wrong:
        with pytest.raises(
            ModelError, match=r"expected (inputs|outputs): .*\n  found (inputs|outputs): +(pixels|features)"
        ):
            models.check_io(session, bad)
    with pytest.raises(ModelError) as err:
        models.check_io(session, wrong[0])
    assert "x ('N', 3, 16, 16) float32" in str(err.value) and "pixels ('batch', 3, 8, 8) float32" in str(err.value)

    # A graph with fixed sizes passes a spec with symbolic ones, and a dynamic graph dim passes a fixed spec dim.
    fixed = tiny_onnx(tmp_path / "fixed.onnx", [1, 3, 8, 8], [1, 192])
    models.check_io(models.onnx_session(models.locate("tiny", {"tiny": fixed})), spec)
    models.check_io(session, dataclasses.replace(spec, inputs=(TensorSpec("x", (4, 3, 8, 8)),)))


def test_optimised_graph_is_cached_and_gives_the_same_results(cache: Path, tmp_path: Path, monkeypatch) -> None:
    register(monkeypatch, "tiny", ModelFile("tiny.onnx", "http://127.0.0.1:9/tiny.onnx", None, None))
    resolved = models.locate("tiny", {"tiny": tiny_onnx(tmp_path / "tiny.onnx", ["batch", 3, 8, 8], ["batch", 192])})
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    first = models.onnx_session(resolved)
    (cached,) = (cache / "optimized").iterdir()
    assert cached.name.startswith(f"tiny-{resolved.sha256[:16]}-ort")
    mtime = cached.stat().st_mtime_ns
    second = models.onnx_session(resolved)  # from the cached file, not written again
    assert cached.stat().st_mtime_ns == mtime
    name = first.get_inputs()[0].name
    np.testing.assert_array_equal(first.run(None, {name: x})[0], second.run(None, {name: x})[0])


def test_an_unwritable_cache_only_costs_the_optimisation(tmp_path: Path, monkeypatch) -> None:
    register(monkeypatch, "tiny", ModelFile("tiny.onnx", "http://127.0.0.1:9/tiny.onnx", None, None))
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv(models.CACHE_ENV, str(blocker))
    resolved = models.locate("tiny", {"tiny": tiny_onnx(tmp_path / "tiny.onnx", ["batch", 3, 8, 8], ["batch", 192])})
    session = models.onnx_session(resolved)
    x = np.ones((1, 3, 8, 8), np.float32)
    assert session.run(None, {session.get_inputs()[0].name: x})[0].shape == (1, 192)


def test_execution_providers_and_the_cpu_fallback(caplog) -> None:
    assert models.execution_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]
    assert models.execution_providers("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    with caplog.at_level(logging.WARNING, logger="cl_ml_tools"):
        assert models.execution_providers("cuda", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert "no CUDA provider" in caplog.text and "onnxruntime-gpu" in caplog.text
    with pytest.raises(ModelError, match="unknown device 'tpu'"):
        models.execution_providers("tpu", ["CPUExecutionProvider"])


def test_cuda_on_a_machine_without_it_runs_on_the_cpu_with_the_same_results(tmp_path: Path, caplog) -> None:
    """This onnxruntime is the CPU build: asking for CUDA must warn and still give the CPU's numbers
    through the same io-binding code path."""
    from standins import dinov2

    resolved = models.locate("dinov2_small", {"dinov2_small": dinov2(tmp_path / "dino.onnx")})
    batch = np.random.default_rng(0).normal(size=(3, 3, 224, 224)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="cl_ml_tools"):
        gpu = encoders.ImageEncoder(resolved, device="cuda")
    assert gpu.device == "cpu" and "no CUDA provider" in caplog.text
    cpu = encoders.ImageEncoder(resolved)
    np.testing.assert_allclose(gpu.embed_batch(batch), cpu.embed_batch(batch), atol=1e-6)


def test_runtime_from_config() -> None:
    assert models.runtime_from_config({}) == models.Runtime("cpu", 256)
    runtime = models.runtime_from_config({"models": {"device": "cuda", "gpu_batch_size": 512, "dinov2_small": {}}})
    assert runtime == models.Runtime("cuda", 512) and runtime.batch(8) == 512 and models.Runtime().batch(8) == 8
    with pytest.raises(ModelError, match="must be one of cpu, cuda"):
        models.runtime_from_config({"models": {"device": "gpu"}})
    overrides = models.overrides_from_config({"models": {"device": "cuda", "dinov2_small": {"path": "/m/d.onnx"}}})
    assert overrides == {"dinov2_small": Path("/m/d.onnx")}


def test_onnx_session_of_a_broken_file_is_a_model_error(cache: Path, tmp_path: Path, monkeypatch) -> None:
    register(monkeypatch, "tiny", ModelFile("tiny.onnx", "http://127.0.0.1:9/tiny.onnx", None, None))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelError, match=r"ONNX Runtime cannot load .*junk\.onnx") as err:
        models.onnx_session(models.locate("tiny", {"tiny": junk}))
    assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match="runs on mediapipe"):
        models.onnx_session(models.locate("blaze_face_short_range", {"blaze_face_short_range": junk}))


# --------------------------------------------------------------------------------------------------- registry and docs


def test_registry_is_complete_and_documented() -> None:
    assert set(models.REGISTRY) == {
        "blaze_face_short_range",
        "face_detection_full_range_sparse",
        "arcface_w600k_mbf",
        "arcface_w600k_r50",
        "dinov2_small",
        "dinov2_small_int8",
        "mobileclip_s2_image",
        "mobileclip_s2_text",
        "ppocr_v6_small",
    }
    doc = (REPO / "docs" / "models.md").read_text()
    assert models.registry.markdown_tables() in doc, "docs/models.md: paste `python -m cl_ml_tools.models` output"
    for model_id, spec in models.REGISTRY.items():
        assert spec.id == model_id and spec.runtime in {"mediapipe", "onnxruntime"} and spec.files
        assert all(f.url.startswith("https://") for f in spec.files)
        if spec.notice:
            assert "non-commercial" in spec.notice or "licence" in spec.notice


def test_every_registry_file_is_pinned_at_a_fixed_revision() -> None:
    """Each file has its sha256 and size, and a Hugging Face URL names a commit (40 hex digits), not a branch
    whose contents can change."""
    hub = re.compile(r"^https://huggingface\.co/[\w.-]+/[\w.-]+/resolve/[0-9a-f]{40}/")
    for spec in models.REGISTRY.values():
        for f in spec.files:
            assert f.sha256 and len(f.sha256) == 64 and f.size, (spec.id, f.name)
            assert "huggingface.co" not in f.url or hub.match(f.url), f.url
    text = models.REGISTRY["mobileclip_s2_text"].files
    assert text[0].sha256 == "ff82e945c6c652c51df687e10f102a8e43c87d37c9108ff692468be3732f3710"


# --------------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def two_models(server: Server, cache: Path, tmp_path: Path, monkeypatch) -> Iterator[dict[str, bytes]]:
    """A registry of two served models, so commands without ids never reach the real hubs."""
    # Emptied in place (every module of the package holds this dict) and refilled in its own order: undoing
    # a delitem per entry put them back in reverse, and the order is the schema's model choices' order.
    saved = dict(models.REGISTRY)
    models.REGISTRY.clear()
    monkeypatch.chdir(tmp_path)
    data = {"alpha": payload(1000, seed=11), "beta": payload(2000, seed=12)}
    for model_id, body in data.items():
        register(monkeypatch, model_id, served(server, f"/{model_id}.onnx", body))
    yield data
    models.REGISTRY.clear()
    models.REGISTRY.update(saved)


def test_cli_list_fetch_verify(two_models: dict[str, bytes], cache: Path, capsys) -> None:
    assert cli.main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "alpha" in out and "missing" in out and str(cache / "beta" / "net.onnx") in out

    assert cli.main(["models", "verify"]) == 0
    assert "skip  alpha  missing" in capsys.readouterr().out

    assert cli.main(["models", "fetch", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"ok  alpha  cached  sha256:{sha(two_models['alpha'])}" in out and "ok  beta" in out

    assert cli.main(["models", "list"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("alpha", "beta"))]
    assert len(lines) == 2 and all(" verified " in line for line in lines)

    assert cli.main(["models", "verify", "beta"]) == 0
    assert "ok  beta" in capsys.readouterr().out

    (cache / "beta" / "net.onnx").write_bytes(payload(2000, seed=13))
    assert cli.main(["models", "verify"]) == 1
    captured = capsys.readouterr()
    assert "ok  alpha" in captured.out
    assert f"expected {sha(two_models['beta'])}" in captured.err and "Traceback" not in captured.err


def test_cli_fetch_failure_exits_1_with_the_message(two_models, server: Server, cache: Path, capsys) -> None:
    del server.routes["/beta.onnx"]
    assert cli.main(["models", "fetch", "--no-progress", "alpha", "beta"]) == 1
    captured = capsys.readouterr()
    assert "ok  alpha" in captured.out
    assert "model beta: cannot download net.onnx: HTTP 404" in captured.err
    assert str(cache / "beta" / "net.onnx") in captured.err and "Traceback" not in captured.err

    assert cli.main(["models", "fetch", "gamma"]) == 2
    assert "unknown model id(s) gamma; known ids: alpha, beta" in capsys.readouterr().err


def test_cli_models_help_describes_the_command(capsys) -> None:
    """`cl-ml-tools models --help` says what the command is for, not the CLI module's internal docstring."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["models", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "model cache ($CL_ML_TOOLS_MODEL_CACHE, else ~/.cache/cl_ml_tools/models)" in text
    assert "list" in text and "fetch" in text and "verify" in text
    assert "COMMANDS" not in text and "func(args)" not in text


def test_cli_config_overrides(two_models, tmp_path: Path, capsys) -> None:
    own = tmp_path / "alpha-mine.onnx"
    own.write_bytes(b"mine")
    (tmp_path / "config.yaml").write_text(f"models:\n  alpha: {{path: {own}}}\n")  # picked up from the cwd
    assert cli.main(["models", "list"]) == 0
    assert any(line.startswith("alpha") and " override " in line for line in capsys.readouterr().out.splitlines())

    assert cli.main(["models", "verify", "alpha"]) == 0
    captured = capsys.readouterr()
    assert f"ok  alpha  override  sha256:{sha(b'mine')}  {own}" in captured.out
    assert "differs from the registry pin" in captured.err

    other = tmp_path / "other.yaml"
    other.write_text("models:\n  nonsense: {path: x}\n")
    assert cli.main(["--config", str(other), "models", "list"]) == 2
    assert "unknown model id(s) nonsense" in capsys.readouterr().err
    assert cli.main(["models", "list", "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read config" in capsys.readouterr().err


def test_offline_switch_fails_at_once_with_the_same_message(cache: Path, monkeypatch) -> None:
    monkeypatch.setenv(models.OFFLINE_ENV, "1")
    monkeypatch.setattr(models.download.urllib.request, "urlopen", lambda *a, **k: pytest.fail("tried the network"))
    with pytest.raises(ModelError) as err:
        models.fetch("face_detection_full_range_sparse", progress=False)
    spec = models.REGISTRY["face_detection_full_range_sparse"]
    text = str(err.value)
    assert models.OFFLINE_ENV in text and spec.files[0].url in text and spec.files[0].sha256 in text
    assert str(cache / spec.id / spec.files[0].name) in text
    assert not list(cache.rglob("*.tflite*"))


def test_prelu_rewrite_computes_the_same_function(tmp_path: Path) -> None:
    """Slopes below 0, between 0 and 1, and above 1: s·x + (1 − s)·Relu(x) equals PRelu for all of them."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    slopes = np.array([-0.5, 0.0, 0.25, 1.0, 3.0], np.float32).reshape(5, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("PRelu", ["x", "slope"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
        "prelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 4, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 5, 4, 4])],
        initializer=[numpy_helper.from_array(slopes, "slope")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    rewritten = models.without_prelu(data)
    assert b"PRelu" in data and b"PRelu" not in rewritten
    x = np.random.default_rng(0).normal(size=(3, 5, 4, 4)).astype(np.float32)
    before = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    after = onnxruntime.InferenceSession(rewritten, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, atol=1e-6)
    plain = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["z"])], "relu", graph.input, graph.output)
    ).SerializeToString()
    assert models.without_prelu(plain) is plain
