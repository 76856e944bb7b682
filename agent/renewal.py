"""Renewing what the platform certifies for this server: sshd's host keys and the broker's key.

One RenewHostCertificates call carries both: the host public keys as enrolled, and a
CSR for a fresh broker key (made here; the key never leaves). Writes what comes back
to the state dir and the broker's TLS dir; installing it for sshd and waking the
broker are the daemon's. Never logs a private key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import grpc.aio
import structlog

from agent.broker_tls import BrokerKey, BrokerTLSFiles, CertificateRefused
from agent.config import AgentConfig
from agent.host_keys import host_certificates, read_host_keys, trust_anchors
from agent.platform import CALL_TIMEOUT_SECONDS, AgentSession, is_transient
from agent.state import AgentState
from sft.inventory.v1 import agent_service_pb2, agent_service_pb2_grpc

__all__ = ["RENEW_BEFORE", "CertificateRenewal", "Renewed"]

log = structlog.get_logger("sftd.renewal")

#: Renew the broker's certificate when it has less than this left (the platform uses the
#: same margin to tell the agent to renew host certificates).
RENEW_BEFORE = dt.timedelta(days=2)

Problem = Callable[[str, str | None], None]


@dataclass(frozen=True)
class Renewed:
    """What one renewal changed."""

    host_certificates: int
    broker_certificate: bool


class CertificateRenewal:
    """Renews host and broker certificates; reports problems as `problem(source, text)`."""

    def __init__(
        self,
        config: AgentConfig,
        state: AgentState,
        *,
        broker: BrokerTLSFiles | None,
        problem: Problem,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.config = config
        self.state = state
        self.broker = broker
        self._problem = problem
        self._clock = clock

    def broker_due(self) -> bool:
        """Return whether the broker needs a (new) certificate: none, unusable, or expiring."""
        if self.broker is None:
            return False
        now = self._clock()
        expires = self.broker.expire_time()
        return self.broker.missing(now) is not None or (
            expires is not None and expires - now < RENEW_BEFORE
        )

    def earliest_expiry(self) -> dt.datetime | None:
        """Return when the first of the host and broker certificates expires (None: none)."""
        times = [c.valid_before for c in self.state.read_host_certificates()]
        if self.broker is not None and (expires := self.broker.expire_time()) is not None:
            times.append(expires)
        return min(times, default=None)

    async def renew(self, session: AgentSession) -> Renewed | None:
        """Renew everything in one call; None when it did not happen (problem recorded)."""
        keys = await asyncio.to_thread(read_host_keys, self.config)
        broker_key = BrokerKey.generate() if self.broker is not None else None
        if not keys and broker_key is None:
            return None
        stub = agent_service_pb2_grpc.AgentServiceStub(session.channel)
        try:
            reply = await stub.RenewHostCertificates(
                agent_service_pb2.RenewHostCertificatesRequest(
                    host_public_keys=[key.public_line for key in keys],
                    broker_csr_pem=broker_key.csr_pem() if broker_key is not None else "",
                ),
                metadata=await session.metadata(),
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            if is_transient(error):
                return None  # the next heartbeat asks again
            log.error("certificate renewal refused", reason=error.details())
            self._problem("host-certificates", f"renewal refused: {error.details()}")
            return None
        self._problem("host-certificates", None)
        anchors = trust_anchors(reply.trust_anchors)
        if keys:
            self.state.write_host_certificates(
                host_certificates(keys, list(reply.host_certificates))
            )
        self.state.write_trust_anchors(anchors)
        stored = False
        if self.broker is not None and broker_key is not None:
            stored = self.store_broker_certificate(
                broker_key, reply.broker_certificate_pem, anchors.x509_ca_bundle_pem
            )
        log.info(
            "certificates renewed",
            host_certificates=len(reply.host_certificates),
            broker_certificate=stored,
        )
        return Renewed(len(reply.host_certificates), stored)

    def store_broker_certificate(self, key: BrokerKey, pem: str, ca_bundle_pem: str) -> bool:
        """Write the broker's new certificate with `key`; record a problem when it is unusable."""
        assert self.broker is not None
        if not pem:
            message = "the platform returned no broker certificate; asking again later"
        else:
            try:
                self.broker.store(key, pem, ca_bundle_pem)
            except CertificateRefused as refused:
                message = f"{refused}; asking again later"
            else:
                self._problem("broker-certificate", None)
                return True
        log.error("broker certificate not stored", reason=message)
        self._problem("broker-certificate", message)
        return False
