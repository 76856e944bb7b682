"""The agent_idle benchmark keeps running: a quick pass reports real numbers.

Only the shape is checked, never the size: the machine running tests is shared.
"""

from __future__ import annotations

import math

import pytest

from bench.cases.agent_idle import agent_idle

pytestmark = pytest.mark.e2e


async def test_quick_agent_idle_run_reports_rss_and_cpu() -> None:
    (result,) = await agent_idle(True)

    assert result.unit == "MiB"
    # An enrolled sftd (grpc, the platform stream) holds more than a bare interpreter.
    assert math.isfinite(result.candidate) and result.candidate > result.baseline > 0
    cpu, window = result.notes["cpu_percent_of_one_core"], result.notes["window_seconds"]
    assert isinstance(cpu, float) and cpu >= 0
    assert isinstance(window, float) and window > 0
