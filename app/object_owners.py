"""Which client key owns each object the provider stores through the gateway.

Every key reaches the provider with the gateway's one provider key, so the provider alone would
let any key read, cancel or delete any stored response, file, upload, batch or vector store
whose id it knows. The gateway records the owner of each object it sees made (a successful POST
answer naming one) and refuses another key's id with the provider's own 404 for an unknown id,
so the object is not even revealed to exist; list answers are filtered to the caller's objects.

The owner is a hash of the client key's configured name (never the key or a token). Records live
in Redis when it is configured (`liftoff:owner:<id>`, shared by every replica), else in a bounded
in-process map. While Redis is down, requests that need a record are refused with 503 rather than
answered without one (`OwnersUnavailable`). Admin keys see every object (as `/v1/usage` shows
them every key's usage); the objects they make are theirs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from app.auth import ClientKey
from app.config import ObjectsConfig
from app.errors import ObjectNotFound, OwnersUnavailable
from app.redis_backend import BackendHealth, BackendUnavailable, ping, unavailable_on_error

log = logging.getLogger("liftoff.gateway")

REDIS_PREFIX = "liftoff:owner:"
# A record outlives its object's own `expires_at` by this much (clocks differ, reads are late).
EXPIRY_MARGIN_S = 86400


@dataclass(frozen=True, slots=True)
class ObjectKind:
    """A family of stored objects: its path prefix, its `object` name in answers, and the
    provider's 404 for an unknown id (message with `{id}`, param)."""

    prefix: str
    object: str
    missing: str
    param: str | None
    # How long its record lasts: objects.owner_ttl_s ("ttl": the provider keeps such objects a
    # bounded time), to the object's own fixed `expires_at` (else until deleted), or until the
    # object is deleted or the provider answers 404 for it ("deleted": a vector store's
    # expires_at moves with its activity).
    lifetime: Literal["ttl", "expires_at", "deleted"]

    def not_found(self, object_id: str) -> ObjectNotFound:
        return ObjectNotFound(404, self.missing.format(id=object_id), self.param, None)


# The provider's 404s for an unknown id, word for word (as app/simulator/ answers them too).
RESPONSES = ObjectKind(
    "/v1/responses", "response", "Response with id '{id}' not found.", None, "ttl"
)
FILES = ObjectKind("/v1/files", "file", "No such File object: {id}", "id", "expires_at")
UPLOADS = ObjectKind(
    "/v1/uploads", "upload", "No such Upload object: {id}", "upload_id", "expires_at"
)
BATCHES = ObjectKind("/v1/batches", "batch", "No batch found with id '{id}'.", "batch_id", "ttl")
VECTOR_STORES = ObjectKind(
    "/v1/vector_stores",
    "vector_store",
    "No vector store found with id '{id}'.",
    "vector_store_id",
    "deleted",
)
KINDS = (RESPONSES, FILES, UPLOADS, BATCHES, VECTOR_STORES)
_BY_OBJECT = {kind.object: kind for kind in KINDS}
# Fields of a batch the provider fills with files it makes (owned by the batch's owner).
BATCH_FILES = ("output_file_id", "error_file_id")
# Top-level fields of a batches or vector stores body that name files (`input_file_id` of a
# batch, `file_ids` of a vector store or file batch, `file_id` of a vector store file, `files`
# of a file batch: objects with a `file_id`).
BODY_FILE_FIELDS = ("input_file_id", "file_id", "file_ids", "files")


@dataclass(frozen=True, slots=True)
class Reference:
    """A stored object a request body names, and the provider's answer there for an unknown
    one (what another key's gets)."""

    object_id: str
    refusal: ObjectNotFound


def body_file_references(body: Any) -> list[Reference]:
    """The files a batches or vector stores body names, each refused as the provider refuses a
    file it does not have there (400 `No such File object: ...`, naming the field)."""
    if not isinstance(body, dict):
        return []
    found: list[Reference] = []
    for field in BODY_FILE_FIELDS:
        value = body.get(field)
        for item in value if isinstance(value, list) else [value]:
            file_id = item.get("file_id") if isinstance(item, dict) else item
            if isinstance(file_id, str):
                refusal = ObjectNotFound(400, FILES.missing.format(id=file_id), field, None)
                found.append(Reference(file_id, refusal))
    return found


@dataclass(frozen=True, slots=True)
class ObjectRoute:
    """What a request path names: a kind's root (`object_id` None: its list, or a create) or
    one object (`/v1/files/file-1/content` names file-1)."""

    kind: ObjectKind
    object_id: str | None


def route_of(path: str) -> ObjectRoute | None:
    """The stored object `path` is about; None for routes that store nothing (images, audio)."""
    for kind in KINDS:
        if path == kind.prefix:
            return ObjectRoute(kind, None)
        if path.startswith(kind.prefix + "/"):
            return ObjectRoute(kind, path[len(kind.prefix) + 1 :].split("/", 1)[0])
    return None


def owner_of(key_name: str) -> str:
    """The owner recorded for a client key: a hash of its name (renaming a key loses its
    objects, rotating its secret keeps them)."""
    return hashlib.sha256(b"liftoff-owner\x00" + key_name.encode()).hexdigest()[:32]


def created_objects(answer: Any) -> list[tuple[ObjectKind, str, int | None]]:
    """(kind, id, expires_at) of each stored object a POST answer made: the answer itself when
    it is one (not a deletion), and the file a completed upload made."""
    found: list[tuple[ObjectKind, str, int | None]] = []
    candidates = [answer]
    if isinstance(answer, dict) and isinstance(answer.get("file"), dict):
        candidates.append(answer["file"])
    for item in candidates:
        if not isinstance(item, dict) or item.get("deleted") is True:
            continue
        kind = _BY_OBJECT.get(item.get("object"))  # type: ignore[arg-type]
        object_id = item.get("id")
        if kind is not None and isinstance(object_id, str) and object_id:
            expires = item.get("expires_at")
            found.append((kind, object_id, expires if isinstance(expires, int) else None))
    return found


class OwnerStore(Protocol):
    async def owners(self, ids: Sequence[str]) -> list[str | None]: ...

    async def claim(
        self, object_id: str, owner: str, ttl_s: int | None, only_new: bool = False
    ) -> None:
        """Record `owner`; `only_new`: unless the object has an owner already."""

    async def forget(self, object_id: str) -> None: ...

    async def probe(self) -> None:
        """Raise BackendUnavailable when records could not be written now."""


class MemoryOwners:
    """One process' records: the oldest past `max_entries` are forgotten (their ids are then
    unknown: refused under objects.unknown_owner: refuse)."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._records: OrderedDict[str, tuple[str, float | None]] = OrderedDict()

    async def owners(self, ids: Sequence[str]) -> list[str | None]:
        now = self.clock()
        found: list[str | None] = []
        for object_id in ids:
            record = self._records.get(object_id)
            if record is not None and record[1] is not None and record[1] <= now:
                del self._records[object_id]
                record = None
            found.append(None if record is None else record[0])
        return found

    async def claim(
        self, object_id: str, owner: str, ttl_s: int | None, only_new: bool = False
    ) -> None:
        if only_new and (await self.owners([object_id]))[0] is not None:
            return
        expires = None if ttl_s is None else self.clock() + ttl_s
        self._records[object_id] = (owner, expires)
        self._records.move_to_end(object_id)
        while len(self._records) > self.max_entries:
            self._records.popitem(last=False)

    async def forget(self, object_id: str) -> None:
        self._records.pop(object_id, None)

    async def probe(self) -> None:
        return None


class RedisOwners:
    """Records in Redis (`liftoff:owner:<id>` = owner, with its TTL), behind a BackendHealth:
    while Redis is down every call raises BackendUnavailable at once, and one probes it back."""

    def __init__(self, client: Any, health: BackendHealth | None = None) -> None:
        self.client = client
        self.health = health or BackendHealth()
        self.health.serve("objects", "refused (503)")

    async def owners(self, ids: Sequence[str]) -> list[str | None]:
        keys = [REDIS_PREFIX + object_id for object_id in ids]

        async def read() -> list[Any]:
            with unavailable_on_error("owners"):
                if len(keys) == 1:
                    return [await self.client.get(keys[0])]
                return list(await self.client.mget(keys))

        return [_text(value) for value in await self.health.call(read)]

    async def claim(
        self, object_id: str, owner: str, ttl_s: int | None, only_new: bool = False
    ) -> None:
        async def write() -> None:
            with unavailable_on_error("claim"):
                await self.client.set(REDIS_PREFIX + object_id, owner, ex=ttl_s, nx=only_new)

        await self.health.call(write)

    async def forget(self, object_id: str) -> None:
        async def delete() -> None:
            with unavailable_on_error("forget"):
                await self.client.delete(REDIS_PREFIX + object_id)

        await self.health.call(delete)

    async def probe(self) -> None:
        if self.health.state != "healthy":
            await self.health.call(lambda: ping(self.client))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class ObjectOwners:
    """The checks and records of the requests that name or make stored objects."""

    def __init__(self, store: OwnerStore, config: ObjectsConfig) -> None:
        self.store = store
        self.config = config

    async def check(self, key: ClientKey, kind: ObjectKind, object_id: str) -> None:
        """Refuse, with the provider's 404 for an unknown id, an object `key` may not reach."""
        if key.admin:
            return
        (owner,) = await self._owners([object_id])
        if not self._mine(owner, owner_of(key.name)):
            raise kind.not_found(object_id)

    async def require(self, key: ClientKey, references: Sequence[Reference]) -> None:
        """Refuse a request whose body names an object `key` may not reach (one lookup)."""
        seen = await self.visible(key, [reference.object_id for reference in references])
        for reference, visible in zip(references, seen, strict=True):
            if not visible:
                raise reference.refusal

    async def visible(self, key: ClientKey, ids: Sequence[str]) -> list[bool]:
        """For each id, whether `key` may see it (list answers are filtered to these)."""
        if key.admin or not ids:
            return [True] * len(ids)
        mine = owner_of(key.name)
        return [self._mine(owner, mine) for owner in await self._owners(ids)]

    async def ready_to_claim(self) -> None:
        """Before a call that may make an object: 503 while its owner could not be recorded
        (no object is made that its maker could not reach)."""
        try:
            await self.store.probe()
        except BackendUnavailable:
            raise OwnersUnavailable() from None

    async def claim(
        self, key_name: str, answer: Any, skip: str | None = None, required: bool = True
    ) -> None:
        """Record the key named `key_name` as the owner of the objects a POST answer made.

        `skip`: the object the path named (a cancel, a modification: it keeps its owner, an
        admin's action included). A record that cannot be written leaves the object reachable
        by admin keys only: `required` raises OwnersUnavailable (503) then, else it is logged.
        """
        owner = owner_of(key_name)
        for kind, object_id, expires_at in created_objects(answer):
            if object_id == skip:
                continue
            try:
                await self.store.claim(object_id, owner, self._ttl(kind, expires_at))
            except BackendUnavailable:
                # A refused request's object is an operator's to clean up: a warning; a
                # response answered anyway is one of many during the outage: info.
                log.log(
                    logging.WARNING if required else logging.INFO,
                    "owner of a new %s not recorded (state backend unavailable): only admin "
                    "keys reach it",
                    kind.object,
                    extra={"object_id": object_id, "key": key_name},
                )
                if required:
                    raise OwnersUnavailable() from None

    async def adopt(self, key: ClientKey, answer: Any) -> None:
        """Record the files the provider made for a batch (its output and error files) as the
        batch owner's, when that owner reads it; an admin's reading changes nothing."""
        if key.admin or not isinstance(answer, dict) or answer.get("object") != "batch":
            return
        for field in BATCH_FILES:
            file_id = answer.get(field)
            if isinstance(file_id, str) and file_id:
                try:
                    await self.store.claim(file_id, owner_of(key.name), None, only_new=True)
                except BackendUnavailable:
                    raise OwnersUnavailable() from None

    async def forget(self, object_id: str) -> None:
        """Drop the record of a deleted object (or one the provider no longer has); a failure
        leaves it in place (harmless: the provider has no such object)."""
        try:
            await self.store.forget(object_id)
        except BackendUnavailable:
            log.info("owner record of a deleted object left to expire", extra={"id": object_id})

    def _ttl(self, kind: ObjectKind, expires_at: int | None) -> int | None:
        if kind.lifetime == "ttl":
            return self.config.owner_ttl_s
        if kind.lifetime == "deleted" or expires_at is None:
            return None  # kept until deleted, as the provider keeps the object
        return max(1, expires_at - int(time.time()) + EXPIRY_MARGIN_S)

    def _mine(self, owner: str | None, mine: str) -> bool:
        if owner is None:
            return self.config.unknown_owner == "allow"
        return owner == mine

    async def _owners(self, ids: Sequence[str]) -> list[str | None]:
        try:
            return await self.store.owners(ids)
        except BackendUnavailable:
            raise OwnersUnavailable() from None


def build_object_owners(
    config: ObjectsConfig, redis: Any, health: BackendHealth | None = None
) -> ObjectOwners:
    """Records in Redis when there is one (sharing `health` with the other users of that
    Redis), else in this process."""
    store: OwnerStore = (
        MemoryOwners(config.max_owners_in_memory) if redis is None else RedisOwners(redis, health)
    )
    return ObjectOwners(store, config)
