"""`promtool check metrics` (Debian's prometheus package) passes on the gateway's /metrics after
real traffic, and the names follow Prometheus conventions."""

from __future__ import annotations

import re

from tests.app.metrics_scrape import registry_families, scrape_after_traffic
from tests.fixtures.promtool import run_promtool


async def test_gateway_metrics_pass_promtool_check_metrics(simulator) -> None:
    scraped = await scrape_after_traffic(simulator.url)
    result = run_promtool("check", "metrics", stdin=scraped)
    assert result.returncode == 0, f"promtool check metrics:\n{result.stdout}{result.stderr}"
    assert not (result.stdout + result.stderr).strip()
    # Every family of the registry was in the scrape promtool linted (HELP/TYPE at least).
    typed = set(re.findall(r"^# TYPE (\S+) ", scraped, flags=re.MULTILINE))
    for family in registry_families():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name in typed, f"{name} missing from /metrics"
    for series in ("liftoff_stream_interruptions_total{", "liftoff_rate_limit_rejections_total{"):
        assert series in scraped, f"the traffic did not produce {series}"


def test_promtool_check_metrics_reports_convention_breaks() -> None:
    bad = (
        "# HELP liftoff_things_count Things.\n# TYPE liftoff_things_count counter\n"
        "liftoff_things_count 1\n"
        "# HELP liftoff_wait_milliseconds Wait.\n# TYPE liftoff_wait_milliseconds gauge\n"
        "liftoff_wait_milliseconds 3\n"
    )
    result = run_promtool("check", "metrics", stdin=bad)
    assert result.returncode != 0
    assert '"_total" suffix' in result.stdout + result.stderr
    assert 'base unit "seconds"' in result.stdout + result.stderr


def test_names_are_prefixed_and_durations_and_money_carry_base_units() -> None:
    for family in registry_families():
        name = family.name
        assert re.fullmatch(r"liftoff_[a-z0-9_]+", name), name
        if re.search(r"duration|latency|overhead|time_to", name):
            assert name.endswith("_seconds"), f"{name}: durations are in seconds"
        if re.search(r"cost|usd|spend", name):
            assert "_usd" in name, f"{name}: money carries its unit (usd)"
        assert family.documentation, f"{name} has no HELP text"
