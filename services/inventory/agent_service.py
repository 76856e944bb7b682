"""The agent servicer: what sftd calls as its own server — enroll, heartbeat, the account
stream, host certificate renewal and account conflicts.

Each RPC: validate → authorize (the `@requires` declaration) → one transaction → the CA
when certificates are needed (services.inventory.certificate_calls) → protobuf → audit.
Never logs an enrollment token or any key material but fingerprints.
"""

from __future__ import annotations

import datetime as dt
import functools
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError

from runtime.authorization import Need, requires, streaming_requires
from runtime.clock import timestamp
from runtime.errors import Conflict, InvalidInput, NotFound, PermissionDenied, Unauthenticated
from runtime.identity import ANONYMOUS, CallerKind, Identity
from runtime.pinned_codes import CodeKind, PinnedCode
from runtime.tls import ca_sha256
from services.inventory import (
    desired_accounts,
    enrollment_tokens,
    fleet_rules,
    server_keys,
    servers,
)
from services.inventory.certificate_calls import CertificateCalls
from services.inventory.servicer import Context, FleetServicer, caller
from services.inventory.views import OS_FROM_PROTO, account_message, server_message
from sft.auth.v1 import audit_pb2
from sft.inventory.v1 import agent_pb2, agent_service_pb2, agent_service_pb2_grpc

__all__ = ["AgentServicer"]

log = structlog.get_logger("sft.inventory.fleet")

RENEW_BEFORE = dt.timedelta(days=2)
NEXT_HEARTBEAT_SECONDS = 60
MAX_CSR_CHARS = 16 * 1024
MAX_CONFLICT_DETAIL = 1024

_CONFLICT_KINDS = {
    agent_pb2.ACCOUNT_CONFLICT_KIND_NAME_IN_USE: "name_in_use",
    agent_pb2.ACCOUNT_CONFLICT_KIND_UID_IN_USE: "uid_in_use",
    agent_pb2.ACCOUNT_CONFLICT_KIND_GID_IN_USE: "gid_in_use",
    agent_pb2.ACCOUNT_CONFLICT_KIND_NAME_INVALID: "name_invalid",
}


def _facts(request: Any) -> fleet_rules.ServerFacts:
    """Return the checked domain facts of a request's `facts` field."""
    if not request.HasField("facts"):
        raise InvalidInput("facts is required: what sftd knows about this server")
    given = request.facts
    return fleet_rules.ServerFacts(
        hostname=given.hostname,
        os=OS_FROM_PROTO.get(given.os, ""),
        canonical_name=given.canonical_name,
        alt_names=tuple(given.alt_names),
        labels=dict(given.labels),
        addresses=tuple(given.addresses),
        access_address=given.access_address,
        ssh_port=given.ssh_port,
        broker_port=given.broker_port,
        agent_version=given.agent_version,
        bastion=given.bastion,
    ).checked()


def _host_keys(lines: Sequence[str]) -> list[server_keys.PublicKey]:
    """Return the parsed host keys of a request (at most 8, no repeats)."""
    if len(lines) > server_keys.MAX_HOST_KEYS:
        raise InvalidInput(
            f"host_public_keys has {len(lines)} keys; at most {server_keys.MAX_HOST_KEYS} "
            "are allowed"
        )
    keys = [server_keys.parse_host_key(line, index) for index, line in enumerate(lines)]
    if len({key.fingerprint for key in keys}) != len(keys):
        raise InvalidInput("host_public_keys names the same key twice; send each key once")
    return keys


def _check_csr(csr: str) -> str:
    """Return `csr` if it looks like one PEM CSR of sane size (the CA checks it fully)."""
    if len(csr) > MAX_CSR_CHARS:
        raise InvalidInput("broker_csr_pem is larger than 16 KiB; send one PEM CSR")
    if csr and "-----BEGIN CERTIFICATE REQUEST-----" not in csr:
        raise InvalidInput(
            "broker_csr_pem is not a PEM certificate signing request "
            "(-----BEGIN CERTIFICATE REQUEST-----)"
        )
    return csr


def _agent() -> Identity:
    """Return the calling agent's identity (its server id and team)."""
    identity = caller()
    if identity.kind is not CallerKind.AGENT or not identity.team:
        raise PermissionDenied("only an enrolled server's agent (sftd) may call this")
    return identity


class AgentServicer(FleetServicer, agent_service_pb2_grpc.AgentServiceServicer):
    """Serves sft.inventory.v1.AgentService: what sftd calls, as its own server."""

    @functools.cached_property
    def _certificates(self) -> CertificateCalls:
        """Return this servicer's CA calls (they cache the trust anchors)."""
        return CertificateCalls(self._peers)

    @functools.cached_property
    def _rendered(
        self,
    ) -> weakref.WeakKeyDictionary[desired_accounts.DesiredAccounts, bytes]:
        """Return the serialized message per shared account list (shared per revision)."""
        return weakref.WeakKeyDictionary()

    @requires(Need.ANYONE)  # the enrollment token in the request is the credential
    async def EnrollServer(
        self, request: agent_service_pb2.EnrollServerRequest, context: Context
    ) -> agent_service_pb2.EnrollServerResponse:
        """Enroll a server with a token (idempotent per agent key); certify its keys."""
        code = self._parse_token(request.enrollment_token)
        agent_key = server_keys.parse_agent_key(request.agent_public_key)
        host_keys = _host_keys(request.host_public_keys)
        facts = _facts(request)
        csr = _check_csr(request.broker_csr_pem)
        if facts.os == "linux" and not host_keys:
            raise InvalidInput(
                "host_public_keys is empty; a Linux server needs at least one SSH host key "
                "certified (sftd reads them from sshd's HostKey lines)"
            )
        enrolled = await self._enroll(code, agent_key, host_keys, facts)
        view = enrolled.server
        anchors = await self._certificates.trust_anchors(view.project_name)
        certificates = await self._certificates.host_certificates(view, host_keys)
        broker = await self._certificates.broker_certificate(view, csr)
        await self._audit(
            view.team,
            "server.enroll",
            view.name,
            details={
                "token": enrolled.token,
                "hostname": view.row.hostname,
                "agent_key": agent_key.fingerprint,
                "re_enrolled": str(not enrolled.created).lower(),
            },
            actor=Identity(CallerKind.AGENT, view.row.id, view.team),
        )
        log.info(
            "server enrolled",
            server=view.name,
            created=enrolled.created,
            agent_key=agent_key.fingerprint,
        )
        return agent_service_pb2.EnrollServerResponse(
            server=server_message(view),
            host_certificates=certificates,
            broker_certificate_pem=broker,
            trust_anchors=anchors,
            credential=agent_pb2.AgentCredential(
                subject=view.name, key_fingerprint=agent_key.fingerprint
            ),
        )

    def _parse_token(self, text: str) -> PinnedCode:
        """Return the token's code; a malformed or foreign token is UNAUTHENTICATED."""
        try:
            code = PinnedCode.parse(text, CodeKind.SERVER_ENROLLMENT)
        except InvalidInput as error:
            log.warning("enrollment refused", reason="malformed token")
            raise Unauthenticated(
                f"{error.message}; if it is lost, ask a project admin for a new one: "
                "`sft admin token create --project PROJECT`"
            ) from None
        if not code.pins(ca_sha256(self._peers.platform_ca_pem())):
            log.warning("enrollment refused", reason="token pins another platform CA")
            raise Unauthenticated(
                "this enrollment token was made by another platform (it pins a different TLS "
                "CA); check InitialURL, or ask a project admin of this platform for a token"
            )
        return code

    async def _enroll(
        self,
        code: PinnedCode,
        agent_key: server_keys.PublicKey,
        host_keys: Sequence[server_keys.PublicKey],
        facts: fleet_rules.ServerFacts,
    ) -> enrollment_tokens.Enrolled:
        """Run the enrollment transaction; audit a refused token; retry a lost key race."""
        for attempt in (1, 2):
            try:
                async with self._database.sessions.begin() as session:
                    return await enrollment_tokens.enroll_server(
                        session,
                        secret_hash=code.secret_hash,
                        agent_key=agent_key,
                        host_keys=host_keys,
                        facts=facts,
                        now=self._clock(),
                    )
            except enrollment_tokens.TokenRefused as refused:
                log.warning("enrollment refused", token=refused.token or "unknown")
                if refused.team is not None:
                    await self._audit(
                        refused.team,
                        "server.enroll",
                        refused.token,
                        outcome=audit_pb2.AUDIT_OUTCOME_DENIED,
                        details={"reason": refused.message, "hostname": facts.hostname},
                        actor=ANONYMOUS,
                    )
                raise
            except IntegrityError:
                # The same agent key enrolled concurrently; the retry takes the
                # re-enrollment path and returns that server.
                if attempt == 2:
                    raise Conflict(
                        "this agent key is being enrolled by another request; retry"
                    ) from None
        raise AssertionError("unreachable")

    async def _own_server(self) -> servers.ServerView:
        """Return the calling agent's server, or NotFound if it was deleted."""
        identity = _agent()
        async with self._database.sessions() as session:
            return await servers.agent_server(session, str(identity.team), identity.name)

    @requires(Need.AGENT)
    async def Heartbeat(
        self, request: agent_service_pb2.HeartbeatRequest, context: Context
    ) -> agent_service_pb2.HeartbeatResponse:
        """Record facts and last-seen; return the time, trust anchors and whether to renew."""
        identity = _agent()
        facts = _facts(request)
        now = self._clock()
        async with self._database.sessions.begin() as session:
            view = await servers.agent_server(session, str(identity.team), identity.name)
            names_changed = await servers.record_heartbeat(session, view, facts, now)
        anchors = await self._certificates.trust_anchors(view.project_name)
        status = request.status
        if status.HasField("certificates_expire_time"):
            expiring = status.certificates_expire_time.ToDatetime(dt.UTC) - now < RENEW_BEFORE
        else:
            expiring = bool(view.row.host_key_fingerprints) or view.row.broker_port > 0
        if status.problems:
            log.warning(
                "agent reports problems", server=view.name, problems=list(status.problems)[:16]
            )
        return agent_service_pb2.HeartbeatResponse(
            server_time=timestamp(now),
            next_heartbeat_seconds=NEXT_HEARTBEAT_SECONDS,
            trust_anchors=anchors,
            renew_host_certificates=names_changed or expiring,
        )

    @requires(Need.AGENT)
    async def RenewHostCertificates(
        self, request: agent_service_pb2.RenewHostCertificatesRequest, context: Context
    ) -> agent_service_pb2.RenewHostCertificatesResponse:
        """Certify the server's enrolled host keys (and broker key) again."""
        host_keys = _host_keys(request.host_public_keys)
        csr = _check_csr(request.broker_csr_pem)
        if not host_keys and not csr:
            raise InvalidInput("nothing to renew: send host_public_keys, broker_csr_pem or both")
        view = await self._own_server()
        enrolled = set(view.row.host_key_fingerprints)
        for key in host_keys:
            if key.fingerprint not in enrolled:
                raise PermissionDenied(
                    f"host key {key.fingerprint} was not enrolled with this server; the "
                    "platform certifies only the keys it enrolled. To change host keys, "
                    "delete the server and enroll it again with a new token"
                )
        anchors = await self._certificates.trust_anchors(view.project_name)
        return agent_service_pb2.RenewHostCertificatesResponse(
            host_certificates=await self._certificates.host_certificates(view, host_keys),
            broker_certificate_pem=await self._certificates.broker_certificate(view, csr),
            trust_anchors=anchors,
        )

    @requires(Need.AGENT)
    async def ReportAccountConflict(
        self, request: agent_service_pb2.ReportAccountConflictRequest, context: Context
    ) -> agent_service_pb2.ReportAccountConflictResponse:
        """Record an account the agent refused to take over, for the team's admins."""
        kind = _CONFLICT_KINDS.get(request.kind)
        if kind is None:
            raise InvalidInput(
                "kind is required: NAME_IN_USE, UID_IN_USE, GID_IN_USE or NAME_INVALID"
            )
        if not request.account_name or len(request.account_name) > 64:
            raise InvalidInput("account_name is required: the account from the desired list")
        if len(request.detail) > MAX_CONFLICT_DETAIL:
            raise InvalidInput(f"detail is longer than {MAX_CONFLICT_DETAIL} characters")
        view = await self._own_server()
        details = {"account_name": request.account_name, "kind": kind, "detail": request.detail}
        log.warning("agent refused an account", server=view.name, **details)
        await self._audit(
            view.team,
            "account.conflict",
            view.name,
            outcome=audit_pb2.AUDIT_OUTCOME_FAILED,
            details=details,
        )
        return agent_service_pb2.ReportAccountConflictResponse()

    @streaming_requires(Need.AGENT)
    async def WatchAccounts(
        self, request: agent_service_pb2.WatchAccountsRequest, context: Context
    ) -> AsyncIterator[bytes]:
        """Send the server's complete account list now and after every change to it.

        Each list is serialized once and the same bytes go to every stream of its
        project (runtime.server passes bytes through): with 10,000 accounts a list is
        most of a megabyte, and serializing it per stream dominated a fan-out.

        Ends OK when the platform stops, NOT_FOUND when the server is deleted.
        """
        identity = _agent()
        async with self._database.sessions() as session:
            view = await servers.agent_server(session, str(identity.team), identity.name)
            revision = await servers.team_revision(session, view.row.team_id)
        if revision is None:
            raise NotFound("this server's team no longer exists")
        sent = ""
        async with self._hub.watch(view.row.team_id, view.row.id, revision) as watch:
            while True:
                desired = await self._hub.desired(view.row.project_id, revision)
                if desired is None:
                    raise NotFound(
                        "this server's project was deleted; enroll it again with a new token"
                    )
                if desired.digest != sent:
                    yield self._render(view.team, desired)
                    sent = desired.digest
                next_revision = await watch.changed(revision)
                if next_revision is None:
                    return
                revision = next_revision

    def _render(self, team: str, desired: desired_accounts.DesiredAccounts) -> bytes:
        """Return the serialized stream message for a shared list, built once per list."""
        serialized = self._rendered.get(desired)
        if serialized is None:
            serialized = agent_service_pb2.WatchAccountsResponse(
                revision=desired.revision,
                accounts=[account_message(team, account) for account in desired.accounts],
                create_missing=desired.create_missing,
            ).SerializeToString()
            self._rendered[desired] = serialized
        return serialized
