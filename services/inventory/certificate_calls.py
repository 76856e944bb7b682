"""The inventory's calls to the CA: project authorities, trust anchors, and the host and
broker certificates of enrolled servers. Sends public keys and CSRs only; a CA refusal
reaches the caller relayed (services.inventory never signs anything itself).
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import Sequence

import grpc
import structlog

from runtime.peers import Peers, relay
from services.inventory.fleet_rules import host_principals
from services.inventory.server_keys import PublicKey
from services.inventory.servers import ServerView
from sft.ca.v1 import ca_service_pb2, ca_service_pb2_grpc
from sft.inventory.v1 import agent_pb2

__all__ = ["ANCHORS_CACHE_SECONDS", "CA_TIMEOUT_SECONDS", "CertificateCalls"]

#: Lifetime of host and broker certificates; agents renew when 2 days are left.
HOST_CERTIFICATE_TTL_SECONDS = 7 * 86400
#: How long trust anchors are reused before asking the CA again (heartbeats are many).
ANCHORS_CACHE_SECONDS = 30.0
CA_TIMEOUT_SECONDS = 10.0


def _request_id() -> str:
    """Return the current request id (passed to the CA for its issuance log)."""
    bound = structlog.contextvars.get_contextvars()
    return str(bound.get("request_id") or uuid.uuid4().hex)


class CertificateCalls:
    """Calls the CA on the shared channel as the inventory; caches trust anchors briefly."""

    def __init__(self, peers: Peers) -> None:
        self._peers = peers
        self._anchors: dict[str, tuple[float, agent_pb2.TrustAnchors]] = {}

    def _ca(self) -> ca_service_pb2_grpc.CertificateAuthorityServiceStub:
        """Return a CA stub on the shared channel, calling as the inventory."""
        return ca_service_pb2_grpc.CertificateAuthorityServiceStub(self._peers.channel("ca"))

    async def create_project_authorities(
        self, project: str, *, timeout_seconds: float = CA_TIMEOUT_SECONDS
    ) -> None:
        """Have the CA make a project's authorities (idempotent); relay a refusal."""
        try:
            await self._ca().CreateProjectAuthorities(
                ca_service_pb2.CreateProjectAuthoritiesRequest(project=project),
                timeout=timeout_seconds,
            )
        except grpc.aio.AioRpcError as error:
            raise relay(error, "ca") from None

    async def trust_anchors(self, project: str) -> agent_pb2.TrustAnchors:
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
                await self.create_project_authorities(project)
                reply = await stub.GetAuthorities(request, timeout=CA_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            raise relay(error, "ca") from None
        anchors = agent_pb2.TrustAnchors(
            trusted_user_ca_keys=reply.trusted_user_ca_keys,
            x509_ca_bundle_pem=reply.x509_ca_bundle_pem,
        )
        self._anchors[project] = (time.monotonic(), anchors)
        return anchors

    async def host_certificates(
        self, view: ServerView, keys: Sequence[PublicKey]
    ) -> list[agent_pb2.HostCertificate]:
        """Ask the CA for one host certificate per key, naming every server name."""
        principals = list(host_principals(view.row))
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

    async def broker_certificate(self, view: ServerView, csr: str) -> str:
        """Ask the CA for the broker's TLS server certificate; '' without a CSR."""
        if not csr:
            return ""
        names = host_principals(view.row)
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
