"""How chart tests find helm: PATH first, then .tools/bin/helm; neither is a failure, not a skip."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.charts import chart


def test_missing_helm_fails_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(chart.shutil, "which", lambda name: None)
    monkeypatch.setattr(chart, "REPO_ROOT", tmp_path)
    with pytest.raises(pytest.fail.Exception, match=r"helm not found .*scripts/ensure-helm"):
        chart.helm_binary()


def test_path_wins_over_the_local_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    local = tmp_path / ".tools" / "bin" / "helm"
    local.parent.mkdir(parents=True)
    local.write_text("#!/bin/sh\n")
    local.chmod(local.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(chart, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(chart.shutil, "which", lambda name: "/usr/local/bin/helm")
    assert chart.helm_binary() == "/usr/local/bin/helm"
    monkeypatch.setattr(chart.shutil, "which", lambda name: None)
    assert chart.helm_binary() == str(local)


def test_the_helm_in_use_is_helm_v3_or_newer() -> None:
    version = chart.run_helm("version", "--short")
    assert version.returncode == 0
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    assert major >= 3, version.stdout
