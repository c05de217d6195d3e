"""Client keys: parsing with clear errors, hashed storage, constant-time check, dev key rules."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from app.auth import DEV_KEY, ClientKeysError, KeyRing, hash_key, parse_client_keys
from app.errors import AuthenticationFailed, PermissionDenied
from tests.app.gateway_harness import ADMIN, ALICE, auth, make_config, running


def test_keys_are_kept_only_as_hashes():
    keys = parse_client_keys(orjson.dumps([{"name": "a", "key": ALICE, "rpm": 5}]).decode())
    assert keys[0].key_sha256 == hashlib.sha256(ALICE.encode()).digest()
    assert ALICE not in repr(keys[0])
    assert keys[0].rpm == 5 and keys[0].admin is False


def test_key_sha256_entries_authenticate():
    digest = hashlib.sha256(b"precomputed-key-0123456789").hexdigest()
    ring = KeyRing(parse_client_keys(f'[{{"name": "h", "key_sha256": "{digest}", "admin": true}}]'))
    assert ring.authenticate("Bearer precomputed-key-0123456789").name == "h"
    assert ring.authenticate("bearer precomputed-key-0123456789").admin


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{", "not valid JSON"),
        ('{"name": "a"}', "expected a JSON list"),
        ('[{"key": "0123456789abcdefgh"}]', "name: required"),
        ('[{"name": "a"}]', "exactly one of 'key' or 'key_sha256'"),
        ('[{"name": "a", "key": "short"}]', "at least 16 characters"),
        ('[{"name": "a", "key_sha256": "abc"}]', "64 hex"),
        (
            '[{"name": "a", "key": "0123456789abcdefgh", "rpm": 0}]',
            "rpm: must be a positive integer",
        ),
        ('[{"name": "a", "key": "0123456789abcdefgh", "admin": "yes"}]', "admin: must be true"),
        ('[{"name": "a", "key": "0123456789abcdefgh", "colour": 1}]', "unknown field"),
        (
            '[{"name": "a", "key": "0123456789abcdefgh"}, '
            '{"name": "a", "key": "0123456789abcdefgx"}]',
            "duplicate name",
        ),
        (f'[{{"name": "a", "key": "{DEV_KEY}"}}]', "development key"),
    ],
)
def test_bad_client_keys_name_the_entry_and_field(raw, message):
    with pytest.raises(ClientKeysError, match=message) as err:
        parse_client_keys(raw)
    assert "0123456789abcdefgh" not in str(err.value)  # never echo a key


def test_dev_key_only_without_real_keys():
    dev = KeyRing([])
    assert dev.dev_mode and dev.authenticate(f"Bearer {DEV_KEY}").admin
    real = KeyRing(parse_client_keys(f'[{{"name": "a", "key": "{ALICE}"}}]'))
    with pytest.raises(AuthenticationFailed):
        real.authenticate(f"Bearer {DEV_KEY}")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic abc", f"Bearer {ALICE}x"])
def test_bad_credentials(header):
    ring = KeyRing(parse_client_keys(f'[{{"name": "a", "key": "{ALICE}"}}]'))
    with pytest.raises(AuthenticationFailed):
        ring.authenticate(header)


def test_admin_required():
    ring = KeyRing(parse_client_keys(f'[{{"name": "a", "key": "{ALICE}"}}]'))
    with pytest.raises(PermissionDenied):
        ring.require_admin(ring.authenticate(f"Bearer {ALICE}"))
    assert hash_key(ALICE) == hashlib.sha256(ALICE.encode()).digest()


async def test_401_is_openai_shaped_and_dev_key_refused_with_real_keys(simulator):
    async with running(make_config(simulator.url)) as gw:
        missing = await gw.client.post("/v1/chat/completions", json={})
        dev = await gw.chat(key=DEV_KEY)
        admin = await gw.chat(key=ADMIN)
    for response in (missing, dev):
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key"
        assert error["type"] == "invalid_request_error"
    assert admin.status_code == 200


async def test_dev_key_accepted_when_no_keys_are_configured(simulator, caplog):
    caplog.set_level("WARNING")
    async with running(make_config(simulator.url), {"LIFTOFF_CLIENT_KEYS": ""}) as gw:
        ok = await gw.chat(key=DEV_KEY)
        wrong = await gw.chat(key=ALICE)
        usage = await gw.client.get("/v1/usage", headers=auth(DEV_KEY))
    assert ok.status_code == 200 and wrong.status_code == 401 and usage.status_code == 200
    assert any("liftoff-dev-key" in r.getMessage() for r in caplog.records)


async def test_malformed_client_keys_stop_startup():
    from app.server import create_app

    app = create_app(make_config(None), {"LIFTOFF_CLIENT_KEYS": '[{"name": "x"}]'})
    with pytest.raises(ClientKeysError, match="exactly one"):
        async with app.router.lifespan_context(app):
            pass
