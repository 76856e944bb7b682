"""The inventory's fleet servicers: servers, server enrollment tokens, and the API agents
(sftd) call: enroll, heartbeat, account stream, host certificate renewal, conflicts.

Each RPC: validate → authorize (the `@requires` declaration) → one transaction
(services.inventory.fleet) → the CA when certificates are needed → protobuf → audit.
No SQL here. Never logs an enrollment token or any key material but fingerprints.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
import structlog
from sqlalchemy.exc import IntegrityError

from runtime.audit import AuditTrail, audit_event
from runtime.authorization import Need, RoleResolver, requires, streaming_requires
from runtime.cert_uris import (
    split_project_name,
    split_server_name,
    split_team_name,
    split_user_name,
)
from runtime.clock import Clock, timestamp, utc_now
from runtime.database import Database
from runtime.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from runtime.identity import ANONYMOUS, CallerKind, Identity, current_identity
from runtime.peers import Peers, relay
from runtime.pinned_codes import CodeKind, PinnedCode
from runtime.tls import ca_sha256
from services.inventory import fleet
from services.inventory.accounts_watch import AccountsHub
from services.inventory.models import EnrollmentTokenRow
from services.inventory.views import GRANT_ROLE_TO_PROTO, project_message, user_message
from sft.auth.v1 import audit_pb2
from sft.ca.v1 import ca_service_pb2, ca_service_pb2_grpc
from sft.inventory.v1 import (
    account_pb2,
    agent_pb2,
    agent_service_pb2,
    agent_service_pb2_grpc,
    bastion_pb2,
    enrollment_token_pb2,
    enrollment_token_service_pb2,
    enrollment_token_service_pb2_grpc,
    server_pb2,
    server_service_pb2,
    server_service_pb2_grpc,
)

__all__ = [
    "AgentServicer",
    "EnrollmentTokenServicer",
    "ServerServicer",
    "server_message",
]

Context = Any  # grpc.aio.ServicerContext; grpc ships no type information

log = structlog.get_logger("sft.inventory.fleet")

#: Lifetime of host and broker certificates; agents renew when 2 days are left.
HOST_CERTIFICATE_TTL_SECONDS = 7 * 86400
RENEW_BEFORE = dt.timedelta(days=2)
NEXT_HEARTBEAT_SECONDS = 60
#: How long trust anchors are reused before asking the CA again (heartbeats are many).
ANCHORS_CACHE_SECONDS = 30.0
CA_TIMEOUT_SECONDS = 10.0
MAX_CSR_CHARS = 16 * 1024
MAX_CONFLICT_DETAIL = 1024

_OS_FROM_PROTO = {
    server_pb2.OPERATING_SYSTEM_LINUX: "linux",
    server_pb2.OPERATING_SYSTEM_WINDOWS: "windows",
}
_OS_TO_PROTO = {value: key for key, value in _OS_FROM_PROTO.items()}
_UPDATABLE = ("canonical_name", "alt_names", "labels", "access_address", "bastion")
_CONFLICT_KINDS = {
    agent_pb2.ACCOUNT_CONFLICT_KIND_NAME_IN_USE: "name_in_use",
    agent_pb2.ACCOUNT_CONFLICT_KIND_UID_IN_USE: "uid_in_use",
    agent_pb2.ACCOUNT_CONFLICT_KIND_GID_IN_USE: "gid_in_use",
    agent_pb2.ACCOUNT_CONFLICT_KIND_NAME_INVALID: "name_invalid",
}


# --- protobuf views ------------------------------------------------------------------


def server_message(view: fleet.ServerView) -> server_pb2.Server:
    """Return a server as the Server message (including the agent's public key)."""
    row = view.row
    message = server_pb2.Server(
        name=view.name,
        id=row.id,
        project=view.project_name,
        hostname=row.hostname,
        canonical_name=row.canonical_name,
        alt_names=list(row.alt_names),
        labels=dict(row.labels),
        os=_OS_TO_PROTO.get(row.os, server_pb2.OPERATING_SYSTEM_UNSPECIFIED),
        addresses=list(row.addresses),
        access_address=row.access_address,
        ssh_port=row.ssh_port,
        broker_port=row.broker_port,
        bastion=row.bastion,
        host_key_fingerprints=list(row.host_key_fingerprints),
        agent_public_key=row.agent_public_key,
        agent_version=row.agent_version,
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at or row.created_at),
    )
    if row.last_seen_at is not None:
        message.last_seen_time.CopyFrom(timestamp(row.last_seen_at))
    return message


def _token_message(
    team: str, project: str, row: EnrollmentTokenRow
) -> enrollment_token_pb2.EnrollmentToken:
    """Return a token row as an EnrollmentToken message (never its secret)."""
    message = enrollment_token_pb2.EnrollmentToken(
        name=fleet.token_resource(team, project, row.id),
        description=row.description,
        expire_time=timestamp(row.expire_time),
        max_uses=row.max_uses,
        uses=row.uses,
        revoked=row.revoked_at is not None,
        creator=row.creator,
        create_time=timestamp(row.created_at),
    )
    if row.revoked_at is not None:
        message.revoke_time.CopyFrom(timestamp(row.revoked_at))
    if row.last_used_at is not None:
        message.last_use_time.CopyFrom(timestamp(row.last_used_at))
    return message


def _account_message(team: str, account: fleet.DesiredAccount) -> account_pb2.ServerAccount:
    """Return a desired account as a ServerAccount message."""
    return account_pb2.ServerAccount(
        name=account.name,
        user=f"teams/{team}/users/{account.user}",
        uid=account.uid,
        gid=account.gid,
        primary_group=account.primary_group,
        supplementary_groups=list(account.supplementary_groups),
        admin=account.admin,
        windows_name=account.windows_name,
        full_name=account.full_name,
    )


def _facts(request: Any) -> fleet.ServerFacts:
    """Return the checked domain facts of a request's `facts` field."""
    if not request.HasField("facts"):
        raise InvalidInput("facts is required: what sftd knows about this server")
    given = request.facts
    return fleet.ServerFacts(
        hostname=given.hostname,
        os=_OS_FROM_PROTO.get(given.os, ""),
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


def _host_keys(lines: Sequence[str]) -> list[fleet.PublicKey]:
    """Return the parsed host keys of a request (at most 8, no repeats)."""
    if len(lines) > fleet.MAX_HOST_KEYS:
        raise InvalidInput(
            f"host_public_keys has {len(lines)} keys; at most {fleet.MAX_HOST_KEYS} are allowed"
        )
    keys = [fleet.parse_host_key(line, index) for index, line in enumerate(lines)]
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


# --- caller --------------------------------------------------------------------------


def _caller() -> Identity:
    """Return the identity of the current call."""
    return current_identity.get()


def _viewer_name() -> str | None:
    """Return the person whose grants limit what they see; None for platform services."""
    identity = _caller()
    return None if identity.kind is CallerKind.PLATFORM_SERVICE else identity.name


def _actor_name(identity: Identity) -> str:
    """Return the resource name recorded as a token's creator."""
    if identity.kind in (CallerKind.USER, CallerKind.SERVICE_USER):
        return identity.user_resource
    return str(identity)


def _request_id() -> str:
    """Return the current request id (passed to the CA for its issuance log)."""
    bound = structlog.contextvars.get_contextvars()
    return str(bound.get("request_id") or uuid.uuid4().hex)


def _agent() -> Identity:
    """Return the calling agent's identity (its server id and team)."""
    identity = _caller()
    if identity.kind is not CallerKind.AGENT or not identity.team:
        raise PermissionDenied("only an enrolled server's agent (sftd) may call this")
    return identity


# --- what every fleet servicer shares ------------------------------------------------


class _Fleet:
    """Database, peers, role resolver, audit trail, accounts hub and clock of a servicer."""

    def __init__(
        self,
        database: Database,
        peers: Peers,
        *,
        roles: RoleResolver,
        trail: AuditTrail,
        hub: AccountsHub,
        clock: Clock = utc_now,
    ) -> None:
        self._database = database
        self._peers = peers
        self.roles = roles
        self._trail = trail
        self._hub = hub
        self._clock = clock
        self._anchors: dict[str, tuple[float, agent_pb2.TrustAnchors]] = {}

    def _ca(self) -> ca_service_pb2_grpc.CertificateAuthorityServiceStub:
        """Return a CA stub on the shared channel, calling as the inventory."""
        return ca_service_pb2_grpc.CertificateAuthorityServiceStub(self._peers.channel("ca"))

    async def _audit(
        self,
        team: str,
        action: str,
        resource: str,
        *,
        outcome: int = audit_pb2.AUDIT_OUTCOME_SUCCESS,
        details: Mapping[str, str] | None = None,
        actor: Identity | None = None,
    ) -> None:
        """Append an event to `team`'s audit trail (failures are logged, never raised)."""
        await self._trail.record(
            team, audit_event(action, resource, outcome=outcome, details=details, actor=actor)
        )

    async def _trust_anchors(self, project: str) -> agent_pb2.TrustAnchors:
        """Return the project's trust anchors, briefly cached (every heartbeat needs them).

        A project without authorities gets them made here: CreateProjectAuthorities is
        idempotent, and an agent must not fail to enroll because project creation
        could not reach the CA at the time.
        """
        cached = self._anchors.get(project)
        if cached is not None and time.monotonic() - cached[0] < ANCHORS_CACHE_SECONDS:
            return cached[1]
        stub = self._ca()
        request = ca_service_pb2.GetAuthoritiesRequest(project=project)
        try:
            try:
                reply = await stub.GetAuthorities(request, timeout=CA_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                await stub.CreateProjectAuthorities(
                    ca_service_pb2.CreateProjectAuthoritiesRequest(project=project),
                    timeout=CA_TIMEOUT_SECONDS,
                )
                reply = await stub.GetAuthorities(request, timeout=CA_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            raise relay(error, "ca") from None
        anchors = agent_pb2.TrustAnchors(
            trusted_user_ca_keys=reply.trusted_user_ca_keys,
            x509_ca_bundle_pem=reply.x509_ca_bundle_pem,
        )
        self._anchors[project] = (time.monotonic(), anchors)
        return anchors

    async def _host_certificates(
        self, view: fleet.ServerView, keys: Sequence[fleet.PublicKey]
    ) -> list[agent_pb2.HostCertificate]:
        """Ask the CA for one host certificate per key, naming every server name."""
        principals = list(fleet.host_principals(view.row))
        certificates = []
        for key in keys:
            try:
                signed = await self._ca().SignHostCertificate(
                    ca_service_pb2.SignHostCertificateRequest(
                        project=view.project_name,
                        server=view.name,
                        public_key=key.line,
                        principals=principals,
                        ttl_seconds=HOST_CERTIFICATE_TTL_SECONDS,
                        request_id=_request_id(),
                    ),
                    timeout=CA_TIMEOUT_SECONDS,
                )
            except grpc.aio.AioRpcError as error:
                raise relay(error, "ca") from None
            certificates.append(
                agent_pb2.HostCertificate(
                    host_key_fingerprint=key.fingerprint,
                    certificate=signed.certificate,
                    principals=principals,
                    valid_after=signed.valid_after,
                    valid_before=signed.valid_before,
                )
            )
        return certificates

    async def _broker_certificate(self, view: fleet.ServerView, csr: str) -> str:
        """Ask the CA for the broker's TLS server certificate; '' without a CSR."""
        if not csr:
            return ""
        names = fleet.host_principals(view.row)
        addresses = [name for name in names if _is_address(name)]
        dns_names = [name for name in names if not _is_address(name)]
        try:
            signed = await self._ca().SignServerCertificate(
                ca_service_pb2.SignServerCertificateRequest(
                    project=view.project_name,
                    server=view.name,
                    csr_pem=csr,
                    dns_names=dns_names[:64],
                    ip_addresses=addresses[:64],
                    ttl_seconds=HOST_CERTIFICATE_TTL_SECONDS,
                    request_id=_request_id(),
                ),
                timeout=CA_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise relay(error, "ca") from None
        return str(signed.certificate_pem)


def _is_address(name: str) -> bool:
    """Return whether `name` is an IP address (else a DNS name)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


# --- enrollment tokens ---------------------------------------------------------------


class EnrollmentTokenServicer(
    _Fleet, enrollment_token_service_pb2_grpc.EnrollmentTokenServiceServicer
):
    """Serves sft.inventory.v1.EnrollmentTokenService: project admins only."""

    @requires(Need.PROJECT_ADMIN, resource="parent")
    async def CreateEnrollmentToken(
        self, request: enrollment_token_service_pb2.CreateEnrollmentTokenRequest, context: Context
    ) -> enrollment_token_service_pb2.CreateEnrollmentTokenResponse:
        """Create a token; its secret string comes back here, once, and is stored hashed."""
        team_name, project_name = split_project_name(request.parent)
        now = self._clock()
        given = request.enrollment_token
        settings = fleet.TokenSettings(
            description=given.description,
            expire_time=(
                given.expire_time.ToDatetime(dt.UTC) if given.HasField("expire_time") else None
            ),
            max_uses=given.max_uses,
        ).checked(now)
        code = PinnedCode.generate(
            CodeKind.SERVER_ENROLLMENT, ca_sha256(self._peers.platform_ca_pem())
        )
        async with self._database.sessions.begin() as session:
            team = await fleet.get_team(session, team_name)
            project = await fleet.get_project(session, team, project_name)
            row = await fleet.create_token(
                session,
                project,
                settings,
                secret_hash=code.secret_hash,
                creator=_actor_name(_caller()),
                now=now,
            )
        message = _token_message(team_name, project_name, row)
        await self._audit(
            team_name,
            "token.create",
            message.name,
            details={
                "expire_time": row.expire_time.isoformat(),
                "max_uses": str(row.max_uses),
            },
        )
        log.info("enrollment token created", token=message.name)
        return enrollment_token_service_pb2.CreateEnrollmentTokenResponse(
            enrollment_token=message, token=code.encode()
        )

    @requires(Need.PROJECT_ADMIN, resource="parent")
    async def ListEnrollmentTokens(
        self, request: enrollment_token_service_pb2.ListEnrollmentTokensRequest, context: Context
    ) -> enrollment_token_service_pb2.ListEnrollmentTokensResponse:
        """List a project's tokens, newest first (revoked ones only when asked)."""
        team_name, project_name = split_project_name(request.parent)
        async with self._database.sessions() as session:
            team = await fleet.get_team(session, team_name)
            project = await fleet.get_project(session, team, project_name)
            rows, next_token = await fleet.list_tokens(
                session,
                project,
                show_revoked=request.show_revoked,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        return enrollment_token_service_pb2.ListEnrollmentTokensResponse(
            enrollment_tokens=[_token_message(team_name, project_name, row) for row in rows],
            next_page_token=next_token,
        )

    @requires(Need.PROJECT_ADMIN, resource="name")
    async def RevokeEnrollmentToken(
        self, request: enrollment_token_service_pb2.RevokeEnrollmentTokenRequest, context: Context
    ) -> enrollment_token_service_pb2.RevokeEnrollmentTokenResponse:
        """Revoke a token (idempotent); servers it enrolled stay."""
        team_name, project_name, token_id = fleet.split_token_name(request.name)
        async with self._database.sessions.begin() as session:
            team = await fleet.get_team(session, team_name)
            project = await fleet.get_project(session, team, project_name)
            row = await fleet.revoke_token(session, project, token_id, self._clock())
        message = _token_message(team_name, project_name, row)
        await self._audit(team_name, "token.revoke", message.name)
        return enrollment_token_service_pb2.RevokeEnrollmentTokenResponse(enrollment_token=message)


# --- servers -------------------------------------------------------------------------


def _list_parent(parent: str) -> tuple[str, str | None]:
    """Return (team, project or None) of `teams/T`, `teams/T/projects/-` or a project."""
    parts = parent.split("/")
    if len(parts) == 2:
        return split_team_name(parent), None
    if len(parts) == 4 and parts[2] == "projects" and parts[3] == "-":
        return split_team_name("/".join(parts[:2])), None
    return split_project_name(parent)


def _changes(server: server_pb2.Server, paths: Sequence[str]) -> fleet.ServerChanges:
    """Return the checked changes an UpdateServer request's mask names."""
    if not paths:
        raise InvalidInput(
            f"update_mask is required: name the fields to change ({', '.join(_UPDATABLE)})"
        )
    unknown = sorted(set(paths) - set(_UPDATABLE))
    if unknown:
        raise InvalidInput(
            f"update_mask names {', '.join(unknown)}, which cannot be changed; changeable "
            f"fields are {', '.join(_UPDATABLE)} (the rest is reported by the agent)"
        )
    return fleet.ServerChanges(
        canonical_name=server.canonical_name if "canonical_name" in paths else None,
        alt_names=tuple(server.alt_names) if "alt_names" in paths else None,
        labels=dict(server.labels) if "labels" in paths else None,
        access_address=server.access_address if "access_address" in paths else None,
        bastion=server.bastion if "bastion" in paths else None,
    ).checked()


class ServerServicer(_Fleet, server_service_pb2_grpc.ServerServiceServicer):
    """Serves sft.inventory.v1.ServerService: people see the servers of granted projects."""

    @requires(Need.MEMBER, resource="name", services=("auth",))
    async def GetServer(
        self, request: server_service_pb2.GetServerRequest, context: Context
    ) -> server_service_pb2.GetServerResponse:
        """Return one server (NOT_FOUND unless the caller may see its project)."""
        team_name, project, server_id = split_server_name(request.name)
        async with self._database.sessions() as session:
            team = await fleet.get_team(session, team_name)
            viewer = await fleet.viewer_for(session, team, _viewer_name())
            view = await fleet.get_server(session, team, project, server_id, viewer)
        return server_service_pb2.GetServerResponse(server=server_message(view))

    @requires(Need.MEMBER, resource="parent")
    async def ListServers(
        self, request: server_service_pb2.ListServersRequest, context: Context
    ) -> server_service_pb2.ListServersResponse:
        """List servers of one project or of every project the caller may see, newest first."""
        team_name, project_name = _list_parent(request.parent)
        selector = fleet.parse_selector(request.selector)
        if request.os and request.os not in _OS_FROM_PROTO:
            raise InvalidInput("os must be OPERATING_SYSTEM_LINUX, _WINDOWS or unset")
        async with self._database.sessions() as session:
            team = await fleet.get_team(session, team_name)
            viewer = await fleet.viewer_for(session, team, _viewer_name())
            project = None
            if project_name is not None:
                project = await fleet.get_project(session, team, project_name)
                if not viewer.sees(project.id):
                    raise PermissionDenied(
                        f"you have no grant on project {project_name!r}; a team admin can "
                        f"grant one of your groups: `sft admin project grant GROUP {project_name}`"
                    )
            views, next_token = await fleet.list_servers(
                session,
                team,
                project=project,
                viewer=viewer,
                selector=selector,
                os=_OS_FROM_PROTO.get(request.os, ""),
                page_size=request.page_size,
                page_token=request.page_token,
            )
        return server_service_pb2.ListServersResponse(
            servers=[server_message(view) for view in views], next_page_token=next_token
        )

    @requires(Need.PROJECT_ADMIN, resource="server.name")
    async def UpdateServer(
        self, request: server_service_pb2.UpdateServerRequest, context: Context
    ) -> server_service_pb2.UpdateServerResponse:
        """Change a server's names, labels, access address or bastion."""
        team_name, project, server_id = split_server_name(request.server.name)
        paths = list(request.update_mask.paths)
        changes = _changes(request.server, paths)
        async with self._database.sessions.begin() as session:
            team = await fleet.get_team(session, team_name)
            view = await fleet.get_server(session, team, project, server_id, fleet.Viewer(None))
            await fleet.update_server(session, view, changes, self._clock())
        await self._audit(
            team_name, "server.update", view.name, details={"fields": ",".join(sorted(paths))}
        )
        return server_service_pb2.UpdateServerResponse(server=server_message(view))

    @requires(Need.PROJECT_ADMIN, resource="name")
    async def DeleteServer(
        self, request: server_service_pb2.DeleteServerRequest, context: Context
    ) -> server_service_pb2.DeleteServerResponse:
        """Remove a server; its agent's calls fail from now on and its account stream ends."""
        team_name, project, server_id = split_server_name(request.name)
        async with self._database.sessions.begin() as session:
            team = await fleet.get_team(session, team_name)
            view = await fleet.get_server(session, team, project, server_id, fleet.Viewer(None))
            await fleet.delete_server(session, view)
        self._hub.notify(view.row.team_id)
        await self._audit(
            team_name,
            "server.delete",
            view.name,
            details={"canonical_name": view.row.canonical_name, "hostname": view.row.hostname},
        )
        return server_service_pb2.DeleteServerResponse()

    @requires(Need.MEMBER, resource="parent", services=("auth",))
    async def ResolveServer(
        self, request: server_service_pb2.ResolveServerRequest, context: Context
    ) -> server_service_pb2.ResolveServerResponse:
        """Find the one server a name, alias, address or id refers to.

        Ambiguous: the response lists the candidates instead (as the contract says; the
        client and auth treat them as an error), and the log line names them.
        """
        parts = request.parent.split("/")
        if len(parts) == 2:
            team_name, project_name = split_team_name(request.parent), None
        else:
            team_name, project_name = split_project_name(request.parent)
        async with self._database.sessions() as session:
            team = await fleet.get_team(session, team_name)
            viewer = await fleet.viewer_for(session, team, _viewer_name())
            project = None
            if project_name is not None:
                project = await fleet.get_project(session, team, project_name)
                if not viewer.sees(project.id):
                    raise NotFound(
                        f"no server you can see in project {project_name!r} is called "
                        f"{request.query[:253]!r}; you have no grant on that project"
                    )
            found = await fleet.resolve_server(
                session, team, request.query, viewer=viewer, project=project
            )
        if isinstance(found, fleet.Ambiguous):
            log.info("ambiguous server name", detail=found.message())
            return server_service_pb2.ResolveServerResponse(
                candidates=[server_message(view) for view in found.candidates]
            )
        return server_service_pb2.ResolveServerResponse(server=server_message(found))

    @requires(Need.PLATFORM_SERVICE, services=("auth",))
    async def CheckServerAccess(
        self, request: server_service_pb2.CheckServerAccessRequest, context: Context
    ) -> server_service_pb2.CheckServerAccessResponse:
        """Decide whether a user may reach a server, as which account, through which hops."""
        team_name, project, server_id = split_server_name(request.server)
        user_team, user_name = split_user_name(request.user)
        if user_team != team_name:
            raise InvalidInput(
                f"user {request.user!r} is not in team {team_name!r}, the server's team"
            )
        async with self._database.sessions() as session:
            team = await fleet.get_team(session, team_name)
            decision = await fleet.check_server_access(
                session,
                team,
                project=project,
                server_id=server_id,
                user_name=user_name,
                account_name=request.account_name,
            )
        return server_service_pb2.CheckServerAccessResponse(
            role=GRANT_ROLE_TO_PROTO[decision.role],
            account=_account_message(team_name, decision.account),
            server=server_message(decision.server),
            project=project_message(team_name, decision.project),
            user=user_message(team_name, decision.user),
            bastion_hops=[
                bastion_pb2.BastionHop(
                    server=hop.server, address=hop.address, ssh_port=hop.ssh_port
                )
                for hop in decision.hops
            ],
        )


# --- the agent API -------------------------------------------------------------------


class AgentServicer(_Fleet, agent_service_pb2_grpc.AgentServiceServicer):
    """Serves sft.inventory.v1.AgentService: what sftd calls, as its own server."""

    def __init__(
        self,
        database: Database,
        peers: Peers,
        *,
        roles: RoleResolver,
        trail: AuditTrail,
        hub: AccountsHub,
        clock: Clock = utc_now,
    ) -> None:
        super().__init__(database, peers, roles=roles, trail=trail, hub=hub, clock=clock)
        # One rendered message per shared account list (they are shared per revision).
        self._rendered: weakref.WeakKeyDictionary[
            fleet.DesiredAccounts, agent_service_pb2.WatchAccountsResponse
        ] = weakref.WeakKeyDictionary()

    @requires(Need.ANYONE)  # the enrollment token in the request is the credential
    async def EnrollServer(
        self, request: agent_service_pb2.EnrollServerRequest, context: Context
    ) -> agent_service_pb2.EnrollServerResponse:
        """Enroll a server with a token (idempotent per agent key); certify its keys."""
        code = self._parse_token(request.enrollment_token)
        agent_key = fleet.parse_agent_key(request.agent_public_key)
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
        anchors = await self._trust_anchors(view.project_name)
        certificates = await self._host_certificates(view, host_keys)
        broker = await self._broker_certificate(view, csr)
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
        agent_key: fleet.PublicKey,
        host_keys: Sequence[fleet.PublicKey],
        facts: fleet.ServerFacts,
    ) -> fleet.Enrolled:
        """Run the enrollment transaction; audit a refused token; retry a lost key race."""
        for attempt in (1, 2):
            try:
                async with self._database.sessions.begin() as session:
                    return await fleet.enroll_server(
                        session,
                        secret_hash=code.secret_hash,
                        agent_key=agent_key,
                        host_keys=host_keys,
                        facts=facts,
                        now=self._clock(),
                    )
            except fleet.TokenRefused as refused:
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

    async def _own_server(self) -> fleet.ServerView:
        """Return the calling agent's server, or NotFound if it was deleted."""
        identity = _agent()
        async with self._database.sessions() as session:
            return await fleet.agent_server(session, str(identity.team), identity.name)

    @requires(Need.AGENT)
    async def Heartbeat(
        self, request: agent_service_pb2.HeartbeatRequest, context: Context
    ) -> agent_service_pb2.HeartbeatResponse:
        """Record facts and last-seen; return the time, trust anchors and whether to renew."""
        identity = _agent()
        facts = _facts(request)
        now = self._clock()
        async with self._database.sessions.begin() as session:
            view = await fleet.agent_server(session, str(identity.team), identity.name)
            names_changed = await fleet.record_heartbeat(session, view, facts, now)
        anchors = await self._trust_anchors(view.project_name)
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
        anchors = await self._trust_anchors(view.project_name)
        return agent_service_pb2.RenewHostCertificatesResponse(
            host_certificates=await self._host_certificates(view, host_keys),
            broker_certificate_pem=await self._broker_certificate(view, csr),
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
    ) -> AsyncIterator[agent_service_pb2.WatchAccountsResponse]:
        """Send the server's complete account list now and after every change to it.

        Ends OK when the platform stops, NOT_FOUND when the server is deleted.
        """
        identity = _agent()
        async with self._database.sessions() as session:
            view = await fleet.agent_server(session, str(identity.team), identity.name)
            revision = await fleet.team_revision(session, view.row.team_id)
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

    def _render(
        self, team: str, desired: fleet.DesiredAccounts
    ) -> agent_service_pb2.WatchAccountsResponse:
        """Return the stream message for a shared list, built once per list."""
        message = self._rendered.get(desired)
        if message is None:
            message = agent_service_pb2.WatchAccountsResponse(
                revision=desired.revision,
                accounts=[_account_message(team, account) for account in desired.accounts],
                create_missing=desired.create_missing,
            )
            self._rendered[desired] = message
        return message
