"""`/v1/batches`: create from an uploaded `batch` file, get, list, cancel.

A batch counts the requests of its input file and stays `validating` (the simulator does not run
it); a cancel makes it `cancelling`, and the next read finds it `cancelled`."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from app.simulator.files import FileStore
from app.simulator.options import SimulatorOptions
from app.simulator.wire import (
    BadRequest,
    Request,
    Route,
    keep_last,
    list_page,
    not_found,
    object_id,
    send_json,
    send_result,
)

ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
)
COMPLETION_WINDOW = "24h"
EXPIRES_S = 24 * 3600


class BatchRoutes:
    def __init__(self, files: FileStore, options: SimulatorOptions) -> None:
        self.files = files
        self.options = options
        self.batches: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def routes(self) -> list[Route]:
        batch = "/v1/batches/{batch_id}"
        return [
            Route("POST", "/v1/batches", self.create),
            Route("GET", "/v1/batches", self.list_batches, body="none"),
            Route("GET", batch, self.retrieve, body="none"),
            Route("POST", batch + "/cancel", self.cancel, body="optional"),
        ]

    async def create(self, request: Request) -> None:
        payload = request.payload
        file_id = payload.get("input_file_id")
        if not isinstance(file_id, str):
            raise BadRequest("Missing required parameter: 'input_file_id'.", "input_file_id")
        stored = self.files.files.get(file_id)
        if stored is None:
            raise BadRequest(f"No such File object: {file_id}", param="input_file_id")
        if stored.meta["purpose"] != "batch":
            raise BadRequest(
                f"The file {file_id} has purpose '{stored.meta['purpose']}', not 'batch'.",
                param="input_file_id",
            )
        endpoint = payload.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise BadRequest(
                f"Invalid value: {endpoint!r}. Supported values are: "
                + ", ".join(f"'{e}'" for e in ENDPOINTS)
                + ".",
                param="endpoint",
                code="invalid_value",
            )
        window = payload.get("completion_window")
        if window != COMPLETION_WINDOW:
            raise BadRequest(
                f"Invalid value: {window!r}. Supported values are: '{COMPLETION_WINDOW}'.",
                param="completion_window",
                code="invalid_value",
            )
        lines = [line for line in b"".join(stored.content).splitlines() if line.strip()]
        created = int(time.time())
        batch = {
            "id": object_id("batch_"),
            "object": "batch",
            "endpoint": endpoint,
            "errors": None,
            "input_file_id": file_id,
            "completion_window": window,
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": created,
            "in_progress_at": None,
            "expires_at": created + EXPIRES_S,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": payload.get("metadata"),
        }
        keep_last(self.batches, batch["id"], batch, self.options.stored_objects)
        await send_result(request, batch)

    async def list_batches(self, request: Request) -> None:
        page = list_page([self._read(b) for b in self.batches.values()], request.query())
        await send_json(request.send, 200, page)

    async def retrieve(self, request: Request) -> None:
        await send_json(request.send, 200, self._read(self._batch(request)))

    async def cancel(self, request: Request) -> None:
        batch = self._batch(request)
        if batch["status"] in ("validating", "in_progress", "finalizing"):
            batch.update(status="cancelling", cancelling_at=int(time.time()))
        await send_result(request, batch)

    def _batch(self, request: Request) -> dict[str, Any]:
        batch_id = request.param("batch_id")
        batch = self.batches.get(batch_id)
        if batch is None:
            raise not_found(f"No batch found with id '{batch_id}'.", param="batch_id")
        return batch

    @staticmethod
    def _read(batch: dict[str, Any]) -> dict[str, Any]:
        """A batch as a read finds it: a cancelling one has become cancelled."""
        if batch["status"] == "cancelling":
            batch.update(status="cancelled", cancelled_at=int(time.time()))
        return batch
