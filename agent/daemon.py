"""The running agent: enroll if needed, then heartbeat and follow WatchAccounts for good.

Owns its tasks (heartbeats, the account stream, applying accounts) and cancels them
on stop. Hands each desired account list to an AccountSink and the project's trust
material to a HostTrustSink; it changes nothing on the machine itself. When the
platform is unreachable nothing is applied, so nothing is removed: the machine stays
as it was until the platform answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import grpc
import grpc.aio
import structlog

from agent.broker import Broker
from agent.broker_supervisor import BrokerState, BrokerStatus
from agent.config import AgentConfig, ConfigError
from agent.desired_accounts import (
    CONFLICT_KINDS,
    AccountConflictLike,
    AccountSink,
    LatestDesired,
    LoggingAccountSink,
    desired_state,
)
from agent.enrollment import Enrollment, EnrollmentTimings
from agent.facts import facts_message, gather_facts
from agent.host_keys import trust_anchors
from agent.platform import CALL_TIMEOUT_SECONDS, AgentSession, is_transient, parse_platform_url
from agent.renewal import CertificateRenewal
from agent.state import AgentState, HostCertificate, ServerIdentity, StatusReport, TrustAnchors
from runtime.backoff import Backoff
from runtime.clock import timestamp
from sft.inventory.v1 import agent_pb2, agent_service_pb2, agent_service_pb2_grpc

__all__ = [
    "AccountSink",
    "ControlChannel",
    "Daemon",
    "DaemonTimings",
    "HostTrustSink",
    "LoggingAccountSink",
    "NoHostTrust",
    "desired_state",
]

log = structlog.get_logger("sftd")

#: Tell the operator when the clocks differ by more than this: certificates are time-bound.
CLOCK_SKEW_WARNING = dt.timedelta(seconds=60)
MAX_PROBLEMS = 16
MAX_PROBLEM_CHARS = 1024

Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class HostTrustSink(Protocol):
    """Where the project's trust material goes (the sshd integration).

    Called once at start with what the state dir holds, and again whenever the platform
    sends something different; each call carries the complete material. Raising marks
    the agent degraded; the call is repeated with the next change or restart.
    """

    async def install(
        self, anchors: TrustAnchors, certificates: tuple[HostCertificate, ...]
    ) -> object:
        """Install the user CA keys, the X.509 CA bundle and the host certificates."""


class ControlChannel(Protocol):
    """The local control channel (agent.control.ControlServer), served for the daemon's life."""

    async def start(self, report: Callable[[], StatusReport]) -> None:
        """Disable accounts left enabled (fail closed), then serve; `report` is for GetStatus."""

    async def stop(self) -> None:
        """Stop serving and disable the accounts grants still hold enabled."""


class NoHostTrust:
    """A HostTrustSink that installs nothing: the files stay in the state dir only."""

    async def install(
        self, anchors: TrustAnchors, certificates: tuple[HostCertificate, ...]
    ) -> None:
        """Do nothing."""


@dataclass(frozen=True)
class DaemonTimings:
    """How long the daemon waits between tries (tests shorten these)."""

    retry_initial_seconds: float = 1.0
    retry_maximum_seconds: float = 300.0
    #: Used when the platform names no interval.
    heartbeat_seconds: float = 60.0
    enrollment: EnrollmentTimings = field(default_factory=EnrollmentTimings)


class Daemon:
    """sftd's main loop. `run` returns only by cancellation or an unusable state dir."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        accounts: AccountSink,
        host_trust: HostTrustSink | None = None,
        control: ControlChannel | None = None,
        broker: Broker | None = None,
        clock: Clock = _utc_now,
        timings: DaemonTimings | None = None,
        problems: Mapping[str, str] | None = None,
    ) -> None:
        """`problems`: found before the daemon was made (by source), e.g. an unusable LogDir."""
        self.config = config
        self._control = control
        self._broker = broker
        self.state = AgentState(config.state_dir)
        self._accounts = accounts
        self._host_trust: HostTrustSink = host_trust or NoHostTrust()
        self._clock = clock
        self._timings = timings or DaemonTimings()
        self._desired = LatestDesired()
        #: Set when a call succeeds after the platform was unreachable: wakes the retry waits.
        self._platform_back = asyncio.Event()
        self._problems: dict[str, str] = dict(problems or {})
        if broker is not None:
            self._problems["broker"] = "the broker starts once this server is enrolled"
        self._report = StatusReport(
            pid=os.getpid(),
            updated_at=clock(),
            platform_reachable=False,
            problems=tuple(self._problems.values()),
            broker_state=(BrokerState.STARTING if broker else BrokerState.DISABLED).value,
        )
        self.identity: ServerIdentity | None = None
        self._session: AgentSession | None = None
        self._renewal = CertificateRenewal(
            config,
            self.state,
            broker=broker.files if broker is not None else None,
            problem=self._problem,
            clock=clock,
        )
        if broker is not None:
            broker.listener = self._broker_changed

    def _backoff(self) -> Backoff:
        return Backoff(self._timings.retry_initial_seconds, self._timings.retry_maximum_seconds)

    async def run(self) -> None:
        """Enroll if needed, then keep heartbeating and applying desired accounts.

        The control channel (if any) serves from the start, enrolled or not, and stops
        with the daemon.
        """
        self.state.ensure_directory(group=self._broker.group if self._broker else None)
        if self._broker is not None:
            self._broker.files.ensure_directory()
        if self._control is None:
            await self._run()
            return
        await self._control.start(self._current_report)
        try:
            await self._run()
        finally:
            await self._control.stop()

    def _current_report(self) -> StatusReport:
        """Return what the daemon last saw (for the control channel's GetStatus)."""
        return self._report

    async def _run(self) -> None:
        """Enroll if needed, then run the platform session's tasks until cancelled."""
        identity = self.state.read_identity()
        if identity is None:
            if not self.config.auto_enroll:
                raise ConfigError(
                    "this server is not enrolled and AutoEnroll is false; set AutoEnroll: true "
                    "(the default) so sftd enrolls with the token in EnrollmentTokenFile"
                )
            enrollment = Enrollment(
                self.config,
                self.state,
                clock=self._clock,
                timings=self._timings.enrollment,
                certificates=self._renewal,
            )
            identity = await enrollment.run()
        else:
            self._note_existing_enrollment(identity)
        self.identity = identity
        key = self.state.read_key()
        assert key is not None  # read_identity checked it
        ca_pem = self.state.read_ca_pem(identity)
        applied = self.state.read_applied_revision()
        self._update_report(applied_revision=applied)
        await self._install_host_trust()
        url = parse_platform_url(identity.platform_url)
        log.info("running", server=identity.server, platform=str(url), applied_revision=applied)
        async with AgentSession(url, ca_pem, identity.server, key, clock=self._clock) as session:
            self._session = session
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._heartbeats(session), name="heartbeats")
                tasks.create_task(self._watch_accounts(session), name="watch-accounts")
                tasks.create_task(self._apply_accounts(applied), name="apply-accounts")
                if self._broker is not None:
                    tasks.create_task(self._broker.supervisor.run(), name="broker")

    async def report_conflict(self, conflict: AccountConflictLike) -> None:
        """Tell the platform a desired account was refused (name or id taken, bad name).

        Best effort: a conflict is also logged and shown by `sftd status`; the
        reconciler reports it again only when its reason changes.
        """
        self._problem(f"account:{conflict.name}", conflict.detail)
        session = self._session
        if session is None:
            return
        kind = CONFLICT_KINDS.get(conflict.kind.value, agent_pb2.ACCOUNT_CONFLICT_KIND_UNSPECIFIED)
        stub = agent_service_pb2_grpc.AgentServiceStub(session.channel)
        try:
            await stub.ReportAccountConflict(
                agent_service_pb2.ReportAccountConflictRequest(
                    account_name=conflict.name, kind=kind, detail=conflict.detail[:500]
                ),
                metadata=await session.metadata(),
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            log.warning(
                "could not report an account conflict",
                account=conflict.name,
                reason=error.details(),
            )

    def _note_existing_enrollment(self, identity: ServerIdentity) -> None:
        configured = self.config.platform_url
        if configured is not None and str(configured) != identity.platform_url:
            log.warning(
                "InitialURL differs from the platform this server enrolled with; using the latter",
                initial_url=str(configured),
                enrolled_with=identity.platform_url,
            )
        if self.config.enrollment_token_file.exists():
            log.info(
                "already enrolled; ignoring the enrollment token file",
                server=identity.server,
                token_file=str(self.config.enrollment_token_file),
            )

    # --- status -----------------------------------------------------------------------

    def _problem(self, source: str, text: str | None) -> None:
        """Record (or with None, clear) the current problem of one part of the agent."""
        before = self._problems.get(source)
        if text is None:
            self._problems.pop(source, None)
        else:
            self._problems[source] = text[:MAX_PROBLEM_CHARS]
        if self._problems.get(source) != before:
            self._update_report()

    def _broker_changed(self, status: BrokerStatus) -> None:
        """Report the supervised broker's state, and its problem if it has one."""
        self._problem("broker", status.problem)
        self._update_report(broker_state=status.state.value)

    def _update_report(self, **changes: object) -> None:
        self._report = replace(
            self._report,
            **changes,  # type: ignore[arg-type]
            updated_at=self._clock(),
            problems=tuple(self._problems.values())[:MAX_PROBLEMS],
        )
        try:
            self.state.write_status(self._report)
        except OSError as exc:
            log.warning("cannot write the status file", reason=str(exc))

    def _agent_status(self) -> agent_pb2.AgentStatus:
        # "The platform is unreachable" is news to the operator, not to the platform.
        problems = [text for source, text in self._problems.items() if source != "platform"]
        problems = problems[:MAX_PROBLEMS]
        status = agent_pb2.AgentStatus(
            health=agent_pb2.AGENT_HEALTH_DEGRADED if problems else agent_pb2.AGENT_HEALTH_OK,
            problems=problems,
            applied_accounts_revision=self._report.applied_revision,
            managed_accounts=self._report.managed_accounts,
            broker_running=self._report.broker_state == BrokerState.RUNNING.value,
            active_grants=0,
        )
        expires = self._renewal.earliest_expiry()
        if expires is not None:
            status.certificates_expire_time.CopyFrom(timestamp(expires))
        return status

    # --- trust material -----------------------------------------------------------------

    async def _install_host_trust(self) -> None:
        anchors = self.state.read_trust_anchors()
        if anchors is None:
            return
        try:
            await self._host_trust.install(anchors, self.state.read_host_certificates())
        except Exception as exc:
            # The sink's message says what is wrong (one line); the stack is for debugging.
            log.error("installing the trust material failed", reason=str(exc))
            log.debug("installing the trust material failed", exc_info=True)
            self._problem("host-trust", f"installing the project's CA keys failed: {exc}")
        else:
            self._problem("host-trust", None)

    async def _renew_certificates(self, session: AgentSession) -> None:
        """Renew host and broker certificates; install the first, wake the broker for the second."""
        renewed = await self._renewal.renew(session)
        if renewed is None:
            return
        await self._install_host_trust()
        if renewed.broker_certificate and self._broker is not None:
            self._broker.supervisor.files_changed()

    # --- heartbeats ---------------------------------------------------------------------

    async def _heartbeats(self, session: AgentSession) -> None:
        backoff = self._backoff()
        stub = agent_service_pb2_grpc.AgentServiceStub(session.channel)
        while True:
            facts = await asyncio.to_thread(gather_facts, self.config)
            try:
                reply = await stub.Heartbeat(
                    agent_service_pb2.HeartbeatRequest(
                        facts=facts_message(facts), status=self._agent_status()
                    ),
                    metadata=await session.metadata(),
                    timeout=CALL_TIMEOUT_SECONDS,
                )
            except grpc.aio.AioRpcError as error:
                await self._pause(self._failed("heartbeat", error, session, backoff))
                continue
            backoff.reset()
            now = self._clock()
            self._reached(last_heartbeat_time=now)
            skew = reply.server_time.ToDatetime(tzinfo=dt.UTC) - now
            if abs(skew) > CLOCK_SKEW_WARNING:
                log.warning(
                    "this clock differs from the platform's", skew_seconds=skew.total_seconds()
                )
            anchors = trust_anchors(reply.trust_anchors)
            if not anchors.trusted_user_ca_keys.strip():
                # Every project has a user CA; an empty list would lock everyone out of sshd.
                log.warning("the platform sent no user CA keys; keeping the ones installed")
            elif anchors != self.state.read_trust_anchors():
                self.state.write_trust_anchors(anchors)
                log.info("trust anchors changed")
                await self._install_host_trust()
                if self._broker is not None and self._broker.files.expire_time() is not None:
                    self._broker.files.store_ca(anchors.x509_ca_bundle_pem)
            if reply.renew_host_certificates or self._renewal.broker_due():
                await self._renew_certificates(session)
            interval = reply.next_heartbeat_seconds or self._timings.heartbeat_seconds
            # Up to 10% later, so a fleet restarted together drifts apart.
            await self._pause(interval * (1 + 0.1 * random.random()))  # noqa: S311

    def _reached(self, **changes: object) -> None:
        """Note that a call to the platform succeeded (and `changes` to the report).

        When the platform was unreachable, this also wakes the other loop's wait, so a
        heartbeat follows a reconnected account stream (and the other way round) at once
        instead of after its backoff or interval.
        """
        back = not self._report.platform_reachable
        if back:
            self._platform_back.set()
        if back or changes:
            # A heartbeat (it brings changes) also clears a refusal; a stream message
            # clears only the unreachable platform: heartbeats have their own verdict.
            self._problems.pop("platform", None)
            self._update_report(platform_reachable=True, **changes)

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the platform answers again meanwhile."""
        self._platform_back.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._platform_back.wait(), seconds)

    def _failed(
        self, what: str, error: grpc.aio.AioRpcError, session: AgentSession, backoff: Backoff
    ) -> float:
        """Log a failed call to the platform; return how long to wait before the next."""
        delay = backoff.next_delay()
        code = error.code()
        details = error.details() or code.name
        if code == grpc.StatusCode.UNAUTHENTICATED:
            session.forget_token()
        if is_transient(error):
            self._problem("platform", f"the platform is unreachable: {details}")
            self._update_report(platform_reachable=False)
            log.warning(
                f"{what} failed; platform unreachable",
                reason=details,
                retry_in_seconds=round(delay, 1),
            )
        else:
            self._problem("platform", f"{what} refused ({code.name}): {details}")
            log.error(
                f"{what} refused",
                status=code.name,
                reason=details,
                retry_in_seconds=round(delay, 1),
            )
        return delay

    # --- accounts -----------------------------------------------------------------------

    async def _watch_accounts(self, session: AgentSession) -> None:
        backoff = self._backoff()
        stub = agent_service_pb2_grpc.AgentServiceStub(session.channel)
        while True:
            call = None
            try:
                call = stub.WatchAccounts(
                    agent_service_pb2.WatchAccountsRequest(), metadata=await session.metadata()
                )
                async for message in call:
                    backoff.reset()
                    self._reached()
                    state = desired_state(message)
                    log.info(
                        "desired accounts received",
                        revision=state.revision,
                        accounts=len(state.accounts),
                    )
                    if state.revision <= self._report.applied_revision:
                        self._update_report(last_sync_time=self._clock())
                    await self._desired.offer(state)
                delay = backoff.next_delay()
                log.info("account stream ended; reconnecting", retry_in_seconds=round(delay, 1))
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    # The server (or its project) was deleted: accounts are no longer
                    # this agent's to manage. Leave the machine as it is.
                    message = f"the platform no longer knows this server: {error.details()}"
                    log.error("account management stopped", reason=message)
                    self._problem("accounts", message)
                    return
                delay = self._failed("account stream", error, session, backoff)
            finally:
                if call is not None:
                    call.cancel()
            await self._pause(delay)

    async def _apply_accounts(self, applied: int) -> None:
        backoff = self._backoff()
        while True:
            state = await self._desired.newer_than(applied)
            try:
                await self._accounts.apply(state)
            except Exception as exc:
                delay = backoff.next_delay()
                log.exception(
                    "applying desired accounts failed",
                    revision=state.revision,
                    retry_in_seconds=round(delay, 1),
                )
                self._problem("accounts", f"applying revision {state.revision} failed: {exc}")
                # Retry the same list after a while, or a newer one as soon as it comes.
                try:
                    await asyncio.wait_for(self._desired.newer_than(state.revision), delay)
                except TimeoutError:
                    pass
                continue
            backoff.reset()
            applied = state.revision
            self.state.write_applied_revision(applied)
            self._problem("accounts", None)
            self._update_report(
                applied_revision=applied,
                managed_accounts=len(state.accounts),
                last_sync_time=self._clock(),
            )
            log.info("desired accounts applied", revision=applied, accounts=len(state.accounts))
