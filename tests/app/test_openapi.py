"""The OpenAPI document (/openapi.json) against the server: a valid OpenAPI 3.1 document, every
served route and method in it and nothing else, its request schemas refusing exactly what the
gateway refuses, and schemathesis' checks over generated requests to a real gateway."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate as validate_openapi
from starlette.routing import Route

from app.openapi import openapi_document
from app.server import create_app
from tests.app.gateway_harness import (
    ADMIN,
    ALICE,
    PROVIDER_KEY,
    auth,
    client_keys_json,
    make_config,
    running,
    served,
)

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Starlette answers HEAD on every GET route by itself; the document lists the GETs.
IMPLIED = {"HEAD"}


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


def served_routes(app: Any) -> set[tuple[str, str]]:
    """(path template, method) of every route; `{name:converter}` written `{name}`."""
    pairs = set()
    for route in app.routes:
        assert isinstance(route, Route), route
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        pairs |= {(path, method) for method in route.methods - IMPLIED}
    return pairs


def test_document_is_valid_openapi_31():
    validate_openapi(openapi_document())
    validate_openapi(openapi_document(make_config(None)))


def test_every_served_route_is_documented_and_nothing_else():
    app = create_app(make_config(None), {"LIFTOFF_CLIENT_KEYS": client_keys_json()})
    assert served_routes(app) == documented(openapi_document())


def test_every_operation_declares_its_path_parameters_and_has_an_id_and_tag():
    document = openapi_document()
    ids = []
    for path, item in document["paths"].items():
        in_path = set(re.findall(r"\{(\w+)\}", path))
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == in_path, (method, path)
            assert operation["tags"] and set(operation["tags"]) <= {
                tag["name"] for tag in document["tags"]
            }
            ids.append(operation["operationId"])
    assert len(ids) == len(set(ids))


def test_models_and_caps_come_from_the_configuration():
    config = make_config(None, models={"max_n": 2, "max_stop": 3})
    schemas = openapi_document(config)["components"]["schemas"]
    chat = schemas["ChatRequest"]["properties"]
    catalog = config.models.catalog
    chat_models = {n for n, s in catalog.items() if s.kind == "chat"}
    embedding_models = {n for n, s in catalog.items() if s.kind == "embedding"}
    assert chat_models and embedding_models
    assert set(chat["model"]["enum"]) == chat_models | set(config.models.aliases)
    assert set(schemas["EmbeddingsRequest"]["properties"]["model"]["enum"]) == embedding_models
    assert chat["n"]["maximum"] == 2
    assert chat["stop"]["anyOf"][1]["maxItems"] == 3
    assert (
        "enum"
        not in openapi_document()["components"]["schemas"]["ChatRequest"]["properties"]["model"]
    )


# --- the schemas refuse what the server refuses ------------------------------------------------

FAST = {"model": "fast"}
HI = [{"role": "user", "content": "hi"}]
# (route, schema, body, does the document accept it)
BODIES = [
    ("/v1/chat/completions", "ChatRequest", {**FAST, "messages": HI, "temperature": 0}, True),
    ("/v1/chat/completions", "ChatRequest", {**FAST, "messages": HI, "temperature": None}, True),
    ("/v1/chat/completions", "ChatRequest", {**FAST, "messages": HI, "extra": [1]}, True),
    ("/v1/chat/completions", "ChatRequest", {**FAST, "messages": HI, "temperature": 1.5}, True),
    ("/v1/chat/completions", "ChatRequest", {**FAST, "messages": HI, "n": 5}, False),
    ("/v1/chat/completions", "ChatRequest", {**FAST, "messages": HI, "n": 1.5}, False),
    ("/v1/chat/completions", "ChatRequest", {**FAST, "messages": []}, False),
    ("/v1/chat/completions", "ChatRequest", {**FAST, "messages": [{"role": "user"}]}, False),
    (
        "/v1/chat/completions",
        "ChatRequest",
        {**FAST, "messages": [{"role": "assistant", "content": None}]},
        True,
    ),
    (
        "/v1/chat/completions",
        "ChatRequest",
        {**FAST, "messages": HI, "stream_options": {"include_usage": True}},
        False,
    ),
    (
        "/v1/chat/completions",
        "ChatRequest",
        {**FAST, "messages": HI, "max_tokens": 5, "max_completion_tokens": 5},
        False,
    ),
    (
        "/v1/chat/completions",
        "ChatRequest",
        {**FAST, "messages": HI, "max_tokens": 5, "max_completion_tokens": None},
        True,
    ),
    ("/v1/chat/completions", "ChatRequest", {**FAST, "messages": HI, "stop": list("abcde")}, False),
    (
        "/v1/chat/completions",
        "ChatRequest",
        {**FAST, "messages": HI, "logit_bias": {"x": 1}},
        False,
    ),
    ("/v1/chat/completions", "ChatRequest", {**FAST, "messages": HI, "logit_bias": {"7": 1}}, True),
    (
        "/v1/chat/completions",
        "ChatRequest",
        {**FAST, "messages": HI, "logit_bias": {"7": 101}},
        False,
    ),
    ("/v1/chat/completions", "ChatRequest", {"model": "nope", "messages": HI}, False),
    ("/v1/completions", "CompletionRequest", {**FAST, "prompt": "hi"}, True),
    ("/v1/completions", "CompletionRequest", {**FAST, "prompt": ["a"] * 21}, False),
    ("/v1/completions", "CompletionRequest", {**FAST, "prompt": "hi", "n": 2}, True),
    ("/v1/completions", "CompletionRequest", {**FAST, "prompt": "hi", "n": 2, "best_of": 1}, False),
    (
        "/v1/completions",
        "CompletionRequest",
        {**FAST, "prompt": "hi", "n": 2, "stream": True},
        True,
    ),
    ("/v1/completions", "CompletionRequest", {**FAST, "prompt": "hi", "n": 2, "best_of": 2}, True),
    (
        "/v1/completions",
        "CompletionRequest",
        {**FAST, "prompt": "hi", "stream": True, "best_of": 2},
        False,
    ),
    ("/v1/responses", "ResponsesRequest", {**FAST, "input": "hi"}, True),
    ("/v1/responses", "ResponsesRequest", {**FAST, "input": "hi", "background": True}, False),
    ("/v1/responses", "ResponsesRequest", {**FAST, "input": "hi", "max_output_tokens": 15}, False),
    ("/v1/responses", "ResponsesRequest", {**FAST, "input": [{"role": "tool"}]}, False),
    (
        "/v1/responses",
        "ResponsesRequest",
        {**FAST, "input": [{"type": "message", "role": "user", "content": [{"text": "x"}]}]},
        False,
    ),
    ("/v1/responses", "ResponsesRequest", {**FAST, "input": "hi", "tools": [{"name": "f"}]}, False),
    (
        "/v1/responses",
        "ResponsesRequest",
        {**FAST, "input": "hi", "tools": [{"type": "function"}]},
        False,
    ),
    ("/v1/responses", "ResponsesRequest", {**FAST, "instructions": "be brief"}, False),
    (
        "/v1/embeddings",
        "EmbeddingsRequest",
        {"model": "text-embedding-3-small", "input": ["a", [1, 2]], "dimensions": 8},
        True,
    ),
    (
        "/v1/embeddings",
        "EmbeddingsRequest",
        {"model": "text-embedding-3-small", "input": ["a"] * 2049},
        False,
    ),
    (
        "/v1/embeddings",
        "EmbeddingsRequest",
        {"model": "text-embedding-3-small", "input": ""},
        False,
    ),
    (
        "/v1/embeddings",
        "EmbeddingsRequest",
        {"model": "text-embedding-3-small", "input": "a", "dimensions": 100_000},
        False,
    ),
    (
        "/v1/embeddings",
        "EmbeddingsRequest",
        {"model": "text-embedding-3-small", "input": "a", "encoding_format": "hex"},
        False,
    ),
    ("/v1/embeddings", "EmbeddingsRequest", {**FAST, "input": "a"}, False),
]


def validator(document: dict[str, Any], schema: str) -> jsonschema.Draft202012Validator:
    root = {"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
    return jsonschema.Draft202012Validator(root)


@pytest.mark.parametrize(("path", "schema", "body", "valid"), BODIES)
async def test_request_schemas_accept_exactly_what_the_gateway_accepts(
    simulator, path, schema, body, valid
):
    config = make_config(simulator.url)
    check = validator(openapi_document(config), schema)
    assert check.is_valid(body) is valid, list(check.iter_errors(body))
    async with running(config) as gw:
        response = await gw.client.post(path, json=body, headers=auth())
    assert (response.status_code == 200) is valid, response.text


@pytest.mark.parametrize(
    ("month", "valid"),
    [
        ("2026-01", True),
        ("2026-12", True),
        ("", True),
        ("2026-13", False),
        ("2026-00", False),
        ("2026-1", False),
        ("26-01", False),
        ("2026-01x", False),
    ],
)
async def test_usage_month_rule(simulator, month, valid):
    document = openapi_document()
    (month_parameter,) = [
        p for p in document["paths"]["/v1/usage"]["get"]["parameters"] if p["name"] == "month"
    ]
    assert jsonschema.Draft202012Validator(month_parameter["schema"]).is_valid(month) is valid
    async with running(make_config(simulator.url)) as gw:
        response = await gw.client.get("/v1/usage", params={"month": month}, headers=auth())
    assert response.status_code == (200 if valid else 400)


async def test_answers_match_their_documented_schemas(simulator):
    """One request per kind of answer, each checked against the schema of its status."""
    config = make_config(simulator.url)
    document = openapi_document(config)
    chat = {**FAST, "messages": HI, "max_tokens": 5}
    calls = [
        ("post", "/v1/chat/completions", chat, ALICE),
        ("post", "/v1/completions", {**FAST, "prompt": "hi", "max_tokens": 5}, ALICE),
        ("post", "/v1/responses", {**FAST, "input": "hi", "max_output_tokens": 16}, ALICE),
        ("post", "/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a"]}, ALICE),
        ("get", "/v1/models", None, ALICE),
        ("get", "/v1/models/fast", None, ALICE),
        ("get", "/v1/usage", None, ALICE),
        ("get", "/v1/usage", None, ADMIN),
        ("get", "/v1/usage?key=bob", None, ALICE),
        ("post", "/admin/cache/invalidate", {"model": "fast"}, ADMIN),
        ("get", "/readyz", None, None),
        ("get", "/healthz", None, None),
        ("post", "/v1/chat/completions", {**chat, "n": 99}, ALICE),
        ("post", "/v1/chat/completions", chat, None),
    ]
    async with running(config, {"LIFTOFF_CLIENT_KEYS": client_keys_json()}) as gw:
        for method, url, body, key in calls:
            path = url.split("?")[0].replace("/v1/models/fast", "/v1/models/{model}")
            headers = auth(key) if key else {}
            response = await gw.client.request(method, url, json=body, headers=headers)
            spec = document["paths"][path][method]["responses"][str(response.status_code)]
            if "$ref" in spec:
                spec = document["components"]["responses"][spec["$ref"].rsplit("/", 1)[1]]
            schema = {**spec["content"]["application/json"]["schema"], **document}
            jsonschema.validate(response.json(), schema, jsonschema.Draft202012Validator)
            for name, header in spec["headers"].items():
                header = document["components"]["headers"][header["$ref"].rsplit("/", 1)[1]]
                assert not header["required"] or name in response.headers, (url, name)


# --- schemathesis --------------------------------------------------------------------------------

# Routes the gateway forwards without reading their bodies: the provider decides what is valid
# (its refusals are the documented `default` answer), so a schema-valid request may be refused,
# and every one takes the same path through the gateway (`forward`): few examples suffice.
FORWARDED = (
    "^/v1/(files|uploads|audio|images|batches|vector_stores|moderations)"
    "|^/v1/responses/(input_tokens|\\{response_id\\})"
)
SCHEMATHESIS_CONFIG = """\
headers = {{ Authorization = "Bearer {alice}" }}

[generation]
max-examples = 30
database = "none"

[[operations]]
include-path-regex = "^/admin/"
headers = {{ Authorization = "Bearer {admin}" }}
# `key` must name a configured client key, which the public document does not list.
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "429"]

[[operations]]
include-path-regex = '{forwarded}'
generation.max-examples = 5
checks.positive_data_acceptance.enabled = false

[[operations]]
include-path-regex = "^/v1/responses$"
# `previous_response_id` must name a response the provider stored, which no document can list:
# a valid one that names none is the provider's 400 previous_response_not_found.
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "429"]

# A path tail (`{{name:path}}`) holding a line feed matches no route: the router's own 404, which
# the generated negative values of these parameters only ever reach.
[[operations]]
include-path-regex = '\\{{(model|rest)\\}}$'
generation.mode = "positive"
"""


def test_schemathesis_finds_no_disagreement(simulator, tmp_path: Path):
    """Generated requests (valid and invalid) to every operation of the served document, all of
    schemathesis' checks: no 5xx, every status, content type, header and body as documented,
    invalid requests refused, valid ones accepted."""
    keys = client_keys_json(
        alice={"rpm": 100_000_000, "tpm": 100_000_000},
        admin={"rpm": 100_000_000, "tpm": 100_000_000},
    )
    env = {"LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY, "LIFTOFF_CLIENT_KEYS": keys}
    config_file = tmp_path / "schemathesis.toml"
    config_file.write_text(
        SCHEMATHESIS_CONFIG.format(alice=ALICE, admin=ADMIN, forwarded=FORWARDED)
    )
    app = create_app(make_config(simulator.url), env)
    with served(app) as url:
        base = url.removesuffix("/v1")
        assert httpx.get(f"{base}/readyz").status_code == 200
        started = time.monotonic()
        # One worker: Hypothesis' lambda-source cache is not thread-safe (workers > 1 make
        # schemathesis report its KeyError as a runtime error now and then).
        command = ["--config-file", str(config_file), "run", f"{base}/openapi.json"]
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", *command],
            cwd=tmp_path,
            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "120"},
            capture_output=True,
            text=True,
            timeout=180,
        )
        elapsed = time.monotonic() - started
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "Operations:" in report and "generated" in report, report
    assert elapsed < 90, f"took {elapsed:.0f} s\n{report}"
