"""The sft_rdp benchmark keeps running: a quick pass reports both rows with real numbers.

Only the shape and the certificate count are checked, never the speed: the machine
running tests is shared.
"""

from __future__ import annotations

import math

import pytest

from bench.cases.sft_rdp import _QUICK_RUNS, sft_rdp

pytestmark = pytest.mark.e2e


async def test_quick_sft_rdp_run_reports_warm_and_cold_start() -> None:
    warm, cold = await sft_rdp(True)

    assert "warm cache" in warm.metric and "cold cache" in cold.metric
    for result in (warm, cold):
        assert math.isfinite(result.candidate) and result.candidate > 0, result
        assert math.isfinite(result.baseline) and result.baseline > 0, result
    # The SSH warm-up and the RDP warm-up sign one each, then one per cold run; warm
    # runs sign none.
    assert warm.notes["certificates_issued"] == 2 + _QUICK_RUNS
