"""The ca_signing benchmark keeps running: a quick pass reports every row with real numbers.

Only the shape is checked, never the speed: the machine running tests is shared.
"""

from __future__ import annotations

import math

from bench.cases.ca_signing import LEVELS, TARGET_LEVEL, ca_signing
from tests.support.real_software import find_program


async def test_quick_ca_signing_run_reports_every_level_against_its_baselines() -> None:
    results = await ca_signing(True)

    databases = ["SQLite"]
    if find_program("initdb", "/usr/lib/postgresql/*/bin/initdb"):
        databases.append("PostgreSQL")
    for database in databases:
        rows = [r for r in results if r.metric.endswith(f", {database}")]
        # calls/s, p50 and p99 per level, plus signing against the in-process rate.
        assert len(rows) == 3 * len(LEVELS) + 1, [r.metric for r in rows]
    assert len(results) == len(databases) * (3 * len(LEVELS) + 1)
    for result in results:
        assert math.isfinite(result.candidate) and result.candidate > 0, result
        assert math.isfinite(result.baseline) and result.baseline > 0, result
    gated = {r.metric for r in results if r.meets_target is not None}
    assert gated == {f"sign calls/s @{TARGET_LEVEL}, SQLite", f"sign p99 @{TARGET_LEVEL}, SQLite"}
