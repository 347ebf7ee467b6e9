"""Read one uploaded file from a ``multipart/form-data`` request, in memory, with a size cap.

Starlette's own form parsing (``UploadFile``) spools parts larger than 1 MB to a temporary
file on disk. An X-ray upload is patient data, so here the request body is streamed from the
ASGI connection chunk by chunk into python-multipart's low-level :class:`MultipartParser`, and
only the bytes of the wanted field are kept, in a ``bytearray``: nothing is written to disk.
The body is refused as soon as it passes the cap (or when ``Content-Length`` already says it
will), so at most ``limit`` bytes (plus one chunk) are ever held per request. Other fields are
parsed and dropped; the part's file name is never read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

#: Room for the multipart framing (boundaries, part headers) on top of the file's own bytes.
FRAMING_BYTES = 64 * 1024
#: More parts than this is not an upload of one image.
MAX_PARTS = 16
#: Longest part header kept (a ``Content-Disposition`` line is far shorter).
MAX_HEADER_BYTES = 8 * 1024


class UploadError(Exception):
    """A request whose upload cannot be used: ``status`` (HTTP) and a ``reason`` to return."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _FieldCollector:
    """python-multipart callbacks that keep the data of the part named ``field`` only."""

    def __init__(self, field: str, limit: int) -> None:
        self.field = field.encode()
        self.limit = limit
        self.data: bytearray | None = None
        self.parts = 0
        self._in_field = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise UploadError(400, f"more than {MAX_PARTS} parts in the multipart body")
        self._in_field = False
        self._disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]
        self._check_header()

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        self._check_header()

    def _check_header(self) -> None:
        if len(self._header_name) + len(self._header_value) > MAX_HEADER_BYTES:
            raise UploadError(400, f"a multipart part header is over {MAX_HEADER_BYTES} bytes")

    def on_header_end(self) -> None:
        if bytes(self._header_name).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._in_field = options.get(b"name") == self.field
        if self._in_field:
            if self.data is not None:
                raise UploadError(422, f"field {self.field.decode()!r} given more than once")
            self.data = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_field or self.data is None:
            return
        self.data += data[start:end]
        if len(self.data) > self.limit:
            raise UploadError(413, too_large(self.limit))


def too_large(limit: int) -> str:
    """The 413 reason for an upload over ``limit`` bytes."""
    return f"upload larger than the limit of {limit / 1e6:g} MB (--max-upload-mb)"


def check_declared_size(content_length: str | None, limit: int) -> None:
    """413 before reading anything when ``Content-Length`` already exceeds the cap."""
    if content_length is None:
        return
    try:
        declared = int(content_length)
    except ValueError:
        raise UploadError(400, "Content-Length is not a number") from None
    if declared > limit + FRAMING_BYTES:
        raise UploadError(413, too_large(limit))


async def read_upload(
    chunks: AsyncIterator[bytes], content_type: str | None, *, field: str, limit: int
) -> bytes:
    """The bytes of multipart field ``field``, streamed from ``chunks`` into memory.

    Raises :class:`UploadError`: 415 when the request is not ``multipart/form-data``; 413 when
    the body passes ``limit`` + :data:`FRAMING_BYTES` or the field passes ``limit``; 400 for a
    malformed body; 422 when the field is missing or repeated.
    """
    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        raise UploadError(
            415,
            f"expected a multipart/form-data request with the image in field {field!r}, "
            f"got Content-Type {kind.decode('latin-1') or 'none'!r}",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError(400, "multipart/form-data request without a boundary")
    collector = _FieldCollector(field, limit)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > limit + FRAMING_BYTES:
                raise UploadError(413, too_large(limit))
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as err:
        raise UploadError(400, f"malformed multipart body: {err}") from None
    if collector.data is None:
        raise UploadError(422, f"no field {field!r} in the form: send the image as {field}=@FILE")
    return bytes(collector.data)
