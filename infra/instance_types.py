"""EC2 instance data (data/instances.json): size, architecture, accelerators, max pods, and what
a node of a type leaves to pods (allocatable) and which EKS AMI type it needs.

Allocatable follows the EKS AL2023 AMI's kubelet settings (awslabs/amazon-eks-ami,
nodeadm/internal/kubelet/config.go: `getCPUMillicoresToReserve`, `getMemoryMebibytesToReserve`,
`evictionHard`): kube-reserved CPU is 6% of the first core, 1% of the second, 0.5% of the third
and fourth and 0.25% of every core above four; kube-reserved memory is 255 MiB + 11 MiB per pod
the node can hold (max pods); the hard eviction threshold keeps another 100 MiB free. The kernel
and firmware keep part of the instance's memory from the node's capacity: Karpenter's default
estimate (`VM_MEMORY_OVERHEAD_PERCENT` = 7.5%) is used for it.

No import of infra.settings here: settings uses this module to tell Graviton types apart.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

INSTANCES_PATH = Path(__file__).with_name("data") / "instances.json"

# (start, end) of each CPU range in millicores and the share of it reserved, in 1/10000 (nodeadm).
_CPU_RESERVE_RANGES = ((0, 1000, 600), (1000, 2000, 100), (2000, 4000, 50), (4000, None, 25))
KUBE_RESERVED_BASE_MIB = 255
KUBE_RESERVED_PER_POD_MIB = 11
EVICTION_HARD_MIB = 100
VM_MEMORY_OVERHEAD = 0.075

# EKS node group AMI types (the EKS API's AMITypes enum, botocore eks service model).
AMI_X86 = "AL2023_x86_64_STANDARD"
AMI_ARM = "AL2023_ARM_64_STANDARD"
AMI_X86_NVIDIA = "AL2023_x86_64_NVIDIA"
AMI_ARM_NVIDIA = "AL2023_ARM_64_NVIDIA"
AMI_X86_NEURON = "AL2023_x86_64_NEURON"

Accelerator = Literal["nvidia", "neuron"]
# Families with accelerators no EKS AL2023 AMI drives: AMD Radeon (g4ad), Habana Gaudi (dl1, dl2q),
# FPGAs (f1, f2), Xilinx video (vt1), and NVIDIA GPUs too old for the AL2023 driver (p2 K80,
# g3 M60).
UNSUPPORTED_ACCELERATOR_FAMILIES = ("g4ad", "dl1", "dl2q", "f1", "f2", "vt1", "p2", "g3", "g3s")

_FAMILY_RE = re.compile(r"^([a-z]+)([0-9]+)([a-z-]*)$")


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpu: int
    memory_mib: int
    architecture: Literal["x86_64", "arm64"]
    gpus: int
    accelerator: Accelerator | None
    max_pods: int

    @property
    def family(self) -> str:
        return family(self.name)

    @property
    def kube_reserved_millicores(self) -> int:
        return kube_reserved_millicores(self.vcpu * 1000)

    @property
    def kube_reserved_mib(self) -> int:
        return KUBE_RESERVED_BASE_MIB + KUBE_RESERVED_PER_POD_MIB * self.max_pods

    @property
    def allocatable_millicores(self) -> int:
        return self.vcpu * 1000 - self.kube_reserved_millicores

    @property
    def capacity_mib(self) -> int:
        """Memory the node reports as capacity: the instance's minus the kernel's share."""
        return self.memory_mib - math.ceil(self.memory_mib * VM_MEMORY_OVERHEAD)

    @property
    def allocatable_mib(self) -> int:
        return self.capacity_mib - self.kube_reserved_mib - EVICTION_HARD_MIB

    @property
    def size_key(self) -> tuple[int, int]:
        """(vCPUs, MiB): what the cluster autoscaler needs equal across a group's types."""
        return self.vcpu, self.memory_mib


def kube_reserved_millicores(total_millicores: int) -> int:
    """CPU the EKS AMI reserves for kubelet and runtime (nodeadm getCPUMillicoresToReserve)."""
    reserved = 0
    for start, end, share in _CPU_RESERVE_RANGES:
        if total_millicores > start:
            top = total_millicores if end is None else min(total_millicores, end)
            reserved += (top - start) * share // 10000
    return reserved


@lru_cache(maxsize=1)
def catalog() -> dict[str, InstanceType]:
    """Every instance type in data/instances.json by name."""
    data = json.loads(INSTANCES_PATH.read_text())
    return {name: InstanceType(name=name, **spec) for name, spec in data["instance_types"].items()}


def lookup(name: str) -> InstanceType | None:
    return catalog().get(name)


def family(instance_type: str) -> str:
    return instance_type.split(".")[0]


def is_graviton_family(instance_type: str) -> bool:
    """ARM by name alone: a1, and every family with a `g` after the generation digit (m7g, c6gd,
    c7gn, t4g, x2gd, im4gn, is4gen, g5g)."""
    name = family(instance_type)
    if name == "a1":
        return True
    match = _FAMILY_RE.match(name)
    return bool(match) and "g" in match.group(3)


def is_arm(instance_type: str) -> bool:
    """The instance data's architecture; the family name for types it does not hold."""
    known = lookup(instance_type)
    if known is not None:
        return known.architecture == "arm64"
    return is_graviton_family(instance_type)


def accelerator(instance_type: str) -> Accelerator | None:
    """NVIDIA GPU, AWS Neuron device or none: the instance data, else the family's letter (g*/p*
    NVIDIA, inf*/trn* Neuron)."""
    known = lookup(instance_type)
    if known is not None:
        return known.accelerator
    match = _FAMILY_RE.match(family(instance_type))
    if not match:
        return None
    letters = match.group(1)
    if letters in ("g", "gr", "p"):
        return "nvidia"
    if letters in ("inf", "trn"):
        return "neuron"
    return None


def ami_type(instance_type: str) -> str | None:
    """The EKS AL2023 AMI type that runs `instance_type`, or None when none drives its accelerator
    (AL2023 NEURON is x86_64 only; NVIDIA exists for both architectures)."""
    if family(instance_type) in UNSUPPORTED_ACCELERATOR_FAMILIES:
        return None
    arm = is_arm(instance_type)
    kind = accelerator(instance_type)
    if kind == "nvidia":
        return AMI_ARM_NVIDIA if arm else AMI_X86_NVIDIA
    if kind == "neuron":
        return None if arm else AMI_X86_NEURON
    return AMI_ARM if arm else AMI_X86


def group_ami_type(instance_types: Sequence[str]) -> str:
    """The one AMI type of a node group (settings refuse groups whose types need different ones)."""
    found = {ami_type(t) for t in instance_types}
    if len(found) != 1 or None in found:
        raise ValueError(f"instance types {list(instance_types)} need one AL2023 AMI type: {found}")
    return str(found.pop())
