"""`python -m app`: the gateway under uvicorn (uvloop + httptools), configured from the environment.

SIGTERM: readiness goes false at once (``/readyz`` answers 503), the server keeps serving for
``server.shutdown_delay_s`` (so load balancers stop sending; each answer then closes its
connection), then stops accepting connections once requests stopped arriving and lets in-flight
requests and streams finish within ``server.graceful_shutdown_s`` (:mod:`app.drain`). SIGINT
(Ctrl-C at a terminal, no load balancer to wait for) and a second signal skip the delay.

Connections are served by :class:`app.http_protocol.LimitedHttpProtocol` (header limits, read
deadlines, a connection bound, JSON refusals).
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import sys

import uvicorn

from app.auth import parse_client_keys
from app.config import ConfigError, GatewayConfig, load_config
from app.drain import Drain, DrainingServer
from app.http_protocol import LimitedHttpProtocol
from app.log import setup_logging
from app.metrics import worker_metrics_dir
from app.server import create_app

log = logging.getLogger("liftoff")
# Descriptors besides client connections and the provider and Redis pools: files, pipes, the
# listener.
_OTHER_DESCRIPTORS = 64


def _banner(config: GatewayConfig, env: dict[str, str]) -> str:
    lines = [f"Liftoff gateway on http://{config.server.host}:{config.server.port}"]
    embedded = []
    if config.uses_simulator:
        embedded.append(
            "upstream: built-in simulator "
            "(set LIFTOFF_UPSTREAM_URL + LIFTOFF_UPSTREAM_API_KEY for a real provider)"
        )
    if not config.redis.url:
        embedded.append(
            "state: in-process cache and limiter "
            "(set LIFTOFF_REDIS_URL to share them across replicas)"
        )
    if not (env.get("LIFTOFF_CLIENT_KEYS") or env.get("LIFTOFF_CLIENT_KEYS_SECRET_ARN")):
        embedded.append("auth: development key only -> Authorization: Bearer liftoff-dev-key")
    if embedded:
        lines.append("Running on EMBEDDED DEFAULTS (fine for trying it out, not for production):")
        lines += [f"  - {item}" for item in embedded]
        lines.append(
            f"Try: curl -s http://{config.server.host}:{config.server.port}/v1/chat/completions "
            "-H 'authorization: Bearer liftoff-dev-key' -H 'content-type: application/json' "
            '-d \'{"model":"fast","messages":[{"role":"user","content":"hi"}]}\''
        )
    return "\n".join(lines)


def _ensure_descriptors(config: GatewayConfig) -> None:
    """Raise the soft open-file limit (up to the hard one) so ``server.max_connections`` is the
    bound that holds, not accept() failing with EMFILE (the Go runtime raises it the same way)."""
    needed = (
        config.server.max_connections
        + config.upstream.max_connections
        + config.redis.max_connections
        + _OTHER_DESCRIPTORS
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    if raised < needed:
        log.warning(
            "open-file limit %d (hard) is below the %d descriptors server.max_connections = %d "
            "needs: accept() may fail before the bound",
            hard,
            needed,
            config.server.max_connections,
        )


def main() -> None:
    setup_logging(os.environ.get("LIFTOFF_LOG_LEVEL", "INFO").upper())
    env = dict(os.environ)
    try:
        config = load_config(env=env)
        workers = int(env.get("LIFTOFF_WORKERS", "1"))
        if workers < 1:
            raise ConfigError(f"LIFTOFF_WORKERS = {workers}: must be an integer >= 1")
        # Keys given in the environment are checked here, so a typo exits 2 with its message
        # instead of failing uvicorn's startup (exit 3, traceback); keys from Secrets Manager
        # can only be checked once fetched.
        parse_client_keys(env.get("LIFTOFF_CLIENT_KEYS"))
    except ValueError as exc:
        print(f"liftoff: {exc}", file=sys.stderr)
        sys.exit(2)
    print(_banner(config, env), file=sys.stderr, flush=True)
    _ensure_descriptors(config)
    drain = Drain()
    common = dict(
        host=config.server.host,
        port=config.server.port,
        loop="uvloop",
        http=functools.partial(LimitedHttpProtocol, limits=config.server, drain=drain),
        # The gateway serves no WebSocket: an Upgrade header stays a plain HTTP request, under
        # the limits above.
        ws="none",
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_keep_alive=int(config.server.keepalive_timeout_s),
        timeout_graceful_shutdown=int(config.server.graceful_shutdown_s),
        proxy_headers=True,
        server_header=False,
    )
    if workers > 1:
        # Each worker process runs its own gateway (own pools); /metrics adds up all of them.
        with worker_metrics_dir():
            uvicorn.run("app.server:create_app_from_env", factory=True, workers=workers, **common)
        return
    app = create_app(config, env, tune_gc=True)
    server = DrainingServer(
        uvicorn.Config(app, **common), app.state.gateway, drain, config.server.shutdown_delay_s
    )
    server.run()


if __name__ == "__main__":
    main()
