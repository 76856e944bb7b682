"""What `sft ssh HOST -- true` costs over plain ssh, with a warm and a cold credential cache.

Setup: tests/support/ssh_world.py (an in-process platform, a real sshd for web-1, bob
enrolled with the real `sft`). Needs root (sshd runs in its own namespaces).

- baseline: plain `ssh` run with exactly the command line sft would exec, the cached
  certificate and key used as static credentials: the same handshake, no sft.
- warm: `sft ssh web-1 -- true` with a fresh certificate cached (target ≤ 1.3 times).
- cold: the same after the certificate cache is emptied (the access token stays), so
  each run resolves the name and has a certificate signed (target ≤ 2 times).

Runs are interleaved (baseline, warm, cold, baseline, …) so machine noise hits all
three alike; medians are compared. Import time of the CLI is reported against a bare
interpreter's start.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import Result, case
from client.ssh_args import parse_ssh_args
from client.ssh_cache import SSHCache
from client.ssh_command import ssh_argv
from tests.support.cli import SFT_BIN
from tests.support.ssh_world import TEAM, ssh_world

CASE = "sft_ssh"
TARGET_WARM_RATIO = 1.3
TARGET_COLD_RATIO = 2.0
_RUNS = 15
_QUICK_RUNS = 3


def _timed(argv: list[str], env: dict[str, str]) -> float:
    """Run `argv`; return its wall time in ms (it must succeed)."""
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, check=True)
    return (time.perf_counter() - started) * 1000


def _start_time_ms(code: str, runs: int) -> float:
    """Return the median wall time of `python -c code` in ms."""
    return statistics.median(
        _timed([sys.executable, "-c", code], dict(os.environ)) for _ in range(max(runs, 3))
    )


async def _measure(quick: bool) -> dict[str, float]:
    runs = _QUICK_RUNS if quick else _RUNS
    with tempfile.TemporaryDirectory(prefix="sft-bench-ssh-") as scratch:
        async with ssh_world(Path(scratch)) as world:
            bob = world.bob
            env = bob.environment()
            sft = [SFT_BIN, "ssh", "web-1", "--", "true"]
            first = await bob.sft("ssh", "web-1", "--", "true")
            if first.returncode != 0:
                raise RuntimeError(f"sft ssh failed: {first.stderr.strip()}")
            cache = SSHCache(bob.home / "teams" / TEAM)
            call = parse_ssh_args(["web-1", "--", "true"])

            def plain_argv() -> list[str]:
                route = cache.route(call.name, [])
                assert route is not None, "the cache is warm"
                return ssh_argv(cache, route, call)

            samples: dict[str, list[float]] = {"plain": [], "warm": [], "cold": []}
            for _ in range(runs):
                samples["plain"].append(await asyncio.to_thread(_timed, plain_argv(), env))
                samples["warm"].append(await asyncio.to_thread(_timed, sft, env))
                cache.forget()
                samples["cold"].append(await asyncio.to_thread(_timed, sft, env))
            issued = await world.issuances()
    return {
        **{name: statistics.median(values) for name, values in samples.items()},
        "issued": float(issued),
        "python_ms": _start_time_ms("pass", runs),
        "entry_ms": _start_time_ms("import client.entry", runs),
        "cli_ms": _start_time_ms("import client.cli", runs),
    }


@case(CASE, "sft ssh HOST -- true vs plain ssh (warm and cold cache), CLI import time")
async def sft_ssh(quick: bool) -> list[Result]:
    """Measure warm and cold `sft ssh` against plain ssh, and the CLI's start-up."""
    measured = await _measure(quick)
    plain = measured["plain"]
    notes: dict[str, float | str] = {"certificates_issued": measured["issued"]}
    return [
        Result(
            CASE,
            "sft ssh -- true, warm cache",
            "ms",
            measured["warm"],
            plain,
            "plain ssh, same credentials",
            better="lower",
            target_ratio=TARGET_WARM_RATIO,
            notes=notes,
        ),
        Result(
            CASE,
            "sft ssh -- true, cold cache",
            "ms",
            measured["cold"],
            plain,
            "plain ssh, same credentials",
            better="lower",
            target_ratio=TARGET_COLD_RATIO,
        ),
        Result(
            CASE,
            "start-up: import client.entry (warm ssh path)",
            "ms",
            measured["entry_ms"],
            measured["python_ms"],
            "bare python start",
            better="lower",
        ),
        Result(
            CASE,
            "start-up: import client.cli (every other verb)",
            "ms",
            measured["cli_ms"],
            measured["python_ms"],
            "bare python start",
            better="lower",
        ),
    ]
