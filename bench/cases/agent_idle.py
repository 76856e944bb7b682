"""What an enrolled, idle `sftd` costs its server: resident memory and CPU.

Candidate: the real `sftd` process, enrolled with an in-process platform (SQLite) and
left alone: it heartbeats and holds its WatchAccounts stream open. ManageAccounts and
ManageSSHD are off (it runs on this machine, outside any namespace; neither runs
between changes anyway). Measured over an idle window after its first heartbeat: RSS
at the end, CPU (user + system, from /proc) spent during the window.

Baseline from the same run: a bare Python interpreter sleeping, measured the same way.
The issue sets no target; the numbers are reported.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.state import AgentState
from bench.harness import Result, case
from runtime.database import default_sqlite_url
from tests.support.platform import running_platform
from tests.support.sshd import write_private_key

CASE = "agent_idle"
_TEAM = "acme"
_WINDOW_SECONDS = 60.0
_QUICK_WINDOW_SECONDS = 5.0
_TICKS = os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


async def _idle(pid: int, window: float) -> tuple[float, float]:
    """Return (RSS MiB at the end, % of one core used) over `window` seconds of idling."""
    cpu_before, started = _cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(window)
    used, elapsed = _cpu_seconds(pid) - cpu_before, time.monotonic() - started
    return _rss_mib(pid), 100 * used / elapsed


async def _measure(quick: bool) -> dict[str, float]:
    window = _QUICK_WINDOW_SECONDS if quick else _WINDOW_SECONDS
    with tempfile.TemporaryDirectory(prefix="sft-bench-idle-") as scratch:
        root = Path(scratch)
        async with running_platform(default_sqlite_url(root), root) as platform:
            await platform.create_team(_TEAM, "ada", members=["bob"])
            admin = await platform.login(_TEAM, "ada")
            await platform.grant_project(admin, _TEAM, "web", "ops", members=["bob"])
            token, _ = await platform.enrollment_token(
                admin, f"teams/{_TEAM}/projects/web", "idle bench"
            )
            host_key = root / "ssh_host_ed25519_key"
            write_private_key(host_key, ed25519.Ed25519PrivateKey.generate())
            (root / "sshd_config").write_text(f"HostKey {host_key}\n")
            (root / "enrollment.token").write_text(token + "\n")
            settings = {
                "InitialURL": f"https://{platform.address}",
                "StateDir": str(root / "state"),
                "LogDir": str(root / "log"),
                "EnrollmentTokenFile": str(root / "enrollment.token"),
                "SSHDConfigFile": str(root / "sshd_config"),
                "ManageAccounts": False,
                "ManageSSHD": False,
                "LogLevel": "WARN",
            }
            conf = root / "sftd.yaml"
            conf.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
            sftd = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "sftd"),
                "--conf",
                str(conf),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            bare = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "import time; time.sleep(3600)"
            )
            try:
                status = root / "state" / AgentState.STATUS
                deadline = time.monotonic() + 60
                while not (
                    status.exists()
                    and json.loads(status.read_text()).get("last_heartbeat_time") is not None
                ):
                    if sftd.returncode is not None or time.monotonic() > deadline:
                        raise RuntimeError("sftd did not enroll and heartbeat in time")
                    await asyncio.sleep(0.2)
                (rss, cpu), (bare_rss, bare_cpu) = await asyncio.gather(
                    _idle(sftd.pid, window), _idle(bare.pid, window)
                )
            finally:
                for process in (sftd, bare):
                    process.terminate()
                    await asyncio.wait_for(process.wait(), 20)
    return {"rss": rss, "cpu": cpu, "bare_rss": bare_rss, "bare_cpu": bare_cpu, "window": window}


@case(CASE, "an enrolled, idle sftd: RSS and CPU vs a bare sleeping Python")
async def agent_idle(quick: bool) -> list[Result]:
    """Measure an idle sftd's memory and CPU."""
    measured = await _measure(quick)
    return [
        Result(
            CASE,
            "idle sftd RSS",
            "MiB",
            measured["rss"],
            measured["bare_rss"],
            "bare Python, sleeping",
            better="lower",
            notes={
                "cpu_percent_of_one_core": round(measured["cpu"], 3),
                "bare_python_cpu_percent": round(measured["bare_cpu"], 3),
                "window_seconds": measured["window"],
            },
        )
    ]
