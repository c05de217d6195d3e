"""charts/gateway/README.md lists every value of values.yaml (to two levels), and only real ones."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.charts.chart import CHART_DIR


def _paths(values: dict[str, Any], prefix: str = "", depth: int = 2) -> set[str]:
    found: set[str] = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and depth > 1:
            found |= _paths(value, f"{path}.", depth - 1)
        else:
            found.add(path)
    return found


def test_readme_table_lists_every_value() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    readme = (CHART_DIR / "README.md").read_text()
    table_keys = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.MULTILINE))
    expected = _paths(values)
    assert not expected - table_keys, f"values missing from README: {sorted(expected - table_keys)}"
    assert not table_keys - expected, (
        f"README lists unknown values: {sorted(table_keys - expected)}"
    )
