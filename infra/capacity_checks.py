"""Node settings AWS would refuse or the cluster could not run, refused before any resource.

`node_problems(v)` is called from `infra.settings_checks.cross_field_problems` with the typed
values and returns `(field, allowed)` pairs, each reported as
`liftoff:<key> = <value>: <what is allowed>`:

- instance types: in data/instances.json and priced for the region in data/prices.json (else
  `liftoff:allowUnknownInstanceTypes=true`), one AL2023 AMI type per group (architecture and
  accelerator alike; GPU and Neuron families get the NVIDIA/NEURON AMI, others are refused), and
  for Spot at least `SPOT_MIN_INSTANCE_TYPES` types of one vCPU/memory size;
- capacity: no node minimum of 0 while the gateway runs, a pod request that fits the smallest
  type's allocatable, `appMinReplicas` that fit on `nodeMaxSize` nodes, a memory limit the gateway
  can start in.

A VPC too small for the nodes at max pods only warns (`infra.nodes.vpc_capacity_note`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from infra import instance_types
from infra.instance_types import InstanceType
from infra.quantities import cpu_cores, memory_bytes
from infra.settings_model import config_key

Problem = tuple[str, str]

SPOT_MIN_INSTANCE_TYPES = 3

# Memory the gateway holds once started: VmRSS in /proc/<pid>/status 8 s after
# `LIFTOFF__SERVER__PORT=18321 .venv/bin/python -m app &` (Python 3.11, x86_64, 2026-12-01, after
# the tokenizer memory work: default config 119 MiB, with an upstream URL instead of the embedded
# simulator 117 MiB). With LIFTOFF_WORKERS=N uvicorn spawns N such workers (120 MiB each) plus its
# supervisor (65 MiB) and multiprocessing's resource tracker (13 MiB). test_capacity_checks
# re-measures it.
GATEWAY_WORKER_START_MIB = 120
GATEWAY_SUPERVISOR_START_MIB = 78
# Head room over the start figure: RSS grew 6% over 200 requests (in-process cache, buffers), and
# streams, batches and another architecture's wheels add more; at the limit the kernel OOM-kills.
GATEWAY_MEMORY_MARGIN = 1.25

# Per-node daemonsets of this stack's EKS add-ons (infra/addons.py) and their requests, which the
# scheduler counts: aws-node 25m + its network-policy agent 25m, kube-proxy 100m,
# eks-pod-identity-agent none. None requests memory: 128 MiB is kept for an agent users commonly
# add (log shipper, node exporter). An estimate: check `kubectl describe node` on a real cluster.
DAEMONSET_MILLICORES = 150
DAEMONSET_MIB = 128
DAEMONSET_PODS = 3


@dataclass(frozen=True)
class AddonRequests:
    """Requests of cluster add-on pods sharing the workload nodes (Spot moves them off)."""

    millicores: int
    mib: int
    pods: int


# coredns 2 x (100m, 70Mi) (EKS add-on defaults) and metrics-server 100m/200Mi (chart default); the
# cluster-autoscaler and LB controller (2 replicas) charts request nothing by default.
CLUSTER_ADDONS = AddonRequests(millicores=300, mib=340, pods=6)
# VPA recommender and updater 50m/500Mi each, admission controller 50m/200Mi (chart defaults).
VPA_ADDONS = AddonRequests(millicores=150, mib=1200, pods=3)


def gateway_start_mib(workers: int) -> int:
    """Memory one gateway pod holds after start with `workers` processes."""
    supervisor = GATEWAY_SUPERVISOR_START_MIB if workers > 1 else 0
    return supervisor + workers * GATEWAY_WORKER_START_MIB


def gateway_memory_floor_mib(workers: int) -> int:
    """The smallest `podMemoryLimit` accepted: start memory plus the margin."""
    return math.ceil(gateway_start_mib(workers) * GATEWAY_MEMORY_MARGIN)


def addon_requests(capacity_type: str, vpa_mode: str) -> AddonRequests:
    """Add-on requests on the workload nodes: none with Spot (they run on the system group)."""
    if capacity_type == "SPOT":
        return AddonRequests(0, 0, 0)
    vpa = VPA_ADDONS if vpa_mode != "Off" else AddonRequests(0, 0, 0)
    return AddonRequests(
        CLUSTER_ADDONS.millicores + vpa.millicores,
        CLUSTER_ADDONS.mib + vpa.mib,
        CLUSTER_ADDONS.pods + vpa.pods,
    )


def pods_that_fit(
    node: InstanceType, nodes: int, cpu_m: int, memory_mib: int, addons: AddonRequests
) -> int:
    """Gateway pods that `nodes` nodes of type `node` hold after daemonsets and add-ons."""
    free_cpu = node.allocatable_millicores - DAEMONSET_MILLICORES
    free_mib = node.allocatable_mib - DAEMONSET_MIB
    by_cpu = nodes * (free_cpu // cpu_m) - math.ceil(addons.millicores / cpu_m)
    by_memory = nodes * (free_mib // memory_mib) - math.ceil(addons.mib / memory_mib)
    by_pods = nodes * (node.max_pods - DAEMONSET_PODS) - addons.pods
    return max(0, min(by_cpu, by_memory, by_pods))


def _ec2_prices(region: str) -> Mapping[str, Any]:
    # Imported here: infra.cost pulls in the policy module, which settings need not load.
    from infra.cost import default_prices

    return default_prices().regions.get(region, {}).get("ec2_hourly", {})


def _instance_type_problems(v: Mapping[str, Any]) -> Iterator[Problem]:
    names: Sequence[str] = v["node_instance_types"]
    prices = _ec2_prices(v["region"])
    unknown = [
        f"{name}: " + ("no price" if instance_types.lookup(name) else "no instance data")
        for name in names
        if instance_types.lookup(name) is None or name not in prices
    ]
    if unknown and not v.get("allow_unknown_instance_types"):
        yield (
            "node_instance_types",
            f"types in infra/data/instances.json with a {v['region']} price in "
            f"infra/data/prices.json ({'; '.join(unknown)}); add them there, or set "
            f"{config_key('allow_unknown_instance_types')}=true to deploy them unchecked",
        )
    refused = [n for n in names if instance_types.ami_type(n) is None]
    if refused:
        yield (
            "node_instance_types",
            f"types an EKS AL2023 AMI supports ({', '.join(refused)}: no AL2023 AMI drives "
            "this accelerator and architecture; NVIDIA GPUs get AL2023_x86_64_NVIDIA or "
            "AL2023_ARM_64_NVIDIA, Inferentia/Trainium AL2023_x86_64_NEURON)",
        )
    elif len({instance_types.ami_type(n) for n in names}) > 1:
        kinds = ", ".join(f"{n}: {instance_types.ami_type(n)}" for n in names)
        yield (
            "node_instance_types",
            "instance types of one architecture and accelerator (all Graviton or none, all "
            f"GPU or none): one node group runs one AMI type ({kinds})",
        )
    if v.get("node_capacity_type") == "SPOT":
        known = [t for n in names if (t := instance_types.lookup(n)) is not None]
        sizes = {t.size_key for t in known}
        if len(names) < SPOT_MIN_INSTANCE_TYPES or len(sizes) > 1:
            shown = ", ".join(f"{t.name} {t.vcpu} vCPU/{t.memory_mib} MiB" for t in known)
            shown = shown or ", ".join(names)
            yield (
                "node_instance_types",
                f"with liftoff:nodeCapacityType=SPOT, at least {SPOT_MIN_INSTANCE_TYPES} "
                "instance types of one vCPU/memory size (e.g. m7i.large, m6i.large, t3.large), "
                f"so one Spot pool's interruption does not empty the group ({shown})",
            )


def _capacity_problems(v: Mapping[str, Any]) -> Iterator[Problem]:
    if v["node_min_size"] == 0:
        yield (
            "node_min_size",
            "at least 1 while the gateway is deployed (its liftoff:appMinReplicas pods always "
            "need a node, and a group at 0 leaves them Pending until the autoscaler reacts)",
        )
    workers = v["gateway_workers"]
    floor_mib = gateway_memory_floor_mib(workers)
    if memory_bytes(v["pod_memory_limit"]) < floor_mib * 2**20:
        yield (
            "pod_memory_limit",
            f"at least {floor_mib}Mi with liftoff:gatewayWorkers={workers}: the gateway holds "
            f"{gateway_start_mib(workers)} MiB after start (measured RSS) and needs "
            f"{GATEWAY_MEMORY_MARGIN - 1:.0%} head room",
        )
    known = [t for n in v["node_instance_types"] if (t := instance_types.lookup(n)) is not None]
    if len(known) < len(v["node_instance_types"]):
        return  # an unknown type's size is unknown: nothing to compare with
    cpu_m = math.ceil(cpu_cores(v["pod_cpu_request"]) * 1000)
    memory_mib = math.ceil(memory_bytes(v["pod_memory_request"]) / 2**20)
    by_cpu = min(known, key=lambda t: t.allocatable_millicores)
    by_memory = min(known, key=lambda t: t.allocatable_mib)
    free_cpu = by_cpu.allocatable_millicores - DAEMONSET_MILLICORES
    free_mib = by_memory.allocatable_mib - DAEMONSET_MIB
    if cpu_m > free_cpu:
        yield (
            "pod_cpu_request",
            f"at most {free_cpu}m: what {by_cpu.name} leaves to pods ({by_cpu.vcpu} vCPU minus "
            f"{by_cpu.kube_reserved_millicores}m kube-reserved and {DAEMONSET_MILLICORES}m of "
            "daemonsets)",
        )
    if memory_mib > free_mib:
        yield (
            "pod_memory_request",
            f"at most {free_mib}Mi: what {by_memory.name} leaves to pods ({by_memory.memory_mib} "
            f"MiB minus {by_memory.memory_mib - by_memory.capacity_mib} MiB kernel, "
            f"{by_memory.kube_reserved_mib} MiB kube-reserved, {instance_types.EVICTION_HARD_MIB} "
            f"MiB eviction threshold and {DAEMONSET_MIB} MiB of daemonsets)",
        )
    if cpu_m > free_cpu or memory_mib > free_mib:
        return
    nodes = v["node_max_size"]
    addons = addon_requests(v["node_capacity_type"], v["vpa_mode"])
    # The group may launch only its least roomy type: count with that one.
    fit, smallest = min((pods_that_fit(t, nodes, cpu_m, memory_mib, addons), t.name) for t in known)
    if v["app_min_replicas"] > fit:
        shared = " after the cluster add-ons" if addons.pods else ""
        yield (
            "app_min_replicas",
            f"at most {fit}: liftoff:nodeMaxSize={nodes} {smallest} nodes hold {fit} pods "
            f"of {cpu_m}m/{memory_mib}Mi{shared}; raise liftoff:nodeMaxSize or the instance size",
        )


def node_problems(v: Mapping[str, Any]) -> list[Problem]:
    """Every node-setting problem of the typed values `v`, as (field, what is allowed)."""
    if not v.get("node_instance_types"):
        return []
    return [*_instance_type_problems(v), *_capacity_problems(v)]
