"""`multipart/form-data` read as it arrives: small fields are kept, each file part goes to a sink
chunk by chunk, so an upload of many megabytes is never held as one body."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import Protocol

from app.simulator.wire import BadRequest, Request

MAX_FIELD_BYTES = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024


class FileSink(Protocol):
    def write(self, chunk: bytes) -> None: ...


class Discard:
    """A sink for file parts nobody keeps."""

    def write(self, chunk: bytes) -> None:
        pass


@dataclass
class FilePart:
    name: str
    filename: str
    content_type: str
    sink: FileSink
    size: int = 0


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, FilePart] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        """What the recent-requests log shows: the fields, and each file's name and size."""
        files = {n: {"filename": f.filename, "bytes": f.size} for n, f in self.files.items()}
        return {**self.fields, **files}


SinkFactory = Callable[[str, str, str], FileSink]


async def read_form(request: Request, sink_for: SinkFactory) -> Form:
    """The request's form; `sink_for(name, filename, content_type)` takes each file part."""
    content_type = request.headers.get("content-type", "")
    message = Message()
    message["content-type"] = content_type
    boundary = message.get_boundary()
    if message.get_content_type() != "multipart/form-data" or not boundary:
        raise BadRequest(
            f"Invalid Content-Type header ({content_type or 'none'}), expected "
            "multipart/form-data. (HINT: If you're using curl, you can pass -F "
            "'key=value' to send form data.)"
        )
    parser = _Parser(boundary.encode("latin-1"), sink_for)
    async for chunk in request.body_chunks():
        parser.feed(chunk)
    if parser.state != "end":
        raise BadRequest("The multipart body ended before its closing boundary.")
    if request.record is not None:
        request.record["body"] = parser.form.summary()
    return parser.form


class _Parser:
    def __init__(self, boundary: bytes, sink_for: SinkFactory) -> None:
        self.delimiter = b"--" + boundary
        self.separator = b"\r\n" + self.delimiter
        self.sink_for = sink_for
        self.form = Form()
        self.state = "preamble"
        self.buffer = bytearray()
        self._file: FilePart | None = None
        self._field: tuple[str, bytearray] | None = None

    def feed(self, chunk: bytes) -> None:
        buffer = self.buffer
        buffer += chunk
        while True:
            if self.state == "preamble":
                at = buffer.find(self.delimiter)
                if at < 0:
                    del buffer[: max(0, len(buffer) - len(self.delimiter))]
                    return
                del buffer[: at + len(self.delimiter)]
                self.state = "boundary"
            elif self.state == "boundary":
                if len(buffer) < 2:
                    return
                if buffer[:2] == b"--":
                    self.state = "end"
                    buffer.clear()
                    return
                if buffer[:2] != b"\r\n":
                    raise BadRequest("Malformed multipart body: bad boundary line.")
                del buffer[:2]
                self.state = "headers"
            elif self.state == "headers":
                at = buffer.find(b"\r\n\r\n")
                if at < 0:
                    if len(buffer) > MAX_HEADER_BYTES:
                        raise BadRequest("Malformed multipart body: part headers too long.")
                    return
                self._start_part(bytes(buffer[:at]))
                del buffer[: at + 4]
                self.state = "data"
            elif self.state == "data":
                at = buffer.find(self.separator)
                if at >= 0:
                    self._data(bytes(buffer[:at]))
                    del buffer[: at + len(self.separator)]
                    self._end_part()
                    self.state = "boundary"
                    continue
                keep = len(self.separator) - 1  # may be the start of a separator
                if len(buffer) > keep:
                    self._data(bytes(buffer[:-keep]))
                    del buffer[:-keep]
                return
            else:  # the epilogue after the closing boundary is ignored
                buffer.clear()
                return

    def _start_part(self, raw: bytes) -> None:
        headers = {}
        for line in raw.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        message = Message()
        message["content-disposition"] = headers.get("content-disposition", "")
        name = message.get_param("name", header="content-disposition")
        if name is None:
            raise BadRequest("Malformed multipart body: a part has no name.")
        name = collapse_rfc2231_value(name)
        filename = message.get_filename()
        if filename is None:
            self._field = (name, bytearray())
            return
        content_type = headers.get("content-type", "application/octet-stream")
        self._file = FilePart(
            name, filename, content_type, self.sink_for(name, filename, content_type)
        )

    def _data(self, data: bytes) -> None:
        if self._file is not None:
            self._file.size += len(data)
            self._file.sink.write(data)
        elif self._field is not None:
            value = self._field[1]
            value += data
            if len(value) > MAX_FIELD_BYTES:
                raise BadRequest(f"The form field '{self._field[0]}' is too long.")

    def _end_part(self) -> None:
        if self._file is not None:
            self.form.files[self._file.name] = self._file
        elif self._field is not None:
            self.form.fields[self._field[0]] = self._field[1].decode("utf-8", "replace")
        self._file = self._field = None
