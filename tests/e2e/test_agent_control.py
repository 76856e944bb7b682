"""sftd's control channel with the real Linux account tools, as root, in a private namespace.

The control server runs inside the namespace (this module doubles as its driver:
`python -m tests.e2e.test_agent_control STATE_DIR` serves until its stdin closes);
the test talks to its Unix socket from outside, as the broker would. Whether the
one-time password works is checked against the namespace's /etc/shadow with
`openssl passwd -6` and through PAM with `su`.
"""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.control_client import SOCKET_NAME, ControlClient
from tests.e2e.test_agent_accounts import (
    REPOSITORY,
    TOOLS,
    Agent,
    _host_fingerprint,
    desired,
    shadow,
    status,
)
from tests.support.namespace import PrivateSystem, private_system, require_root
from tests.support.real_software import require_program

pytestmark = pytest.mark.e2e

START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
TTL_SECONDS = 600


@pytest.fixture
def system(tmp_path: Path) -> Iterator[PrivateSystem]:
    """A private namespace; afterwards the machine's own account files must be unchanged."""
    require_root("control channel tests")
    for tool, package in {**TOOLS, "openssl": "openssl"}.items():
        require_program(tool, package)
    before = _host_fingerprint()
    with private_system(tmp_path, cwd=REPOSITORY) as private:
        yield private
    assert _host_fingerprint() == before, "the machine's own account files changed"


class ControlProcess:
    """The control server running in the namespace, started and stopped by pid."""

    def __init__(self, system: PrivateSystem, state_dir: Path) -> None:
        nsenter = shutil.which("nsenter") or "nsenter"
        self.process = subprocess.Popen(
            [
                nsenter, f"--target={system.pid}", "--mount", "--pid", f"--wd={REPOSITORY}",
                "--", sys.executable, "-m", "tests.e2e.test_agent_control", str(state_dir),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
            text=True,
        )  # fmt: skip
        self.log = ""
        line = self._line(START_TIMEOUT_SECONDS)
        if line.strip() != "serving":
            self.kill()
            pytest.fail(f"the control server did not start: {line}{self.log}", pytrace=False)

    def _line(self, timeout_seconds: float) -> str:
        """Return the server's next stdout line, or '' after `timeout_seconds`."""
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_seconds)
        return self.process.stdout.readline() if ready else ""

    def stop(self) -> int:
        """Close its stdin (it stops gracefully); return its exit status."""
        try:  # communicate() closes stdin first
            _, self.log = self.process.communicate(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("the control server did not stop", pytrace=False)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the server (a crash: no cleanup at all), then reap nsenter."""
        # nsenter --pid forks: the server is its one child, in the namespace.
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        if self.process.poll() is None:
            for child in children.read_text().split():
                os.kill(int(child), signal.SIGKILL)
        try:
            _, self.log = self.process.communicate(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()


def password_verifies(system: PrivateSystem, name: str, password: str) -> bool:
    """Return whether /etc/shadow's hash for `name` is `password`'s (openssl passwd -6)."""
    field = shadow(system, name)[1]
    if not field.startswith("$6$"):
        return False
    salt = field.split("$")[2]
    # -stdin: the password never appears in a process list.
    hashed = system.run(["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input=password)
    return hashed.stdout.strip() == field


def su_accepts(agent: Agent, name: str, password: str) -> bool:
    """Return whether `su NAME` accepts `password` through PAM (the accounts driver's check)."""
    return bool(agent.call("su", name=name, password=password)["ok"])


async def test_enable_gives_a_working_password_and_disable_kills_it(
    system: PrivateSystem, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    agent = Agent(system, state_dir, zero_standing_privilege=True)
    agent.reconcile(desired("alice", 1))
    assert status(system, "alice") == "L"
    server = ControlProcess(system, state_dir)
    try:
        socket_path = state_dir / SOCKET_NAME
        assert oct(socket_path.lstat().st_mode & 0o777) == "0o600"
        async with ControlClient.unix(socket_path) as client:
            enabled = await client.enable_account("alice", "grant-1", TTL_SECONDS)
            password = enabled.password
            assert password is not None and len(password) >= 24

            assert status(system, "alice") == "P"
            assert password_verifies(system, "alice", password)
            assert su_accepts(agent, "alice", password)
            assert not su_accepts(agent, "alice", password + "x")
            grants = (await client.status()).grants
            assert [(g.account_name, g.grant_id) for g in grants] == [("alice", "grant-1")]

            assert await client.disable_account("alice", "grant-1") is True

            assert status(system, "alice") == "L"
            assert not password_verifies(system, "alice", password)
            assert not su_accepts(agent, "alice", password)
    finally:
        code = server.stop()
    assert code == 0, server.log
    assert not socket_path.exists()
    assert password not in server.log  # the server logged each call, never the password
    assert '"account": "alice"' in server.log and '"outcome": "enabled"' in server.log


async def test_after_a_crash_the_next_start_disables_the_account(
    system: PrivateSystem, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    agent = Agent(system, state_dir, zero_standing_privilege=True)
    agent.reconcile(desired("alice", 1))
    crashed = ControlProcess(system, state_dir)
    async with ControlClient.unix(state_dir / SOCKET_NAME) as client:
        password = (await client.enable_account("alice", "grant-1", TTL_SECONDS)).password
    assert password is not None and status(system, "alice") == "P"

    crashed.kill()  # no stop: the account is left enabled, the socket left behind
    assert status(system, "alice") == "P" and (state_dir / SOCKET_NAME).exists()

    restarted = ControlProcess(system, state_dir)
    try:
        assert status(system, "alice") == "L"
        assert not password_verifies(system, "alice", password)
        assert not su_accepts(agent, "alice", password)
        async with ControlClient.unix(state_dir / SOCKET_NAME) as client:
            assert list((await client.status()).grants) == []
    finally:
        assert restarted.stop() == 0, restarted.log
    assert "accounts left enabled were disabled" in restarted.log


# The driver: runs inside the namespace (python -m tests.e2e.test_agent_control STATE_DIR).


async def _serve(state_dir: Path) -> None:
    """Serve the control channel as `sftd run` wires it, until stdin closes."""
    from agent.cli import account_wiring
    from agent.config import AgentConfig
    from agent.control import ControlServer
    from agent.state import AgentState

    config = AgentConfig.model_validate(
        {"StateDir": str(state_dir), "ManageAccounts": True, "Broker": True}
    )
    AgentState(state_dir).ensure_directory()
    control = account_wiring(config).control
    assert isinstance(control, ControlServer)
    await control.start()  # no daemon here: GetStatus reports a bare status
    print("serving", flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await control.stop()


def main() -> None:
    """Serve the control channel for the state dir in argv[1]; logs go to stderr as JSON."""
    import structlog

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    asyncio.run(_serve(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
