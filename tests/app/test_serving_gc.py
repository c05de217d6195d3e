"""The server process tunes the garbage collector once started; an embedded app leaves it alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from app.server import SERVING_GC_THRESHOLD, create_app
from tests.app.gateway_harness import PROVIDER_KEY, client_keys_json, make_config


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def _env() -> dict[str, str]:
    return {"LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY, "LIFTOFF_CLIENT_KEYS": client_keys_json()}


async def test_the_server_freezes_its_startup_heap_and_collects_less_often(
    simulator, restore_gc
) -> None:
    app = create_app(make_config(simulator.url), _env(), tune_gc=True)
    assert gc.get_threshold()[0] != SERVING_GC_THRESHOLD  # nothing happens before startup
    async with app.router.lifespan_context(app):
        assert gc.get_threshold()[0] == SERVING_GC_THRESHOLD
        # The tokenizer vocabularies loaded at startup are out of every later collection.
        assert gc.get_freeze_count() > 10_000


async def test_an_embedded_app_leaves_the_collector_alone(simulator, restore_gc) -> None:
    before = gc.get_threshold()
    app = create_app(make_config(simulator.url), _env())
    async with app.router.lifespan_context(app):
        assert gc.get_threshold() == before
