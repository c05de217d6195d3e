"""The EC2 instance data and what is derived from it: max pods by the VPC CNI formula, the EKS
AMI's kube-reserved and eviction figures, Graviton detection and the AL2023 AMI type per family."""

from __future__ import annotations

import json

import pytest

from infra.cost import PRICES_PATH
from infra.instance_types import (
    AMI_ARM,
    AMI_ARM_NVIDIA,
    AMI_X86,
    AMI_X86_NEURON,
    AMI_X86_NVIDIA,
    INSTANCES_PATH,
    ami_type,
    catalog,
    group_ami_type,
    is_arm,
    kube_reserved_millicores,
    lookup,
)
from infra.settings import is_arm as settings_is_arm

DATA = json.loads(INSTANCES_PATH.read_text())


def test_the_file_names_its_sources_and_date() -> None:
    assert "eni-max-pods.txt" in DATA["source"]["max_pods"]
    assert "describe-instance-types" in DATA["source"]["vcpu_memory_architecture_accelerators"]
    assert DATA["as_of"] and DATA["verification"]


def test_every_priced_instance_type_has_instance_data() -> None:
    prices = json.loads(PRICES_PATH.read_text())
    for region, sheet in prices["regions"].items():
        missing = [t for t in sheet["ec2_hourly"] if lookup(t) is None]
        assert not missing, f"{region}: {missing}"


@pytest.mark.parametrize(
    "family",
    ["m5", "m6i", "m6a", "m7i", "m7a", "m7g", "m6g", "m8g", "c7i", "c7g", "r7i", "r8g", "t3"],
)
def test_the_common_eks_families_are_covered(family: str) -> None:
    assert lookup(f"{family}.large") is not None and lookup(f"{family}.xlarge") is not None


@pytest.mark.parametrize("name", ["g4dn.xlarge", "g5.xlarge", "g6.xlarge", "p4d.24xlarge"])
def test_gpu_types_record_their_gpus(name: str) -> None:
    gpu = lookup(name)
    assert gpu is not None and gpu.gpus >= 1 and gpu.accelerator == "nvidia"


def test_entries_are_well_formed() -> None:
    for t in catalog().values():
        assert t.vcpu >= 1 and t.memory_mib >= 512 and t.max_pods >= 4, t
        assert t.architecture in ("x86_64", "arm64"), t
        assert (t.gpus > 0) == (t.accelerator is not None), t


@pytest.mark.parametrize(
    ("prefix", "gib_per_vcpu"),
    [("m", 4), ("c", 2), ("r", 8)],
)
def test_memory_per_vcpu_matches_the_family_class(prefix: str, gib_per_vcpu: int) -> None:
    """General purpose 4 GiB, compute 2 GiB, memory optimised 8 GiB per vCPU: a typo shows."""
    family_types = [
        t for t in catalog().values() if t.family[0] == prefix and t.family[1].isdigit()
    ]
    assert family_types
    for t in family_types:
        assert t.memory_mib == t.vcpu * gib_per_vcpu * 1024, t


@pytest.mark.parametrize(
    ("name", "enis", "ipv4_per_eni"),
    # ENI limits from EC2 (awslabs/amazon-eks-ami nodeadm instance-info.jsonl).
    [
        ("m5.large", 3, 10),
        ("m5.4xlarge", 8, 30),
        ("m5.24xlarge", 15, 50),
        ("t3.medium", 3, 6),
        ("t3a.small", 2, 4),
        ("c6g.medium", 2, 4),
    ],
)
def test_max_pods_follow_the_vpc_cni_formula(name: str, enis: int, ipv4_per_eni: int) -> None:
    known = lookup(name)
    assert known is not None
    assert known.max_pods == enis * (ipv4_per_eni - 1) + 2


@pytest.mark.parametrize(
    ("vcpus", "reserved"),
    # 6% of the first core, 1% of the second, 0.5% of cores 3-4, 0.25% above.
    [(1, 60), (2, 70), (4, 80), (16, 110), (96, 310)],
)
def test_kube_reserved_cpu_is_the_eks_ami_formula(vcpus: int, reserved: int) -> None:
    assert kube_reserved_millicores(vcpus * 1000) == reserved


def test_allocatable_takes_kernel_kube_reserved_and_eviction() -> None:
    m5 = lookup("m5.large")
    assert m5 is not None
    assert m5.kube_reserved_mib == 255 + 11 * 29
    # 8192 MiB less 7.5% for the kernel (615), 574 kube-reserved, 100 eviction.
    assert m5.capacity_mib == 8192 - 615
    assert m5.allocatable_mib == 8192 - 615 - 574 - 100
    assert m5.allocatable_millicores == 2000 - 70


@pytest.mark.parametrize(
    ("name", "arm"),
    [
        ("a1.large", True),  # Graviton 1: no `g` in the name
        ("m7g.large", True),
        ("c6gd.xlarge", True),
        ("c7gn.large", True),
        ("t4g.medium", True),
        ("g5g.xlarge", True),  # Graviton with NVIDIA T4G
        ("x2gd.large", True),  # not in the data: the family rule
        ("im4gn.large", True),
        ("m7i.large", False),
        ("m7i-flex.large", False),
        ("g5.xlarge", False),
        ("g4dn.xlarge", False),
        ("inf2.xlarge", False),
        ("c6in.large", False),
    ],
)
def test_graviton_detection_knows_every_arm_family(name: str, arm: bool) -> None:
    assert is_arm(name) is arm
    assert settings_is_arm(name) is arm


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("m7i.large", AMI_X86),
        ("m7g.large", AMI_ARM),
        ("a1.xlarge", AMI_ARM),
        ("g5.xlarge", AMI_X86_NVIDIA),
        ("g4dn.xlarge", AMI_X86_NVIDIA),
        ("p5.48xlarge", AMI_X86_NVIDIA),
        ("gr6.4xlarge", AMI_X86_NVIDIA),  # not in the data: family rule
        ("g5g.xlarge", AMI_ARM_NVIDIA),
        ("inf2.xlarge", AMI_X86_NEURON),
        ("trn1.2xlarge", AMI_X86_NEURON),
        ("g4ad.xlarge", None),  # AMD Radeon: no AL2023 AMI
        ("dl1.24xlarge", None),  # Habana Gaudi
        ("p2.xlarge", None),  # K80, too old for the AL2023 NVIDIA driver
    ],
)
def test_accelerated_families_get_their_al2023_ami_type(name: str, expected: str | None) -> None:
    assert ami_type(name) == expected


def test_a_group_needs_one_ami_type() -> None:
    assert group_ami_type(["m7i.large", "m6i.large"]) == AMI_X86
    with pytest.raises(ValueError, match="one AL2023 AMI type"):
        group_ami_type(["m7i.large", "g5.xlarge"])
    with pytest.raises(ValueError, match="one AL2023 AMI type"):
        group_ami_type(["g4ad.xlarge"])
