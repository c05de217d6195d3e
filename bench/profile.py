"""`python -m bench.profile`: a py-spy flame graph of the gateway's cache-miss path.

Starts the benchmark's stack (simulator, redis-server, gateway; see `bench.stack`), offers the
closed-loop cache-miss load of `python -m bench` and records the gateway with py-spy
(`py-spy record`, on-CPU samples) twice for `--duration` seconds: once as the SVG flame graph
(bench/flamegraph-miss.svg), once as collapsed stacks, from which it prints the frames holding the
most samples, self and inclusive (what bench/PROFILE.md reads).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bench.__main__ import chat_request
from bench.stack import CLIENT_KEY, PYTHON, ROOT, CpuPlan, stack

LINE = re.compile(r":\d+\)$")


def py_spy() -> str:
    """The py-spy binary beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy (in the test extra)")
    return found


def hot_spots(collapsed: str, top: int = 30) -> dict[str, list[tuple[str, float]]]:
    """Share of the samples per frame from py-spy's collapsed stacks (`frame;frame;... count`):
    `self` where the frame itself ran, `inclusive (app/)` the gateway's functions with everything
    they called."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        # "function (file:line)" -> "function (file)": a function's lines add up
        frames = [LINE.sub(")", frame) for frame in stack_text.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    share = 100 / total if total else 0.0
    # Inclusive shares of the gateway's own functions: the outer frames (uvicorn, the event
    # loop) hold 100% and say nothing.
    gateway = Counter({frame: n for frame, n in inclusive.items() if " (app/" in frame})
    return {
        kind: [(frame, round(n * share, 1)) for frame, n in counter.most_common(top)]
        for kind, counter in (("self", own), ("inclusive (app/)", gateway))
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--duration", type=int, default=20, help="seconds recorded")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--connections", type=int, default=64, help="closed-loop connections")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "flamegraph-miss.svg")
    args = parser.parse_args(argv)
    spy = py_spy()
    plan = CpuPlan()
    workdir = Path(tempfile.mkdtemp(prefix="liftoff-profile-"))
    with stack(plan, workdir, bare_proxy=False) as running:
        assert running.gateway is not None
        spec = {
            "target": running.gateway,
            "request": chat_request(f"Bearer {CLIENT_KEY}", unique=True),
            "mode": "closed",
            "connections": args.connections,
            "duration_s": 2 * args.duration + 6,  # load before, during and after both recordings
        }
        load = subprocess.Popen(
            [PYTHON, "-m", "bench.loadgen", json.dumps(spec)], cwd=ROOT, stdout=subprocess.PIPE
        )
        time.sleep(2)
        pid = str(running.children["gateway"].process.pid)
        record = [spy, "record", "--pid", pid, "--duration", str(args.duration)]
        record += ["--rate", str(args.rate)]
        collapsed = workdir / "miss.collapsed"
        subprocess.run([*record, "--format", "flamegraph", "--output", str(args.out)], check=True)
        subprocess.run([*record, "--format", "raw", "--output", str(collapsed)], check=True)
        out, _ = load.communicate()
        spots = hot_spots(collapsed.read_text())
    shutil.rmtree(workdir, ignore_errors=True)
    result = json.loads(out.decode().strip().splitlines()[-1])
    print(f"load: {result['ok']} answers, {result['rps']} req/s, statuses {result['statuses']}")
    for kind, frames in spots.items():
        print(f"{kind} % of samples:")
        for frame, percent in frames:
            print(f"  {percent:5.1f}  {frame}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
