"""The agent_reconcile benchmark keeps running: a quick pass reports every row with real numbers.

Only the shape and the command counts are checked, never the speed: the machine
running tests is shared.
"""

from __future__ import annotations

import math

from bench.cases.agent_reconcile import agent_reconcile


async def test_quick_agent_reconcile_run_reports_commands_time_and_memory() -> None:
    commands, wall, memory = await agent_reconcile(True)

    assert commands.candidate == 1  # one changed user, one usermod
    # sft-admin's groupadd + visudo, developers' groupadd, then a groupadd + useradd each.
    assert commands.baseline == 2 + 1 + 2 * 2_000
    assert commands.notes["noop_resync_commands"] == 0
    assert commands.meets_target
    for result in (wall, memory):
        assert math.isfinite(result.candidate) and result.candidate > 0, result
        assert math.isfinite(result.baseline) and result.baseline > 0, result
    assert memory.candidate > memory.baseline
