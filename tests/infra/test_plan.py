"""`python -m infra.plan` over the real program under mocks: JSON shape, exit codes, what-ifs with
--set, secrets never printed, and costs that follow the stacks' sizes and regions."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from infra.mocking import run_program
from infra.plan import main, parse_overrides
from infra.settings import load_stack_file

REPO = Path(__file__).resolve().parents[2]
STACKS = ("dev", "staging", "prod")
SENTINEL = "sk-SENTINEL-7f3a9c2e-do-not-print"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
CACHE = "aws:elasticache/replicationGroup:ReplicationGroup"


def run_main(*argv: str) -> tuple[int, str, str, float]:
    """main(argv) in-process; returns exit code, stdout, stderr and seconds taken."""
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue(), time.perf_counter() - started


def plan_json(*argv: str) -> tuple[int, dict[str, Any]]:
    code, out, err, _ = run_main(*argv, "--json")
    assert code in (0, 1), err
    return code, json.loads(out)


@pytest.fixture(scope="module")
def plans() -> dict[str, tuple[int, dict[str, Any], str, float]]:
    """Each committed stack planned once as JSON, with a known API key sentinel set as a secret."""
    result = {}
    for stack in STACKS:
        code, out, err, seconds = run_main(
            "--stack", stack, "--json", "--set", f"liftoff:llmApiKey={SENTINEL}"
        )
        result[stack] = (code, json.loads(out), out + err, seconds)
    return result


def node_items(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in plan["cost"]["items"] if " nodes (min " in i["description"]]


@pytest.mark.parametrize("stack", STACKS)
def test_committed_stack_plans_policy_clean(plans, stack: str) -> None:
    code, plan, _, seconds = plans[stack]
    errors = [p for p in plan["policies"] if p["severity"] == "error"]
    assert errors == [], f"{stack} is not policy-clean"
    assert plan["violations"] == 0 and code == 0
    assert seconds < 20, f"plan of {stack} took {seconds:.1f}s"


@pytest.mark.parametrize("stack", STACKS)
def test_json_shape(plans, stack: str) -> None:
    _, plan, _, _ = plans[stack]
    assert {"stack", "region", "resources", "policies", "violations", "cost"} <= set(plan)
    assert plan["stack"] == stack
    assert plan["region"] == load_stack_file(stack).region
    assert plan["resources"], "no resources planned"
    for resource in plan["resources"]:
        assert set(resource) == {"type", "name", "parent", "parent_type", "inputs"}
        assert isinstance(resource["inputs"], dict)
    parents = {(r["parent_type"], r["parent"]) for r in plan["resources"]}
    declared = {(r["type"], r["name"]) for r in plan["resources"]}
    assert (None, None) in parents and parents - {(None, None)} <= declared  # parents are declared
    for finding in plan["policies"]:
        assert set(finding) >= {"rule", "severity", "resource", "message"}
        assert finding["severity"] in ("error", "warning")
    assert isinstance(plan["violations"], int)
    cost = plan["cost"]
    assert isinstance(cost["monthly_usd"], float) and cost["monthly_usd"] > 0
    for item in cost["items"]:
        assert set(item) >= {"resource", "description", "monthly_usd"}
    assert cost["monthly_usd"] == pytest.approx(
        sum(i["monthly_usd"] for i in cost["items"] if i["monthly_usd"] is not None), abs=0.05
    )


def test_prod_checks_every_error_rule_against_real_resources(plans) -> None:
    _, plan, _, _ = plans["prod"]
    statuses = {r["rule"]: r for r in plan["rules"]}
    for rule in plan["rules"]:
        if rule["severity"] == "error":
            assert rule["status"] == "pass", rule
    # Rules over resource types the program declares examined at least one of them.
    for rule_id in (
        "CKV_AWS_58",
        "CKV_AWS_79",
        "CKV_AWS_8",
        "CKV_AWS_30",
        "CKV_AWS_31",
        "CKV_AWS_149",
        "CKV_AWS_7",
        "CKV_AWS_131",
        "CKV_AWS_150",
        "CKV_AWS_91",
        "LIFTOFF_TAGS",
    ):
        assert statuses[rule_id]["checked"] > 0, rule_id


def test_cost_grows_from_dev_to_staging_to_prod(plans) -> None:
    totals = [plans[s][1]["cost"]["monthly_usd"] for s in STACKS]
    assert totals[0] < totals[1] < totals[2], totals
    for stack in STACKS:
        assert plans[stack][1]["cost"]["unpriced"] == []


@pytest.mark.parametrize("stack", STACKS)
def test_nodes_are_priced_at_desired_size(plans, stack: str) -> None:
    settings = load_stack_file(stack)
    [nodes] = node_items(plans[stack][1])
    assert nodes["description"].startswith(
        f"{settings.node_desired_size} x {settings.node_instance_types[0]} nodes "
        f"(min {settings.node_min_size}..max {settings.node_max_size})"
    )
    low, high = nodes["range_usd"]
    assert low <= nodes["monthly_usd"] <= high


def test_secrets_never_appear_in_json(plans) -> None:
    _, plan, text, _ = plans["prod"]
    program = run_program("prod", {"liftoff:llmApiKey": SENTINEL})
    # Both values really flow into the program's inputs, so their absence below means redaction.
    assert SENTINEL in json.dumps([r.inputs for r in program.resources])
    redis_token = program.one(CACHE).inputs["authTokenWo"]
    assert len(redis_token) >= 16
    assert SENTINEL not in text
    assert redis_token not in text
    cache = next(r for r in plan["resources"] if r["type"] == CACHE)
    assert cache["inputs"]["authTokenWo"] == "[secret]"
    assert "[secret]" in json.dumps(plan["outputs"])  # e.g. the kubeconfig


def test_human_output_shows_sections_and_hides_secrets() -> None:
    code, out, err, _ = run_main("--stack", "dev", "--set", f"liftoff:llmApiKey={SENTINEL}")
    assert code == 0, err
    for heading in (
        "Liftoff plan",
        "Resources by component",
        "Policies",
        "Monthly cost estimate",
        "total",
    ):
        assert heading in out
    assert "[secret]" in out  # the cache's auth token column
    assert SENTINEL not in out + err
    redis_token = run_program("dev").one(CACHE).inputs["authTokenWo"]
    assert len(redis_token) >= 16 and redis_token not in out + err


def test_region_what_if_adapts_azs_and_prices(plans) -> None:
    code, plan = plan_json("--stack", "staging", "--set", "aws:region=us-west-1")
    assert code == 0 and plan["region"] == "us-west-1"
    zones = {
        r["inputs"].get("availabilityZone")
        for r in plan["resources"]
        if r["type"] == "aws:ec2/subnet:Subnet"
    }
    assert zones == {"us-west-1b", "us-west-1c"}  # us-west-1a is usw1-az2: EKS refuses it
    assert any("us-west-1" in note and "2" in note for note in plan["notes"])
    assert plan["cost"]["monthly_usd"] != plans["staging"][1]["cost"]["monthly_usd"]
    [west_nodes], [east_nodes] = node_items(plan), node_items(plans["staging"][1])
    assert west_nodes["monthly_usd"] > east_nodes["monthly_usd"]  # N. California costs more


def test_knob_what_if_changes_the_node_group(plans) -> None:
    code, plan = plan_json(
        "--stack",
        "dev",
        "--set",
        "liftoff:nodeDesiredSize=3",
        "--set",
        f"liftoff:llmApiKey={SENTINEL}",
    )
    assert code == 0
    [group] = [r for r in plan["resources"] if r["type"] == NODE_GROUP]
    assert group["inputs"]["scalingConfig"]["desiredSize"] == 3
    [nodes], [base] = node_items(plan), node_items(plans["dev"][1])
    assert nodes["description"].startswith("3 x ")
    assert nodes["monthly_usd"] == pytest.approx(base["monthly_usd"] * 3 / 2, abs=0.02)


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("liftoff:nodeDesiredSize=99", "liftoff:nodeDesiredSize"),
        ("aws:region=eu-west-1", "aws:region = eu-west-1"),
        ("liftoff:vpaMode=Sometimes", "Off, Initial, Recreate, Auto"),
        ("nodeDesiredSize=3", "namespaced key"),
        ("liftoff:nodeInstanceTypes=[m7i.large", "not a YAML/JSON value"),
    ],
)
def test_invalid_values_exit_2_with_the_message(assignment: str, expected: str) -> None:
    code, out, err, _ = run_main("--stack", "dev", "--set", assignment, "--json")
    assert code == 2
    assert out == ""
    assert expected in err


def test_unknown_stack_exits_2() -> None:
    code, _, err, _ = run_main("--stack", "qa")
    assert code == 2 and "Pulumi.qa.yaml" in err


def test_override_that_breaks_a_prod_policy_exits_1() -> None:
    code, plan = plan_json(
        "--stack",
        "prod",
        "--set",
        "liftoff:albDeletionProtection=false",
        "--set",
        'liftoff:clusterEndpointPublicCidrs=["0.0.0.0/0"]',
    )
    assert code == 1
    failed = {(p["rule"], p["severity"]) for p in plan["policies"]}
    assert {("CKV_AWS_150", "error"), ("CKV_AWS_38", "error")} <= failed
    assert plan["violations"] == sum(1 for p in plan["policies"] if p["severity"] == "error")


def test_parse_overrides_reads_yaml_and_json_like_pulumi_config() -> None:
    assert parse_overrides(
        [
            "aws:region=us-west-2",
            "liftoff:nodeDesiredSize= 3",
            "liftoff:albAccessLogs=true",
            "liftoff:nodeInstanceTypes=[m7g.large, m7i.large]",
            'liftoff:tags={"team": "ml"}',
            "liftoff:vpaMode='Off'",
            "liftoff:llmApiKey=sk-a=b",
        ]
    ) == {
        "aws:region": "us-west-2",
        "liftoff:nodeDesiredSize": "3",
        "liftoff:albAccessLogs": "true",
        "liftoff:nodeInstanceTypes": '["m7g.large", "m7i.large"]',
        "liftoff:tags": '{"team": "ml"}',
        "liftoff:vpaMode": "Off",
        "liftoff:llmApiKey": "sk-a=b",
    }


def test_entry_point_runs_as_a_module() -> None:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "infra.plan", "--stack", "dev", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["stack"] == "dev"
    assert seconds < 30, f"python -m infra.plan took {seconds:.1f}s"
