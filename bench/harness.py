"""The benchmark harness: cases, load loops, a printed table and a JSON file.

A case returns Results; each compares a candidate against a baseline measured in
the same run on the same machine (it is shared and noisy, so absolute numbers are
context, the ratio is the claim). Every case is bounded in time and stops by itself.
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["CASES", "LoadStats", "Result", "case", "closed_loop", "print_table", "write_json"]

Better = Literal["higher", "lower"]


@dataclass(frozen=True)
class Result:
    """One compared metric: candidate vs baseline, with the target ratio if there is one."""

    case: str
    metric: str
    unit: str
    candidate: float
    baseline: float
    baseline_name: str
    better: Better = "higher"
    #: Candidate/baseline must be >= this (higher is better) or <= this (lower is better).
    target_ratio: float | None = None
    notes: dict[str, float | str] = field(default_factory=dict)
    #: An absolute bound on the candidate itself, in `unit` (e.g. a p99 in ms an issue
    #: states), checked in the direction of `better`, alongside any target ratio.
    absolute_target: float | None = None

    @property
    def ratio(self) -> float:
        """Return candidate / baseline."""
        return self.candidate / self.baseline if self.baseline else float("inf")

    @property
    def meets_target(self) -> bool | None:
        """Return whether every target set is met (None when there is no target)."""
        checks = [
            self._within(value, target)
            for value, target in (
                (self.ratio, self.target_ratio),
                (self.candidate, self.absolute_target),
            )
            if target is not None
        ]
        return all(checks) if checks else None

    def _within(self, value: float, target: float) -> bool:
        """Return whether `value` is on the good side of `target`."""
        return value >= target if self.better == "higher" else value <= target


CaseFunc = Callable[[bool], Coroutine[Any, Any, list[Result]]]
CASES: dict[str, tuple[str, CaseFunc]] = {}


def case(name: str, description: str) -> Callable[[CaseFunc], CaseFunc]:
    """Register a benchmark case; it receives `quick` (shorter runs) and returns Results."""

    def register(func: CaseFunc) -> CaseFunc:
        CASES[name] = (description, func)
        return func

    return register


@dataclass(frozen=True)
class LoadStats:
    """Throughput and latency of a closed-loop load."""

    calls: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        """Return completed calls per second."""
        return self.calls / self.seconds


async def closed_loop(
    call: Callable[[], Awaitable[object]], concurrency: int, seconds: float, warmup: float = 0.5
) -> LoadStats:
    """Run `concurrency` callers, each calling `call` back to back for `seconds`."""
    latencies: list[float] = []
    measuring = False
    deadline = 0.0

    async def caller() -> None:
        timed = 0
        while True:
            started = time.perf_counter()
            # Each measured caller makes at least one call: on a starved machine the
            # loop may first run a caller after the deadline, and no sample is no result.
            if measuring and timed and started >= deadline:
                return
            await call()
            if measuring:
                latencies.append(time.perf_counter() - started)
                timed += 1

    warm_deadline = time.perf_counter() + warmup
    warm = [asyncio.create_task(_until(caller, warm_deadline)) for _ in range(concurrency)]
    await asyncio.gather(*warm)
    measuring = True
    begin = time.perf_counter()
    deadline = begin + seconds
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - begin
    ordered = sorted(latencies)
    return LoadStats(
        calls=len(ordered),
        seconds=elapsed,
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    )


async def _until(caller: Callable[[], Awaitable[None]], deadline: float) -> None:
    try:
        await asyncio.wait_for(caller(), timeout=max(0.0, deadline - time.perf_counter()))
    except TimeoutError:
        pass


def _verdict(result: Result) -> str:
    met = result.meets_target
    if met is None:
        return "-"
    sign = ">=" if result.better == "higher" else "<="
    bounds = []
    if result.target_ratio is not None:
        bounds.append(f"{sign} {result.target_ratio:g}")
    if result.absolute_target is not None:
        bounds.append(f"{sign} {result.absolute_target:g} {result.unit}")
    return f"{'ok' if met else 'MISS'} ({'; '.join(bounds)})"


def print_table(results: list[Result]) -> str:
    """Return the results as a Markdown table (also what the issue notes quote)."""
    rows = [
        "| case | metric | sft | baseline | baseline is | ratio | target |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for r in results:
        rows.append(
            f"| {r.case} | {r.metric} ({r.unit}) | {r.candidate:,.2f} | {r.baseline:,.2f} | "
            f"{r.baseline_name} | {r.ratio:.2f} | {_verdict(r)} |"
        )
    return "\n".join(rows)


def write_json(results: list[Result], path: Path) -> None:
    """Write results with the machine facts they were measured on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpu_count": _cpus()},
        "results": [
            {**asdict(r), "ratio": r.ratio, "meets_target": r.meets_target} for r in results
        ],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))
