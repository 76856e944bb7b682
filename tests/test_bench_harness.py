"""The benchmark harness's load loop always has samples to report."""

from __future__ import annotations

from bench.harness import closed_loop


async def test_each_caller_makes_at_least_one_measured_call_even_past_the_deadline() -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1

    # A zero-length window stands for a loop that first ran the callers after the
    # deadline (a starved machine): there must still be one sample per caller.
    stats = await closed_loop(call, concurrency=3, seconds=0.0, warmup=0.0)
    assert stats.calls == 3
    assert stats.p50_ms >= 0 and stats.p99_ms >= stats.p50_ms
