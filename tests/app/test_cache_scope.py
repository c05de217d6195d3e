"""cache.scope: tenants do not get each other's cached answers (`key`, the default), or share them
(`global`); invalidation per scope; every cache hit has its own response id."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import openai
import pytest

from app.config import ConfigError, load_config
from app.server import create_app
from tests.app.gateway_harness import (
    ADMIN,
    ALICE,
    BOB,
    PROVIDER_KEY,
    auth,
    client_keys_json,
    make_config,
    running,
    served,
)

ROUTE = "POST /v1/chat/completions"
HIT_ORIGIN = "x-liftoff-cache-origin-id"


@contextlib.contextmanager
def sdk_clients(upstream_url: str, scope: str) -> Iterator[tuple[openai.OpenAI, openai.OpenAI]]:
    env = {"LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY, "LIFTOFF_CLIENT_KEYS": client_keys_json()}
    app = create_app(make_config(upstream_url, cache={"scope": scope}), env)
    with served(app) as url:
        yield tuple(  # type: ignore[misc]
            openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30)
            for key in (ALICE, BOB)
        )


def ask(client: openai.OpenAI, content: str):
    return client.chat.completions.with_raw_response.create(
        model="fast", temperature=0, messages=[{"role": "user", "content": content}]
    )


def test_by_default_a_second_key_does_not_get_the_first_keys_answer(simulator):
    simulator.app.reset()
    with sdk_clients(simulator.url, "key") as (alice, bob):
        first = ask(alice, "tenant question")
        again = ask(alice, "tenant question")
        other = ask(bob, "tenant question")
    assert first.headers["x-liftoff-cache"] == "miss"
    assert again.headers["x-liftoff-cache"] == "hit"
    assert other.headers["x-liftoff-cache"] == "miss"
    assert HIT_ORIGIN not in other.headers
    assert other.parse().id != first.parse().id
    assert simulator.app.stats.by_route[ROUTE] == 2


def test_global_scope_shares_answers_across_keys_under_new_ids(simulator):
    simulator.app.reset()
    with sdk_clients(simulator.url, "global") as (alice, bob):
        first = ask(alice, "product question")
        shared = ask(bob, "product question")
        shared_again = ask(bob, "product question")
    assert shared.headers["x-liftoff-cache"] == "hit"
    assert simulator.app.stats.by_route[ROUTE] == 1
    original = first.parse()
    ids = {original.id, shared.parse().id, shared_again.parse().id}
    assert len(ids) == 3  # every hit is its own response
    assert shared.headers[HIT_ORIGIN] == shared_again.headers[HIT_ORIGIN] == original.id
    assert shared.parse().model_dump(exclude={"id"}) == original.model_dump(exclude={"id"})


async def invalidate(gw, **body):
    return await gw.client.post("/admin/cache/invalidate", json=body or None, headers=auth(ADMIN))


async def cache_results(gw, *requests: tuple[str, str]) -> list[str]:
    """x-liftoff-cache for each (client key, model) request of the same prompt."""
    out = []
    for key, model in requests:
        response = await gw.chat(key=key, model=model, temperature=0)
        await gw.gateway.flush()
        out.append(response.headers["x-liftoff-cache"])
    return out


EVERY = ((ALICE, "fast"), (ALICE, "smart"), (BOB, "fast"), (BOB, "smart"))


@pytest.fixture(params=["memory", "redis"])
def backend(request) -> str | None:
    return request.getfixturevalue("redis_url") if request.param == "redis" else None


async def test_invalidation_by_key_by_key_and_model_by_model_and_all(simulator, backend):
    async with running(make_config(simulator.url, backend)) as gw:
        assert await cache_results(gw, *EVERY) == ["miss"] * 4
        assert await cache_results(gw, *EVERY) == ["hit"] * 4

        done = await invalidate(gw, key="alice")
        assert done.json() == {
            "object": "cache.invalidation",
            "model": None,
            "key": "alice",
            "invalidated": True,
        }
        assert await cache_results(gw, *EVERY) == ["miss", "miss", "hit", "hit"]

        assert (await invalidate(gw, key="bob", model="smart")).json()["key"] == "bob"
        assert await cache_results(gw, *EVERY) == ["hit", "hit", "hit", "miss"]

        assert (await invalidate(gw, model="fast")).status_code == 200  # every key's fast entries
        assert await cache_results(gw, *EVERY) == ["miss", "hit", "miss", "hit"]

        assert (await invalidate(gw)).status_code == 200
        assert await cache_results(gw, *EVERY) == ["miss"] * 4


async def test_key_invalidation_is_refused_where_it_cannot_mean_anything(simulator):
    async with running(make_config(simulator.url)) as scoped:
        unknown = await invalidate(scoped, key="mallory")
        wrong_type = await invalidate(scoped, key=7)
    async with running(make_config(simulator.url, cache={"scope": "global"})) as shared:
        await shared.chat(temperature=0)
        await shared.gateway.flush()
        refused = await invalidate(shared, key="alice")
        still = await shared.chat(key=BOB, temperature=0)
        by_model = await invalidate(shared, model="fast")
        after = await shared.chat(key=BOB, temperature=0)
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "key"
    assert wrong_type.status_code == 400 and wrong_type.json()["error"]["param"] == "key"
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "key"
    assert "cache.scope" in refused.json()["error"]["message"]
    assert still.headers["x-liftoff-cache"] == "hit"  # nothing was invalidated
    assert by_model.status_code == 200 and after.headers["x-liftoff-cache"] == "miss"


async def test_key_scoped_invalidation_is_seen_by_another_instance(simulator, redis_url):
    config = make_config(simulator.url, redis_url)
    async with running(config) as first, running(config) as second:
        for gw in (first, second):
            await gw.chat(temperature=0)
            await gw.chat(key=BOB, temperature=0)
            await gw.gateway.flush()
        await invalidate(first, key="alice")
        alice = await second.chat(temperature=0)
        bob = await second.chat(key=BOB, temperature=0)
    assert alice.headers["x-liftoff-cache"] == "miss"
    assert bob.headers["x-liftoff-cache"] == "hit"


def test_cache_scope_is_validated_with_the_field_named():
    assert load_config(env={}).cache.scope == "key"
    assert load_config(env={"LIFTOFF__CACHE__SCOPE": "global"}).cache.scope == "global"
    with pytest.raises(ConfigError, match=r"cache\.scope = 'tenant'.*'key' or 'global'"):
        load_config(env={"LIFTOFF__CACHE__SCOPE": "tenant"})
