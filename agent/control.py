"""sftd's local control channel: the broker enables and disables accounts here.

Serves AgentControlService on a Unix socket in StateDir (Linux; mode 0600, root's) or
on 127.0.0.1 with a secret (Windows). Keeps the live grants, disables an account when
its last grant ends or expires, and fails closed at start and stop. Never logs or
stores a one-time password.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import secrets
import shutil
import socket
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import grpc.aio
import structlog

from agent.accounts.access import AccountAccess
from agent.accounts.backend import BackendError
from agent.accounts.reconcile import name_problem
from agent.control_client import ENDPOINT_FILE, SOCKET_NAME
from agent.facts import agent_version
from agent.paths import current_os
from agent.state import AgentState, StateError, StatusReport
from runtime.clock import Clock, timestamp, utc_now
from runtime.errors import InvalidInput, NotFound, PermissionDenied, SftError, Unauthenticated
from runtime.identity import CallerKind, Identity
from runtime.interceptors import ServerCallInterceptor
from sft.agent.v1 import (
    agent_control_pb2,
    agent_control_service_pb2,
    agent_control_service_pb2_grpc,
)

__all__ = [
    "AccountGrants",
    "ControlError",
    "ControlListener",
    "ControlServer",
    "Grant",
    "LoopbackListener",
    "UnixSocketListener",
]

log = structlog.get_logger("sftd.control")

Context = Any  # grpc.aio.ServicerContext; grpc ships no type information
StatusSource = Callable[[], StatusReport]

MAX_TTL_SECONDS = 86400
#: After a failed disable, try again this much later (the account must not stay usable).
DISABLE_RETRY_SECONDS = 30
_GRANT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_NAME_CHARS = 64
_MAX_PROBLEMS = 16
#: Reaching the socket (or knowing the Windows secret) is the proof; it has no other name.
LOCAL_CALLER = Identity(CallerKind.PLATFORM_SERVICE, "local-control")
#: StatusReport.broker_state (the supervisor's BrokerState values) as the protobuf enum.
_BROKER_STATES = {
    "disabled": agent_control_pb2.BROKER_STATE_DISABLED,
    "starting": agent_control_pb2.BROKER_STATE_STARTING,
    "running": agent_control_pb2.BROKER_STATE_RUNNING,
    "failed": agent_control_pb2.BROKER_STATE_FAILED,
}
_REASONS = {
    agent_control_pb2.DISABLE_REASON_SESSION_ENDED: "session ended",
    agent_control_pb2.DISABLE_REASON_RELEASED: "released by the client",
    agent_control_pb2.DISABLE_REASON_EXPIRED: "grant expired",
    agent_control_pb2.DISABLE_REASON_BROKER_STOPPING: "broker stopping",
}


class ControlError(StateError):
    """The control channel cannot start; the message says what to do (sftd exits 1)."""


@dataclass(frozen=True)
class Grant:
    """One live broker grant on a local account (never holds the password)."""

    account: str
    grant_id: str
    expire_time: dt.datetime


class AccountGrants:
    """The live grants, and the accounts they keep enabled (plain Python, no gRPC).

    An account is enabled while at least one grant on it is live; when the last one
    ends or expires, it is disabled. A disable the OS refused is retried until it
    works. One lock orders every change here.
    """

    def __init__(self, access: AccountAccess, *, clock: Clock = utc_now) -> None:
        self.access = access
        self._clock = clock
        self._grants: dict[tuple[str, str], Grant] = {}
        #: Accounts whose disable failed, and when to try again.
        self._retries: dict[str, dt.datetime] = {}
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()

    def live(self) -> list[Grant]:
        """Return the live grants, ordered by account name."""
        return sorted(self._grants.values(), key=lambda g: (g.account, g.grant_id))

    async def enable(
        self, account: str, grant_id: str, ttl_seconds: int
    ) -> tuple[str | None, Grant]:
        """Enable `account` for a new grant (fresh password) or renew a live one (None)."""
        async with self._lock:
            expire_time = self._clock() + dt.timedelta(seconds=ttl_seconds)
            key = (account, grant_id)
            if key in self._grants:
                record = self.access.managed.by_local_name(account)
                if record is None or not record.granted:
                    del self._grants[key]
                    await self._disable_quietly(account, "no longer granted")
                    raise PermissionDenied(
                        f"account {account!r} is no longer granted on this server; "
                        "grant not renewed"
                    )
                password = None
            else:
                password = await self.access.enable(account)
                self._retries.pop(account, None)
            grant = self._grants[key] = Grant(account, grant_id, expire_time)
            self._changed.set()
            return password, grant

    async def disable(self, account: str, grant_id: str, *, reason: str) -> bool:
        """End grant `grant_id`; disable `account` unless another grant is live on it."""
        async with self._lock:
            self._grants.pop((account, grant_id), None)
            # Disabling again what is already disabled is harmless; guessing is not.
            return await self._disable_unless_used(account, reason)

    async def disable_all(self, *, reason: str) -> None:
        """End every grant and disable its account (sftd is stopping)."""
        async with self._lock:
            accounts = {g.account for g in self._grants.values()} | set(self._retries)
            self._grants.clear()
            for account in sorted(accounts):
                await self._disable_quietly(account, reason)

    async def expire(self) -> None:
        """Disable the accounts whose grants passed their expire_time; runs until cancelled."""
        while True:
            self._changed.clear()
            times = [g.expire_time for g in self._grants.values()] + list(self._retries.values())
            due = min(times, default=None)
            timeout = None if due is None else max(0.0, (due - self._clock()).total_seconds())
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                await self._expire_due()

    async def _expire_due(self) -> None:
        """Disable the accounts whose last grant expired, and retry failed disables."""
        async with self._lock:
            now = self._clock()
            expired = [g for g in self._grants.values() if g.expire_time <= now]
            for grant in expired:
                del self._grants[(grant.account, grant.grant_id)]
            accounts = {g.account for g in expired}
            accounts |= {name for name, when in self._retries.items() if when <= now}
            for account in sorted(accounts):
                await self._disable_quietly(account, "grant expired")

    async def _disable_unless_used(self, account: str, reason: str) -> bool:
        """Disable `account` unless a grant is live on it; schedule a retry if the OS refuses."""
        self._retries.pop(account, None)
        if any(g.account == account for g in self._grants.values()):
            return False
        try:
            await self.access.disable(account, reason=reason)
        except NotFound:
            raise
        except SftError as error:
            log.error(
                "account still enabled; will retry",
                account=account,
                error=error.message,
                retry_in_seconds=DISABLE_RETRY_SECONDS,
            )
            self._retries[account] = self._clock() + dt.timedelta(seconds=DISABLE_RETRY_SECONDS)
            self._changed.set()
            raise
        return True

    async def _disable_quietly(self, account: str, reason: str) -> None:
        """Disable as above, for callers with nobody to tell: log instead of raising."""
        try:
            await self._disable_unless_used(account, reason)
        except NotFound as error:
            log.info("grant ended on an account sftd no longer manages", error=error.message)
        except SftError:
            pass  # logged, and retried


class AgentControlServicer(agent_control_service_pb2_grpc.AgentControlServiceServicer):
    """Validates each request, acts through AccountGrants, and answers in protobuf."""

    def __init__(
        self,
        grants: AccountGrants,
        state: AgentState,
        report: StatusSource,
        *,
        broker: bool,
    ) -> None:
        self._grants = grants
        self._state = state
        self._report = report
        self._broker = broker

    async def EnableAccount(
        self, request: agent_control_service_pb2.EnableAccountRequest, context: Context
    ) -> agent_control_service_pb2.EnableAccountResponse:
        """Enable an account for a grant; the password goes to the caller only."""
        _bind(account=request.account_name, grant=request.grant_id)
        self._check_account(request.account_name)
        _check_grant_id(request.grant_id)
        if not 1 <= request.ttl_seconds <= MAX_TTL_SECONDS:
            raise InvalidInput(
                f"ttl_seconds must be 1 to {MAX_TTL_SECONDS}, not {request.ttl_seconds}"
            )
        password, grant = await self._grants.enable(
            request.account_name, request.grant_id, request.ttl_seconds
        )
        _bind(outcome="enabled" if password is not None else "renewed", ttl=request.ttl_seconds)
        return agent_control_service_pb2.EnableAccountResponse(
            password=password or "", expire_time=timestamp(grant.expire_time)
        )

    async def DisableAccount(
        self, request: agent_control_service_pb2.DisableAccountRequest, context: Context
    ) -> agent_control_service_pb2.DisableAccountResponse:
        """End a grant; disable the account when it was the last one."""
        reason = _REASONS.get(request.reason, "not given")
        _bind(account=request.account_name, grant=request.grant_id, reason=reason)
        self._check_account(request.account_name)
        _check_grant_id(request.grant_id)
        disabled = await self._grants.disable(
            request.account_name, request.grant_id, reason=f"broker: {reason}"
        )
        _bind(outcome="disabled" if disabled else "still used by another grant")
        return agent_control_service_pb2.DisableAccountResponse(account_disabled=disabled)

    async def GetStatus(
        self, request: agent_control_service_pb2.GetStatusRequest, context: Context
    ) -> agent_control_service_pb2.GetStatusResponse:
        """Report what the daemon last saw, the live grants and the certificates' expiry."""
        report = self._report()
        problems = list(report.problems)
        try:
            identity = await asyncio.to_thread(self._state.read_identity)
            certificates = await asyncio.to_thread(self._state.read_host_certificates)
        except StateError as error:
            identity, certificates = None, ()
            problems.insert(0, str(error))
        reply = agent_control_service_pb2.GetStatusResponse(
            enrollment_state=(
                agent_control_pb2.ENROLLMENT_STATE_ENROLLED
                if identity is not None
                else agent_control_pb2.ENROLLMENT_STATE_NOT_ENROLLED
            ),
            server=identity.server if identity is not None else "",
            agent_version=agent_version(),
            platform_reachable=report.platform_reachable,
            accounts_revision=report.applied_revision,
            managed_accounts=report.managed_accounts,
            broker_state=(
                _BROKER_STATES.get(
                    report.broker_state or "", agent_control_pb2.BROKER_STATE_UNSPECIFIED
                )
                if self._broker
                else agent_control_pb2.BROKER_STATE_DISABLED
            ),
            grants=[
                agent_control_pb2.AccountGrant(
                    account_name=g.account,
                    grant_id=g.grant_id,
                    expire_time=timestamp(g.expire_time),
                )
                for g in self._grants.live()
            ],
            problems=problems[:_MAX_PROBLEMS],
        )
        if report.last_heartbeat_time is not None:
            reply.last_heartbeat_time.CopyFrom(timestamp(report.last_heartbeat_time))
        if report.last_sync_time is not None:
            reply.last_sync_time.CopyFrom(timestamp(report.last_sync_time))
        if certificates:
            reply.certificates_expire_time.CopyFrom(
                timestamp(min(c.valid_before for c in certificates))
            )
        return reply

    def _check_account(self, name: str) -> None:
        """Raise InvalidInput unless `name` can be a local account name here."""
        if not name:
            raise InvalidInput("account_name is required (the local account name)")
        if len(name) > _MAX_NAME_CHARS or not name.isprintable():
            raise InvalidInput(f"account_name {name[:_MAX_NAME_CHARS]!r} is not an account name")
        backend = self._grants.access.backend
        # Linux names are the platform's names; Windows ones follow Windows' rules.
        problem = backend.name_problem(name) or (
            name_problem(name) if backend.numeric_ids else None
        )
        if problem is not None:
            raise InvalidInput(f"account_name: {problem}")


def _check_grant_id(grant_id: str) -> None:
    """Raise InvalidInput unless `grant_id` is a well-formed broker grant id."""
    if not _GRANT_ID.fullmatch(grant_id):
        raise InvalidInput(
            "grant_id must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-', "
            f"not {grant_id[:80]!r}"
        )


def _bind(**values: object) -> None:
    """Add `values` to this call's log line (the interceptor writes it when the call ends)."""
    structlog.contextvars.bind_contextvars(**values)


class ControlListener(Protocol):
    """Where the control channel listens, and how a caller proves it may use it."""

    #: Where it listens, for logs and errors.
    where: str

    async def bind(self, server: grpc.aio.Server) -> None:
        """Add the listening port to `server` (before it starts); ControlError if it cannot."""
        ...

    async def authenticate(self, metadata: Sequence[tuple[str, str | bytes]]) -> Identity:
        """Return the caller's identity, or raise Unauthenticated."""
        ...

    def close(self) -> None:
        """Remove what bind left behind (after the server stopped)."""
        ...


class UnixSocketListener:
    """Linux: a Unix socket, mode 0600 owned by root (0660 and group `group` if given).

    grpc cannot tell us the peer's credentials (SO_PEERCRED), so the file's mode is
    the whole check: only root, or members of `group` (the broker's service user),
    can connect. The directory must be searchable by that group too.
    """

    def __init__(self, path: Path, *, group: int | None = None) -> None:
        self.path = path
        self.group = group
        self.where = str(path)

    async def bind(self, server: grpc.aio.Server) -> None:
        """Check the directory, clear a stale socket, and bind with no window of wider mode."""
        self._check_directory()
        self._clear_stale()
        previous = os.umask(0o177)  # the socket is born 0600: no moment it is wider
        try:
            server.add_insecure_port(f"unix:{self.path}")
        except RuntimeError:
            raise ControlError(f"cannot listen on the control socket {self.path}") from None
        finally:
            os.umask(previous)
        mode = 0o600
        if self.group is not None:
            # chown while still 0600, then open it to the group.
            mode = 0o660
            try:
                os.chown(self.path, -1, self.group)
                os.chmod(self.path, mode)
            except OSError as error:
                raise ControlError(
                    f"cannot give the control socket {self.path} to group {self.group}: "
                    f"{error.strerror or error}"
                ) from None
        info = os.lstat(self.path)
        if not stat.S_ISSOCK(info.st_mode) or stat.S_IMODE(info.st_mode) != mode:
            raise ControlError(f"the control socket {self.path} did not get mode {mode:o}")

    async def authenticate(self, metadata: Sequence[tuple[str, str | bytes]]) -> Identity:
        """Accept every caller: reaching the socket took root or the granted group."""
        return LOCAL_CALLER

    def close(self) -> None:
        """Remove the socket file if grpc left it."""
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                self.path.unlink()

    def _check_directory(self) -> None:
        """Refuse a directory others could use to swap the socket."""
        directory = self.path.parent
        try:
            info = os.stat(directory)
        except OSError as error:
            raise ControlError(f"cannot use {directory} for the control socket: {error}") from None
        if info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise ControlError(
                f"{directory} can be changed by users other than sftd's; the control socket "
                "needs a directory only root can write (chmod go-w it)"
            )

    def _clear_stale(self) -> None:
        """Remove a socket nobody serves; refuse anything else at the path."""
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise ControlError(
                f"{self.path} exists and is not a socket; sftd will not replace it. Move it "
                "aside and restart sftd"
            )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(self.path))
            except ConnectionRefusedError:
                pass  # nobody listens: left by a crash
            except OSError as error:
                raise ControlError(
                    f"cannot check the control socket {self.path}: {error}"
                ) from None
            else:
                raise ControlError(
                    f"another process serves the control socket {self.path}; is sftd already "
                    "running?"
                )
        self.path.unlink()
        log.info("removed a stale control socket", path=str(self.path))


class LoopbackListener:
    """Windows: 127.0.0.1 on a port chosen at start; callers send a secret from a file.

    The file (address and secret, JSON) is readable only by SYSTEM and Administrators
    (icacls, set before the secret is written). Untested on Windows: the tests run
    it on Linux, where the file is mode 0600 instead.
    """

    def __init__(self, endpoint_file: Path) -> None:
        self.endpoint_file = endpoint_file
        self.where = "127.0.0.1"
        self._expected = f"Bearer {secrets.token_urlsafe(32)}".encode()

    async def bind(self, server: grpc.aio.Server) -> None:
        """Listen on a free loopback port and publish it with the secret."""
        port = server.add_insecure_port("127.0.0.1:0")
        if not port:
            raise ControlError("cannot listen on 127.0.0.1 for the control channel")
        self.where = f"127.0.0.1:{port}"
        secret = self._expected.decode().removeprefix("Bearer ")
        await _write_private(
            self.endpoint_file, json.dumps({"address": self.where, "secret": secret})
        )

    async def authenticate(self, metadata: Sequence[tuple[str, str | bytes]]) -> Identity:
        """Accept a caller whose `authorization` is the secret (constant-time compare)."""
        for key, value in metadata:
            if key == "authorization" and isinstance(value, str):
                if secrets.compare_digest(value.encode(), self._expected):
                    return LOCAL_CALLER
        raise Unauthenticated(
            f"send `authorization: Bearer <secret>` with the secret from {self.endpoint_file}"
        )

    def close(self) -> None:
        """Remove the endpoint file (its port is closed)."""
        with contextlib.suppress(FileNotFoundError):
            self.endpoint_file.unlink()


async def _write_private(path: Path, text: str) -> None:
    """Write `path` so only its owner (Windows: SYSTEM and Administrators) can read it."""
    partial = path.with_name(f".{path.name}.partial")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    if current_os() == "windows":
        await _restrict_to_system(partial)  # before the secret is in it
    with partial.open("w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


async def _restrict_to_system(path: Path) -> None:
    """Windows: drop inherited access; grant SYSTEM (S-1-5-18) and Administrators only."""
    icacls = shutil.which("icacls") or "icacls"
    process = await asyncio.create_subprocess_exec(
        icacls, str(path), "/inheritance:r", "/grant:r", "*S-1-5-18:F", "*S-1-5-32-544:F",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise ControlError(f"icacls could not restrict {path}: {output.decode(errors='replace')}")


def default_listener(state_dir: Path, *, group: int | None = None) -> ControlListener:
    """Return this OS's listener: the Unix socket in `state_dir`, or loopback on Windows."""
    if current_os() == "windows":
        return LoopbackListener(state_dir / ENDPOINT_FILE)
    return UnixSocketListener(state_dir / SOCKET_NAME, group=group)


class ControlServer:
    """Runs the control channel for the daemon's life: fail closed, serve, fail closed.

    `group` (Linux): let that group's members use the socket too (mode 0660); for the
    broker's service user. Not an sftd.yaml key.
    """

    def __init__(
        self,
        access: AccountAccess,
        state: AgentState,
        *,
        listener: ControlListener | None = None,
        group: int | None = None,
        broker: bool = False,
        clock: Clock = utc_now,
        grace_seconds: float = 5.0,
    ) -> None:
        self.grants = AccountGrants(access, clock=clock)
        self.listener = listener or default_listener(state.directory, group=group)
        self._state = state
        self._broker = broker
        self._clock = clock
        self._grace_seconds = grace_seconds
        self._server: grpc.aio.Server | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._bound = False

    async def start(self, report: StatusSource | None = None) -> None:
        """Disable every account left enabled (no grant is live yet), then serve."""
        try:
            disabled = await self.grants.access.disable_all_without_grant(set())
        except BackendError as error:
            raise ControlError(
                f"cannot check for accounts left enabled ({error}); not serving the control channel"
            ) from None
        if disabled:
            log.warning("accounts left enabled were disabled", accounts=disabled)
        servicer = AgentControlServicer(
            self.grants, self._state, report or self._own_report, broker=self._broker
        )
        server = grpc.aio.server(
            interceptors=[ServerCallInterceptor(self.listener.authenticate)],
            options=[("grpc.so_reuseport", 0)],
        )
        agent_control_service_pb2_grpc.add_AgentControlServiceServicer_to_server(servicer, server)
        await self.listener.bind(server)
        self._bound = True
        await server.start()
        self._server = server
        self._expiry = asyncio.create_task(self.grants.expire(), name="expire-grants")
        log.info("control channel serving", where=self.listener.where)

    async def stop(self) -> None:
        """Stop serving, then disable every account a grant still holds enabled."""
        if self._server is not None:
            await self._server.stop(self._grace_seconds)
            self._server = None
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
            self._expiry = None
        await self.grants.disable_all(reason="sftd stopping")
        if self._bound:  # never remove what another sftd serves
            self.listener.close()
            self._bound = False
        log.info("control channel stopped")

    def _own_report(self) -> StatusReport:
        """Return a bare report when no daemon supplies one."""
        return StatusReport(pid=os.getpid(), updated_at=self._clock(), platform_reachable=False)
