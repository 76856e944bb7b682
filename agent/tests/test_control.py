"""sftd's control channel over a real Unix socket, against the recording backend."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import structlog
from click.testing import CliRunner
from structlog.testing import capture_logs

from agent import control
from agent.accounts.access import AccountAccess
from agent.accounts.backend import BackendError, LocalSystem, RecordingBackend
from agent.accounts.managed import ManagedAccounts
from agent.accounts.passwords import MIN_LENGTH
from agent.accounts.reconcile import Reconciler
from agent.accounts.tests.desired import account, state
from agent.cli import account_wiring, main
from agent.config import AgentConfig, ConfigError
from agent.control import ControlError, ControlServer, LoopbackListener, UnixSocketListener
from agent.control_client import (
    SOCKET_NAME,
    ControlClient,
    LoopbackEndpoint,
    read_loopback_endpoint,
)
from agent.daemon import Daemon
from agent.state import AgentState, StatusReport
from runtime.errors import (
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from sft.agent.v1 import (
    agent_control_pb2,
    agent_control_service_pb2,
    agent_control_service_pb2_grpc,
)

TTL_SECONDS = 600
WAIT_SECONDS = 5.0


@dataclass
class Setup:
    """A backend with alice (granted), bob (revoked) and carol (not sftd's), and its server."""

    backend: RecordingBackend
    access: AccountAccess
    state: AgentState

    @property
    def socket_path(self) -> Path:
        """Return where the control socket goes."""
        return self.state.directory / SOCKET_NAME

    def server(self, **options: Any) -> ControlServer:
        """Return a control server over these accounts (not started)."""
        return ControlServer(self.access, self.state, **options)


class UnreadableBackend(RecordingBackend):
    """A recording backend whose account files become unreadable when `broken` is set."""

    broken = False

    async def read(self) -> LocalSystem:
        """Fail as an unreadable /etc/shadow would, once broken."""
        if self.broken:
            raise BackendError("cannot read /etc/shadow: Permission denied")
        return await super().read()


async def accounts(tmp_path: Path, backend: RecordingBackend | None = None) -> Setup:
    """Reconcile alice and bob (then revoke bob) on `backend`, zero standing privilege."""
    backend = backend or RecordingBackend()
    backend.add_foreign_account("carol", 1001, 1001)
    managed = ManagedAccounts.load(tmp_path / "state" / "managed-accounts.json")
    reconciler = Reconciler(backend, managed, zero_standing_privilege=True)
    await reconciler.reconcile(state(account("alice", 1), account("bob", 2)))
    await reconciler.reconcile(state(account("alice", 1)))
    backend.calls.clear()
    agent_state = AgentState(tmp_path / "state")
    agent_state.ensure_directory()
    access = AccountAccess(backend, managed, zero_standing_privilege=True)
    return Setup(backend, access, agent_state)


@pytest.fixture
async def setup(tmp_path: Path) -> Setup:
    """The accounts, not yet served."""
    return await accounts(tmp_path)


@pytest.fixture
async def served(setup: Setup) -> AsyncIterator[ControlServer]:
    """The control channel serving `setup` on its socket; stopped afterwards."""
    server = setup.server()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def client(setup: Setup, served: ControlServer) -> AsyncIterator[ControlClient]:
    """A client of the served socket."""
    async with ControlClient.unix(setup.socket_path, timeout_seconds=WAIT_SECONDS) as client:
        yield client


@pytest.fixture
async def stub(
    setup: Setup, served: ControlServer
) -> AsyncIterator[agent_control_service_pb2_grpc.AgentControlServiceStub]:
    """The raw generated stub on the served socket, to see status codes as sent."""
    async with grpc.aio.insecure_channel(f"unix:{setup.socket_path}") as channel:
        yield agent_control_service_pb2_grpc.AgentControlServiceStub(channel)


async def refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    """Return the status code and message `call` fails with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details() or ""


def enable_request(
    name: str = "alice", grant_id: str = "g1", ttl_seconds: int = TTL_SECONDS
) -> agent_control_service_pb2.EnableAccountRequest:
    """Return an EnableAccount request."""
    return agent_control_service_pb2.EnableAccountRequest(
        account_name=name, grant_id=grant_id, ttl_seconds=ttl_seconds
    )


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait (bounded) until `condition` holds."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


def locked(backend: RecordingBackend, name: str) -> bool:
    """Return whether `name` is locked with no password."""
    local = backend.snapshot(name)
    assert local is not None
    return local.locked and not local.has_password


# Enabling and disabling.


async def test_enable_returns_a_one_time_password_and_unlocks_the_account(
    setup: Setup, client: ControlClient
) -> None:
    assert locked(setup.backend, "alice")
    before = dt.datetime.now(dt.UTC)

    enabled = await client.enable_account("alice", "g1", TTL_SECONDS)

    assert enabled.password is not None and len(enabled.password) >= MIN_LENGTH
    assert setup.backend.passwords() == {"alice": enabled.password}
    assert not locked(setup.backend, "alice")
    expected = before + dt.timedelta(seconds=TTL_SECONDS)
    assert abs(enabled.expire_time - expected) < dt.timedelta(seconds=5)
    assert enabled.password not in repr(enabled)


async def test_renewing_a_live_grant_keeps_the_password_and_extends_it(
    setup: Setup, client: ControlClient
) -> None:
    first = await client.enable_account("alice", "g1", 60)

    renewed = await client.enable_account("alice", "g1", TTL_SECONDS)

    assert renewed.password is None and renewed.expire_time > first.expire_time
    assert setup.backend.passwords() == {"alice": first.password}
    assert setup.backend.calls.count(("set_password", "alice")) == 1


async def test_disable_locks_the_account_and_the_password_is_gone(
    setup: Setup, client: ControlClient
) -> None:
    await client.enable_account("alice", "g1", TTL_SECONDS)

    assert await client.disable_account("alice", "g1") is True

    assert locked(setup.backend, "alice")
    assert setup.backend.passwords() == {}


async def test_an_account_stays_enabled_until_its_last_grant_ends(
    setup: Setup, client: ControlClient
) -> None:
    await client.enable_account("alice", "g1", TTL_SECONDS)
    second = await client.enable_account("alice", "g2", TTL_SECONDS)

    assert await client.disable_account("alice", "g1") is False
    assert setup.backend.passwords() == {"alice": second.password}
    assert await client.disable_account("alice", "g2") is True
    assert locked(setup.backend, "alice")


async def test_ending_an_unknown_grant_succeeds_and_leaves_the_account_disabled(
    setup: Setup, client: ControlClient
) -> None:
    assert await client.disable_account("alice", "never-granted") is True
    assert await client.disable_account("alice", "never-granted") is True
    assert locked(setup.backend, "alice")


async def test_a_grant_expires_by_itself(setup: Setup, client: ControlClient) -> None:
    await client.enable_account("alice", "short", 1)
    await client.enable_account("alice", "renewed", 1)
    await client.enable_account("alice", "renewed", TTL_SECONDS)

    await asyncio.sleep(1.5)
    assert not locked(setup.backend, "alice")  # "renewed" is still live
    assert await client.disable_account("alice", "renewed") is True

    await client.enable_account("alice", "alone", 1)
    await eventually(lambda: locked(setup.backend, "alice"))


# Refusals.


async def test_an_unknown_account_is_not_found(
    setup: Setup, stub: agent_control_service_pb2_grpc.AgentControlServiceStub
) -> None:
    code, message = await refusal(stub.EnableAccount(enable_request("dave")))
    assert code == grpc.StatusCode.NOT_FOUND and "not managed by sftd" in message
    code, _ = await refusal(
        stub.DisableAccount(
            agent_control_service_pb2.DisableAccountRequest(account_name="dave", grant_id="g")
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert setup.backend.calls == []


async def test_an_account_sftd_did_not_create_is_refused_and_untouched(
    setup: Setup, client: ControlClient
) -> None:
    with pytest.raises(NotFound, match="'carol' is not managed by sftd"):
        await client.enable_account("carol", "g1", TTL_SECONDS)
    with pytest.raises(NotFound):
        await client.disable_account("carol", "g1")
    assert setup.backend.calls == []
    carol = setup.backend.snapshot("carol")
    assert carol is not None and not carol.locked


async def test_an_account_no_longer_granted_is_permission_denied(
    setup: Setup, stub: agent_control_service_pb2_grpc.AgentControlServiceStub
) -> None:
    code, message = await refusal(stub.EnableAccount(enable_request("bob")))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "no longer granted" in message
    assert "\n" not in message and "Traceback" not in message
    assert locked(setup.backend, "bob")


async def test_renewing_a_grant_after_its_account_was_revoked_is_refused(
    setup: Setup, client: ControlClient
) -> None:
    await client.enable_account("alice", "g1", TTL_SECONDS)
    setup.access.managed.set_granted("alice", False)  # the reconciler's revocation

    with pytest.raises(PermissionDenied, match="grant not renewed"):
        await client.enable_account("alice", "g1", TTL_SECONDS)
    assert locked(setup.backend, "alice")


async def test_an_account_the_os_cannot_change_is_failed_precondition(
    setup: Setup, stub: agent_control_service_pb2_grpc.AgentControlServiceStub
) -> None:
    setup.backend.fail[("set_password", "alice")] = "chpasswd: cannot lock /etc/shadow"

    code, message = await refusal(stub.EnableAccount(enable_request()))

    assert code == grpc.StatusCode.FAILED_PRECONDITION and "cannot lock" in message
    assert locked(setup.backend, "alice")


@pytest.mark.parametrize(
    ("name", "grant_id", "ttl_seconds", "complaint"),
    [
        ("", "g1", 60, "account_name is required"),
        ("Alice", "g1", 60, "not a valid name"),
        ("alice;rm", "g1", 60, "not a valid name"),
        ("a" * 40, "g1", 60, "not a valid name"),
        ("a" * 500, "g1", 60, "not an account name"),
        ("al\nice", "g1", 60, "not an account name"),
        ("root", "g1", 60, "reserved"),
        ("alice", "", 60, "grant_id must be"),
        ("alice", "g 1", 60, "grant_id must be"),
        ("alice", "g" * 65, 60, "grant_id must be"),
        ("alice", "g1", 0, "ttl_seconds must be 1 to 86400"),
        ("alice", "g1", 86401, "ttl_seconds must be 1 to 86400"),
    ],
)
async def test_ill_formed_requests_are_invalid_argument(
    setup: Setup,
    stub: agent_control_service_pb2_grpc.AgentControlServiceStub,
    name: str,
    grant_id: str,
    ttl_seconds: int,
    complaint: str,
) -> None:
    code, message = await refusal(stub.EnableAccount(enable_request(name, grant_id, ttl_seconds)))

    assert code == grpc.StatusCode.INVALID_ARGUMENT and complaint in message
    assert "\n" not in message
    assert setup.backend.calls == []


async def test_disable_checks_its_input_too(
    setup: Setup, stub: agent_control_service_pb2_grpc.AgentControlServiceStub
) -> None:
    for name, grant_id in (("", "g1"), ("alice", ""), ("ALICE", "g1")):
        code, _ = await refusal(
            stub.DisableAccount(
                agent_control_service_pb2.DisableAccountRequest(
                    account_name=name, grant_id=grant_id
                )
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert setup.backend.calls == []


async def test_a_client_without_sftd_gets_unavailable(tmp_path: Path) -> None:
    async with ControlClient.unix(tmp_path / "control.sock", timeout_seconds=1) as client:
        with pytest.raises(Unavailable, match="is sftd running"):
            await client.enable_account("alice", "g1", 60)


# Logging: the account and the outcome, never the password.


async def test_each_call_is_logged_with_account_and_outcome_but_never_the_password(
    setup: Setup, client: ControlClient
) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        enabled = await client.enable_account("alice", "g1", TTL_SECONDS)
        await client.disable_account("alice", "g1")
        with pytest.raises(NotFound):
            await client.enable_account("carol", "g2", TTL_SECONDS)

    assert enabled.password is not None
    assert enabled.password not in repr(logs)
    calls = [entry for entry in logs if entry["event"] == "rpc"]
    assert [(c["account"], c["code"], c.get("outcome")) for c in calls] == [
        ("alice", "OK", "enabled"),
        ("alice", "OK", "disabled"),
        ("carol", "NOT_FOUND", None),
    ]
    assert calls[1]["reason"] == "session ended" and calls[0]["grant"] == "g1"


# The socket.


async def test_the_socket_is_mode_0600_and_owned_by_sftds_user(
    setup: Setup, served: ControlServer
) -> None:
    info = os.lstat(setup.socket_path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.geteuid()


async def test_a_group_can_be_let_in_with_mode_0660(setup: Setup) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another group needs root")
    server = setup.server(group=4242)
    await server.start()
    try:
        info = os.lstat(setup.socket_path)
        assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == 4242
    finally:
        await server.stop()


async def test_stop_removes_the_socket_and_disables_what_grants_held(setup: Setup) -> None:
    server = setup.server()
    await server.start()
    async with ControlClient.unix(setup.socket_path) as client:
        await client.enable_account("alice", "g1", TTL_SECONDS)

    await server.stop()

    assert not setup.socket_path.exists()
    assert locked(setup.backend, "alice")


def leave_stale_socket(path: Path) -> None:
    """Leave a socket file nobody listens on (as a crashed sftd does)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))


async def test_a_stale_socket_is_replaced(setup: Setup) -> None:
    leave_stale_socket(setup.socket_path)
    server = setup.server()
    await server.start()
    try:
        async with ControlClient.unix(setup.socket_path) as client:
            assert (await client.status()).broker_state == agent_control_pb2.BROKER_STATE_DISABLED
        assert stat.S_IMODE(os.lstat(setup.socket_path).st_mode) == 0o600
    finally:
        await server.stop()


@pytest.mark.parametrize("kind", ["file", "directory", "symlink"])
async def test_a_path_that_is_not_a_socket_is_refused_and_left_alone(
    setup: Setup, kind: str
) -> None:
    path = setup.socket_path
    if kind == "file":
        path.write_text("operator's notes\n")
    elif kind == "directory":
        path.mkdir()
    else:
        leave_stale_socket(setup.state.directory / "elsewhere.sock")
        path.symlink_to(setup.state.directory / "elsewhere.sock")

    with pytest.raises(ControlError, match="is not a socket; sftd will not replace it"):
        await setup.server().start()

    checks = {"file": path.is_file, "directory": path.is_dir, "symlink": path.is_symlink}
    assert checks[kind]()
    if kind == "file":
        assert path.read_text() == "operator's notes\n"


async def test_a_socket_another_sftd_serves_is_refused_and_left_alone(setup: Setup) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(setup.socket_path))
        other.listen()
        server = setup.server()
        with pytest.raises(ControlError, match="is sftd already running"):
            await server.start()
        await server.stop()  # must not remove the other one's socket
        assert stat.S_ISSOCK(os.lstat(setup.socket_path).st_mode)


async def test_a_directory_other_users_can_write_is_refused(setup: Setup) -> None:
    setup.state.directory.chmod(0o777)

    with pytest.raises(ControlError, match="only root can write"):
        await setup.server().start()

    assert not setup.socket_path.exists()


# Fail closed at start.


async def test_start_disables_accounts_left_enabled_by_a_crash(setup: Setup) -> None:
    await setup.backend.set_password("alice", "left-by-a-crash-0123456789")
    setup.backend.accounts["alice"].locked = False

    server = setup.server()
    await server.start()
    try:
        assert locked(setup.backend, "alice")
        assert not setup.backend.accounts["carol"].locked  # never sftd's to touch
    finally:
        await server.stop()


async def test_start_refuses_to_serve_when_accounts_cannot_be_read(tmp_path: Path) -> None:
    backend = UnreadableBackend()
    setup = await accounts(tmp_path, backend)
    backend.broken = True

    with pytest.raises(ControlError, match="cannot check for accounts left enabled"):
        await setup.server().start()

    assert not setup.socket_path.exists()


async def test_a_failed_disable_is_retried_until_it_works(
    setup: Setup, client: ControlClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "DISABLE_RETRY_SECONDS", 0.2)
    await client.enable_account("alice", "g1", TTL_SECONDS)
    setup.backend.fail[("change_account", "alice")] = "usermod: cannot lock /etc/passwd"

    with pytest.raises(FailedPrecondition, match="cannot lock /etc/passwd"):
        await client.disable_account("alice", "g1")
    assert not locked(setup.backend, "alice")

    del setup.backend.fail[("change_account", "alice")]
    await eventually(lambda: locked(setup.backend, "alice"))


# Status.


async def test_status_reports_the_daemon_and_the_live_grants_never_a_password(
    setup: Setup,
) -> None:
    heartbeat = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    report = StatusReport(
        pid=1,
        updated_at=heartbeat,
        platform_reachable=True,
        last_heartbeat_time=heartbeat,
        applied_revision=7,
        managed_accounts=1,
        problems=("sshd -t failed: bad line",),
    )
    server = setup.server(broker=True)
    await server.start(lambda: report)
    try:
        async with ControlClient.unix(setup.socket_path) as client:
            enabled = await client.enable_account("alice", "g1", TTL_SECONDS)
            status = await client.status()
    finally:
        await server.stop()

    assert status.enrollment_state == agent_control_pb2.ENROLLMENT_STATE_NOT_ENROLLED
    assert status.platform_reachable and status.accounts_revision == 7
    assert status.managed_accounts == 1
    assert status.last_heartbeat_time.ToDatetime(tzinfo=dt.UTC) == heartbeat
    assert not status.HasField("last_sync_time")
    assert status.broker_state == agent_control_pb2.BROKER_STATE_UNSPECIFIED  # none reported
    assert [(g.account_name, g.grant_id) for g in status.grants] == [("alice", "g1")]
    assert status.grants[0].expire_time.ToDatetime(tzinfo=dt.UTC) == enabled.expire_time
    assert list(status.problems) == ["sshd -t failed: bad line"]
    assert status.agent_version
    assert enabled.password is not None and enabled.password not in str(status)


@pytest.mark.parametrize(
    ("reported", "expected"),
    [
        ("starting", agent_control_pb2.BROKER_STATE_STARTING),
        ("running", agent_control_pb2.BROKER_STATE_RUNNING),
        ("failed", agent_control_pb2.BROKER_STATE_FAILED),
        ("gibberish", agent_control_pb2.BROKER_STATE_UNSPECIFIED),
    ],
)
async def test_status_reports_the_supervised_brokers_state(
    setup: Setup, reported: str, expected: int
) -> None:
    report = StatusReport(
        pid=1, updated_at=dt.datetime.now(dt.UTC), platform_reachable=False, broker_state=reported
    )
    server = setup.server(broker=True)
    await server.start(lambda: report)
    try:
        async with ControlClient.unix(setup.socket_path) as client:
            assert (await client.status()).broker_state == expected
    finally:
        await server.stop()


# Windows' loopback listener (its ACL step is Windows-only and untested here).


async def test_the_loopback_listener_needs_the_secret_from_its_file(setup: Setup) -> None:
    endpoint_file = setup.state.directory / "control.endpoint"
    server = setup.server(listener=LoopbackListener(endpoint_file))
    await server.start()
    try:
        assert stat.S_IMODE(endpoint_file.stat().st_mode) == 0o600
        endpoint = read_loopback_endpoint(endpoint_file)
        assert endpoint.address.startswith("127.0.0.1:")
        assert endpoint.secret not in repr(endpoint)
        async with ControlClient.loopback(endpoint) as client:
            assert (await client.enable_account("alice", "g1", TTL_SECONDS)).password
        wrong = json.loads(endpoint_file.read_text()) | {"secret": "guess"}
        for target in (
            ControlClient(endpoint.address, where="test"),
            ControlClient.loopback(LoopbackEndpoint(wrong["address"], wrong["secret"])),
        ):
            async with target as intruder:
                with pytest.raises(Unauthenticated, match="authorization: Bearer"):
                    await intruder.disable_account("alice", "g1")
        assert not locked(setup.backend, "alice")  # the refused calls changed nothing
    finally:
        await server.stop()
    assert not endpoint_file.exists()
    with pytest.raises(Unavailable, match="not running"):
        read_loopback_endpoint(endpoint_file)


# Wiring: the daemon and `sftd run`.


class RecordingControl:
    """A ControlChannel that records when it was started and stopped."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def start(self, report: Callable[[], StatusReport]) -> None:
        """Record the start and that a report is available."""
        self.events.append(f"start pid={report().pid}")

    async def stop(self) -> None:
        """Record the stop."""
        self.events.append("stop")


async def test_the_daemon_serves_the_control_channel_for_its_whole_life(tmp_path: Path) -> None:
    config = AgentConfig.model_validate({"StateDir": str(tmp_path / "state"), "AutoEnroll": False})
    recorded = RecordingControl()
    sink = Reconciler(RecordingBackend(), ManagedAccounts(tmp_path / "managed.json"))
    daemon = Daemon(config, accounts=sink, control=recorded)

    with pytest.raises(ConfigError, match="not enrolled"):
        await daemon.run()  # stops at once: not enrolled and AutoEnroll is off

    assert recorded.events == [f"start pid={os.getpid()}", "stop"]


def test_sftd_builds_the_control_channel_only_when_it_manages_accounts(tmp_path: Path) -> None:
    managed = account_wiring(AgentConfig.model_validate({"StateDir": str(tmp_path / "s")}))
    off = account_wiring(
        AgentConfig.model_validate({"StateDir": str(tmp_path / "t"), "ManageAccounts": False})
    )

    assert isinstance(managed.control, ControlServer) and isinstance(managed.sink, Reconciler)
    assert managed.control.grants.access.managed is managed.sink.managed
    assert isinstance(managed.control.listener, UnixSocketListener)
    assert managed.control.listener.path == tmp_path / "s" / SOCKET_NAME
    assert off.control is None


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    """`sftd run` configures logging for the process; put it back afterwards."""
    saved = structlog.get_config()
    handlers = logging.getLogger().handlers[:]
    yield
    structlog.configure(**saved)
    logging.getLogger().handlers[:] = handlers


@pytest.mark.usefixtures("_restore_logging")
def test_sftd_run_stops_with_one_line_when_the_socket_path_is_taken(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    (state_dir / SOCKET_NAME).write_text("not a socket\n")
    conf = tmp_path / "sftd.yaml"
    conf.write_text(f"StateDir: {state_dir}\nAutoEnroll: false\nLogLevel: ERROR\n")

    result = CliRunner().invoke(main, ["--conf", str(conf), "run"])

    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sftd: error: ")
    assert "control.sock exists and is not a socket" in lines[0]
