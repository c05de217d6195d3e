"""`python -m app.simulator`: the simulator on its own, configured from the command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict

import uvicorn

from app.simulator import text
from app.simulator.options import FAULT_KINDS, SimulatorOptions
from app.simulator.server import create_app


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, SimulatorOptions]:
    defaults = SimulatorOptions()
    parser = argparse.ArgumentParser(
        prog="python -m app.simulator", description="A simulated OpenAI-compatible provider."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument(
        "--ttft-ms", type=float, default=defaults.ttft_ms, help="time to first token"
    )
    parser.add_argument("--token-ms", type=float, default=defaults.token_ms, help="delay per token")
    parser.add_argument("--fault-rate", type=float, default=defaults.fault_rate)
    parser.add_argument(
        "--fault-kinds",
        default=",".join(defaults.fault_kinds),
        help=f"comma-separated subset of {','.join(FAULT_KINDS)}",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--timeout-fault-s", type=float, default=defaults.timeout_fault_s)
    parser.add_argument("--retry-after-s", type=float, default=defaults.retry_after_s)
    parser.add_argument(
        "--stored-responses",
        type=int,
        default=defaults.stored_responses,
        help="Responses API objects kept for retrieval (oldest dropped)",
    )
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    try:
        options = SimulatorOptions(
            ttft_ms=args.ttft_ms,
            token_ms=args.token_ms,
            fault_rate=args.fault_rate,
            fault_kinds=tuple(k.strip() for k in args.fault_kinds.split(",") if k.strip()),
            seed=args.seed,
            timeout_fault_s=args.timeout_fault_s,
            retry_after_s=args.retry_after_s,
            stored_responses=args.stored_responses,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return args, options


def main(argv: Sequence[str] | None = None) -> None:
    args, options = parse_args(argv)
    text.vocabulary()  # load the tokenizer before the first request
    print(f"simulator on http://{args.host}:{args.port} {asdict(options)}", flush=True)
    uvicorn.run(
        create_app(options),
        host=args.host,
        port=args.port,
        lifespan="off",
        access_log=False,
        log_level=args.log_level,
        timeout_keep_alive=130,
    )
