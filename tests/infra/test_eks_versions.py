"""The EKS release calendar (infra/data/eks-versions.json) and what follows from it: which versions
settings accept, the default version, extended support as a real-run blocker with its upgrade
policy, and the control plane priced at the extended-support rate."""

from __future__ import annotations

import json
from datetime import date

import pytest

from infra import eks_versions, readiness
from infra.cost import default_prices, estimate
from infra.eks_versions import CALENDAR_PATH, DEFAULT_KUBERNETES_VERSION, EksCalendar, calendar
from infra.mocking import run_program
from infra.policies import ResourceRecord
from infra.settings import SettingsError, StackSettings, load_stack_file

# The day this calendar was read and the default chosen.
DAY = date(2026, 12, 1)
CLUSTER = "aws:eks/cluster:Cluster"


@pytest.fixture
def on_day(monkeypatch: pytest.MonkeyPatch) -> date:
    """Fix "today" (UTC) for settings, readiness and cost."""
    monkeypatch.setattr(eks_versions, "today", lambda: DAY)
    return DAY


def months_later(day: date, months: int) -> date:
    month = day.month - 1 + months
    return day.replace(year=day.year + month // 12, month=month % 12 + 1)


def test_calendar_records_its_source_and_which_dates_come_from_where() -> None:
    data = json.loads(CALENDAR_PATH.read_text())
    assert data["source"].startswith("https://docs.aws.amazon.com/eks/")
    assert data["read_on"] == DAY.isoformat()
    for key in ("source_copy", "secondary_source", "lifecycle_rule", "provenance", "coverage"):
        assert data[key], key
    assert {v["dates_from"] for v in data["versions"].values()} <= {
        "aws-calendar",
        "endoflife.date",
    }
    # Every date named as AWS's own is from the AWS table; the others say where they are from.
    assert "1.35" in data["provenance"] and "endoflife.date" in data["provenance"]


def test_every_version_follows_the_14_and_26_month_lifecycle() -> None:
    for entry in calendar().versions.values():
        standard_end = months_later(entry.eks_release, 14)
        # 1.35's end dates are a day short of 14 months from the date the tracker shows.
        assert 0 <= (standard_end - entry.end_of_standard_support).days <= 1, entry
        assert entry.end_of_extended_support == months_later(entry.end_of_standard_support, 12)


def test_status_boundaries_are_utc_days() -> None:
    cal = calendar()
    assert cal.status("1.34", date(2026, 12, 1)) == "standard"
    assert cal.status("1.34", date(2026, 12, 2)) == "extended"  # billing starts that day
    assert cal.status("1.31", date(2026, 11, 25)) == "extended"
    assert cal.status("1.31", date(2026, 11, 26)) == "ended"
    assert cal.status("1.35", date(2026, 1, 1)) == "unreleased"
    assert cal.status("1.99", DAY) is None
    assert cal.offered(DAY) == ["1.32", "1.33", "1.34", "1.35"]


def test_default_is_the_newest_version_in_standard_support_on_the_commit_day() -> None:
    assert calendar().newest_in_standard_support(calendar().read_on) == DEFAULT_KUBERNETES_VERSION
    assert StackSettings().kubernetes_version == DEFAULT_KUBERNETES_VERSION
    # Not a version that leaves standard support the next day.
    assert calendar().status(DEFAULT_KUBERNETES_VERSION, date(2026, 12, 2)) == "standard"


def test_the_chart_floor_holds_even_for_a_listed_version(tmp_path) -> None:
    data = json.loads(CALENDAR_PATH.read_text())
    data["versions"]["1.29"]["end_of_extended_support"] = "2030-01-01"
    path = tmp_path / "eks-versions.json"
    path.write_text(json.dumps(data))
    cal = EksCalendar.load(path)
    assert cal.status("1.29", DAY) == "extended"
    assert "1.30 or later" in (cal.problem("1.29", DAY) or "")
    assert "1.29" not in cal.offered(DAY)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("1.29", "liftoff:kubernetesVersion = 1.29: 1.30 or later (the gateway chart's preStop"),
        (
            "1.31",
            "liftoff:kubernetesVersion = 1.31: a version EKS still supports: extended support "
            "for 1.31 ended on 2026-11-26; EKS offers 1.32, 1.33, 1.34, 1.35 on 2026-12-01",
        ),
        (
            "1.36",
            "liftoff:kubernetesVersion = 1.36: a version in Liftoff's EKS calendar "
            "(infra/data/eks-versions.json, read 2026-12-01; EKS offers 1.32, 1.33, 1.34, 1.35",
        ),
        ("2.0", "liftoff:kubernetesVersion = 2.0: a Kubernetes minor version like 1.35"),
    ],
)
def test_settings_refuse_versions_eks_does_not_offer(
    on_day: date, version: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        load_stack_file("dev", {"liftoff:kubernetesVersion": version})
    assert any(p.startswith(expected) for p in raised.value.problems), raised.value.problems


@pytest.mark.parametrize("version", ["1.32", "1.33", "1.34", "1.35"])
def test_settings_accept_every_offered_version(on_day: date, version: str) -> None:
    assert load_stack_file("dev", {"liftoff:kubernetesVersion": version}).kubernetes_version == (
        version
    )


def test_support_type_is_the_cluster_upgrade_policy(on_day: date) -> None:
    assert run_program("dev").one(CLUSTER).inputs["upgradePolicy"] == {"supportType": "STANDARD"}
    extended = run_program("dev", {"liftoff:eksSupportType": "EXTENDED"})
    assert extended.one(CLUSTER).inputs["upgradePolicy"] == {"supportType": "EXTENDED"}
    with pytest.raises(SettingsError, match="liftoff:eksSupportType = LONG: STANDARD or EXTENDED"):
        load_stack_file("dev", {"liftoff:eksSupportType": "LONG"})


def test_extended_support_blocks_a_real_run_unless_the_policy_is_extended(on_day: date) -> None:
    standard = load_stack_file("dev", {"liftoff:kubernetesVersion": "1.33"})
    found = [b for b in readiness.blockers(standard, "dev") if b.key == "liftoff:eksSupportType"]
    assert len(found) == 1
    assert "1.33 is in extended support since 2026-07-29 (until 2027-07-29" in found[0].message
    assert found[0].command == "pulumi config set --stack dev liftoff:eksSupportType EXTENDED"
    extended = load_stack_file(
        "dev", {"liftoff:kubernetesVersion": "1.33", "liftoff:eksSupportType": "EXTENDED"}
    )
    assert not [b for b in readiness.blockers(extended, "dev") if b.key == found[0].key]
    current = load_stack_file("dev")
    assert not [b for b in readiness.blockers(current, "dev") if b.key == found[0].key]


def test_extended_support_is_a_warning_under_mocks(on_day: date) -> None:
    run = run_program("dev", {"liftoff:kubernetesVersion": "1.33"})
    assert any("liftoff:eksSupportType" in w and "1.33" in w for w in run.warnings)
    assert not any("eksSupportType" in w for w in run_program("dev").warnings)


def records(run) -> list[ResourceRecord]:
    return [ResourceRecord(r.type, r.name, r.inputs, urn=r.urn) for r in run.resources]


def test_control_plane_is_priced_at_the_extended_rate_in_extended_support(on_day: date) -> None:
    sheet = default_prices().regions["us-east-1"]
    assert sheet["eks_cluster_extended_hourly"] == 0.6 and sheet["eks_cluster_hourly"] == 0.1
    cluster = [ResourceRecord(CLUSTER, "eks", {"version": "1.33"})]
    extended = estimate(cluster, "us-east-1", on=DAY).items[0]
    assert extended.monthly_usd == pytest.approx(0.6 * 730)
    assert extended.description == "EKS control plane (1.33 in extended support)"
    standard = estimate([ResourceRecord(CLUSTER, "eks", {"version": "1.35"})], "us-east-1", on=DAY)
    assert standard.items[0].monthly_usd == pytest.approx(0.1 * 730)
    # The same version is priced by its status on the day: 1.34 turns extended on 2026-12-02.
    v134 = [ResourceRecord(CLUSTER, "eks", {"version": "1.34"})]
    assert estimate(v134, "us-east-1", on=DAY).items[0].monthly_usd == pytest.approx(73)
    assert estimate(v134, "us-east-1", on=date(2026, 12, 2)).items[0].monthly_usd == (
        pytest.approx(438)
    )
    # And through the real program: the estimate's default day is today.
    run = run_program("dev", {"liftoff:kubernetesVersion": "1.33"})
    line = next(i for i in estimate(records(run), "us-east-1").items if i.resource_type == CLUSTER)
    assert line.monthly_usd == pytest.approx(438)


def test_internet_facing_alb_pays_for_one_public_ipv4_per_az(on_day: date) -> None:
    run = run_program("prod")  # 3 AZs
    lines = [i for i in estimate(records(run), "us-west-2").items if "public IPv4" in i.description]
    alb_lines = [i for i in lines if "load balancer" in i.description]
    assert len(alb_lines) == 1
    assert alb_lines[0].description == "3 public IPv4 addresses of the load balancer (one per AZ)"
    assert alb_lines[0].monthly_usd == pytest.approx(3 * 0.005 * 730)
    internal = ResourceRecord(
        "aws:lb/loadBalancer:LoadBalancer", "alb", {"internal": True, "subnets": ["a", "b"]}
    )
    assert not [i for i in estimate([internal], "us-west-2").items if "IPv4" in i.description]
