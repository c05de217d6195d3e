"""`/v1/files` (multipart upload, list, get, content, delete) and `/v1/uploads` (create, add
parts, complete into a file, cancel). File content is kept as the chunks it arrived in and
streamed back; the store drops the oldest files past `stored_objects` files or
`stored_file_bytes` bytes."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from app.simulator.multipart import read_form
from app.simulator.options import SimulatorOptions
from app.simulator.wire import (
    BadRequest,
    Request,
    Route,
    chunked,
    keep_last,
    list_page,
    not_found,
    object_id,
    send_json,
    send_result,
    send_stream,
)

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_UPLOAD_BYTES = 8 * 1024 * 1024 * 1024
MAX_PART_BYTES = 64 * 1024 * 1024
UPLOAD_EXPIRES_S = 3600


@dataclass
class Chunks:
    """A sink keeping what it is given, in order."""

    parts: list[bytes] = field(default_factory=list)
    size: int = 0

    def write(self, chunk: bytes) -> None:
        self.parts.append(chunk)
        self.size += len(chunk)


@dataclass
class StoredFile:
    meta: dict[str, Any]  # the file object
    content: list[bytes]


class FileStore:
    def __init__(self, options: SimulatorOptions) -> None:
        self.options = options
        self.files: OrderedDict[str, StoredFile] = OrderedDict()
        self.bytes = 0

    def add(
        self, filename: str, purpose: str, content: Chunks, expires_after_s: int | None = None
    ) -> dict[str, Any]:
        created = int(time.time())
        meta = {
            "id": object_id("file-"),
            "object": "file",
            "bytes": content.size,
            "created_at": created,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None if expires_after_s is None else created + expires_after_s,
            "status_details": None,
        }
        self.files[meta["id"]] = StoredFile(meta, content.parts)
        self.bytes += content.size
        while len(self.files) > 1 and (
            len(self.files) > self.options.stored_objects
            or self.bytes > self.options.stored_file_bytes
        ):
            _, dropped = self.files.popitem(last=False)
            self.bytes -= dropped.meta["bytes"]
        return meta

    def get(self, file_id: str) -> StoredFile:
        stored = self.files.get(file_id)
        if stored is None:
            raise not_found(f"No such File object: {file_id}", param="id")
        return stored

    def delete(self, file_id: str) -> None:
        stored = self.get(file_id)
        del self.files[file_id]
        self.bytes -= stored.meta["bytes"]


@dataclass
class PendingUpload:
    meta: dict[str, Any]  # the upload object
    parts: dict[str, Chunks] = field(default_factory=dict)


class FileRoutes:
    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.uploads: OrderedDict[str, PendingUpload] = OrderedDict()

    def routes(self) -> list[Route]:
        file = "/v1/files/{file_id}"
        upload = "/v1/uploads/{upload_id}"
        return [
            Route("POST", "/v1/files", self.create, body="multipart"),
            Route("GET", "/v1/files", self.list_files, body="none"),
            Route("GET", file, self.retrieve, body="none"),
            Route("DELETE", file, self.delete, body="none"),
            Route("GET", file + "/content", self.content, body="none"),
            Route("POST", "/v1/uploads", self.create_upload),
            Route("POST", upload + "/parts", self.add_part, body="multipart"),
            Route("POST", upload + "/complete", self.complete_upload),
            Route("POST", upload + "/cancel", self.cancel_upload, body="optional"),
        ]

    # ---- files ----------------------------------------------------------------------------
    async def create(self, request: Request) -> None:
        form = await read_form(request, lambda name, filename, content_type: Chunks())
        purpose = _purpose(form.fields.get("purpose"))
        upload = form.files.get("file")
        if upload is None:
            raise BadRequest("Missing required parameter: 'file'.", param="file")
        if upload.size > MAX_FILE_BYTES:
            raise BadRequest(f"File is too large: the limit is {MAX_FILE_BYTES} bytes.", "file")
        if purpose == "batch" and not upload.filename.endswith(".jsonl"):
            raise BadRequest("Invalid file format for Batch API. Must be .jsonl", param="file")
        seconds = form.fields.get("expires_after[seconds]")
        expires = int(seconds) if seconds is not None and seconds.isdigit() else None
        assert isinstance(upload.sink, Chunks)
        await send_result(request, self.store.add(upload.filename, purpose, upload.sink, expires))

    async def list_files(self, request: Request) -> None:
        query = request.query()
        purpose = query.get("purpose")
        files = [f.meta for f in self.store.files.values() if purpose in (None, f.meta["purpose"])]
        page = list_page(files, query, default_limit=10_000, max_limit=10_000)
        await send_json(request.send, 200, page)

    async def retrieve(self, request: Request) -> None:
        await send_json(request.send, 200, self.store.get(request.param("file_id")).meta)

    async def delete(self, request: Request) -> None:
        file_id = request.param("file_id")
        self.store.delete(file_id)
        await send_result(request, {"id": file_id, "object": "file", "deleted": True})

    async def content(self, request: Request) -> None:
        stored = self.store.get(request.param("file_id"))
        await send_stream(
            request,
            b"application/octet-stream",
            chunked(stored.content),
            0,
            0,
            content_length=stored.meta["bytes"],
        )

    # ---- uploads --------------------------------------------------------------------------
    async def create_upload(self, request: Request) -> None:
        payload = request.payload
        size = payload.get("bytes")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_UPLOAD_BYTES:
            raise BadRequest(
                f"Invalid 'bytes': expected an integer from 0 to {MAX_UPLOAD_BYTES}.",
                param="bytes",
            )
        for name in ("filename", "mime_type"):
            if not isinstance(payload.get(name), str) or not payload[name]:
                raise BadRequest(f"Missing required parameter: '{name}'.", param=name)
        created = int(time.time())
        meta = {
            "id": object_id("upload_"),
            "object": "upload",
            "bytes": size,
            "created_at": created,
            "expires_at": created + UPLOAD_EXPIRES_S,
            "filename": payload["filename"],
            "purpose": _purpose(payload.get("purpose")),
            "status": "pending",
            "file": None,
        }
        keep_last(self.uploads, meta["id"], PendingUpload(meta), self.store.options.stored_objects)
        await send_result(request, meta)

    async def add_part(self, request: Request) -> None:
        upload = self._pending(request)
        form = await read_form(request, lambda name, filename, content_type: Chunks())
        data = form.files.get("data")
        if data is None:
            raise BadRequest("Missing required parameter: 'data'.", param="data")
        if data.size > MAX_PART_BYTES:
            raise BadRequest(f"Part is too large: the limit is {MAX_PART_BYTES} bytes.", "data")
        part_id = object_id("part_")
        assert isinstance(data.sink, Chunks)
        upload.parts[part_id] = data.sink
        upload_id = upload.meta["id"]
        part = {
            "id": part_id,
            "object": "upload.part",
            "created_at": int(time.time()),
            "upload_id": upload_id,
        }
        await send_result(request, part)

    async def complete_upload(self, request: Request) -> None:
        upload = self._pending(request)
        part_ids = request.payload.get("part_ids")
        if not isinstance(part_ids, list) or not all(isinstance(p, str) for p in part_ids):
            raise BadRequest("Missing required parameter: 'part_ids'.", param="part_ids")
        unknown = [p for p in part_ids if p not in upload.parts]
        if unknown:
            raise BadRequest(f"Invalid part ID: {unknown[0]}.", param="part_ids")
        content = Chunks()
        for part_id in part_ids:
            for chunk in upload.parts[part_id].parts:
                content.write(chunk)
        expected = upload.meta["bytes"]
        if content.size != expected:
            raise BadRequest(
                f"The number of bytes uploaded ({content.size}) does not match the expected "
                f"number of bytes ({expected}).",
                param="part_ids",
            )
        meta = upload.meta
        file = self.store.add(meta["filename"], meta["purpose"], content)
        upload.parts.clear()
        meta.update(status="completed", file=file)
        await send_result(request, meta)

    async def cancel_upload(self, request: Request) -> None:
        upload = self._pending(request)
        upload.parts.clear()
        upload.meta["status"] = "cancelled"
        await send_result(request, upload.meta)

    def _pending(self, request: Request) -> PendingUpload:
        upload_id = request.param("upload_id")
        upload = self.uploads.get(upload_id)
        if upload is None:
            raise not_found(f"No such Upload object: {upload_id}", param="upload_id")
        if upload.meta["status"] != "pending":
            raise BadRequest(
                f"Upload {upload_id} is already {upload.meta['status']}.", param="upload_id"
            )
        return upload


def _purpose(value: Any) -> str:
    if value is None:
        raise BadRequest("Missing required parameter: 'purpose'.", param="purpose")
    if value not in PURPOSES:
        supported = ", ".join(f"'{p}'" for p in PURPOSES[:-1]) + f", and '{PURPOSES[-1]}'"
        raise BadRequest(
            f"Invalid value: {value!r}. Supported values are: {supported}.",
            param="purpose",
            code="invalid_value",
        )
    return value
