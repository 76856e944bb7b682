"""What sftd's account reconciliation costs at 10,000 accounts, in commands, time and memory.

Candidate: the real Reconciler and LinuxAccounts (argv built, /etc files parsed, the
managed-accounts record written) with a runner that counts each command instead of
executing it, so the numbers are the agent's own cost; the tools' cost is one
process per counted command. The account files are generated in the format
useradd writes, with the 10,000 accounts in them. Baselines from the same run: the
commands a full re-apply costs (creating all 10,000 from empty), a no-op resync of
the same 10,000 (read + plan, nothing to do), and a bare Python interpreter's RSS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import structlog

from agent.accounts.linux import SUDOERS_RULE, LinuxAccounts
from agent.accounts.managed import ManagedAccounts
from agent.accounts.model import DesiredAccount, DesiredState
from agent.accounts.reconcile import Reconciler
from bench.harness import Result, case

CASE = "agent_reconcile"
ACCOUNTS = 10_000
# One changed user must cost O(1) commands: at most this fraction of a full re-apply.
TARGET_COMMAND_RATIO = 0.001
# A one-user change costs a resync plus one command and one record write.
TARGET_TIME_RATIO = 3.0
_RSS_PROBE = """
import asyncio, sys
from pathlib import Path
{setup}
print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')))
"""
_AGENT_SETUP = """
from agent.accounts.managed import ManagedAccounts
from agent.accounts import reconcile, linux, access
record = ManagedAccounts.load(Path(sys.argv[1]))
assert len(record.accounts) == int(sys.argv[2])
"""


class CountingRunner:
    """A CommandRunner that counts commands instead of running them."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    async def __call__(self, argv: Sequence[str], stdin: bytes | None) -> None:
        self.commands.append(list(argv))


def _desired(count: int) -> list[DesiredAccount]:
    return [
        DesiredAccount(
            name=f"user{i}",
            user=f"teams/acme/users/user{i}",
            uid=100_000 + i,
            gid=200_000 + i,
            primary_group=f"user{i}",
            supplementary_groups=("developers",),
            admin=i % 50 == 0,
            windows_name=f"user{i}",
            full_name=f"User {i}",
        )
        for i in range(count)
    ]


def _write_etc(etc: Path, accounts: Sequence[DesiredAccount]) -> None:
    """Write passwd, group, shadow as useradd would have after creating `accounts`."""
    passwd = ["root:x:0:0:root:/root:/bin/bash"]
    shadow = ["root:*:19000:0:99999:7:::"]
    group = ["root:x:0:"]
    for a in accounts:
        passwd.append(f"{a.name}:x:{a.uid}:{a.gid}:{a.full_name}:/home/{a.name}:/bin/bash")
        shadow.append(f"{a.name}:*:19000:0:99999:7:::")
        group.append(f"{a.name}:x:{a.gid}:")
    developers = ",".join(a.name for a in accounts)
    admins = ",".join(a.name for a in accounts if a.admin)
    group += [f"developers:x:5000:{developers}", f"sft-admin:x:998:{admins}"]
    for name, lines in (("passwd", passwd), ("shadow", shadow), ("group", group)):
        (etc / name).write_text("\n".join(lines) + "\n")


async def _measure(count: int, work: Path) -> dict[str, float]:
    etc = work / "etc"
    etc.mkdir()
    for name in ("passwd", "shadow", "group"):
        (etc / name).write_text("root:x:0:0::/:/bin/sh\n" if name == "passwd" else "")
    runner = CountingRunner()
    backend = LinuxAccounts(etc_dir=etc, sudoers_file=work / "sudoers.d" / "sft-admin", run=runner)
    managed = ManagedAccounts.load(work / "managed-accounts.json")
    reconciler = Reconciler(backend, managed)
    accounts = _desired(count)

    started = time.perf_counter()
    await reconciler.reconcile(DesiredState(1, tuple(accounts), True))
    from_empty_seconds = time.perf_counter() - started
    full_commands = len(runner.commands)

    _write_etc(etc, accounts)  # what the counted commands would have left behind
    (work / "sudoers.d" / "sft-admin").parent.mkdir(exist_ok=True)
    await backend.install_sudoers(SUDOERS_RULE)
    runner.commands.clear()

    started, cpu = time.perf_counter(), time.process_time()
    await reconciler.reconcile(DesiredState(2, tuple(accounts), True))
    noop_seconds, noop_cpu = time.perf_counter() - started, time.process_time() - cpu
    noop_commands = len(runner.commands)

    changed = [*accounts]
    middle = count // 2 + 1  # not a multiple of 50: not an admin yet
    changed[middle] = dataclasses.replace(changed[middle], admin=True)
    started = time.perf_counter()
    await reconciler.reconcile(DesiredState(3, tuple(changed), True))
    change_seconds = time.perf_counter() - started
    return {
        "full_commands": full_commands,
        "noop_commands": noop_commands,
        "change_commands": len(runner.commands),
        "from_empty_seconds": from_empty_seconds,
        "noop_seconds": noop_seconds,
        "noop_cpu_seconds": noop_cpu,
        "change_seconds": change_seconds,
    }


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """Log only warnings and errors inside the block; restore the configuration after."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        yield
    finally:
        structlog.configure(**saved)


def _rss_kib(setup: str, *args: str) -> float:
    """Return the RSS (KiB) of a fresh interpreter after running `setup`."""
    result = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE.format(setup=setup), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(result.stdout.split()[-1])


@case(CASE, "sftd account reconcile at 10,000 accounts: commands, time, memory")
async def agent_reconcile(quick: bool) -> list[Result]:
    """Measure from-empty, no-op and one-change reconciles, and the agent's idle RSS."""
    count = 2_000 if quick else ACCOUNTS
    with tempfile.TemporaryDirectory(prefix="bench-accounts-") as scratch:
        work = Path(scratch)
        # The counted commands are not run, so nothing is changed and no root is needed.
        with _quiet_logs():  # 20,000 "account created" lines would measure the console
            numbers = await _measure(count, work)
        agent_rss = await asyncio.to_thread(
            _rss_kib, _AGENT_SETUP, str(work / "managed-accounts.json"), str(count)
        )
        bare_rss = await asyncio.to_thread(_rss_kib, "")
    label = f"{count:,} accounts"
    return [
        Result(
            case=CASE,
            metric=f"commands for one changed user among {label}",
            unit="commands",
            candidate=numbers["change_commands"],
            baseline=numbers["full_commands"],
            baseline_name="a full re-apply (create all from empty)",
            better="lower",
            target_ratio=TARGET_COMMAND_RATIO,
            notes={
                "noop_resync_commands": numbers["noop_commands"],
                "from_empty_seconds_excluding_tools": round(numbers["from_empty_seconds"], 3),
            },
        ),
        Result(
            case=CASE,
            metric=f"one-change reconcile wall time, {label}",
            unit="ms",
            candidate=numbers["change_seconds"] * 1000,
            baseline=numbers["noop_seconds"] * 1000,
            baseline_name="a no-op resync (read /etc + plan)",
            better="lower",
            target_ratio=TARGET_TIME_RATIO,
            notes={"noop_resync_cpu_ms": round(numbers["noop_cpu_seconds"] * 1000, 1)},
        ),
        Result(
            case=CASE,
            metric=f"agent RSS with the record of {label} loaded",
            unit="MiB",
            candidate=agent_rss / 1024,
            baseline=bare_rss / 1024,
            baseline_name="a bare Python interpreter",
            better="lower",
        ),
    ]
