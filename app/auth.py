"""Client keys: parsed once from JSON, stored only as SHA-256 hashes, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any

import orjson

from app.errors import AuthenticationFailed, PermissionDenied

DEV_KEY = "liftoff-dev-key"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ALLOWED_FIELDS = {"name", "key", "key_sha256", "rpm", "tpm", "monthly_budget_usd", "admin"}


class ClientKeysError(ValueError):
    """LIFTOFF_CLIENT_KEYS is malformed; the message names the entry and field (never the key)."""


@dataclass(frozen=True, slots=True)
class ClientKey:
    name: str
    key_sha256: bytes
    rpm: int | None
    tpm: int | None
    monthly_budget_usd: float | None
    admin: bool


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _optional_number(entry: dict, field: str, where: str, integer: bool) -> Any:
    value = entry.get(field)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or value <= 0:
        kind = "a positive integer" if integer else "a positive number"
        raise ClientKeysError(f"{where}.{field}: must be {kind} or absent")
    return value


def parse_client_keys(raw: str | None) -> list[ClientKey]:
    """Parse the JSON list of keys; an empty/absent value means no keys configured."""
    if raw is None or not raw.strip():
        return []
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ClientKeysError("client keys: not valid JSON (expected a list of objects)") from None
    if not isinstance(data, list):
        raise ClientKeysError("client keys: expected a JSON list of objects")
    keys: list[ClientKey] = []
    names: set[str] = set()
    for i, entry in enumerate(data):
        where = f"client keys[{i}]"
        if not isinstance(entry, dict):
            raise ClientKeysError(f"{where}: expected an object")
        unknown = sorted(set(entry) - _ALLOWED_FIELDS)
        if unknown:
            raise ClientKeysError(
                f"{where}: unknown field(s) {unknown}; allowed: {sorted(_ALLOWED_FIELDS)}"
            )
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ClientKeysError(f"{where}.name: required non-empty string")
        where = f"client keys[{i}] ({name})"
        if name in names:
            raise ClientKeysError(f"{where}.name: duplicate name")
        names.add(name)
        key, digest = entry.get("key"), entry.get("key_sha256")
        if (key is None) == (digest is None):
            raise ClientKeysError(f"{where}: give exactly one of 'key' or 'key_sha256'")
        if key is not None:
            if key == DEV_KEY:
                raise ClientKeysError(f"{where}.key: the development key may not be configured")
            if not isinstance(key, str) or len(key) < 16:
                raise ClientKeysError(f"{where}.key: must be a string of at least 16 characters")
            hashed = hash_key(key)
        else:
            if not isinstance(digest, str) or not _HEX64.fullmatch(digest.lower()):
                raise ClientKeysError(f"{where}.key_sha256: must be 64 hex characters")
            hashed = bytes.fromhex(digest)
        admin = entry.get("admin", False)
        if not isinstance(admin, bool):
            raise ClientKeysError(f"{where}.admin: must be true or false")
        keys.append(
            ClientKey(
                name=name,
                key_sha256=hashed,
                rpm=_optional_number(entry, "rpm", where, integer=True),
                tpm=_optional_number(entry, "tpm", where, integer=True),
                monthly_budget_usd=_optional_number(
                    entry, "monthly_budget_usd", where, integer=False
                ),
                admin=admin,
            )
        )
    return keys


class KeyRing:
    """Looks up presented bearer tokens. With no keys configured, only the dev key is accepted."""

    def __init__(self, keys: list[ClientKey]) -> None:
        self.dev_mode = not keys
        if self.dev_mode:
            keys = [ClientKey("dev", hash_key(DEV_KEY), None, None, None, admin=True)]
        self._by_hash = {k.key_sha256: k for k in keys}
        if len(self._by_hash) != len(keys):
            raise ClientKeysError("client keys: two entries have the same key")

    def authenticate(self, authorization: str | None) -> ClientKey:
        if not authorization or not authorization[:7].lower() == "bearer ":
            raise AuthenticationFailed()
        token = authorization[7:].strip()
        if not token:
            raise AuthenticationFailed()
        digest = hash_key(token)
        found = self._by_hash.get(digest)
        # The dict lookup is on a hash of the secret; compare_digest keeps the final equality
        # check constant-time as well.
        if found is None or not hmac.compare_digest(found.key_sha256, digest):
            raise AuthenticationFailed()
        return found

    @staticmethod
    def require_admin(key: ClientKey) -> None:
        if not key.admin:
            raise PermissionDenied()

    def __len__(self) -> int:
        return len(self._by_hash)
