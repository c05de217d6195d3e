"""The whole Pulumi program of each stack, run under Pulumi's mock runtime (infra.mocking), gives
its gateway Helm release values that the real chart renders into valid objects, running the image
GatewayImage built, pinned by digest: the release exactly as `pulumi up` would send it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra.mocking import ProgramRun
from tests.charts.chart import CHART_DIR, Manifests, render
from tests.charts.validation import validate_all

STACKS = ("dev", "staging", "prod")


def _gateway_release_values(stack: str, run: ProgramRun) -> tuple[dict[str, Any], dict[str, Any]]:
    releases = [
        r
        for r in run.resources
        if r.type.startswith("kubernetes:helm.sh/v3:Release")
        and Path(str(r.inputs.get("chart"))).resolve() == CHART_DIR
    ]
    assert len(releases) == 1, f"{stack}: expected one release of charts/gateway"
    (release,) = releases
    assert not release.secret_inputs, "no secret goes into the gateway release"
    return release.inputs["values"], run.outputs


@pytest.fixture(scope="module", params=STACKS)
def program(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], dict, Manifests]:
    run = request.getfixturevalue(f"{request.param}_run")  # tests/fixtures/stacks.py
    values, outputs = _gateway_release_values(request.param, run)
    return request.param, values, outputs, render(values)


def test_release_values_render_into_valid_objects(program: tuple) -> None:
    stack, _, _, manifests = program
    validate_all(manifests)
    assert "TargetGroupBinding" in manifests.kinds(), stack


def test_release_runs_the_image_the_stack_built(program: tuple) -> None:
    _, _, outputs, manifests = program
    image_ref = outputs["imageRef"]
    repository, digest = image_ref.split("@")
    assert digest.startswith("sha256:") and repository.endswith("-gateway")
    assert manifests.container["image"].startswith(repository)
    assert manifests.container["image"].endswith(f"@{digest}")
