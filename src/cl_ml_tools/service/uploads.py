"""Receiving an upload: a streaming ``multipart/form-data`` parser (python-multipart) that writes the file
straight into its job folder (never into /tmp, never whole into memory), enforces the size limits while the
bytes arrive, and keeps the first bytes for the type sniffer.

The client's file name is kept for display only. It never becomes a path: the file is stored as
``upload<ext>``, where ``<ext>`` is the name's extension when that is a plain one (``.jpg``; the sniffer
needs it to tell TIFF-based RAW formats apart, as in the pipeline), else nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import unquote

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

FILE_FIELD = "file"
SNIFF_BYTES = 512
MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 40
# What a multipart body may hold beyond the file itself: boundaries, part headers, option fields.
FORM_OVERHEAD = MAX_PARTS * (MAX_FIELD_BYTES + 4096)
_PLAIN_EXTENSION = re.compile(r"\.[a-z0-9]{1,10}")
_RFC2231_NAME = re.compile(rb"filename\*\s*=\s*(?:utf-8|UTF-8)''([^;\s]+)")


class RequestError(Exception):
    """A request the service refuses: the HTTP status, a short code and a sentence for the client (the
    JSON body of every 4xx answer: ``{"error": code, "message": sentence}``)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


class Unavailable(RequestError):
    """A refusal the client should retry after ``retry_after`` seconds (the ``Retry-After`` header)."""

    def __init__(self, status: int, code: str, message: str, retry_after: int):
        super().__init__(status, code, message, {"Retry-After": str(retry_after)})


@dataclass
class Upload:
    name: str
    """The client's file name, made printable, for display only."""
    extension: str
    size: int
    head: bytes
    fields: dict[str, str] = field(default_factory=dict)


def display_name(raw: str) -> str:
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in raw)[:255]


def extension(name: str) -> str:
    """The name's extension, lower case, when it is a plain one; else ''."""
    base = re.split(r"[/\\]", name)[-1]
    dot = base.rfind(".")
    ext = base[dot:].lower() if dot > 0 else ""
    return ext if _PLAIN_EXTENSION.fullmatch(ext) else ""


class _Form:
    """python-multipart's callbacks: the ``file`` part goes to ``target``, the others become fields."""

    def __init__(self, target: Path, max_bytes: int):
        self.target = target
        self.max_bytes = max_bytes
        self.fields: dict[str, str] = {}
        self.name: str | None = None
        self.size = 0
        self.head = bytearray()
        self.ended = False
        self.parts = 0
        self._file: IO[bytes] | None = None
        self._part: str | None = None
        self._value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._header = (bytearray(), bytearray())

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header[0].extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header[1].extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise RequestError(400, "too_many_fields", f"the form has more than {MAX_PARTS} parts")
        self._headers, self._part, self._value = {}, None, bytearray()

    def _header_end(self) -> None:
        name, value = self._header
        self._headers[bytes(name).strip().lower()] = bytes(value).strip()
        self._header = (bytearray(), bytearray())

    def _headers_finished(self) -> None:
        raw = self._headers.get(b"content-disposition", b"")
        disposition, params = parse_options_header(raw)
        if disposition != b"form-data" or b"name" not in params:
            raise RequestError(
                400, "bad_form", "every part of the form needs 'Content-Disposition: form-data; name=...'"
            )
        name = params[b"name"].decode("utf-8", "replace")
        if name != FILE_FIELD:
            if name in self.fields:
                raise RequestError(400, "duplicate_field", f"the field {name!r} is given twice")
            self._part = name
            return
        if self.name is not None:
            raise RequestError(400, "two_files", "send one file per job (one field named 'file')")
        encoded = _RFC2231_NAME.search(raw)
        given = unquote(encoded.group(1).decode("ascii", "replace")) if encoded else None
        self.name = display_name(given or params.get(b"filename", b"").decode("utf-8", "replace"))
        self._file = open(self.target, "xb")  # noqa: SIM115 (closed in close(), also when parsing fails)
        self._part = FILE_FIELD

    def _data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._part == FILE_FIELD and self._file is not None:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise RequestError(
                    413,
                    "too_large",
                    f"the file is larger than this server takes ({self.max_bytes} bytes, server.max_upload_bytes)",
                )
            if len(self.head) < SNIFF_BYTES:
                self.head += chunk[: SNIFF_BYTES - len(self.head)]
            self._file.write(chunk)
        elif self._part is not None:
            self._value += chunk
            if len(self._value) > MAX_FIELD_BYTES:
                raise RequestError(413, "field_too_large", f"the field {self._part!r} is over {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._part == FILE_FIELD and self._file is not None:
            self._file.close()
        elif self._part is not None:
            try:
                self.fields[self._part] = self._value.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(400, "bad_field", f"the field {self._part!r} is not UTF-8 text") from None
        self._part = None

    def _end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


async def arriving(body: AsyncGenerator[bytes], idle_seconds: float) -> AsyncGenerator[bytes]:
    """The body's chunks; a 408 when none comes for ``idle_seconds`` (a stalled client would otherwise hold
    its connection, its open file and its place among the uploads for good). One timer, moved at each
    chunk: ``asyncio.wait_for`` around each chunk cost about 1 ms more per 2.7 MB upload, this about 0.4 ms
    (42 chunks of 64 KiB, measured on the 2-core machine of docs/performance.md)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(idle_seconds) as deadline:
            async for chunk in body:
                yield chunk
                deadline.reschedule(loop.time() + idle_seconds)
    except TimeoutError:
        raise RequestError(
            408,
            "upload_timeout",
            f"no byte of the upload arrived for {idle_seconds:g} s (server.upload_idle_seconds)",
            {"Connection": "close"},
        ) from None


async def receive(
    content_type: str, content_length: str | None, body: AsyncIterator[bytes], target: Path, max_bytes: int
) -> Upload:
    """Parse a form whose ``file`` field is written to ``target`` (which must not exist yet)."""
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise RequestError(
            415,
            "not_multipart",
            "send the file as multipart/form-data in a field named 'file' (curl -F file=@photo.jpg)",
        )
    if content_length and content_length.isdigit() and int(content_length) > max_bytes + FORM_OVERHEAD:
        raise RequestError(
            413,
            "too_large",
            f"the request is larger than this server takes ({max_bytes} bytes, server.max_upload_bytes)",
        )
    form = _Form(target, max_bytes)
    parser = MultipartParser(params[b"boundary"], form.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise RequestError(400, "bad_form", f"the multipart body is malformed: {exc}") from None
    finally:
        form.close()
        # A body left half read (a refused upload) is closed here, in this task, so that its idle timer
        # (``arriving``) is gone before the request ends.
        if isinstance(body, AsyncGenerator):
            await body.aclose()
    if not form.ended:
        raise RequestError(
            400, "truncated_form", "the body ended before the form's closing boundary (a cut-off upload?)"
        )
    if form.name is None:
        raise RequestError(400, "no_file", "the form has no field named 'file'")
    return Upload(form.name, extension(form.name), form.size, bytes(form.head), form.fields)
