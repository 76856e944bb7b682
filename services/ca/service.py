"""The CA's gRPC servicer: validate → authorize → one transaction → protobuf.

Signing RPCs are internal: only the platform services named per RPC may call them
(authenticated by service certificate). Reading trust anchors is open. No SQL and
no crypto here: those live in the repository and the signer modules.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

from runtime.authorization import Need, requires
from runtime.cert_uris import (
    split_project_name,
    split_server_name,
    split_team_name,
    split_user_name,
)
from runtime.clock import Clock, timestamp, utc_now
from runtime.database import Database
from runtime.errors import InvalidInput, NotFound
from runtime.identity import current_identity
from runtime.page_tokens import page_limit
from services.ca import repository
from services.ca.authorities import (
    AuthorityKind,
    AuthorityState,
    check_retire_time,
    effective_state,
    trust_anchors,
)
from services.ca.issuance_log import IssuanceLog
from services.ca.key_encryption import KeyEncryption
from services.ca.limits import check_request_id
from services.ca.models import AuthorityRow, IssuanceRow
from services.ca.ssh_signer import (
    USER_MAX_TTL_SECONDS,
    HostCertificateRequest,
    SignedSSHCertificate,
    UserCertificateRequest,
    sign_host_certificate,
    sign_user_certificate,
)
from services.ca.x509_signer import (
    ClientCertificateRequest,
    ServerCertificateRequest,
    SignedX509Certificate,
    sign_client_certificate,
    sign_server_certificate,
)
from sft.ca.v1 import authority_pb2, ca_service_pb2, ca_service_pb2_grpc, issuance_pb2

__all__ = ["CertificateAuthority"]

Context = Any  # grpc.aio.ServicerContext; grpc ships no type information

# Who may call what: auth signs for people, inventory for projects and servers.
_PROJECT_ADMINS = ("inventory",)
_USER_SIGNERS = ("auth",)
_SERVER_SIGNERS = ("inventory",)
_LOG_READERS = ("auth", "inventory")
#: How long a replica keeps using the signing key it last read (see _active_authority).
ACTIVE_CACHE_SECONDS = 5
_ACTIVE_CACHE = dt.timedelta(seconds=ACTIVE_CACHE_SECONDS)

_KIND_TO_PROTO = {
    AuthorityKind.SSH_USER: authority_pb2.AUTHORITY_KIND_SSH_USER,
    AuthorityKind.SSH_HOST: authority_pb2.AUTHORITY_KIND_SSH_HOST,
    AuthorityKind.X509: authority_pb2.AUTHORITY_KIND_X509,
}
_KIND_FROM_PROTO = {value: key for key, value in _KIND_TO_PROTO.items()}
_STATE_TO_PROTO = {
    AuthorityState.ACTIVE: authority_pb2.AUTHORITY_STATE_ACTIVE,
    AuthorityState.PUBLISHED: authority_pb2.AUTHORITY_STATE_PUBLISHED,
    AuthorityState.RETIRED: authority_pb2.AUTHORITY_STATE_RETIRED,
}
_ISSUANCE_KINDS = {
    issuance_pb2.CERTIFICATE_KIND_SSH_USER: "ssh_user",
    issuance_pb2.CERTIFICATE_KIND_SSH_HOST: "ssh_host",
    issuance_pb2.CERTIFICATE_KIND_X509_CLIENT: "x509_client",
    issuance_pb2.CERTIFICATE_KIND_X509_SERVER: "x509_server",
}
_ISSUANCE_KINDS_TO_PROTO = {value: key for key, value in _ISSUANCE_KINDS.items()}


def _required(value: str, field: str, example: str) -> str:
    if not value:
        raise InvalidInput(f"{field} is required, e.g. {example}")
    return value


def _same_team(team: str, other_team: str, field: str, value: str) -> None:
    if team != other_team:
        raise InvalidInput(f"{field} {value!r} is not in team {team!r}, the project's team")


class CertificateAuthority(ca_service_pb2_grpc.CertificateAuthorityServiceServicer):
    """Serves sft.ca.v1.CertificateAuthorityService over one database."""

    def __init__(
        self,
        database: Database,
        key_encryption: KeyEncryption,
        clock: Clock = utc_now,
    ) -> None:
        self._database = database
        self._keys = repository.SigningKeys(key_encryption)
        self._clock = clock
        self._active: dict[tuple[str, AuthorityKind], tuple[AuthorityRow, dt.datetime]] = {}
        self._log = IssuanceLog(database)

    def _authority(self, row: AuthorityRow, now: dt.datetime) -> authority_pb2.Authority:
        message = authority_pb2.Authority(
            name=f"{row.project}/authorities/{row.id}",
            kind=_KIND_TO_PROTO[AuthorityKind(row.kind)],
            state=_STATE_TO_PROTO[effective_state(AuthorityState(row.state), row.retire_time, now)],
            key_type=row.key_type,
            public_key=row.public_key,
            certificate_pem=row.certificate_pem,
            fingerprint=row.fingerprint,
            create_time=timestamp(row.create_time),
        )
        if row.not_after is not None:
            message.not_after.CopyFrom(timestamp(row.not_after))
        if row.retire_time is not None:
            message.retire_time.CopyFrom(timestamp(row.retire_time))
        return message

    @requires(Need.PLATFORM_SERVICE, services=_PROJECT_ADMINS)
    async def CreateProjectAuthorities(
        self, request: ca_service_pb2.CreateProjectAuthoritiesRequest, context: Context
    ) -> ca_service_pb2.CreateProjectAuthoritiesResponse:
        """Create (or return) the project's three active authorities."""
        project = _project(request.project)
        now = self._clock()
        async with self._database.sessions.begin() as session:
            rows = await repository.create_project_authorities(
                session, project, self._keys.kek, now
            )
        return ca_service_pb2.CreateProjectAuthoritiesResponse(
            authorities=[self._authority(row, now) for row in rows]
        )

    @requires(Need.ANYONE)  # trust anchors are public
    async def GetAuthorities(
        self, request: ca_service_pb2.GetAuthoritiesRequest, context: Context
    ) -> ca_service_pb2.GetAuthoritiesResponse:
        """Return the project's trust anchors (open: they are public keys)."""
        project = _project(request.project)
        now = self._clock()
        async with self._database.sessions() as session:
            rows = await repository.list_authorities(session, project)
        if not rows:
            raise NotFound(
                f"project {project!r} has no authorities; check the project name "
                "(teams/TEAM/projects/PROJECT)"
            )
        views = [(row, repository.published(row, now)) for row in rows]
        anchors = trust_anchors(project, (view for _, view in views))
        trusted = sorted(
            (pair for pair in views if pair[1].state is not AuthorityState.RETIRED),
            key=lambda pair: (pair[1].state is not AuthorityState.ACTIVE, pair[0].kind),
        )
        return ca_service_pb2.GetAuthoritiesResponse(
            trusted_user_ca_keys=anchors.trusted_user_ca_keys,
            known_hosts=anchors.known_hosts,
            x509_ca_bundle_pem=anchors.x509_ca_bundle_pem,
            authorities=[self._authority(row, now) for row, _ in trusted],
        )

    @requires(Need.PLATFORM_SERVICE, services=_PROJECT_ADMINS)
    async def RotateAuthority(
        self, request: ca_service_pb2.RotateAuthorityRequest, context: Context
    ) -> ca_service_pb2.RotateAuthorityResponse:
        """Make a new signing key; keep the previous one trusted until its retire time."""
        project = _project(request.project)
        kind = _KIND_FROM_PROTO.get(request.kind)
        if kind is None:
            raise InvalidInput("kind is required: SSH_USER, SSH_HOST or X509")
        now = self._clock()
        retire_time = check_retire_time(
            request.previous_retire_time.ToDatetime(dt.UTC)
            if request.HasField("previous_retire_time")
            else None,
            now,
        )
        async with self._database.sessions.begin() as session:
            current, previous = await repository.rotate_authority(
                session, project, kind, retire_time, self._keys.kek, now
            )
        self._active.pop((project, kind), None)
        return ca_service_pb2.RotateAuthorityResponse(
            authority=self._authority(current, now),
            previous_authority=self._authority(previous, now),
        )

    @requires(Need.PLATFORM_SERVICE, services=_USER_SIGNERS)
    async def SignUserCertificate(
        self, request: ca_service_pb2.SignUserCertificateRequest, context: Context
    ) -> ca_service_pb2.SignUserCertificateResponse:
        """Sign an OpenSSH user certificate for one account of the project."""
        project = _project(request.project)
        team, project_id = split_project_name(project)
        user_team, user_id = split_user_name(
            _required(request.user, "user", "teams/acme/users/alice")
        )
        _same_team(team, user_team, "user", request.user)
        extensions = request.extensions
        wanted = UserCertificateRequest(
            public_key=_required(request.public_key, "public_key", "ssh-ed25519 AAAA…"),
            user=f"{user_id}@{team}",
            account=_required(request.principal, "principal", "alice"),
            project=project_id,
            device_id=_device_id(request.device, request.user),
            request_id=check_request_id(request.request_id),
            ttl_seconds=request.ttl_seconds,
            max_ttl_seconds=USER_MAX_TTL_SECONDS,
            permit_pty=extensions.permit_pty,
            permit_port_forwarding=extensions.permit_port_forwarding,
            permit_agent_forwarding=extensions.permit_agent_forwarding,
            permit_user_rc=extensions.permit_user_rc,
            permit_x11_forwarding=extensions.permit_x11_forwarding,
            source_addresses=tuple(request.source_addresses),
            allow_privileged_account=request.allow_privileged_account,
        )
        wanted.check()
        signed = await self._issue(
            project,
            AuthorityKind.SSH_USER,
            "ssh_user",
            request.user,
            wanted.request_id,
            lambda row, serial, now: sign_user_certificate(
                self._keys.ssh_key_for(row), wanted, serial, now
            ),
        )
        return ca_service_pb2.SignUserCertificateResponse(**_ssh_response_fields(signed))

    @requires(Need.PLATFORM_SERVICE, services=_SERVER_SIGNERS)
    async def SignHostCertificate(
        self, request: ca_service_pb2.SignHostCertificateRequest, context: Context
    ) -> ca_service_pb2.SignHostCertificateResponse:
        """Sign an OpenSSH host certificate naming the server's names and addresses."""
        project = _project(request.project)
        server = _server(request.server, project)
        principals = tuple(request.principals)
        wanted = HostCertificateRequest(
            public_key=_required(request.public_key, "public_key", "ssh-ed25519 AAAA…"),
            host_name=principals[0] if principals else "-",
            server_id=split_server_name(server)[2],
            principals=principals,
            ttl_seconds=request.ttl_seconds,
        )
        wanted.check()
        request_id = check_request_id(request.request_id)
        signed = await self._issue(
            project,
            AuthorityKind.SSH_HOST,
            "ssh_host",
            server,
            request_id,
            lambda row, serial, now: sign_host_certificate(
                self._keys.ssh_key_for(row), wanted, serial, now
            ),
        )
        return ca_service_pb2.SignHostCertificateResponse(**_ssh_response_fields(signed))

    @requires(Need.PLATFORM_SERVICE, services=_USER_SIGNERS)
    async def SignClientCertificate(
        self, request: ca_service_pb2.SignClientCertificateRequest, context: Context
    ) -> ca_service_pb2.SignClientCertificateResponse:
        """Sign an X.509 client certificate the project's brokers accept."""
        project = _project(request.project)
        wanted = ClientCertificateRequest(
            project=project,
            user=_required(request.user, "user", "teams/acme/users/alice"),
            account=_required(request.account_name, "account_name", "alice"),
            server=request.server,
            csr_pem=request.csr_pem,
            public_key_pem=request.public_key_pem,
            ttl_seconds=request.ttl_seconds,
            request_id=check_request_id(request.request_id),
            allow_privileged_account=request.allow_privileged_account,
        )
        wanted.check()
        signed = await self._issue(
            project,
            AuthorityKind.X509,
            "x509_client",
            request.user,
            wanted.request_id,
            lambda row, serial, now: sign_client_certificate(
                self._keys.x509_key_for(row), self._keys.certificate_for(row), wanted, serial, now
            ),
        )
        return ca_service_pb2.SignClientCertificateResponse(
            certificate_pem=signed.certificate_pem,
            serial=signed.serial,
            uris=list(signed.uris),
            valid_after=timestamp(signed.valid_after),
            valid_before=timestamp(signed.valid_before),
            authority_fingerprint=signed.ca_fingerprint,
        )

    @requires(Need.PLATFORM_SERVICE, services=_SERVER_SIGNERS)
    async def SignServerCertificate(
        self, request: ca_service_pb2.SignServerCertificateRequest, context: Context
    ) -> ca_service_pb2.SignServerCertificateResponse:
        """Sign an X.509 server certificate for one server's broker."""
        project = _project(request.project)
        server = _server(request.server, project)
        wanted = ServerCertificateRequest(
            project=project,
            server=server,
            csr_pem=_required(request.csr_pem, "csr_pem", "a PEM certificate signing request"),
            dns_names=tuple(request.dns_names),
            ip_addresses=tuple(request.ip_addresses),
            ttl_seconds=request.ttl_seconds,
            request_id=check_request_id(request.request_id),
        )
        wanted.check()
        signed = await self._issue(
            project,
            AuthorityKind.X509,
            "x509_server",
            server,
            wanted.request_id,
            lambda row, serial, now: sign_server_certificate(
                self._keys.x509_key_for(row), self._keys.certificate_for(row), wanted, serial, now
            ),
        )
        return ca_service_pb2.SignServerCertificateResponse(
            certificate_pem=signed.certificate_pem,
            serial=signed.serial,
            uri=signed.uris[0],
            valid_after=timestamp(signed.valid_after),
            valid_before=timestamp(signed.valid_before),
            authority_fingerprint=signed.ca_fingerprint,
        )

    @requires(Need.PLATFORM_SERVICE, services=_LOG_READERS)
    async def ListIssuances(
        self, request: ca_service_pb2.ListIssuancesRequest, context: Context
    ) -> ca_service_pb2.ListIssuancesResponse:
        """Return one page of the issuance log, newest first."""
        parent = _required(request.parent, "parent", "teams/acme/projects/web")
        if parent.endswith("/projects/-"):
            team = split_team_name(parent.removesuffix("/projects/-"))
            project: str | None = None
        else:
            team, _ = split_project_name(parent)
            project = parent
        if request.kind and request.kind not in _ISSUANCE_KINDS:
            raise InvalidInput(f"kind {request.kind} is not a known certificate kind")
        where = repository.IssuanceFilter(
            team=team,
            project=project,
            kind=_ISSUANCE_KINDS.get(request.kind),
            subject=request.subject or None,
            request_id=request.request_id or None,
            start_time=request.start_time.ToDatetime(dt.UTC)
            if request.HasField("start_time")
            else None,
            end_time=request.end_time.ToDatetime(dt.UTC) if request.HasField("end_time") else None,
        )
        page_limit(request.page_size)
        async with self._database.sessions() as session:
            rows, next_token = await repository.list_issuances(
                session, where, request.page_size, request.page_token
            )
        return ca_service_pb2.ListIssuancesResponse(
            issuances=[_issuance(row) for row in rows], next_page_token=next_token
        )

    async def _active_authority(
        self, project: str, kind: AuthorityKind, now: dt.datetime
    ) -> AuthorityRow:
        """Return the signing key row, cached briefly (a query per signature was half the cost).

        Another replica's rotation is seen within ACTIVE_CACHE_SECONDS; until then the
        previous key signs, which servers still trust (it stays published until its
        retire time), and this replica's own rotations drop the entry at once.
        """
        cached = self._active.get((project, kind))
        if cached is not None and now - cached[1] < _ACTIVE_CACHE:
            return cached[0]
        async with self._database.sessions() as session:
            row = await repository.active_authority(session, project, kind)
        self._active[(project, kind)] = (row, now)
        return row

    async def _issue(
        self,
        project: str,
        kind: AuthorityKind,
        issuance_kind: str,
        subject: str,
        request_id: str,
        sign: Callable[[AuthorityRow, int, dt.datetime], Signed],
    ) -> Signed:
        """Sign with the project's active key of `kind`; return once the log row is committed.

        The log row is written by the IssuanceLog, which commits concurrent calls' rows
        together: each call still returns only after its own row is durable.
        """
        caller = str(current_identity.get())
        team, _ = split_project_name(project)
        now = self._clock()
        row = await self._active_authority(project, kind, now)
        signed = sign(row, repository.new_serial(), now)
        await self._log.append(
            repository.IssuanceRecord(
                team=team,
                project=project,
                serial=signed.serial,
                kind=issuance_kind,
                subject=subject,
                principals=_principals(signed),
                key_id=signed.key_id if isinstance(signed, SignedSSHCertificate) else "",
                key_fingerprint=signed.subject_fingerprint,
                authority=row,
                valid_after=signed.valid_after,
                valid_before=signed.valid_before,
                caller=caller,
                request_id=request_id,
                create_time=now,
            )
        )
        return signed


Signed = TypeVar("Signed", SignedSSHCertificate, SignedX509Certificate)


def _ssh_response_fields(signed: SignedSSHCertificate) -> dict[str, Any]:
    """Return the fields user and host certificate responses share."""
    return {
        "certificate": signed.certificate,
        "serial": signed.serial,
        "key_id": signed.key_id,
        "valid_after": timestamp(signed.valid_after),
        "valid_before": timestamp(signed.valid_before),
        "authority_fingerprint": signed.ca_fingerprint,
    }


def _principals(signed: SignedSSHCertificate | SignedX509Certificate) -> tuple[str, ...]:
    if isinstance(signed, SignedSSHCertificate):
        return signed.principals
    return signed.san_entries


def _project(name: str) -> str:
    split_project_name(_required(name, "project", "teams/acme/projects/web"))
    return name


def _server(name: str, project: str) -> str:
    team, project_id, _ = split_server_name(
        _required(name, "server", f"{project}/servers/SERVER_ID")
    )
    if f"teams/{team}/projects/{project_id}" != project:
        raise InvalidInput(f"server {name!r} is not in project {project!r}")
    return name


def _device_id(device: str, user: str) -> str:
    """Return the device id of a device resource name under `user`, or "-" for none."""
    if not device:
        return "-"
    prefix = f"{user}/devices/"
    device_id = device.removeprefix(prefix)
    if not device.startswith(prefix) or not device_id or "/" in device_id:
        raise InvalidInput(
            f"device {device!r} is not a device of {user!r}; expected {prefix}DEVICE_ID"
        )
    return device_id


def _issuance(row: IssuanceRow) -> issuance_pb2.Issuance:
    return issuance_pb2.Issuance(
        name=f"{row.project}/issuances/{row.serial}",
        serial=row.serial,
        kind=_ISSUANCE_KINDS_TO_PROTO[row.kind],
        project=row.project,
        subject=row.subject,
        principals=row.principals,
        key_id=row.key_id,
        key_fingerprint=row.key_fingerprint,
        authority_fingerprint=row.authority_fingerprint,
        valid_after=timestamp(row.valid_after),
        valid_before=timestamp(row.valid_before),
        caller=row.caller,
        request_id=row.request_id,
        create_time=timestamp(row.create_time),
    )
