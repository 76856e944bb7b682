"""How long `sft rdp --no-launch` takes until its local port accepts, warm and cold.

Setup: tests/support/rdp_world.py (an in-process platform; win-1 with a real
`sft-broker` whose certificate the platform signed; a stand-in agent; bob enrolled with
the real `sft`). Needs root (the world's sshd runs in its own namespaces).

- baseline: what a user would run instead to get a local port to a server, an OpenSSH
  local forward (`ssh -N -L`) to web-1 with sft's cached certificate: from start until
  the forwarded port accepts.
- warm: `sft rdp --no-launch -o json win-1` with a valid client certificate cached, from
  start until its printed port accepts (certificate check, broker pre-flight, mTLS,
  RequestAccess, listener).
- cold: the same after the RDP cache is emptied (the access token stays), so each run
  also resolves the name and has a certificate signed.

Runs are interleaved so machine noise hits all three alike; medians are compared. The
issue sets no target for these; they are reported.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.harness import Result, case
from client.rdp_cache import RDPCache
from client.ssh_args import parse_ssh_args
from client.ssh_cache import SSHCache
from client.ssh_command import ssh_argv
from tests.support.cli import SFT_BIN
from tests.support.ports import free_port, listening
from tests.support.processes import stop_process
from tests.support.rdp_world import rdp_world
from tests.support.ssh_world import TEAM

CASE = "sft_rdp"
_RUNS = 9
_QUICK_RUNS = 2
_WAIT_SECONDS = 30.0


def _until_accepting(process: subprocess.Popen[bytes], port: int, started: float) -> float:
    """Poll until 127.0.0.1:`port` accepts; return ms since `started`."""
    deadline = started + _WAIT_SECONDS
    while not listening(port):
        if process.poll() is not None or time.perf_counter() > deadline:
            raise RuntimeError(f"{process.args!r} never opened port {port}")
        time.sleep(0.002)
    return (time.perf_counter() - started) * 1000


def _forward_ms(argv: list[str], port: int, env: dict[str, str]) -> float:
    """Start `ssh -N -L PORT:…`; return ms until PORT accepts."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        return _until_accepting(process, port, started)
    finally:
        stop_process(process, 10)


def _sft_rdp_ms(env: dict[str, str]) -> float:
    """Start `sft rdp --no-launch -o json win-1`; return ms until its port accepts."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [SFT_BIN, "rdp", "--no-launch", "-o", "json", "win-1"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"sft rdp printed nothing: {process.communicate()[1]!r}")
        port = int(json.loads(line)["address"].rpartition(":")[2])
        return _until_accepting(process, port, started)
    finally:
        stop_process(process, 10)


async def _measure(quick: bool) -> dict[str, float]:
    runs = _QUICK_RUNS if quick else _RUNS
    with tempfile.TemporaryDirectory(prefix="sft-bench-rdp-") as scratch:
        async with rdp_world(Path(scratch)) as world:
            bob = world.bob
            env = bob.environment()
            first = await bob.sft("ssh", "web-1", "--", "true")  # warms the SSH cache
            if first.returncode != 0:
                raise RuntimeError(f"sft ssh failed: {first.stderr.strip()}")
            await asyncio.to_thread(_sft_rdp_ms, env)  # warms the RDP cache
            team = bob.home / "teams" / TEAM
            ssh_cache, rdp_cache = SSHCache(str(team)), RDPCache(str(team))

            def forward_argv(port: int) -> list[str]:
                call = parse_ssh_args(["-N", "-L", f"127.0.0.1:{port}:127.0.0.1:9", "web-1"])
                route = ssh_cache.route(call.name, [])
                assert route is not None, "the SSH cache is warm"
                return ssh_argv(ssh_cache, route, call)

            samples: dict[str, list[float]] = {"forward": [], "warm": [], "cold": []}
            for _ in range(runs):
                port = free_port()
                samples["forward"].append(
                    await asyncio.to_thread(_forward_ms, forward_argv(port), port, env)
                )
                samples["warm"].append(await asyncio.to_thread(_sft_rdp_ms, env))
                rdp_cache.forget()
                samples["cold"].append(await asyncio.to_thread(_sft_rdp_ms, env))
            issued = await world.world.issuances()
    return {
        **{name: statistics.median(values) for name, values in samples.items()},
        "issued": float(issued),
    }


@case(CASE, "sft rdp --no-launch until its port accepts (warm, cold) vs ssh -N -L")
async def sft_rdp(quick: bool) -> list[Result]:
    """Measure warm and cold `sft rdp` start against an OpenSSH local forward's."""
    measured = await _measure(quick)
    baseline = measured["forward"]
    return [
        Result(
            CASE,
            f"sft rdp --no-launch until the port accepts, {kind} cache",
            "ms",
            measured[kind],
            baseline,
            "ssh -N -L until the port accepts",
            better="lower",
            notes={"certificates_issued": measured["issued"]},
        )
        for kind in ("warm", "cold")
    ]
