"""The whole gateway over HTTP with Redis and two providers: OpenAI-kind (the simulator) and
Azure OpenAI (an Azure-shaped front that checks Azure's URLs and headers, then asks the simulator).
The SDK's chat, Responses and embeddings calls go to each model's own provider; a failing Azure
deployment falls back to a model on the other provider."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import httpx
from openai import OpenAI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.server import create_app
from tests.app.gateway_harness import ALICE, PROVIDER_KEY, client_keys_json, make_config, served

AZURE_KEY = "azure-key-0123456789abcdef"
SMART = "gpt-4o-2024-08-06"  # on Azure; its catalog fallback gpt-4o-mini is on the simulator


class AzureFront:
    """Azure OpenAI's dated API in front of the simulator: /openai/deployments/{d}/{op}."""

    def __init__(self, simulator_url: str) -> None:
        self.seen: list[dict] = []
        self.lock = threading.Lock()

        async def deployment(request: Request) -> Response:
            body = await request.body()
            with self.lock:
                self.seen.append(
                    {
                        "path": request.url.path,
                        "query": dict(request.query_params),
                        "api-key": request.headers.get("api-key"),
                        "authorization": request.headers.get("authorization"),
                    }
                )
            if request.headers.get("x-front-fail"):
                return JSONResponse({"error": {"message": "busy", "code": "500"}}, 500)
            if request.query_params.get("api-version") != "2024-10-21" or not request.headers.get(
                "api-key"
            ):
                return JSONResponse({"error": {"message": "bad azure call"}}, 400)
            payload = __import__("orjson").loads(body)
            payload["model"] = request.path_params["deployment"]  # Azure: the URL names it
            client = httpx.AsyncClient(base_url=simulator_url, timeout=30)
            upstream = await client.send(
                client.build_request(
                    "POST",
                    f"/v1/{request.path_params['operation']}",
                    json=payload,
                    headers={"authorization": "Bearer sk-sim"},
                ),
                stream=True,
            )

            async def relay():
                try:
                    async for chunk in upstream.aiter_raw():
                        yield chunk
                finally:
                    await upstream.aclose()
                    await client.aclose()

            return StreamingResponse(
                relay(), upstream.status_code, media_type=upstream.headers["content-type"]
            )

        self.app = Starlette(
            routes=[
                Route(
                    "/openai/deployments/{deployment}/{operation:path}",
                    deployment,
                    methods=["POST"],
                )
            ]
        )


@contextlib.contextmanager
def two_provider_gateway(simulator, redis_url) -> Iterator[tuple[str, AzureFront]]:
    front = AzureFront(simulator.url)
    with served(front.app) as front_url:
        config = make_config(
            None,
            redis_url,
            upstream={
                "url": None,
                "providers": [
                    {"name": "openai", "kind": "openai", "url": simulator.url},
                    {
                        "name": "azure-east",
                        "kind": "azure",
                        "url": front_url.removesuffix("/v1"),
                        "api_version": "2024-10-21",
                    },
                ],
                "forward_headers": ["x-front-fail"],
                "retry": {"max_attempts": 2, "base_s": 0.01, "cap_s": 0.05},
            },
            models={"catalog": {SMART: {"provider": "azure-east"}}},
        )
        env = {
            "LIFTOFF_UPSTREAM_API_KEY": PROVIDER_KEY,
            "LIFTOFF_PROVIDER_AZURE_EAST_API_KEY": AZURE_KEY,
            "LIFTOFF_CLIENT_KEYS": client_keys_json(),
        }
        with served(create_app(config, env)) as url:
            yield url, front


def test_each_model_goes_to_its_own_provider_with_its_own_auth(simulator, redis_url):
    simulator.app.reset()
    with two_provider_gateway(simulator, redis_url) as (url, front):
        client = OpenAI(base_url=url, api_key=ALICE, max_retries=0)
        on_azure = client.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "hi"}]
        )
        streamed = client.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        on_openai = client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "hi"}]
        )
        response = client.responses.create(model="fast", input="hello")
        vectors = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        usage = httpx.get(f"{url}/usage", headers={"authorization": f"Bearer {ALICE}"}).json()
    assert on_azure.model == SMART and text
    assert on_openai.model == "gpt-4o-mini-2024-07-18"
    assert response.output_text and len(vectors.data) == 2
    assert [s["path"] for s in front.seen] == [f"/openai/deployments/{SMART}/chat/completions"] * 2
    assert all(s["query"] == {"api-version": "2024-10-21"} for s in front.seen)
    assert all(s["api-key"] == AZURE_KEY and s["authorization"] is None for s in front.seen)
    # The simulator saw the OpenAI-kind provider's calls (and the front's, under its own key).
    direct = [r for r in simulator.app.recent_requests() if r["path"] != "/v1/chat/completions"]
    assert {r["path"] for r in direct} >= {"/v1/responses", "/v1/embeddings"}
    assert usage["usage"]["requests"] == 5


def test_a_failing_azure_deployment_falls_back_to_a_model_on_the_other_provider(
    simulator, redis_url
):
    with two_provider_gateway(simulator, redis_url) as (url, front):
        client = OpenAI(base_url=url, api_key=ALICE, max_retries=0)
        answer = client.chat.completions.create(
            model="smart",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-front-fail": "1"},
        )
    assert answer.model == "gpt-4o-mini-2024-07-18"  # served by the fallback, on the simulator
    assert len(front.seen) >= 1 and all(s["api-key"] == AZURE_KEY for s in front.seen)


def test_answers_of_a_model_on_azure_are_cached_in_the_shared_redis(simulator, redis_url):
    model = "smart"
    with two_provider_gateway(simulator, redis_url) as (url, _):
        response = httpx.post(
            f"{url}/chat/completions",
            headers={"authorization": f"Bearer {ALICE}"},
            json={"model": model, "messages": [{"role": "user", "content": "x"}], "temperature": 0},
            timeout=30,
        )
        again = httpx.post(
            f"{url}/chat/completions",
            headers={"authorization": f"Bearer {ALICE}"},
            json={"model": model, "messages": [{"role": "user", "content": "x"}], "temperature": 0},
            timeout=30,
        )
    assert response.status_code == again.status_code == 200
    assert again.headers["x-liftoff-cache"] == "hit"  # the shared Redis cache, across providers
