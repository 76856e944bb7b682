"""The inventory_scale benchmark keeps running: a quick pass (1,000 people, 5,000 servers,
500 simulated agents) reports every metric with real numbers.

Only the shape is checked, never the speed: the machine running tests is shared.
"""

from __future__ import annotations

import math

import pytest

from bench.cases.inventory_scale import QUICK, inventory_scale, metrics
from tests.support.real_software import find_program


@pytest.mark.timeout(120)
async def test_quick_inventory_scale_run_reports_every_metric_against_its_baseline() -> None:
    if find_program("initdb", "/usr/lib/postgresql/*/bin/initdb") is None:
        pytest.skip("PostgreSQL is not installed (run `make deps`)")

    results = await inventory_scale(True)

    assert [r.metric for r in results] == metrics(QUICK)
    for result in results:
        assert math.isfinite(result.candidate) and result.candidate > 0, result
        assert math.isfinite(result.baseline) and result.baseline >= 0, result
    gated = {r.metric for r in results if r.absolute_target is not None}
    assert gated == {
        "ListServers p99 @1, admin",
        "ListServers p99 @16, admin",
        "ListServers p99 @1, member",
        "ListServers p99 @16, member",
        "ResolveServer p99 @1",
        "WatchAccounts first message, list computed",
        "WatchAccounts first message, list shared",
        f"grant change reaches all {QUICK.agents} streams",
    }
    by_metric = {r.metric: r for r in results}
    # What a wrong answer would show, not how fast it came.
    assert by_metric["ListServers p99 @1, member"].notes["foreign_servers"] == 0
    assert by_metric["ResolveServer p99 @1"].notes["wrong_or_ambiguous"] == 0
    assert by_metric["WatchAccounts first message, list computed"].notes["accounts"] == str(
        QUICK.users
    )
