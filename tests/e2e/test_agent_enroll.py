"""`sftd` against the real platform (SQLite, loopback): enrollment with a token file,
heartbeats, the WatchAccounts loop, a restart, and tokens it must refuse.

The daemon runs in-process as an asyncio task with a recording AccountSink; the
platform counts the EnrollServer and Heartbeat calls it serves, so "no retry storm"
and "no second enrollment" are checked where they would hurt.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ed25519
from structlog.testing import capture_logs

from agent.accounts.model import DesiredState
from agent.cli import main as sftd_main
from agent.config import AgentConfig
from agent.daemon import Daemon, DaemonTimings
from agent.enrollment import EnrollmentTimings
from agent.state import AgentState
from runtime.database import default_sqlite_url
from runtime.pinned_codes import CodeKind, PinnedCode
from services.inventory.agent_service import AgentServicer
from sft.inventory.v1 import (
    enrollment_token_service_pb2,
    enrollment_token_service_pb2_grpc,
    group_service_pb2,
    group_service_pb2_grpc,
    server_service_pb2,
    server_service_pb2_grpc,
    user_pb2,
    user_service_pb2,
    user_service_pb2_grpc,
)
from tests.support.platform import Platform, running_platform
from tests.support.sshd import write_private_key

pytestmark = pytest.mark.e2e

TEAM = "acme"
PROJECT = f"teams/{TEAM}/projects/web"
GROUP = f"teams/{TEAM}/groups/ops"
WAIT_SECONDS = 15.0

FAST = DaemonTimings(
    retry_initial_seconds=0.05,
    retry_maximum_seconds=0.5,
    enrollment=EnrollmentTimings(
        token_poll_seconds=0.05,
        refused_token_poll_seconds=0.1,
        retry_initial_seconds=0.05,
        retry_maximum_seconds=0.5,
    ),
)


@dataclass
class CallCounts:
    """How many agent calls the platform served, by method."""

    calls: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, method: str) -> int:
        return self.calls.get(method, 0)


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> CallCounts:
    """Count EnrollServer and Heartbeat calls at the platform (patched before it starts)."""
    counted = CallCounts()
    for method in ("EnrollServer", "Heartbeat"):
        original = getattr(AgentServicer, method)

        def counting(original: Any, method: str) -> Any:
            @functools.wraps(original)  # keeps the declared need the server checks
            async def wrapper(self: Any, request: Any, context: Any) -> Any:
                counted.calls[method] = counted.calls.get(method, 0) + 1
                return await original(self, request, context)

            return wrapper

        monkeypatch.setattr(AgentServicer, method, counting(original, method))
    return counted


@pytest.fixture
async def platform(tmp_path: Path, counts: CallCounts) -> AsyncIterator[Platform]:
    url = default_sqlite_url(tmp_path / "db")
    (tmp_path / "db").mkdir()
    (tmp_path / "platform").mkdir()
    async with running_platform(url, tmp_path / "platform") as running:
        await running.create_team(TEAM, "alice")
        yield running


async def _admin(platform: Platform) -> str:
    return await platform.login(TEAM, "alice")


async def _set_up_project(platform: Platform, admin: str) -> None:
    """Project web; group ops (bob) granted on it; carol exists but is not in ops."""
    users = platform.stub(user_service_pb2_grpc.UserServiceStub, admin)
    for name in ("bob", "carol"):
        await users.CreateUser(
            user_service_pb2.CreateUserRequest(
                parent=f"teams/{TEAM}", user_id=name, user=user_pb2.User(display_name=name)
            )
        )
    await platform.grant_project(admin, TEAM, "web", "ops", members=["bob"])


async def _token(platform: Platform, admin: str) -> tuple[str, str]:
    """Create an enrollment token for project web; return (its string, its resource name)."""
    return await platform.enrollment_token(admin, PROJECT, "agent test")


def _agent_config(platform: Platform, tmp_path: Path) -> AgentConfig:
    """A config whose every path is under tmp_path, with one real host key named by HostKey."""
    ssh_dir = tmp_path / "etc-ssh"
    ssh_dir.mkdir(exist_ok=True)
    host_key = ssh_dir / "ssh_host_ed25519_key"
    if not host_key.exists():
        write_private_key(host_key, ed25519.Ed25519PrivateKey.generate())
    sshd_config = ssh_dir / "sshd_config"
    sshd_config.write_text(f"# test sshd\nPort 2222\nHostKey {host_key}\n")
    return AgentConfig.model_validate(
        {
            "InitialURL": f"https://{platform.address}",
            "CanonicalName": "web-1",
            "AltNames": ["web-1.example.com"],
            "Labels": {"env": "test"},
            "AccessAddress": "127.0.0.1",
            "StateDir": str(tmp_path / "state"),
            "LogDir": str(tmp_path / "log"),
            "EnrollmentTokenFile": str(tmp_path / "enrollment.token"),
            "SSHDConfigFile": str(sshd_config),
            "TrustedUserCAKeysFile": str(tmp_path / "state" / "ssh_ca.pub"),
            "SSHDPort": 2222,
        }
    )


class RecordingSink:
    """An AccountSink that remembers every desired state it was given."""

    def __init__(self) -> None:
        self.states: list[DesiredState] = []
        self._changed = asyncio.Condition()

    async def apply(self, state: DesiredState) -> None:
        async with self._changed:
            self.states.append(state)
            self._changed.notify_all()

    async def wait_for(self, count: int) -> DesiredState:
        """Return the `count`-th state once it has arrived."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.states) >= count), WAIT_SECONDS
            )
            return self.states[count - 1]


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig, sink: RecordingSink) -> AsyncIterator[Daemon]:
    """Run the daemon as a task; cancel it and wait for it to end afterwards."""
    daemon = Daemon(config, accounts=sink, timings=FAST)
    task = asyncio.create_task(daemon.run())
    try:
        yield daemon
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _status(config: AgentConfig) -> dict[str, Any]:
    return dict(json.loads((config.state_dir / AgentState.STATUS).read_text()))


def _modes(directory: Path) -> Iterator[tuple[str, int]]:
    for path in sorted(directory.iterdir()):
        yield path.name, stat.S_IMODE(path.stat().st_mode)


async def test_agent_enrolls_heartbeats_follows_accounts_and_restarts_as_the_same_server(
    platform: Platform, tmp_path: Path, counts: CallCounts
) -> None:
    admin = await _admin(platform)
    await _set_up_project(platform, admin)
    token, _ = await _token(platform, admin)
    config = _agent_config(platform, tmp_path)
    config.enrollment_token_file.write_text(token + "\n")
    sink = RecordingSink()

    async with running_agent(config, sink) as daemon:
        first = await sink.wait_for(1)
        assert [account.name for account in first.accounts] == ["bob"]
        assert first.accounts[0].user == f"teams/{TEAM}/users/bob"
        assert first.accounts[0].uid >= 60001
        await _until(lambda: counts["Heartbeat"] >= 1, "a heartbeat")
        await _until(lambda: _status(config)["applied_revision"] == first.revision, "status")

        # The token is spent and gone; the state is private.
        assert not config.enrollment_token_file.exists()
        assert stat.S_IMODE(config.state_dir.stat().st_mode) == 0o700
        assert {mode for _, mode in _modes(config.state_dir)} == {0o600}
        assert daemon.identity is not None
        server_name = daemon.identity.server

        # A membership change arrives as a second, complete state.
        groups = platform.stub(group_service_pb2_grpc.GroupServiceStub, admin)
        await groups.AddGroupMember(
            group_service_pb2.AddGroupMemberRequest(group=GROUP, user=f"teams/{TEAM}/users/carol")
        )
        second = await sink.wait_for(2)
        assert second.revision > first.revision
        assert [account.name for account in second.accounts] == ["bob", "carol"]

    servers = platform.stub(server_service_pb2_grpc.ServerServiceStub, admin)
    server = (await servers.GetServer(server_service_pb2.GetServerRequest(name=server_name))).server
    assert server.canonical_name == "web-1"
    assert list(server.alt_names) == ["web-1.example.com"]
    assert dict(server.labels) == {"env": "test"}
    assert server.ssh_port == 2222
    assert server.access_address == "127.0.0.1"
    assert len(server.host_key_fingerprints) == 1
    assert server.HasField("last_seen_time")
    state = AgentState(config.state_dir)
    certificates = state.read_host_certificates()
    assert [c.host_key_fingerprint for c in certificates] == list(server.host_key_fingerprints)
    anchors = state.read_trust_anchors()
    assert anchors is not None and anchors.trusted_user_ca_keys.startswith("ssh-")
    status = _status(config)
    assert status["platform_reachable"] is True
    assert status["last_heartbeat_time"] is not None
    assert status["applied_revision"] == second.revision

    # `sftd status` tells the same from the state dir alone.
    conf = tmp_path / "sftd.yaml"
    conf.write_text(
        "".join(
            f"{key}: {json.dumps(str(value))}\n"
            for key, value in (
                ("StateDir", config.state_dir),
                ("EnrollmentTokenFile", config.enrollment_token_file),
            )
        )
    )
    shown = CliRunner().invoke(sftd_main, ["--conf", str(conf), "status", "-o", "json"])
    assert shown.exit_code == 0, shown.output
    document = json.loads(shown.output)
    assert document["server"]["name"] == server_name
    assert document["server"]["platform_url"] == f"https://{platform.address}"
    assert document["daemon"]["applied_revision"] == second.revision

    # Restarted, with a fresh token lying around: the same server, no new enrollment,
    # and the revision it already applied is not applied again.
    another, _ = await _token(platform, admin)
    config.enrollment_token_file.write_text(another)
    heartbeats = counts["Heartbeat"]
    restarted_sink = RecordingSink()
    async with running_agent(config, restarted_sink) as daemon:
        await _until(lambda: counts["Heartbeat"] > heartbeats, "a heartbeat after restart")
        assert daemon.identity is not None
        assert daemon.identity.server == server_name
        await groups.RemoveGroupMember(
            group_service_pb2.RemoveGroupMemberRequest(
                group=GROUP, user=f"teams/{TEAM}/users/carol"
            )
        )
        third = await restarted_sink.wait_for(1)
        assert third.revision > second.revision
        assert [account.name for account in third.accounts] == ["bob"]
        listed = await servers.ListServers(
            server_service_pb2.ListServersRequest(parent=f"teams/{TEAM}")
        )
        assert [s.name for s in listed.servers] == [server_name]

        # The platform goes away: the agent notices and applies nothing (so removes nothing).
        await platform.server.stop()
        await _until(lambda: not _status(config)["platform_reachable"], "unreachable status")
        await asyncio.sleep(0.5)
        assert restarted_sink.states == [third]
    assert counts["EnrollServer"] == 1
    assert config.enrollment_token_file.read_text() == another


def _events(logs: Sequence[MutableMapping[str, Any]], event: str) -> list[object]:
    return [entry for entry in logs if entry["event"] == event]


def _refusals(logs: Sequence[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    """Return the agent's refusal lines (the in-process platform logs its own too)."""
    return [e for e in logs if e["event"] == "enrollment refused" and "token_file" in e]


async def test_tokens_that_cannot_work_are_reported_once_and_never_sent(
    platform: Platform, tmp_path: Path, counts: CallCounts
) -> None:
    admin = await _admin(platform)
    await _set_up_project(platform, admin)
    config = _agent_config(platform, tmp_path)
    sink = RecordingSink()
    with capture_logs() as logs:
        async with running_agent(config, sink):
            # No token yet (cloud-init may write it later): said once, then waited for.
            await _until(lambda: bool(_events(logs, "waiting for an enrollment token")), "waiting")
            await asyncio.sleep(0.5)  # ten looks at the file here
            assert len(_events(logs, "waiting for an enrollment token")) == 1

            # Garbage: refused locally.
            config.enrollment_token_file.write_text("not-a-token\n")
            await _until(lambda: len(_refusals(logs)) == 1, "the garbage token's refusal")
            assert "does not hold a usable token" in _refusals(logs)[0]["reason"]

            # A well-formed token pinned to another platform's CA: refused after the
            # TLS probe, before the token is sent anywhere.
            foreign = PinnedCode.generate(CodeKind.SERVER_ENROLLMENT, os.urandom(32)).encode()
            config.enrollment_token_file.write_text(foreign + "\n")
            await _until(lambda: len(_refusals(logs)) == 2, "the foreign token's refusal")
            assert "did not present the TLS CA" in _refusals(logs)[1]["reason"]

            await asyncio.sleep(1.0)  # time enough for a storm, if there were one
            assert len(_refusals(logs)) == 2
    assert counts["EnrollServer"] == 0
    assert not (config.state_dir / AgentState.IDENTITY).exists()
    assert (config.state_dir / AgentState.KEY).exists(), "the key is kept for the next token"
    assert sink.states == []


async def test_revoked_token_is_tried_once_then_a_new_token_enrolls_with_the_same_key(
    platform: Platform, tmp_path: Path, counts: CallCounts
) -> None:
    admin = await _admin(platform)
    await _set_up_project(platform, admin)
    revoked, name = await _token(platform, admin)
    tokens = platform.stub(enrollment_token_service_pb2_grpc.EnrollmentTokenServiceStub, admin)
    await tokens.RevokeEnrollmentToken(
        enrollment_token_service_pb2.RevokeEnrollmentTokenRequest(name=name)
    )
    config = _agent_config(platform, tmp_path)
    config.enrollment_token_file.write_text(revoked)
    sink = RecordingSink()
    with capture_logs() as logs:
        async with running_agent(config, sink) as daemon:
            await _until(lambda: len(_refusals(logs)) == 1, "the revoked token's refusal")
            assert "revoked" in _refusals(logs)[0]["reason"]
            key = AgentState(config.state_dir).read_key()
            await asyncio.sleep(1.5)  # the refused-token check runs every 0.1 s here
            assert counts["EnrollServer"] == 1
            assert len(_refusals(logs)) == 1

            fresh, _ = await _token(platform, admin)
            config.enrollment_token_file.write_text(fresh)
            await sink.wait_for(1)
            assert counts["EnrollServer"] == 2
            assert daemon.identity is not None
    kept = AgentState(config.state_dir).read_key()
    assert key is not None and kept is not None
    assert kept.fingerprint == key.fingerprint
    assert not config.enrollment_token_file.exists()


async def test_unreachable_platform_is_retried_with_growing_pauses(tmp_path: Path) -> None:
    # A loopback port nobody listens on: bind it, note it, close it.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = AgentConfig.model_validate(
        {
            "InitialURL": f"https://127.0.0.1:{port}",
            "StateDir": str(tmp_path / "state"),
            "EnrollmentTokenFile": str(tmp_path / "enrollment.token"),
        }
    )
    token = PinnedCode.generate(CodeKind.SERVER_ENROLLMENT, os.urandom(32)).encode()
    config.enrollment_token_file.write_text(token)
    with capture_logs() as logs:
        async with running_agent(config, RecordingSink()):
            await asyncio.sleep(1.5)
    retries = [entry for entry in logs if entry["event"] == "enrollment failed; retrying"]
    assert 3 <= len(retries) <= 12, retries
    assert all("cannot reach" in entry["reason"] for entry in retries)
    assert (
        max(entry["retry_in_seconds"] for entry in retries) <= FAST.enrollment.retry_maximum_seconds
    )
    assert config.enrollment_token_file.exists()


async def test_sftd_runs_as_a_process_and_stops_cleanly_on_sigterm(
    platform: Platform, tmp_path: Path
) -> None:
    admin = await _admin(platform)
    await _set_up_project(platform, admin)
    token, _ = await _token(platform, admin)
    config = _agent_config(platform, tmp_path)
    config.enrollment_token_file.write_text(token)
    conf = tmp_path / "sftd.yaml"
    keys = (
        "InitialURL",
        "StateDir",
        "EnrollmentTokenFile",
        "SSHDConfigFile",
        "LogLevel",
        "ManageAccounts",
        "ManageSSHD",
    )
    values = config.model_dump(by_alias=True, mode="json")
    values["LogLevel"] = "INFO"
    # This sftd runs on the machine itself, outside any namespace: it must not touch
    # the machine's accounts (tests/e2e/test_agent_accounts.py does that, isolated).
    values["ManageAccounts"] = False
    values["ManageSSHD"] = False  # nor the machine's sshd (tests/e2e/test_agent_sshd.py does)
    conf.write_text("".join(f"{key}: {json.dumps(values[key])}\n" for key in keys))
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "sftd"),
        "--conf",
        str(conf),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        status = config.state_dir / AgentState.STATUS
        await _until(
            lambda: status.exists() and _status(config)["last_heartbeat_time"] is not None,
            "the process's first heartbeat",
        )
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), WAIT_SECONDS)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    events = [
        json.loads(line)["event"] for line in out.decode().splitlines() if line.startswith("{")
    ]
    assert "enrolled" in events and events[-1] == "stopped"
    assert b"Traceback" not in out + err
    assert not config.enrollment_token_file.exists()
