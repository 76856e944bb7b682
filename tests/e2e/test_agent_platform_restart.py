"""The platform goes away under a running sftd and comes back: sftd keeps the machine as
it was, says so in `sftd status`, and converges once the platform answers again.

The real `sftd` runs as root in a private namespace (its own /etc and /home), with
ManageAccounts on. The platform is the real `sft-platform serve` process on a fixed
loopback port, stopped and started again on the same data dir (SQLite, its CA kept).
The team, grants and token are made through the platform's API by an in-process
platform on the same data dir, started only while the process is stopped (SQLite
has one writer at a time); that is also how a grant changes during the outage, as an
admin would change it at a platform replica sftd cannot reach.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.log_file import LOG_FILE_NAME
from runtime.database import default_sqlite_url
from sft.inventory.v1 import group_service_pb2, group_service_pb2_grpc
from tests.e2e.test_agent_broker import SFTD, _entries
from tests.support.namespace import PrivateSystem, private_system, require_root
from tests.support.platform import Platform, running_platform
from tests.support.platform_process import PlatformProcess
from tests.support.real_software import require_program

pytestmark = pytest.mark.e2e

REPOSITORY = Path(__file__).resolve().parents[2]
TEAM = "acme"
PROJECT = f"teams/{TEAM}/projects/web"
GROUP = f"teams/{TEAM}/groups/ops"
#: The issue says "a minute"; a shorter outage exercises the same backoff (1 s, 2 s, 4 s,
#: … with jitter) and keeps the run short. sftd's next try after it is at most as far
#: away as the outage was long.
OUTAGE_SECONDS = 20.0
WAIT_SECONDS = 60.0
STREAM_FAILED = "account stream failed; platform unreachable"


@pytest.fixture
def system(tmp_path: Path) -> Iterator[PrivateSystem]:
    require_root("sftd managing accounts in a private namespace")
    for tool, package in (("useradd", "passwd"), ("usermod", "passwd")):
        require_program(tool, package)
    with private_system(tmp_path, cwd=REPOSITORY) as private:
        yield private


@asynccontextmanager
async def _api(data_dir: Path) -> AsyncIterator[Platform]:
    """Serve the platform in this process on `data_dir` (on another port) for a while."""
    async with running_platform(default_sqlite_url(data_dir), data_dir) as platform:
        try:
            yield platform
        finally:
            await platform.close_channels()


async def _until(condition: Callable[[], object], what: str, log: Path) -> None:
    """Wait (at most WAIT_SECONDS) for `condition()`, checked in a thread; fail showing `log`."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            shown = await asyncio.to_thread(log.read_text, errors="replace")
            pytest.fail(f"timed out after {WAIT_SECONDS}s waiting for {what}\n{shown}")
        await asyncio.sleep(0.2)


def _accounts(system: PrivateSystem, *names: str) -> dict[str, tuple[str, str]]:
    """Return the /etc/passwd and /etc/shadow lines of `names` in the namespace."""
    found: dict[str, list[str]] = {}
    for path in ("/etc/passwd", "/etc/shadow"):
        for line in system.read(path).splitlines():
            name = line.split(":", 1)[0]
            if name in names:
                found.setdefault(name, []).append(line)
    return {name: (lines[0], lines[1]) for name, lines in found.items()}


def _status(system: PrivateSystem, conf: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return system.run([str(SFTD), "--conf", str(conf), "status", *extra])


def _daemon(system: PrivateSystem, conf: Path) -> dict[str, Any]:
    daemon: dict[str, Any] = json.loads(_status(system, conf, "-o", "json").stdout)["daemon"] or {}
    return daemon


async def test_sftd_keeps_accounts_while_the_platform_is_down_and_converges_after(
    system: PrivateSystem, tmp_path: Path
) -> None:
    data_dir = tmp_path / "platform"
    data_dir.mkdir()
    async with _api(data_dir) as platform:
        await platform.create_team(TEAM, "alice", members=["bob", "carol"])
        admin = await platform.login(TEAM, "alice")
        await platform.grant_project(admin, TEAM, "web", "ops", members=["bob"])
        token, _ = await platform.enrollment_token(admin, PROJECT, "restart test")
    process = PlatformProcess(data_dir).start()

    log_dir = tmp_path / "log"
    (tmp_path / "enrollment.token").write_text(token + "\n")
    settings = {
        "InitialURL": f"https://127.0.0.1:{process.port}",
        "CanonicalName": "web-1",
        "AccessAddress": "127.0.0.1",
        "StateDir": str(tmp_path / "state"),
        "LogDir": str(log_dir),
        "EnrollmentTokenFile": str(tmp_path / "enrollment.token"),
        "SSHDConfigFile": str(tmp_path / "sshd_config"),
        "ManageAccounts": True,
        "ManageSSHD": False,
        "LogLevel": "INFO",
    }
    (tmp_path / "sshd_config").write_text("")
    conf = tmp_path / "sftd.yaml"
    conf.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items()))
    log = tmp_path / "sftd.out"
    sftd = system.start([str(SFTD), "--conf", str(conf)], log=log)
    try:
        await _until(lambda: "bob" in _accounts(system, "bob"), "bob's account", log)
        # The stream's news is the platform's: status says reachable without waiting up
        # to a heartbeat interval (60 s) or the heartbeat loop's longer backoff.
        daemon = _daemon(system, conf)
        assert daemon["platform_reachable"] is True, daemon
        before = _accounts(system, "bob")
        revision = _daemon(system, conf)["applied_revision"]

        # The platform stops: sftd says so, and changes nothing on the machine.
        assert process.stop() == 0, process.log()
        await _until(
            lambda: _daemon(system, conf).get("platform_reachable") is False, "unreachable", log
        )
        text = _status(system, conf).stdout
        assert "platform reachable: no" in text
        assert "problem: the platform is unreachable:" in text
        # Meanwhile an admin adds carol to the granted group.
        async with _api(data_dir) as platform:
            admin = await platform.login(TEAM, "alice")
            groups = platform.stub(group_service_pb2_grpc.GroupServiceStub, admin)
            await groups.AddGroupMember(
                group_service_pb2.AddGroupMemberRequest(
                    group=GROUP, user=f"teams/{TEAM}/users/carol"
                )
            )
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - 5))
        assert _accounts(system, "bob", "carol") == before  # fail static: nothing removed
        assert _daemon(system, conf)["applied_revision"] == revision
        failures = [e for e in _entries(log) if e.get("event") == STREAM_FAILED]
        delays = [float(e["retry_in_seconds"]) for e in failures]
        assert len(delays) >= 3 and max(delays) > 2 * min(delays), delays  # backing off

        # It comes back on the same address: heartbeats and WatchAccounts resume.
        restarted, restarted_at = time.monotonic(), dt.datetime.now(dt.UTC)
        process.start()
        await _until(lambda: "carol" in _accounts(system, "carol"), "carol's account", log)
        converged = time.monotonic() - restarted
        # The stream's news is the platform's: status says reachable without waiting up
        # to a heartbeat interval (60 s) or the heartbeat loop's longer backoff.
        daemon = _daemon(system, conf)
        assert daemon["platform_reachable"] is True, daemon
        # The reconnected stream wakes the heartbeat loop: no wait for its backoff.
        await _until(
            lambda: (
                dt.datetime.fromisoformat(_daemon(system, conf)["last_heartbeat_time"])
                > restarted_at
            ),
            "a heartbeat after the restart",
            log,
        )
        daemon = _daemon(system, conf)
        assert daemon["problems"] == [], daemon
        assert daemon["applied_revision"] > revision
        assert daemon["managed_accounts"] == 2
        assert _accounts(system, "bob") == before
        assert "platform reachable: yes" in _status(system, conf).stdout
        print(f"converged {converged:.1f} s after the platform came back")
    finally:
        stopped = await asyncio.to_thread(system.stop, sftd, timeout_seconds=20.0)
        process.stop()
    assert stopped == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    # The same lines, as JSON, in LogDir.
    in_file = [json.loads(line) for line in (log_dir / LOG_FILE_NAME).read_text().splitlines()]
    assert [e["event"] for e in in_file] == [e["event"] for e in _entries(log)]
