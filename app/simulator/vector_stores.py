"""`/v1/vector_stores`: create (from uploaded file ids), get, list, delete."""

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


class VectorStoreRoutes:
    def __init__(self, files: FileStore, options: SimulatorOptions) -> None:
        self.files = files
        self.options = options
        self.stores: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def routes(self) -> list[Route]:
        store = "/v1/vector_stores/{vector_store_id}"
        return [
            Route("POST", "/v1/vector_stores", self.create),
            Route("GET", "/v1/vector_stores", self.list_stores, body="none"),
            Route("GET", store, self.retrieve, body="none"),
            Route("DELETE", store, self.delete, body="none"),
        ]

    async def create(self, request: Request) -> None:
        payload = request.payload
        file_ids = payload.get("file_ids") or []
        if not isinstance(file_ids, list) or not all(isinstance(f, str) for f in file_ids):
            raise BadRequest("Invalid 'file_ids': expected an array of file ids.", "file_ids")
        files = []
        for file_id in file_ids:
            stored = self.files.files.get(file_id)
            if stored is None:
                raise BadRequest(f"No such File object: {file_id}", param="file_ids")
            files.append(stored.meta)
        name = payload.get("name")
        if name is not None and not isinstance(name, str):
            raise BadRequest("Invalid type for 'name': expected a string.", param="name")
        created = int(time.time())
        expires_after = payload.get("expires_after")
        days = expires_after.get("days") if isinstance(expires_after, dict) else None
        store = {
            "id": object_id("vs_"),
            "object": "vector_store",
            "created_at": created,
            "name": name or "",
            "usage_bytes": sum(f["bytes"] for f in files),
            "file_counts": {
                "in_progress": 0,
                "completed": len(files),
                "failed": 0,
                "cancelled": 0,
                "total": len(files),
            },
            "status": "completed",
            "expires_after": expires_after,
            "expires_at": created + days * 86400 if isinstance(days, int) else None,
            "last_active_at": created,
            "metadata": payload.get("metadata") or {},
        }
        keep_last(self.stores, store["id"], store, self.options.stored_objects)
        await send_result(request, store)

    async def list_stores(self, request: Request) -> None:
        page = list_page(list(self.stores.values()), request.query())
        await send_json(request.send, 200, page)

    async def retrieve(self, request: Request) -> None:
        await send_json(request.send, 200, self._store(request))

    async def delete(self, request: Request) -> None:
        store = self._store(request)
        del self.stores[store["id"]]
        deleted = {"id": store["id"], "object": "vector_store.deleted", "deleted": True}
        await send_result(request, deleted)

    def _store(self, request: Request) -> dict[str, Any]:
        store_id = request.param("vector_store_id")
        store = self.stores.get(store_id)
        if store is None:
            raise not_found(f"No vector store found with id '{store_id}'.", param="vector_store_id")
        return store
