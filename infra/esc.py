"""Pulumi ESC environments a stack imports (`environment:` in Pulumi.<stack>.yaml, esc/*.yaml).

An imported environment's `pulumiConfig` becomes stack config at run time (the provider API key,
say), which the stack file alone does not show. The `pulumi` CLI lists those keys: `pulumi
config --json` names every key, ESC's included, and without `--show-secrets` leaves secret values
out, so nothing secret is read here. Offline, without the CLI or a login, no key is known.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import yaml

from infra.settings import stack_file

PULUMI_CONFIG_TIMEOUT_S = 60


def imported_environments(stack: str) -> list[str]:
    """The ESC environments `Pulumi.<stack>.yaml` imports, in merge order."""
    path = stack_file(stack)
    if not path.exists():
        return []
    imports = (yaml.safe_load(path.read_text()) or {}).get("environment") or []
    return [str(name) for name in imports]


def supplied_config_keys(stack: str) -> set[str]:
    """Config keys the Pulumi CLI reports for `stack` when the stack imports ESC environments;
    empty when it imports none, or the CLI is missing, fails (not logged in) or times out."""
    pulumi = shutil.which("pulumi")
    if not imported_environments(stack) or pulumi is None:
        return set()
    try:
        done = subprocess.run(
            [pulumi, "config", "--json", "--stack", stack],
            capture_output=True,
            text=True,
            timeout=PULUMI_CONFIG_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return set()
    if done.returncode != 0:
        return set()
    try:
        listed = json.loads(done.stdout)
    except json.JSONDecodeError:
        return set()
    return {str(key) for key in listed} if isinstance(listed, dict) else set()
