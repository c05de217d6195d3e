"""Availability zones are chosen by zone ID, skipping the IDs EKS refuses for control-plane
subnets (use1-az3, usw1-az2), and `liftoff:availabilityZoneIds` pins them. The mock account maps
names to IDs like a real one: shuffled, with the refused IDs among the first zones."""

from __future__ import annotations

import pytest

from infra.mocking import (
    AZ_IDS,
    AZ_NAMES,
    LiftoffMocks,
    ProgramRun,
    RecordingMonitor,
    flat_config,
    mocked_runtime,
    run_program,
)
from infra.settings import SettingsError, load_settings
from infra.zones import ZoneError, choose_zones

PIN = "liftoff:availabilityZoneIds"


def _subnet_zones(run: ProgramRun, tier: str) -> list[str]:
    subnets = [
        r
        for r in run.of_type("aws:ec2/subnet:Subnet")
        if r.inputs["tags"].get("liftoff/tier") == tier
    ]
    return [s.inputs["availabilityZone"] for s in sorted(subnets, key=lambda s: s.name)]


def _zone_id(region: str, zone_name: str) -> str:
    return dict(zip(AZ_NAMES[region], AZ_IDS[region], strict=True))[zone_name]


def test_the_mock_account_maps_names_to_ids_like_a_real_one() -> None:
    assert AZ_IDS["us-east-1"][1] == "use1-az3" and AZ_IDS["us-west-1"][0] == "usw1-az2"
    for region, ids in AZ_IDS.items():
        assert len(ids) == len(AZ_NAMES[region])
        assert [i[-1] for i in ids] != sorted(i[-1] for i in ids), f"{region}: not an identity map"


@pytest.mark.parametrize(
    ("stack", "overrides", "expected"),
    [
        # us-east-1b is use1-az3 in this account: skipped.
        ("dev", {}, ["us-east-1a", "us-east-1c"]),
        ("staging", {"aws:region": "us-east-1"}, ["us-east-1a", "us-east-1c", "us-east-1d"]),
        # us-west-1a is usw1-az2: skipped; two zones remain.
        ("dev", {"aws:region": "us-west-1"}, ["us-west-1b", "us-west-1c"]),
        ("staging", {}, ["us-east-2a", "us-east-2b", "us-east-2c"]),
    ],
)
def test_zones_eks_refuses_are_skipped(
    stack: str, overrides: dict[str, str], expected: list[str]
) -> None:
    run = run_program(stack, overrides)
    assert _subnet_zones(run, "private") == _subnet_zones(run, "public") == expected
    region = run.settings.region if run.settings else ""
    network = run.one("liftoff:index:Network")
    assert network.custom is False
    assert all(_zone_id(region, z) not in ("use1-az3", "usw1-az2") for z in expected)


def test_pinned_zone_ids_are_used_in_their_order_whatever_the_names() -> None:
    run = run_program("dev", {PIN: '["use1-az1", "use1-az6"]'})
    # In this account use1-az1 is us-east-1d and use1-az6 is us-east-1c.
    assert _subnet_zones(run, "private") == ["us-east-1d", "us-east-1c"]
    assert run.outputs["azCount"] == 2


def test_pinned_ids_set_the_zone_count_when_az_count_is_unset() -> None:
    settings = load_settings(
        {"aws:region": "us-east-2", PIN: '["use2-az3", "use2-az1", "use2-az2"]'}, "dev"
    )
    assert settings.effective_az_count == 3 and settings.az_note is None
    two = load_settings({"aws:region": "us-west-1", PIN: '["usw1-az1", "usw1-az3"]'}, "dev")
    assert two.effective_az_count == 2 and two.az_note is None
    matching = load_settings({"liftoff:azCount": "2", PIN: '["use1-az1", "use1-az2"]'}, "dev")
    assert matching.availability_zone_ids == ["use1-az1", "use1-az2"]


ALLOWED = (
    "2-3 distinct zone IDs of {region} like {code}-az1, not use1-az3, usw1-az2 (EKS refuses "
    "control-plane subnets there)"
)


@pytest.mark.parametrize(
    ("region", "code", "ids"),
    [
        ("us-east-1", "use1", '["use1-az1", "use1-az3"]'),  # EKS refuses use1-az3
        ("us-west-1", "usw1", '["usw1-az1", "usw1-az2"]'),  # ... and usw1-az2
        ("us-east-1", "use1", '["use2-az1", "use2-az2"]'),  # another region's IDs
        ("us-east-1", "use1", '["us-east-1a", "us-east-1b"]'),  # names, not IDs
        ("us-east-1", "use1", '["use1-az1", "use1-az1"]'),  # the same zone twice
        ("us-east-1", "use1", '["use1-az1"]'),  # one zone: EKS needs two
        ("us-east-1", "use1", '["use1-az1", "use1-az2", "use1-az4", "use1-az5"]'),
    ],
)
def test_zone_ids_aws_would_refuse_are_refused(region: str, code: str, ids: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"aws:region": region, PIN: ids}, "dev")
    assert caught.value.problems == [f"{PIN} = {ids}: " + ALLOWED.format(region=region, code=code)]


def test_pinned_ids_must_match_an_explicit_az_count() -> None:
    ids = '["use1-az1", "use1-az2"]'
    with pytest.raises(SettingsError) as caught:
        load_settings({"liftoff:azCount": "3", PIN: ids}, "dev")
    assert caught.value.problems == [
        f"{PIN} = {ids}: as many zone IDs as liftoff:azCount (3), or leave azCount unset"
    ]


def test_a_pinned_id_the_account_lacks_stops_the_program_before_any_resource() -> None:
    overrides = {PIN: '["use2-az1", "use2-az2", "use2-az4"]'}
    monitor = RecordingMonitor(LiftoffMocks("us-east-2", "staging"))
    with (
        pytest.raises(SettingsError) as caught,
        mocked_runtime("staging", flat_config("staging", overrides), monitor),
    ):
        from infra.stack import define_stack

        define_stack()
    assert monitor.recorded == []
    assert caught.value.problems == [
        f'{PIN} = ["use2-az1", "use2-az2", "use2-az4"]: this account\'s available zones in '
        "us-east-2 are use2-az1, use2-az2, use2-az3 (use2-az4 is not among them)"
    ]


def test_too_few_zones_eks_accepts_is_an_error_not_a_silent_shrink() -> None:
    names = ["us-west-1a", "us-west-1b", "us-west-1c"]
    ids = ["usw1-az2", "usw1-az1", "usw1-az3"]
    assert choose_zones("us-west-1", names, ids, 2, []) == [
        ("us-west-1b", "usw1-az1"),
        ("us-west-1c", "usw1-az3"),
    ]
    with pytest.raises(ZoneError, match=r"liftoff:azCount = 3: this account has 2 available"):
        choose_zones("us-west-1", names, ids, 3, [])
