"""IssueCredentials: may this caller reach this server, as which account (the inventory
decides), then a short-lived certificate for the caller's public key (the CA signs), and
what the client needs to reach the server and check it. Every outcome is audited.

Only public keys pass through here; no private key or token is logged or audited.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import grpc
import structlog

from runtime.audit import audit_event
from runtime.authorization import Need, RoleResolver, requires
from runtime.cert_uris import server_uri, split_server_name
from runtime.errors import (
    FailedPrecondition,
    InvalidInput,
    PermissionDenied,
    SftError,
    Unauthenticated,
)
from runtime.identity import CallerKind, Identity, current_identity
from runtime.peers import Peers, relay
from services.auth.audit_service import LocalAuditTrail
from services.auth.credentials import (
    MAX_KEY_CHARS,
    certificate_ttl,
    check_source_addresses,
    host_patterns,
    known_hosts_for,
)
from services.auth.inventory_calls import InventoryCalls, InventoryRefusal
from sft.auth.v1 import access_pb2, access_service_pb2, access_service_pb2_grpc, audit_pb2
from sft.ca.v1 import ca_service_pb2, ca_service_pb2_grpc
from sft.inventory.v1 import project_pb2, server_pb2, server_service_pb2

__all__ = ["AccessServicer"]

Context = Any  # grpc.aio.ServicerContext; grpc ships no type information

log = structlog.get_logger("sft.auth.access")

_SERVER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KIND_NAMES = {access_pb2.CREDENTIAL_KIND_SSH: "ssh", access_pb2.CREDENTIAL_KIND_X509: "x509"}


def _request_id() -> str:
    bound = structlog.contextvars.get_contextvars().get("request_id")
    text = str(bound or "")
    return text if _REQUEST_ID.fullmatch(text) else uuid.uuid4().hex


def _check_request(request: access_service_pb2.IssueCredentialsRequest) -> str:
    """Validate the request's shape; return the credential kind's name."""
    kind = _KIND_NAMES.get(request.kind)
    if kind is None:
        raise InvalidInput("kind must be CREDENTIAL_KIND_SSH or CREDENTIAL_KIND_X509")
    key_field = request.WhichOneof("key")
    if kind == "ssh" and key_field != "ssh_public_key":
        raise InvalidInput("an SSH credential needs ssh_public_key (OpenSSH format)")
    if kind == "x509" and key_field not in ("csr_pem", "public_key_pem"):
        raise InvalidInput("an X509 credential needs csr_pem or public_key_pem")
    if key_field is not None and len(getattr(request, key_field)) > MAX_KEY_CHARS:
        raise InvalidInput(f"{key_field} must be at most {MAX_KEY_CHARS} characters")
    if kind == "x509" and request.source_addresses:
        raise InvalidInput("source_addresses applies to SSH credentials only")
    check_source_addresses(request.source_addresses)
    if request.ttl_seconds < 0:
        raise InvalidInput("ttl_seconds must not be negative; use 0 for the project's default")
    if len(request.account_name) > 32 or any(ch.isspace() for ch in request.account_name):
        raise InvalidInput("account_name must be an account name of at most 32 characters")
    return kind


def _connection(
    server: server_pb2.Server,
    access: server_service_pb2.CheckServerAccessResponse,
    authorities: ca_service_pb2.GetAuthoritiesResponse,
) -> access_pb2.ServerConnection:
    team, project, server_id = split_server_name(server.name)
    patterns = host_patterns(
        [
            server.canonical_name,
            server.hostname,
            *server.alt_names,
            server.access_address,
            *server.addresses,
        ]
    )
    address = server.access_address or (server.addresses[0] if server.addresses else "")
    return access_pb2.ServerConnection(
        server=server.name,
        project=f"teams/{team}/projects/{project}",
        canonical_name=server.canonical_name,
        hostname=server.hostname,
        address=address or server.hostname,
        ssh_port=server.ssh_port or 22,
        broker_port=server.broker_port,
        known_hosts=known_hosts_for(authorities.known_hosts, patterns),
        x509_ca_bundle_pem=authorities.x509_ca_bundle_pem,
        broker_uri=server_uri(team, project, server_id),
        bastions=[
            access_pb2.BastionHop(server=hop.server, address=hop.address, ssh_port=hop.ssh_port)
            for hop in access.bastion_hops
        ],
    )


def _check_takes_x509(project: project_pb2.Project, server: server_pb2.Server) -> None:
    """Raise FailedPrecondition unless `server` can take an X.509 (broker) credential."""
    if not project.rdp_enabled:
        raise FailedPrecondition(
            f"project {project.name} does not allow RDP (rdp_enabled is false); ask a project admin"
        )
    if not server.broker_port:
        raise FailedPrecondition(
            f"server {server.name} runs no broker, so it takes no X.509 credentials; set Broker "
            "in its sftd.yaml"
        )


class AccessServicer(access_service_pb2_grpc.AccessServiceServicer):
    """Serves sft.auth.v1.AccessService."""

    def __init__(
        self,
        roles: RoleResolver,
        peers: Peers,
        inventory: InventoryCalls,
        trail: LocalAuditTrail,
        timeout: float = 10.0,
    ) -> None:
        self.roles = roles
        self._peers = peers
        self._inventory = inventory
        self._trail = trail
        self._timeout = timeout

    def _ca(self) -> ca_service_pb2_grpc.CertificateAuthorityServiceStub:
        return ca_service_pb2_grpc.CertificateAuthorityServiceStub(self._peers.channel("ca"))

    @requires(Need.MEMBER)  # the server may be a bare id: its team is checked below
    async def IssueCredentials(
        self, request: access_service_pb2.IssueCredentialsRequest, context: Context
    ) -> access_service_pb2.IssueCredentialsResponse:
        """Check access with the inventory, have the CA sign, audit, and answer."""
        identity = current_identity.get()
        if identity.kind is CallerKind.USER and not identity.device:
            raise Unauthenticated("this token names no device; run `sft login` again")
        kind = _check_request(request)
        server = await self._server_name(identity, request.server)
        team = str(identity.team)
        facts = {"kind": kind, "account": request.account_name}
        if identity.device:
            facts["device"] = identity.device
        try:
            access = await self._inventory.check_server_access(
                server, identity.user_resource, request.account_name
            )
        except InventoryRefusal as refusal:
            await self._audit_failure(
                team, server, audit_pb2.AUDIT_OUTCOME_DENIED, refusal.reason, facts
            )
            raise refusal.error from None
        try:
            response = await self._issue(identity, request, kind, access)
        except SftError as error:
            outcome = (
                audit_pb2.AUDIT_OUTCOME_DENIED
                if isinstance(error, PermissionDenied | Unauthenticated)
                else audit_pb2.AUDIT_OUTCOME_FAILED
            )
            await self._audit_failure(team, server, outcome, error.message, facts)
            raise
        # Audited before it is handed out: a credential the trail does not know of
        # never leaves the platform (the CA's issuance log has it either way).
        await self._trail.append(
            team,
            audit_event(
                "credentials.issue",
                server,
                details={
                    **facts,
                    "account": response.account_name,
                    "serial": str(response.serial),
                    "valid_before": response.valid_before.ToJsonString(),
                },
            ),
        )
        return response

    async def _server_name(self, identity: Identity, server: str) -> str:
        """Return the server's resource name (resolving a bare id in the caller's team)."""
        if not server:
            raise InvalidInput(
                "server is required: teams/TEAM/projects/PROJECT/servers/ID or a server id"
            )
        if "/" not in server:
            if not _SERVER_ID.fullmatch(server):
                raise InvalidInput(
                    f"server {server[:80]!r} is neither a server resource name nor a server id; "
                    "resolve names first (`sft resolve NAME`)"
                )
            return await self._inventory.resolve_server_id(str(identity.team), server)
        team, _, _ = split_server_name(server)
        if team != identity.team:
            raise PermissionDenied(
                f"server {server} belongs to team {team!r} and your token is for team "
                f"{identity.team!r}; switch with `sft use {team}`"
            )
        return server

    async def _issue(
        self,
        identity: Identity,
        request: access_service_pb2.IssueCredentialsRequest,
        kind: str,
        access: server_service_pb2.CheckServerAccessResponse,
    ) -> access_service_pb2.IssueCredentialsResponse:
        server, project, account = access.server, access.project, access.account
        ttl = certificate_ttl(
            request.ttl_seconds,
            project.name,
            project.certificate_ttl_seconds,
            project.certificate_max_ttl_seconds,
        )
        windows = server.os == server_pb2.OPERATING_SYSTEM_WINDOWS
        account_name = (account.windows_name or account.name) if windows else account.name
        privileged = bool(request.account_name) and (
            account.name in project.allowed_admin_account_names
            or account_name in project.allowed_admin_account_names
        )
        if kind == "x509":
            _check_takes_x509(project, server)
        ca = self._ca()
        request_id = _request_id()
        response = access_service_pb2.IssueCredentialsResponse(
            kind=request.kind, account_name=account_name
        )
        # The CA's public material is fetched while it signs: one round trip, not two.
        authorities_call = ca.GetAuthorities(
            ca_service_pb2.GetAuthoritiesRequest(project=project.name), timeout=self._timeout
        )
        try:
            if kind == "ssh":
                signed = await ca.SignUserCertificate(
                    ca_service_pb2.SignUserCertificateRequest(
                        project=project.name,
                        public_key=request.ssh_public_key,
                        principal=account_name,
                        ttl_seconds=ttl,
                        user=identity.user_resource,
                        device=identity.device or "",
                        request_id=request_id,
                        extensions=ca_service_pb2.UserCertificateExtensions(
                            permit_pty=True,
                            permit_port_forwarding=project.permit_port_forwarding,
                            permit_agent_forwarding=project.permit_agent_forwarding,
                        ),
                        source_addresses=list(request.source_addresses),
                        allow_privileged_account=privileged,
                    ),
                    timeout=self._timeout,
                )
                response.certificate = signed.certificate
                serial, valid_after, valid_before = (
                    signed.serial,
                    signed.valid_after,
                    signed.valid_before,
                )
            else:
                x509_request = ca_service_pb2.SignClientCertificateRequest(
                    project=project.name,
                    user=identity.user_resource,
                    account_name=account_name,
                    server=server.name,
                    ttl_seconds=ttl,
                    request_id=request_id,
                    allow_privileged_account=privileged,
                )
                if request.WhichOneof("key") == "csr_pem":
                    x509_request.csr_pem = request.csr_pem
                else:
                    x509_request.public_key_pem = request.public_key_pem
                client = await ca.SignClientCertificate(x509_request, timeout=self._timeout)
                response.certificate = client.certificate_pem
                serial, valid_after, valid_before = (
                    client.serial,
                    client.valid_after,
                    client.valid_before,
                )
            authorities: ca_service_pb2.GetAuthoritiesResponse = await authorities_call
        except grpc.aio.AioRpcError as error:
            raise relay(error, "ca") from None
        finally:
            authorities_call.cancel()  # a no-op once it answered
        response.serial = serial
        response.valid_after.CopyFrom(valid_after)
        response.valid_before.CopyFrom(valid_before)
        response.connection.CopyFrom(_connection(server, access, authorities))
        return response

    async def _audit_failure(
        self, team: str, server: str, outcome: int, reason: str, facts: dict[str, str]
    ) -> None:
        """Record a refused or failed issuance; never let that hide the refusal itself."""
        try:
            await self._trail.append(
                team,
                audit_event(
                    "credentials.issue",
                    server,
                    outcome=outcome,
                    details={**facts, "reason": reason[:1024]},
                ),
            )
        except Exception:  # logged: the refusal is what the caller must see
            log.exception("credential refusal not audited", server=server)
