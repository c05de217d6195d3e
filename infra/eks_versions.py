"""The EKS Kubernetes release calendar (data/eks-versions.json) and what it says about a version.

A version is `standard` from its EKS release to its end of standard support, `extended` from then
to its end of extended support (billed at the extended-support rate), and `ended` afterwards;
each boundary is 00:00 UTC of the day in the calendar. Settings refuse versions the calendar does
not list, versions below the chart's floor and ended ones; a version in extended support needs
`liftoff:eksSupportType=EXTENDED` for a real run (a readiness blocker, `infra.readiness`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

CALENDAR_PATH = Path(__file__).with_name("data") / "eks-versions.json"
# The newest version EKS offered in standard support on the day this default was chosen
# (2026-12-01, the calendar's `read_on`); tests/infra/test_eks_versions.py holds it to that.
DEFAULT_KUBERNETES_VERSION = "1.35"

SupportStatus = Literal["unreleased", "standard", "extended", "ended"]


@dataclass(frozen=True)
class EksVersion:
    version: str
    eks_release: date
    end_of_standard_support: date
    end_of_extended_support: date
    dates_from: str

    def status(self, on: date) -> SupportStatus:
        if on < self.eks_release:
            return "unreleased"
        if on < self.end_of_standard_support:
            return "standard"
        if on < self.end_of_extended_support:
            return "extended"
        return "ended"


@dataclass(frozen=True)
class EksCalendar:
    versions: Mapping[str, EksVersion]
    minimum_version: str
    minimum_reason: str
    read_on: date
    source: str

    @classmethod
    def load(cls, path: Path = CALENDAR_PATH) -> EksCalendar:
        data = json.loads(path.read_text())
        versions = {
            name: EksVersion(
                version=name,
                eks_release=date.fromisoformat(entry["eks_release"]),
                end_of_standard_support=date.fromisoformat(entry["end_of_standard_support"]),
                end_of_extended_support=date.fromisoformat(entry["end_of_extended_support"]),
                dates_from=entry["dates_from"],
            )
            for name, entry in data["versions"].items()
        }
        return cls(
            versions=versions,
            minimum_version=data["minimum_version"],
            minimum_reason=data["minimum_reason"],
            read_on=date.fromisoformat(data["read_on"]),
            source=data["source"],
        )

    def offered(self, on: date) -> list[str]:
        """Versions at or above the floor that EKS runs on `on` (standard or extended), oldest
        first."""
        return sorted(
            (
                v.version
                for v in self.versions.values()
                if minor(v.version) >= minor(self.minimum_version)
                and v.status(on) in ("standard", "extended")
            ),
            key=minor,
        )

    def newest_in_standard_support(self, on: date) -> str | None:
        standard = [v for v in self.offered(on) if self.versions[v].status(on) == "standard"]
        return standard[-1] if standard else None

    def status(self, version: str, on: date) -> SupportStatus | None:
        """The version's support status on `on`; None when the calendar does not list it."""
        entry = self.versions.get(version)
        return entry.status(on) if entry else None

    def problem(self, version: str, on: date) -> str | None:
        """Why `version` cannot be used on `on` (the "allowed" half of a settings message)."""
        offered = f"EKS offers {', '.join(self.offered(on)) or 'none'} on {on.isoformat()}"
        if minor(version) < minor(self.minimum_version):
            return f"{self.minimum_version} or later ({self.minimum_reason})"
        entry = self.versions.get(version)
        if entry is None:
            return (
                f"a version in Liftoff's EKS calendar (infra/data/eks-versions.json, read "
                f"{self.read_on.isoformat()}; {offered}); add a newer version there with its "
                "dates from the EKS release calendar"
            )
        status = entry.status(on)
        if status == "unreleased":
            return f"a released version: EKS releases {version} on {entry.eks_release}; {offered}"
        if status == "ended":
            return (
                f"a version EKS still supports: extended support for {version} ended on "
                f"{entry.end_of_extended_support}; {offered}"
            )
        return None


def minor(version: str) -> tuple[int, ...]:
    """`1.35` -> (1, 35), for ordering versions numerically."""
    return tuple(int(part) for part in version.split("."))


@lru_cache(maxsize=1)
def calendar() -> EksCalendar:
    return EksCalendar.load()


def today() -> date:
    """Today in UTC, the time zone of the EKS calendar (tests replace it to fix the date)."""
    return datetime.now(UTC).date()


def version_problem(version: str) -> str | None:
    """Settings check of `liftoff:kubernetesVersion` against the calendar, today."""
    return calendar().problem(version, today())


def in_extended_support(version: str, on: date | None = None) -> bool:
    return calendar().status(version, on or today()) == "extended"
