"""Config keys from a stack's Pulumi ESC environments (`infra.esc`), asked of a fake `pulumi` CLI
on PATH, and the preflight counting an ESC-supplied provider API key as set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra import esc
from infra import settings as settings_module
from infra.preflight import SECURE_PLACEHOLDER, load_settings_for

LISTED = {
    "aws:region": {"value": "us-east-1", "secret": False},
    # Without --show-secrets the CLI leaves a secret's value out.
    "liftoff:llmApiKey": {"secret": True},
}


@pytest.fixture
def pulumi_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake `pulumi` alone on PATH that records its arguments and answers `stdout` with
    `status`; returns the file holding the recorded arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    calls = tmp_path / "calls"

    def install(stdout: str, status: int = 0) -> Path:
        (tmp_path / "answer").write_text(stdout)
        script = bin_dir / "pulumi"
        script.write_text(
            f'#!/bin/sh\necho "$@" >> "{calls}"\n/bin/cat "{tmp_path / "answer"}"\nexit {status}\n'
        )
        script.chmod(0o755)
        return calls

    return install


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of Pulumi.dev.yaml in a repository of its own."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "Pulumi.dev.yaml").write_text(
        (settings_module.REPO_ROOT / "Pulumi.dev.yaml").read_text()
    )
    monkeypatch.setattr(settings_module, "REPO_ROOT", root)
    return root


def without_imports(root: Path) -> None:
    path = root / "Pulumi.dev.yaml"
    path.write_text(path.read_text().replace("environment:\n  - liftoff/liftoff-dev\n", ""))


def test_the_stack_files_imports_are_read_in_order(repo: Path) -> None:
    assert esc.imported_environments("dev") == ["liftoff/liftoff-dev"]
    without_imports(repo)
    assert esc.imported_environments("dev") == []
    assert esc.imported_environments("qa") == []  # no Pulumi.qa.yaml


def test_keys_the_cli_lists_for_a_stack_that_imports_esc(pulumi_cli, repo: Path) -> None:
    calls = pulumi_cli(json.dumps(LISTED))
    assert esc.supplied_config_keys("dev") == {"aws:region", "liftoff:llmApiKey"}
    # Asked for that stack's config, never with --show-secrets.
    assert calls.read_text().split() == ["config", "--json", "--stack", "dev"]


def test_no_keys_without_imports_or_without_a_working_cli(pulumi_cli, repo: Path) -> None:
    calls = pulumi_cli(json.dumps(LISTED))
    without_imports(repo)
    assert esc.supplied_config_keys("dev") == set()
    assert not calls.exists()  # no import: the CLI is not even asked

    (repo / "Pulumi.dev.yaml").write_text(
        (settings_module.REPO_ROOT / "Pulumi.dev.yaml").read_text()
    )
    pulumi_cli("error: no Pulumi Cloud login\n", status=255)
    assert esc.supplied_config_keys("dev") == set()
    pulumi_cli("not json")
    assert esc.supplied_config_keys("dev") == set()
    (Path(calls.parent) / "bin" / "pulumi").unlink()  # no CLI on PATH at all
    assert esc.supplied_config_keys("dev") == set()


def test_preflight_counts_an_api_key_from_esc_as_set(pulumi_cli, repo: Path) -> None:
    pulumi_cli(json.dumps(LISTED))
    key = load_settings_for("dev", {}).llm_api_key
    assert key is not None and key.get_secret_value() == SECURE_PLACEHOLDER
    pulumi_cli(json.dumps({"aws:region": LISTED["aws:region"]}))
    assert load_settings_for("dev", {}).llm_api_key is None
