"""Node settings AWS would refuse, or the cluster could not run, are refused before any resource,
as `liftoff:<key> = <value>: <allowed>`; a VPC too small for the nodes at max pods is a warning."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from infra import capacity_checks
from infra.capacity_checks import (
    CLUSTER_ADDONS,
    DAEMONSET_MIB,
    DAEMONSET_MILLICORES,
    GATEWAY_MEMORY_MARGIN,
    GATEWAY_WORKER_START_MIB,
    gateway_memory_floor_mib,
)
from infra.instance_types import lookup
from infra.mocking import run_program
from infra.nodes import vpc_capacity_note
from infra.settings import REPO_ROOT, SettingsError, StackSettings, load_stack_file

SPOT_TYPES = '["m7i.large", "m6i.large", "t3.large"]'


def problems(overrides: dict[str, str], stack: str = "dev") -> list[str]:
    try:
        load_stack_file(stack, overrides)
    except SettingsError as exc:
        return exc.problems
    return []


def settings(overrides: dict[str, str], stack: str = "dev") -> StackSettings:
    return load_stack_file(stack, overrides)


# --- instance types --------------------------------------------------------------------------


def test_types_without_instance_data_or_price_are_refused_unless_allowed() -> None:
    found = problems({"liftoff:nodeInstanceTypes": '["m9gz.large", "c7gn.large"]'})
    assert found == [
        'liftoff:nodeInstanceTypes = ["m9gz.large", "c7gn.large"]: types in '
        "infra/data/instances.json with a us-east-1 price in infra/data/prices.json "
        "(m9gz.large: no instance data; c7gn.large: no price); add them there, or set "
        "liftoff:allowUnknownInstanceTypes=true to deploy them unchecked"
    ]
    allowed = settings(
        {
            "liftoff:nodeInstanceTypes": '["c7gn.large", "c7gn.xlarge"]',
            "liftoff:allowUnknownInstanceTypes": "true",
        }
    )
    assert allowed.node_instance_types == ["c7gn.large", "c7gn.xlarge"]
    assert settings({"liftoff:nodeInstanceTypes": '["m7i.large"]'})


def test_gpu_families_without_an_al2023_ami_are_refused() -> None:
    found = problems(
        {
            "liftoff:nodeInstanceTypes": '["g4ad.xlarge"]',
            "liftoff:allowUnknownInstanceTypes": "true",
        }
    )
    assert len(found) == 1 and found[0].startswith(
        'liftoff:nodeInstanceTypes = ["g4ad.xlarge"]: types an EKS AL2023 AMI supports'
    )
    assert not problems(
        {
            "liftoff:nodeInstanceTypes": '["g5.xlarge", "g6.xlarge"]',
            "liftoff:allowUnknownInstanceTypes": "true",
        }
    )


@pytest.mark.parametrize(
    "types",
    ['["m7i.large", "m7g.large"]', '["m7i.xlarge", "g5.xlarge"]', '["a1.large", "t3.large"]'],
)
def test_one_group_runs_one_ami_type(types: str) -> None:
    found = problems(
        {"liftoff:nodeInstanceTypes": types, "liftoff:allowUnknownInstanceTypes": "true"}
    )
    assert any(
        p.startswith(f"liftoff:nodeInstanceTypes = {types}: instance types of one architecture")
        for p in found
    ), found


@pytest.mark.parametrize(
    "types",
    [
        '["m7i.large"]',
        '["m7i.large", "m6i.large"]',
        '["m7i.large", "m6i.large", "m7i.xlarge"]',  # one of another size
    ],
)
def test_spot_needs_three_types_of_one_size(types: str) -> None:
    found = problems({"liftoff:nodeCapacityType": "SPOT", "liftoff:nodeInstanceTypes": types})
    assert len(found) == 1
    assert found[0].startswith(
        f"liftoff:nodeInstanceTypes = {types}: with liftoff:nodeCapacityType=SPOT, at least 3 "
        "instance types of one vCPU/memory size"
    )


def test_spot_with_three_types_of_one_size_is_accepted() -> None:
    accepted = settings(
        {"liftoff:nodeCapacityType": "SPOT", "liftoff:nodeInstanceTypes": SPOT_TYPES}
    )
    assert accepted.node_capacity_type == "SPOT"


# --- capacity --------------------------------------------------------------------------------


def test_no_node_minimum_of_zero_while_the_gateway_runs() -> None:
    assert problems({"liftoff:nodeMinSize": "0", "liftoff:nodeDesiredSize": "1"}) == [
        "liftoff:nodeMinSize = 0: at least 1 while the gateway is deployed (its "
        "liftoff:appMinReplicas pods always need a node, and a group at 0 leaves them Pending "
        "until the autoscaler reacts)"
    ]
    assert not problems({"liftoff:nodeMinSize": "1", "liftoff:nodeDesiredSize": "1"})


def test_a_cpu_request_must_fit_the_smallest_type() -> None:
    # Prod runs m7i.xlarge and m6i.xlarge: 4 vCPU, 80m reserved, daemonsets on top.
    xlarge = lookup("m6i.xlarge")
    assert xlarge is not None
    free = xlarge.allocatable_millicores - DAEMONSET_MILLICORES
    assert free == 4000 - 80 - 150
    over = problems({"liftoff:podCpuRequest": f"{free + 1}m"}, "prod")
    assert len(over) == 1 and over[0].startswith(
        f"liftoff:podCpuRequest = {free + 1}m: at most {free}m: what m7i.xlarge leaves to pods"
    )
    assert not problems({"liftoff:podCpuRequest": f"{free}m"}, "prod")


def test_a_memory_request_must_fit_the_smallest_type() -> None:
    large = lookup("t3.large")  # dev
    assert large is not None
    free = large.allocatable_mib - DAEMONSET_MIB
    over = problems({"liftoff:podMemoryRequest": f"{free + 1}Mi", "liftoff:podMemoryLimit": "8Gi"})
    assert len(over) == 1 and over[0].startswith(
        f"liftoff:podMemoryRequest = {free + 1}Mi: at most {free}Mi: what t3.large leaves"
    )
    assert not problems({"liftoff:podMemoryRequest": f"{free}Mi", "liftoff:podMemoryLimit": "8Gi"})


def test_app_min_replicas_must_fit_on_node_max_size_nodes() -> None:
    # dev: up to 3 t3.large nodes; 1 vCPU pods: one per node, less one for the add-ons.
    large = lookup("t3.large")
    assert large is not None
    per_node = (large.allocatable_millicores - DAEMONSET_MILLICORES) // 1000
    fit = 3 * per_node - math.ceil(CLUSTER_ADDONS.millicores / 1000)
    assert fit == 2
    base = {"liftoff:podCpuRequest": "1", "liftoff:appMaxReplicas": "10"}
    over = problems({**base, "liftoff:appMinReplicas": str(fit + 1)})
    assert over == [
        f"liftoff:appMinReplicas = {fit + 1}: at most {fit}: liftoff:nodeMaxSize=3 t3.large "
        "nodes hold 2 pods of 1000m/256Mi after the cluster add-ons; raise liftoff:nodeMaxSize "
        "or the instance size"
    ]
    assert not problems({**base, "liftoff:appMinReplicas": str(fit)})
    # More nodes make room.
    assert not problems(
        {**base, "liftoff:appMinReplicas": str(fit + 1), "liftoff:nodeMaxSize": "4"}
    )


def test_with_spot_the_add_ons_leave_the_workload_nodes() -> None:
    base = {
        "liftoff:podCpuRequest": "1",
        "liftoff:appMaxReplicas": "10",
        "liftoff:nodeInstanceTypes": SPOT_TYPES,
    }
    # On-demand, three t3.large-sized nodes hold 2 such pods beside the add-ons; with Spot, 3.
    assert problems({**base, "liftoff:appMinReplicas": "3"})
    assert not problems({**base, "liftoff:appMinReplicas": "3", "liftoff:nodeCapacityType": "SPOT"})


def test_the_memory_limit_must_hold_the_started_gateway() -> None:
    floor = gateway_memory_floor_mib(1)
    assert floor == math.ceil(GATEWAY_WORKER_START_MIB * GATEWAY_MEMORY_MARGIN)
    below = problems(
        {"liftoff:podMemoryRequest": "128Mi", "liftoff:podMemoryLimit": f"{floor - 1}Mi"}
    )
    assert below == [
        f"liftoff:podMemoryLimit = {floor - 1}Mi: at least {floor}Mi with "
        f"liftoff:gatewayWorkers=1: the gateway holds {GATEWAY_WORKER_START_MIB} MiB after "
        "start (measured RSS) and needs 25% head room"
    ]
    assert not problems(
        {"liftoff:podMemoryRequest": "128Mi", "liftoff:podMemoryLimit": f"{floor}Mi"}
    )


def test_each_gateway_worker_is_a_process_with_its_own_memory() -> None:
    # Two workers and their supervisor fit in the default 512Mi; three do not.
    assert gateway_memory_floor_mib(2) <= 512 < gateway_memory_floor_mib(3)
    assert not problems({"liftoff:gatewayWorkers": "2"})
    found = problems({"liftoff:gatewayWorkers": "3"})
    assert len(found) == 1 and found[0].startswith(
        f"liftoff:podMemoryLimit = 512Mi: at least {gateway_memory_floor_mib(3)}Mi with "
        "liftoff:gatewayWorkers=3"
    )
    assert not problems({"liftoff:gatewayWorkers": "3", "liftoff:podMemoryLimit": "1Gi"})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/<pid>/status")
def test_the_measured_start_memory_still_holds() -> None:
    """Start the gateway as `make serve` does and read its RSS: the constant must stay within the
    margin of what the code really takes (re-measure and update it when this fails)."""
    port = _free_port()
    # No shutdown delay: nothing balances load to it, it may stop at once.
    env = {
        **os.environ,
        "LIFTOFF__SERVER__PORT": str(port),
        "LIFTOFF__SERVER__SHUTDOWN_DELAY_S": "0",
    }
    gateway = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or gateway.poll() is not None:
                    raise
                time.sleep(0.2)
        rss = _rss_mib(gateway.pid)
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
    assert GATEWAY_WORKER_START_MIB * 0.7 <= rss <= capacity_checks.gateway_memory_floor_mib(1), rss


# --- VPC size --------------------------------------------------------------------------------


def test_a_vpc_too_small_for_the_nodes_at_max_pods_is_a_warning() -> None:
    small = settings(
        {
            "liftoff:vpcCidr": "10.10.0.0/20",
            "liftoff:nodeMaxSize": "20",
            "liftoff:nodeInstanceTypes": '["m7i.4xlarge"]',
        }
    )
    # /20 over 2 AZs: private /22 subnets of 1024 - 5; 10 nodes per zone x (234 pods + 1).
    assert vpc_capacity_note(small) == (
        "liftoff:vpcCidr = 10.10.0.0/20: each private subnet holds 1019 addresses, but 20 nodes "
        "over 2 zones at up to 234 pods each (liftoff:nodeMaxSize=20) need 2350 per subnet; "
        "pods would stay Pending for want of IPs at full scale. Use a larger liftoff:vpcCidr or "
        "fewer, smaller nodes."
    )
    assert vpc_capacity_note(settings({})) is None
    # Unknown sizes (allowed unchecked) cannot be counted.
    unknown = settings(
        {
            "liftoff:vpcCidr": "10.10.0.0/20",
            "liftoff:nodeMaxSize": "20",
            "liftoff:nodeInstanceTypes": '["m9z.4xlarge"]',
            "liftoff:allowUnknownInstanceTypes": "true",
        }
    )
    assert vpc_capacity_note(unknown) is None


def test_the_vpc_warning_shows_in_the_plan_not_as_a_refusal() -> None:
    run = run_program(
        "dev",
        {
            "liftoff:vpcCidr": "10.10.0.0/20",
            "liftoff:nodeMaxSize": "20",
            "liftoff:nodeInstanceTypes": '["m7i.4xlarge"]',
        },
    )
    assert any(
        w.startswith("liftoff:vpcCidr = 10.10.0.0/20: each private subnet") for w in run.warnings
    )
    assert any(n.startswith("liftoff:vpcCidr = 10.10.0.0/20") for n in run.outputs["notes"])
