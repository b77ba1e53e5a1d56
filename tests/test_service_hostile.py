"""Hostile and careless clients against ``cl-ml-tools serve`` on 127.0.0.1 (issue 20, items 7 and 8): stalled
uploads, too many uploads or connections at once (raw sockets, bounded waits), and the OpenAPI document:
behind the API key, no third-party assets, and a description of the real API that requests built from it
and the real answers are checked against (openapi-core)."""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_service import API_KEY, PHOTO, Server, service_config
from test_service_api import _partial_upload

BIN = Path(sys.executable).parent
IDLE_S = 1.0
MAX_UPLOADS = 2
MAX_CONNECTIONS = 6


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("hostile")
    config = service_config(
        work,
        work / "storage",
        server={
            "api_key": API_KEY,
            "upload_idle_seconds": IDLE_S,
            "max_uploads": MAX_UPLOADS,
            "max_connections": MAX_CONNECTIONS,
        },
        worker={"max_concurrent_jobs": 1},
    )
    serve = [str(BIN / "cl-ml-tools"), "serve", "--config", str(config), "--port", "{port}"]
    running = Server(work, config, command=serve, api_key=API_KEY).start()
    yield running
    running.stop()


def _answer(sock: socket.socket, seconds: float) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the answer on ``sock``, reading at most ``seconds``."""
    deadline = time.monotonic() + seconds
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line)
        length = int(headers.get("content-length", "-1"))
        if length >= 0 and len(body) >= length:
            break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if ": " in line)}
    status = int(lines[0].split(" ")[1]) if lines[0].startswith("HTTP/1.1 ") else 0
    return status, headers, body


def _closed(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(65536) == b""
    except (TimeoutError, ConnectionResetError):
        return False


def test_a_stalled_upload_gets_408_and_its_connection_closed(server: Server) -> None:
    jobs = server.work / "storage" / "jobs"
    before = set(jobs.iterdir())
    with _partial_upload(server.port, API_KEY) as sock:
        started = time.monotonic()
        status, headers, body = _answer(sock, 10 * IDLE_S)
        assert status == 408, (status, body)
        assert IDLE_S * 0.9 <= time.monotonic() - started < 5 * IDLE_S
        assert json.loads(body)["error"] == "upload_timeout" and headers.get("connection") == "close"
        assert _closed(sock, 5)
    assert set(jobs.iterdir()) == before


def test_uploads_past_max_uploads_get_503_with_retry_after(server: Server) -> None:
    stalled = [_partial_upload(server.port, API_KEY) for _ in range(MAX_UPLOADS)]
    try:
        time.sleep(0.2 * IDLE_S)  # both are inside the handler now
        response = server.client.post("/jobs/hash", files={"file": ("a.jpg", PHOTO.read_bytes())})
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "busy" and int(response.headers["retry-after"]) > 0
        # Once the stalled ones have timed out, uploads are taken again.
        for sock in stalled:
            assert _answer(sock, 10 * IDLE_S)[0] == 408
        assert server.client.post("/jobs/hash", files={"file": ("a.jpg", PHOTO.read_bytes())}).status_code == 202
    finally:
        for sock in stalled:
            sock.close()


def test_connections_past_max_connections_get_503(server: Server) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(MAX_CONNECTIONS)]
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert _answer(extra, 10)[0] == 503
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and httpx.get(f"{server.url}/health", timeout=5).status_code != 200:
        time.sleep(0.1)
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200


def test_the_unit_file_raises_the_open_file_limit() -> None:
    unit = (Path(__file__).parents[1] / "deploy" / "cl-ml-tools.service").read_text()
    (line,) = [x for x in unit.splitlines() if x.startswith("LimitNOFILE=")]
    # Each connection is a socket, each upload a file too: room for the default max_connections, twice.
    assert int(line.split("=")[1]) >= 4 * 512


# --------------------------------------------------------------------------------------------------- item 8


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect", "/openapi.json"])
def test_the_api_description_needs_the_key_and_no_page_loads_third_party_assets(server: Server, path: str) -> None:
    anonymous = httpx.get(f"{server.url}{path}", timeout=10)
    assert anonymous.status_code in (401, 404), anonymous.text
    keyed = server.client.get(path)
    if path == "/openapi.json":
        assert anonymous.status_code == 401 and keyed.status_code == 200
        assert "cdn" not in keyed.text.lower()
    else:
        assert keyed.status_code == 404 and "swagger" not in keyed.text.lower()


@pytest.fixture(scope="module")
def spec(server: Server) -> Any:
    from jsonschema_path import SchemaPath
    from openapi_spec_validator import validate

    document = server.client.get("/openapi.json").json()
    validate(document)
    return SchemaPath.from_dict(document)


def _check(spec: Any, request: httpx.Request, response: httpx.Response, *, request_too: bool = True) -> None:
    """The real answer (and the request, unless it is one the document does not allow), validated against
    the served document by openapi-core."""
    from openapi_core import OpenAPI
    from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request, Response

    request.read()
    environ = EnvironBuilder(
        method=request.method,
        base_url=str(request.url.copy_with(path="/", query=None)),
        path=request.url.path,
        query_string=request.url.query.decode(),
        headers=dict(request.headers),
        data=request.content,
    ).get_environ()
    api = OpenAPI(spec)
    openapi_request = WerkzeugOpenAPIRequest(Request(environ))
    if request_too:
        api.validate_request(openapi_request)
    answer = Response(response.content, status=response.status_code, headers=dict(response.headers))
    api.validate_response(openapi_request, WerkzeugOpenAPIResponse(answer))


def _form(spec: Any, plugin: str) -> tuple[dict[str, str], list[str]]:
    """Every option of the plugin's documented multipart body, set to its documented default and written as
    the document says (text, or JSON text where it names application/json); and the documented codes."""
    operation = spec / "paths" / f"/jobs/{plugin}" / "post"
    body = (operation / "requestBody" / "content" / "multipart/form-data" / "schema").read_value()
    fields = {}
    for name, schema in body["properties"].items():
        if schema.get("contentMediaType") == "application/json" and "default" in schema["contentSchema"]:
            fields[name] = json.dumps(schema["contentSchema"]["default"])
        elif name != "file" and "default" in schema:
            fields[name] = schema["default"]
    return fields, list((operation / "responses").read_value())


@pytest.mark.parametrize("plugin", ["hash", "exif", "media_thumbnail", "face_detection", "hls_streaming"])
def test_requests_built_from_the_openapi_document_are_accepted_and_answered_as_it_says(
    server: Server, spec: Any, plugin: str
) -> None:
    fields, codes = _form(spec, plugin)
    assert {"202", "400", "401", "413", "415"} <= set(codes) and "422" not in codes and "200" not in codes
    if plugin == "hash":  # the production guide's name for bytes, shown without a default of its own
        assert "algorithm" not in fields and fields["bytes"] == '["sha512", "md5"]'
    request = server.client.build_request(
        "POST", f"/jobs/{plugin}", files={"file": (PHOTO.name, PHOTO.read_bytes())}, data=fields
    )
    response = server.client.send(request)
    expected = 415 if plugin == "hls_streaming" else 202
    assert response.status_code == expected, response.text
    _check(spec, request, response)
    if expected == 202:
        job_id = response.json()["job_id"]
        server.result(job_id)
        for path in (f"/jobs/{job_id}/status", f"/jobs/{job_id}/results"):
            request = server.client.build_request("GET", path, params={"wait": 5})
            _check(spec, request, server.client.send(request))


def test_refusals_are_answered_as_the_document_says(server: Server, spec: Any) -> None:
    c = server.client
    photo = PHOTO.read_bytes()
    unknown = "/jobs/" + "0" * 32
    post = c.build_request("POST", "/jobs/hash", files={"file": ("a.jpg", photo)})
    post.read()
    # Requests the document does not allow (a bad option value, no key, a body that is no form): only the
    # answers are checked.
    refused = [
        (400, c.build_request("POST", "/jobs/hash", files={"file": ("a.jpg", photo)}, data={"max_pixels": "-1"})),
        (401, httpx.Request("GET", f"{server.url}{unknown}/status")),
        (404, c.build_request("GET", f"{unknown}/results")),
        (415, c.build_request("POST", "/jobs/hash", content=photo, headers={"content-type": "image/jpeg"})),
    ]
    with httpx.Client(timeout=30) as anonymous:
        for code, request in refused:
            response = anonymous.send(request)
            assert response.status_code == code, response.text
            _check(spec, request, response, request_too=code == 404)
    # A length past server.max_upload_bytes is refused before the body is read: sent by hand.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head = ["POST /jobs/hash HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {API_KEY}",
                f"Content-Type: {post.headers['content-type']}", f"Content-Length: {10**13}"]  # fmt: skip
        sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + post.content[:1000])
        status, headers, body = _answer(sock, 10)
    assert status == 413, body
    _check(spec, post, httpx.Response(status, headers=headers, content=body), request_too=False)
