"""The stack outputs verify reads: from `pulumi stack output`, or from a file."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from infra.settings import REPO_ROOT

# Outputs Pulumi holds as secrets: dropped as soon as they are read, never shown or compared.
SECRET_OUTPUTS = frozenset({"kubeconfig"})
PULUMI_TIMEOUT_S = 120


class OutputsError(Exception):
    """The outputs cannot be read; the message says what to do instead."""


def without_secrets(outputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in outputs.items() if k not in SECRET_OUTPUTS}


def _parsed(text: str, source: str) -> dict[str, Any]:
    try:
        outputs = json.loads(text)
    except ValueError as exc:
        raise OutputsError(f"{source} is not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(outputs, dict):
        raise OutputsError(f"{source} is not a JSON object of stack outputs")
    return without_secrets(outputs)


def read_outputs_file(path: Path) -> dict[str, Any]:
    """Outputs saved with `pulumi stack output --json --stack <env> > FILE`."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise OutputsError(f"--outputs {path}: {exc.strerror}") from None
    return _parsed(text, f"--outputs {path}")


def pulumi_outputs(stack: str) -> dict[str, Any]:
    """`pulumi stack output --json --show-secrets --stack <stack>`, its secrets dropped."""
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        raise OutputsError(
            "the Pulumi CLI is not on PATH, so the stack outputs cannot be read: pass them as a "
            f"file, --outputs FILE (where Pulumi runs: pulumi stack output --json --stack {stack} "
            "> outputs.json)"
        )
    try:
        done = subprocess.run(
            [pulumi, "stack", "output", "--json", "--show-secrets", "--stack", stack],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=PULUMI_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise OutputsError(
            f"pulumi stack output --stack {stack} took over {PULUMI_TIMEOUT_S}s; pass --outputs "
            "FILE"
        ) from None
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise OutputsError(
            f"pulumi stack output --stack {stack} failed: {reason} (pulumi login, or pass "
            "--outputs FILE)"
        )
    return _parsed(done.stdout, f"pulumi stack output --stack {stack}")
