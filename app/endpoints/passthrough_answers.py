"""Passthrough answers read whole before they are relayed: the small JSON answers the gateway
must look into to keep stored objects per client key (what a POST made, a list to filter to the
caller's objects, app/object_owners.py). File content and every other answer stream unread
(app/endpoints/passthrough.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.responses import Response

from app.auth import ClientKey
from app.context import Ctx
from app.errors import UpstreamError
from app.object_owners import ObjectOwners
from app.upstream import RawReply, UpstreamClient

MIB = 1024 * 1024
# A list answer is read whole up to this (OpenAI's file list: up to 10,000 objects a page).
MAX_LIST_BYTES = 16 * MIB
# Provider pages read at most for one filtered list page (then has_more says there is more);
# the further ones ask for at least REFILL_PAGE_ITEMS (the batches' and vector stores' maximum).
MAX_LIST_PAGES = 5
REFILL_PAGE_ITEMS = 100
# Headers of the provider's answer that are the gateway's to set (its x-ratelimit-* describe
# the provider account's limits; the client is told its own key's).
OWN_HEADERS = frozenset(
    {"x-request-id", "content-length", "server", "date"}
    | {
        f"x-ratelimit-{what}-{kind}"
        for what in ("limit", "remaining", "reset")
        for kind in ("requests", "tokens")
    }
)


async def read_answer(reply: RawReply, limit: int) -> tuple[list[bytes], bool]:
    """The answer's chunks up to `limit` bytes; False: there is more (still unread)."""
    chunks: list[bytes] = []
    size = 0
    body = reply.chunks()
    try:
        async for chunk in body:
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return chunks, False
    finally:
        await body.aclose()
    return chunks, True


def buffered(reply: RawReply, data: bytes) -> Response:
    """`data` (JSON: the answer as read, or rewritten) with the provider's status and headers."""
    response = Response(data, reply.status)
    own = OWN_HEADERS | {"content-type", "content-encoding"}
    response.raw_headers = [
        *(
            (n.lower().encode("latin-1"), v.encode("latin-1"))
            for n, v in reply.headers
            if n.lower() not in own
        ),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
    ]
    return response


async def filtered_list(
    upstream: UpstreamClient,
    owners: ObjectOwners,
    key: ClientKey,
    ctx: Ctx,
    reply: RawReply,
    path: str,
    headers: Mapping[str, str],
    raw_query: str,
) -> Response:
    """The provider's list page with only the key's objects. A page left short by the filter
    is filled from the provider's next pages (up to MAX_LIST_PAGES in all, of 100 or more), so
    a client that pages by `after` (the SDKs: the last item's id) neither stops early nor sees
    an item twice (unless 400-odd other keys' objects lie between two of its own).
    An answer that cannot be filtered is refused (502), never passed on whole."""
    query = parse_qsl(raw_query, keep_blank_values=True)
    first = await list_page(reply)
    items = first["data"]
    asked = dict(query).get("limit", "")
    wanted = int(asked) if asked.isdigit() and int(asked) > 0 else max(1, len(items))
    kept = await visible_items(owners, key, items)
    has_more = bool(first.get("has_more"))
    pages = 1
    while len(kept) < wanted and has_more and items and pages < MAX_LIST_PAGES:
        cursor = items[-1].get("id")
        if not isinstance(cursor, str):
            break
        more = [(k, v) for k, v in query if k not in ("after", "limit")]
        more += [("after", cursor), ("limit", str(max(wanted, REFILL_PAGE_ITEMS)))]
        following = await upstream.open_raw(
            "GET", path, headers, None, None, query=urlencode(more), stats=ctx.stats
        )
        try:
            if following.status != 200:
                raise UpstreamError(502, detail="a further list page failed")
            page = await list_page(following)
        finally:
            following.close()
        items = page["data"]
        kept += await visible_items(owners, key, items)
        has_more = bool(page.get("has_more"))
        pages += 1
    if len(kept) > wanted:
        kept, has_more = kept[:wanted], True
    answer = {**first, "data": kept, "has_more": has_more}
    for field, at in (("first_id", 0), ("last_id", -1)):
        if field in answer:
            answer[field] = kept[at].get("id") if kept else None
    ctx.log["list_pages"] = pages
    return buffered(reply, orjson.dumps(answer))


async def list_page(reply: RawReply) -> dict[str, Any]:
    chunks, whole = await read_answer(reply, MAX_LIST_BYTES)
    reply.close()
    try:
        page = orjson.loads(b"".join(chunks)) if whole else None
    except orjson.JSONDecodeError:
        page = None
    if not isinstance(page, dict) or not isinstance(page.get("data"), list):
        raise UpstreamError(502, detail="a list answer that cannot be filtered per key")
    if not all(isinstance(item, dict) for item in page["data"]):
        raise UpstreamError(502, detail="a list answer that cannot be filtered per key")
    return page


async def visible_items(owners: ObjectOwners, key: ClientKey, items: list[dict[str, Any]]) -> list:
    ids = [item.get("id") if isinstance(item.get("id"), str) else "" for item in items]
    seen = await owners.visible(key, ids)
    return [item for item, visible in zip(items, seen, strict=True) if visible]
