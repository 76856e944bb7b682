"""The sft_ssh benchmark keeps running: a quick pass reports every row with real numbers.

Only the shape and the certificate count are checked, never the speed: the machine
running tests is shared.
"""

from __future__ import annotations

import math

import pytest

from bench.cases.sft_ssh import _QUICK_RUNS, sft_ssh

pytestmark = pytest.mark.e2e


async def test_quick_sft_ssh_run_reports_warm_cold_and_start_up() -> None:
    results = await sft_ssh(True)

    assert [r.metric.split(",")[0].split(":")[0] for r in results] == [
        "sft ssh -- true", "sft ssh -- true", "start-up", "start-up",
    ]  # fmt: skip
    for result in results:
        assert math.isfinite(result.candidate) and result.candidate > 0, result
        assert math.isfinite(result.baseline) and result.baseline > 0, result
    # One certificate for the first run, then one per cold run; warm runs sign none.
    assert results[0].notes["certificates_issued"] == 1 + _QUICK_RUNS
    assert {r.target_ratio for r in results[:2]} == {1.3, 2.0}
