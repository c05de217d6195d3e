"""The hand-written hostile corpus and the auth cases of issue 10 (§3), against a real
`python -m app` process with the simulator as provider, on 127.0.0.1.

Every case is answered with the right 4xx within CASE_BOUND_S and never reaches the provider;
after each group the gateway still answers /healthz and a normal chat completion. Cases an
earlier suite already proves are not repeated here: 2,000 headers and the 64 MB header flood
(test_http_limits), the never-ending chunked body (test_http_limits), the 100,000-character
model name on chat and completions and `logit_bias` with 10,000 keys (test_hostile_fields).
Every loop is bounded in count and time."""

from __future__ import annotations

import contextlib
import hashlib
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.app.gateway_harness import (
    ADMIN,
    ALICE,
    BOB,
    PROVIDER_KEY,
    SIM_HEADERS,
    app_processes,
    client_keys_json,
)
from tests.app.test_http_limits import (
    _connection,
    _gateway_pid,
    _memory_kb,
    _parse,
    _read_until_closed,
)

CASE_BOUND_S = 2.0  # every hostile case is answered within this
TIMEOUT_S = 2.0  # the gateway's header and body read timeouts in this module
MAX_BODY = 1_048_576  # server.max_body_bytes (the default)
MIB = 1 << 20
CAROL = "carol-key-0123456789abcdef"  # revoked at the restart in the revocation test
USER = [{"role": "user", "content": "hi"}]
CHAT = {"model": "fast", "messages": USER, "max_tokens": 5}
RESPONSES = {"model": "fast", "input": "hi", "max_output_tokens": 16}
EMBEDDINGS = {"model": "text-embedding-3-small", "input": "hi"}
BODIES = {
    "/v1/chat/completions": CHAT,
    "/v1/responses": RESPONSES,
    "/v1/embeddings": EMBEDDINGS,
}
ROUTES = list(BODIES)


def gateway_env(simulator_url: str, keys: str) -> dict[str, str]:
    return {
        "LIFTOFF_UPSTREAM_URL": simulator_url,
        "LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY,
        "LIFTOFF_CLIENT_KEYS": keys,
        "LIFTOFF__UPSTREAM__FORWARD_HEADERS": "[" + ", ".join(SIM_HEADERS) + "]",
        "LIFTOFF__BATCHING__ENABLED": "false",
        "LIFTOFF__SERVER__HEADER_TIMEOUT_S": str(TIMEOUT_S),
        "LIFTOFF__SERVER__BODY_TIMEOUT_S": str(TIMEOUT_S),
        "LIFTOFF__SERVER__IDLE_TIMEOUT_S": str(TIMEOUT_S),
    }


@pytest.fixture(scope="module")
def gateway(simulator) -> Iterator[str]:
    """One gateway process (alice, bob, admin keys) with 2-s read timeouts; its /v1 URL."""
    with app_processes(1, gateway_env(simulator.url, client_keys_json())) as urls:
        yield urls[0]


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url.removesuffix("/v1"), timeout=10)


@pytest.fixture
def client(gateway) -> Iterator[httpx.Client]:
    with _client(gateway) as http:
        yield http


def bearer(key: str = ALICE) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def timed(call: Any, *args: Any, **kwargs: Any) -> httpx.Response:
    started = time.monotonic()
    response = call(*args, **kwargs)
    elapsed = time.monotonic() - started
    assert elapsed < CASE_BOUND_S, f"answered in {elapsed:.2f} s"
    return response


def post_raw(
    http: httpx.Client, path: str, content: bytes, content_type: str | None = "application/json"
) -> httpx.Response:
    headers = bearer() | ({"content-type": content_type} if content_type else {})
    return timed(http.post, path, content=content, headers=headers)


def assert_healthy(http: httpx.Client) -> None:
    """/healthz and one normal chat completion answer, quickly."""
    assert timed(http.get, "/healthz").json() == {"status": "ok"}
    ok = timed(http.post, "/v1/chat/completions", json=CHAT, headers=bearer())
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["message"]["content"]


def provider_calls(simulator) -> int:
    return sum(simulator.app.stats.by_route.values())


@pytest.fixture
def no_provider_call(simulator, client) -> Iterator[None]:
    """The test's requests never reach the provider; the gateway is healthy afterwards."""
    before = provider_calls(simulator)
    yield
    assert provider_calls(simulator) == before, simulator.app.recent_requests()[-3:]
    assert_healthy(client)


# --- body size -----------------------------------------------------------------------------------


def _padded(path: str, size: int, **fields: Any) -> bytes:
    """A JSON body for `path` (with `fields` over it) padded to exactly `size` bytes."""
    body = BODIES[path] | fields | {"user": ""}
    return orjson.dumps(body | {"user": "u" * (size - len(orjson.dumps(body)))})


@pytest.mark.parametrize("path", ROUTES)
def test_a_body_one_byte_over_the_limit_is_413_and_at_the_limit_is_read(
    simulator, client, no_provider_call, path
):
    over = _padded(path, MAX_BODY + 1)
    assert len(over) == MAX_BODY + 1
    assert_openai_error(post_raw(client, path, over), 413, "request_too_large")
    # Without a Content-Length (chunked), refused the same way once the limit is passed.
    chunked = timed(
        client.post,
        path,
        content=iter([over[: MIB // 2], over[MIB // 2 :]]),
        headers=bearer() | {"content-type": "application/json"},
    )
    assert_openai_error(chunked, 413, "request_too_large")
    # At the limit the body is read and validated: the model is refused, not the size.
    at_limit = _padded(path, MAX_BODY, model="no-such-model")
    assert len(at_limit) == MAX_BODY
    assert_openai_error(post_raw(client, path, at_limit), 404, "model_not_found")


def _send_big_body(url: str, path: str, total: int, chunked: bool) -> tuple[bytes, float, float]:
    """POST a `total`-byte body (announced or chunked), stopping as soon as the server answers;
    returns everything it sent, the seconds until its answer began and until it closed."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ALICE}\r\n"
        "Content-Type: application/json\r\n"
        + ("Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {total}\r\n")
        + "\r\n"
    ).encode()
    piece = b" " * (256 * 1024)
    frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
    started = time.monotonic()
    with _connection(url) as sock:
        sock.sendall(head + (b"1\r\n{\r\n" if chunked else b"{"))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(total // len(piece)):
                if select.select([sock], [], [], 0)[0]:
                    break
                sock.sendall(frame)
        select.select([sock], [], [], CASE_BOUND_S)
        answered = time.monotonic() - started
        raw = _read_until_closed(sock, 10 + TIMEOUT_S)
    return raw, answered, time.monotonic() - started


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", ROUTES)
def test_a_50_mib_body_is_refused_fast_and_memory_stays_bounded(
    gateway, client, no_provider_call, path, chunked
):
    pid = _gateway_pid(gateway)
    before = _memory_kb(pid)
    for _ in range(3):
        raw, answered, _ = _send_big_body(gateway, path, 50 * MIB, chunked)
        status, _, body = _parse(raw)
        assert status == 413, raw[:300]
        assert orjson.loads(body)["error"]["code"] == "request_too_large"
        assert answered < CASE_BOUND_S
    after = _memory_kb(pid)
    # At most a few limit-sized buffers, never the 50 MiB.
    assert after["VmHWM"] - before["VmHWM"] < 8 * 1024, (before, after)
    assert after["VmRSS"] - before["VmRSS"] < 8 * 1024, (before, after)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_413_closes_the_connection_instead_of_reading_the_rest(gateway, chunked):
    """The rest of a refused body is never wanted: after the 413 the gateway half-closes and the
    connection ends soon after (lingering briefly so the client reads the answer), rather than
    being held, discarding the client's upload, until the body timeout (60 s by default)."""
    raw, _, closed = _send_big_body(gateway, "/v1/chat/completions", 50 * MIB, chunked)
    status, _, _ = _parse(raw)
    assert status == 413
    assert closed < TIMEOUT_S * 0.75, closed


# --- malformed JSON ------------------------------------------------------------------------------

MALFORMED = {
    "nested-100000-arrays": b'{"model": "fast", "messages": ' + b"[" * 100_000 + b"]" * 100_000,
    "nested-100000-objects": b'{"a": ' * 100_000 + b"1" + b"}" * 100_000,
    "invalid-utf8": b'{"model": "fast", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    "lone-surrogate": b'{"model": "fast", "messages": [{"role": "user", "content": "\\ud800"}]}',
    "1e999": b'{"model": "fast", "messages": [{"role": "user", "content": "hi"}], '
    b'"temperature": 1e999}',
    "nan": b'{"model": "fast", "temperature": NaN}',
    "truncated": b'{"model": "fast", "messages": [',
    "empty": b"",
    "trailing-garbage": b'{"model": "fast"} x',
    "not-an-object": b'["model", "fast"]',
}


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_json_is_a_400(client, no_provider_call, path, raw):
    error = assert_openai_error(post_raw(client, path, raw), 400)
    assert error["type"] == "invalid_request_error"
    assert len(error["message"]) < 300  # the body is never echoed


# --- duplicate keys ------------------------------------------------------------------------------


# A field each route forwards unchanged, its first and its last value.
DUPLICATED = {
    "/v1/chat/completions": ("seed", 1, 2),
    "/v1/responses": ("temperature", 0.1, 0.7),
    "/v1/embeddings": ("dimensions", 8, 16),
}


@pytest.mark.parametrize("path", ROUTES)
def test_duplicate_keys_take_the_last_value_like_openai(simulator, client, path):
    # The first "model" is unknown (a 404 if it won); the last value of a field is forwarded.
    field, first, last = DUPLICATED[path]
    body = orjson.dumps(BODIES[path])
    raw = (
        b'{"model": "no-such-model", "%s": %s, ' % (field.encode(), orjson.dumps(first))
        + body[1:-1]
        + b', "%s": %s}' % (field.encode(), orjson.dumps(last))
    )
    response = post_raw(client, path, raw)
    assert response.status_code == 200, response.text[:300]
    assert simulator.app.recent_requests(path)[-1]["body"][field] == last


# --- content types -------------------------------------------------------------------------------

CONTENT_TYPES = [
    None,
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonx",
    "application/xml",
    "json",
]


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("content_type", CONTENT_TYPES, ids=str)
def test_a_wrong_content_type_is_415(client, no_provider_call, path, content_type):
    raw = orjson.dumps(BODIES[path])
    assert_openai_error(post_raw(client, path, raw, content_type), 415, "unsupported_media_type")


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
def test_json_with_parameters_or_another_case_is_accepted(client, content_type):
    response = post_raw(client, "/v1/chat/completions", orjson.dumps(CHAT), content_type)
    assert response.status_code == 200, response.text[:300]


# --- header values -------------------------------------------------------------------------------


def _raw_request(url: str, request: bytes) -> bytes:
    with _connection(url) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        return _read_until_closed(sock, CASE_BOUND_S)


@pytest.mark.parametrize(
    "header",
    [
        b"x-request-id: abc\rset-cookie: injected=1",  # a bare CR inside a value
        b"x-request-id: abc\nset-cookie: injected=1",  # a bare LF: the line ends early
        b"x-request-id: abc\x00def",
        b"Authorization: Bearer " + ALICE.encode() + b"\r\n continued",  # obsolete line folding
    ],
    ids=["bare-cr", "bare-lf", "nul", "obs-fold"],
)
def test_crlf_and_control_characters_in_header_values_never_inject(
    gateway, client, no_provider_call, header
):
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Authorization: Bearer "
        + ALICE.encode()
        + b"\r\nContent-Type: application/json\r\n"
        + header
        + b"\r\nContent-Length: 2\r\n\r\n{}"
    )
    started = time.monotonic()
    raw = _raw_request(gateway, request)
    assert time.monotonic() - started < CASE_BOUND_S
    status, headers, _ = _parse(raw)
    head = raw.partition(b"\r\n\r\n")[0].lower()
    assert b"injected" not in head and b"set-cookie" not in head
    assert 400 <= status < 500, raw[:300]
    assert "abc" not in headers.get("x-request-id", "")


# --- field values --------------------------------------------------------------------------------

HUGE = "m" * 100_000
TEN_THOUSAND_MESSAGES = [{"role": "user", "content": "hi"}] * 10_000
FIELD_CASES = [
    # (path, overrides, status, code, param)
    ("/v1/responses", {"model": HUGE}, 404, "model_not_found", "model"),
    ("/v1/embeddings", {"model": HUGE}, 404, "model_not_found", "model"),
    ("/v1/chat/completions", {"n": 1000}, 400, "invalid_value", "n"),
    ("/v1/chat/completions", {"max_tokens": -1}, 400, "invalid_value", "max_tokens"),
    (
        "/v1/chat/completions",
        {"max_tokens": None, "max_completion_tokens": -5},
        400,
        "invalid_value",
        "max_completion_tokens",
    ),
    (
        "/v1/responses",
        {"max_output_tokens": -1},
        400,
        "integer_below_min_value",
        "max_output_tokens",
    ),
    ("/v1/embeddings", {"input": ["hi"] * 10_000}, 400, "invalid_value", "input"),
    ("/v1/embeddings", {"dimensions": -1}, 400, "invalid_value", "dimensions"),
    ("/v1/chat/completions", {"max_tokens": 0.5}, 400, "invalid_type", "max_tokens"),
    ("/v1/chat/completions", {"max_tokens": 10**30}, 400, None, "max_tokens"),
    ("/v1/chat/completions", {"n": -1}, 400, "invalid_value", "n"),
]


@pytest.mark.parametrize(
    ("path", "overrides", "status", "code", "param"),
    FIELD_CASES,
    ids=[f"{c[0].rsplit('/', 1)[1]}-{next(iter(c[1]))}" for c in FIELD_CASES],
)
def test_hostile_field_values_get_the_right_4xx(
    client, no_provider_call, path, overrides, status, code, param
):
    body = {k: v for k, v in (BODIES[path] | overrides).items() if v is not None}
    response = timed(client.post, path, json=body, headers=bearer())
    error = assert_openai_error(response, status, code)
    assert error["param"] == param
    assert len(response.content) < 2000  # nothing hostile is echoed whole


@pytest.mark.parametrize(
    ("path", "field"), [("/v1/chat/completions", "messages"), ("/v1/responses", "input")]
)
def test_10000_messages_are_refused_as_too_large_for_the_tpm(client, no_provider_call, path, field):
    """10,000 messages (~50,000 prompt tokens) are more than the key's tpm burst (200,000 x 0.25)
    can ever admit: a 429 like OpenAI's "Request too large ... on tokens per min", which says
    the request must shrink, never "Retry after 1 s" (a retry can never succeed)."""
    response = timed(
        client.post, path, json=BODIES[path] | {field: TEN_THOUSAND_MESSAGES}, headers=bearer()
    )
    error = assert_openai_error(response, 429, "rate_limit_exceeded")
    assert "Request too large" in error["message"], error["message"]
    assert "Retry after" not in error["message"], error["message"]


# --- slow clients --------------------------------------------------------------------------------


def test_50_slow_clients_do_not_starve_a_normal_request(gateway, client):
    """25 clients trickle their headers and 25 their body, a byte a second each; a normal request
    completes quickly meanwhile, and every slow client gets its 408 within the timeout."""
    slow_head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nx-slow: "
    slow_body = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + ALICE.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n{"
    )
    with contextlib.ExitStack() as stack:
        socks = []
        for i in range(50):
            sock = stack.enter_context(_connection(gateway))
            sock.sendall(slow_head if i % 2 else slow_body)
            socks.append(sock)
        started = time.monotonic()
        answers: dict[socket.socket, bytes] = {}
        normal_s = []
        for _ in range(int(TIMEOUT_S) + 4):  # a byte a second each, bounded
            if len(answers) == len(socks):
                break
            request_started = time.monotonic()
            assert_healthy(client)
            normal_s.append(time.monotonic() - request_started)
            for sock in socks:
                if sock in answers:
                    continue
                if select.select([sock], [], [], 0)[0]:
                    answers[sock] = _read_until_closed(sock, 2)
                    continue
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(b"a")
            time.sleep(max(0.0, 1 - (time.monotonic() - request_started)))
        for sock in socks:  # the last ones, answered at their deadline
            if sock not in answers:
                answers[sock] = _read_until_closed(sock, 3)
        waited = time.monotonic() - started
    assert max(normal_s) < 1.0, normal_s
    statuses = [_parse(raw)[0] for raw in answers.values()]
    assert statuses == [408] * 50, statuses
    assert waited < TIMEOUT_S + 4


# --- auth ----------------------------------------------------------------------------------------

# One request per route family: generation, passthrough, stored responses, models, usage, admin.
FAMILY_REQUESTS = [
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/completions", {"model": "fast", "prompt": "hi"}),
    ("POST", "/v1/responses", RESPONSES),
    ("POST", "/v1/embeddings", EMBEDDINGS),
    ("POST", "/v1/moderations", {"input": "hi"}),
    ("GET", "/v1/files", None),
    ("POST", "/v1/images/generations", {"prompt": "a cat"}),
    ("POST", "/v1/audio/speech", {"model": "tts-1", "input": "hi", "voice": "alloy"}),
    ("GET", "/v1/batches", None),
    ("GET", "/v1/vector_stores", None),
    ("POST", "/v1/uploads", {"filename": "a", "purpose": "batch", "bytes": 1}),
    ("GET", "/v1/responses/resp_abc", None),
    ("DELETE", "/v1/responses/resp_abc", None),
    ("POST", "/v1/responses/resp_abc/cancel", None),
    ("GET", "/v1/responses/resp_abc/input_items", None),
    ("POST", "/v1/responses/input_tokens", RESPONSES),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/fast", None),
    ("GET", "/v1/usage", None),
    ("GET", "/v1/usage?key=bob", None),
    ("POST", "/admin/cache/invalidate", {"model": "fast"}),
]
BAD_AUTHORIZATION = {
    "missing": None,
    "empty": "",
    "no-bearer": ALICE,
    "basic": "Basic " + ALICE,
    "bearer-only": "Bearer",
    "token-scheme": "Token " + ALICE,
    "wrong-key": "Bearer wrong-key-0123456789abcdef",
    "prefix-of-key": "Bearer " + ALICE[:-1],
    "key-plus-one": "Bearer " + ALICE + "x",
    "10-kb": "Bearer " + "k" * 10_240,
    "dev-key": "Bearer liftoff-dev-key",
    "sha256-of-key": "Bearer " + hashlib.sha256(ALICE.encode()).hexdigest(),
}


def _request(http: httpx.Client, method: str, path: str, body: Any, headers: dict) -> Any:
    content = orjson.dumps(body) if body is not None else None
    json_type = {"content-type": "application/json"} if body is not None else {}
    return timed(http.request, method, path, content=content, headers=headers | json_type)


@pytest.mark.parametrize(("method", "path", "body"), FAMILY_REQUESTS, ids=lambda v: str(v)[:40])
def test_every_route_family_refuses_without_a_valid_key(
    simulator, client, no_provider_call, method, path, body
):
    for name, value in BAD_AUTHORIZATION.items():
        headers = {} if value is None else {"authorization": value}
        response = _request(client, method, path, body, headers)
        error = assert_openai_error(response, 401, "invalid_api_key")
        assert error["type"] == "invalid_request_error", name
        assert ALICE not in response.text and "k" * 100 not in response.text, name
        assert "usage" not in response.json() and "data" not in response.json(), name


@pytest.mark.parametrize(
    "raw_value",
    [b"Bearer \xd0\xba\xd0\xbb\xd1\x8e\xd1\x87", b"Bearer \xff\xfe" + ALICE.encode()],
    ids=["utf8-cyrillic", "latin1-bytes"],
)
def test_a_non_ascii_key_is_401(gateway, client, no_provider_call, raw_value):
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Authorization: " + raw_value + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(orjson.dumps(CHAT)) + orjson.dumps(CHAT)
    )
    status, _, body = _parse(_raw_request(gateway, request))
    assert status == 401, body[:300]
    assert orjson.loads(body)["error"]["code"] == "invalid_api_key"


def test_one_tenant_never_sees_another_tenants_usage(client, no_provider_call):
    own = timed(client.get, "/v1/usage", headers=bearer(ALICE))
    assert own.status_code == 200 and own.json()["key"] == "alice"
    for query in ("?key=bob", "?key=admin", "?key=bob&month=2026-01", "?key=", "?key=alice%00"):
        response = timed(client.get, "/v1/usage" + query, headers=bearer(ALICE))
        error = assert_openai_error(response, 403)
        assert error["type"] in ("invalid_request_error", "permission_error"), error
        assert set(response.json()) == {"error"}
    # bob may read bob; an admin may read anyone (the same route works, only the tenant differs).
    assert timed(client.get, "/v1/usage?key=bob", headers=bearer(BOB)).status_code == 200
    assert timed(client.get, "/v1/usage?key=bob", headers=bearer(ADMIN)).json()["key"] == "bob"


def test_admin_routes_need_the_admin_flag(client, no_provider_call):
    for key in (ALICE, BOB):
        response = _request(
            client, "POST", "/admin/cache/invalidate", {"model": "fast"}, bearer(key)
        )
        assert_openai_error(response, 403)
        assert set(response.json()) == {"error"}
    every_key = timed(client.get, "/v1/usage", headers=bearer(ALICE)).json()
    assert "keys" not in every_key  # the all-keys view is the admin's only
    admin = timed(client.get, "/v1/usage", headers=bearer(ADMIN)).json()
    assert "keys" in admin


def test_a_key_removed_at_restart_is_revoked(simulator):
    keys = client_keys_json(carol={"key": CAROL})
    with app_processes(1, gateway_env(simulator.url, keys)) as urls, _client(urls[0]) as http:
        accepted = _request(http, "POST", "/v1/chat/completions", CHAT, bearer(CAROL))
        assert accepted.status_code == 200, accepted.text
    before = provider_calls(simulator)
    env = gateway_env(simulator.url, client_keys_json())
    with app_processes(1, env) as urls, _client(urls[0]) as http:
        for method, path, body in FAMILY_REQUESTS:
            response = _request(http, method, path, body, bearer(CAROL))
            assert_openai_error(response, 401, "invalid_api_key")
        assert_healthy(http)
    assert provider_calls(simulator) == before + 1  # alice's request only
