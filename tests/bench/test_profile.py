"""The profile's reading of py-spy's collapsed stacks."""

from __future__ import annotations

from bench.profile import hot_spots

COLLAPSED = "\n".join(
    [
        "run (asyncio/runners.py:118);chat (app/server.py:314);count (app/accounting.py:120) 30",
        "run (asyncio/runners.py:118);chat (app/server.py:316);count (app/accounting.py:127) 10",
        "run (asyncio/runners.py:1);chat (app/server.py:3);walk (app/x.py:3);walk (app/x.py:4) 40",
        "run (asyncio/runners.py:118) 20",
        "garbage line",
    ]
)


def test_shares_merge_lines_and_count_a_recursive_frame_once():
    spots = hot_spots(COLLAPSED)
    own = dict(spots["self"])
    assert own == {
        "walk (app/x.py)": 40.0,
        "count (app/accounting.py)": 40.0,
        "run (asyncio/runners.py)": 20.0,
    }
    inclusive = dict(spots["inclusive (app/)"])
    assert inclusive == {
        "chat (app/server.py)": 80.0,
        "walk (app/x.py)": 40.0,
        "count (app/accounting.py)": 40.0,
    }
