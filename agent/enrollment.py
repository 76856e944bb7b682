"""Enrolling this server with the token file.

Pins the platform before sending anything (the token carries the CA's SHA-256), keeps
the agent key across failed attempts (re-enrollment with the same key and token is
idempotent on the platform), stores the identity, and only then deletes the token
file. Waits without spinning: for a token that is not there yet (cloud-init often
writes it after boot), for a new token after a refused one, and with capped jittered
backoff for a platform that is down. Never logs the token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import structlog
from cryptography.hazmat.primitives import serialization

from agent.broker_tls import BrokerKey
from agent.config import AgentConfig, ConfigError
from agent.facts import facts_message, gather_facts
from agent.host_keys import HostKey, host_certificates, read_host_keys, trust_anchors
from agent.platform import (
    CALL_TIMEOUT_SECONDS,
    PinMismatch,
    PlatformUnreachable,
    PlatformURL,
    fetch_presented_chain,
    find_pinned_ca,
    is_transient,
    platform_channel,
)
from agent.renewal import CertificateRenewal
from agent.state import AgentKey, AgentState, ServerIdentity
from runtime.backoff import Backoff
from runtime.errors import InvalidInput
from runtime.pinned_codes import CodeKind, PinnedCode
from sft.inventory.v1 import agent_service_pb2, agent_service_pb2_grpc

__all__ = ["Enrollment", "EnrollmentTimings"]

log = structlog.get_logger("sftd.enrollment")

Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class EnrollmentTimings:
    """How often enrollment looks again (tests shorten these)."""

    #: How often to look for a token file that is not there yet.
    token_poll_seconds: float = 5.0
    #: How often to log that the token file is still missing.
    missing_token_log_seconds: float = 60.0
    #: How often to look for a new token after one was refused.
    refused_token_poll_seconds: float = 30.0
    retry_initial_seconds: float = 1.0
    retry_maximum_seconds: float = 300.0


class _Refused(Exception):
    """This token cannot enroll as it is; wait for a new one (the message says why)."""


class _RetryLater(Exception):
    """The attempt failed for a reason that may pass; retry with backoff."""


_Stamp = tuple[int, int, int]


def _stamp(path: Path) -> _Stamp | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


class Enrollment:
    """Enrolls this server once; `run` returns its identity."""

    def __init__(
        self,
        config: AgentConfig,
        state: AgentState,
        *,
        clock: Clock = _utc_now,
        timings: EnrollmentTimings | None = None,
        certificates: CertificateRenewal | None = None,
    ) -> None:
        if config.platform_url is None:
            raise ConfigError(
                "InitialURL is not set, and this server is not enrolled yet: set InitialURL "
                "to the platform's URL (https://HOST[:PORT]) in sftd.yaml"
            )
        self.url: PlatformURL = config.platform_url
        self.config = config
        self.state = state
        self._clock = clock
        self._timings = timings or EnrollmentTimings()
        #: With a broker: where its certificate goes (its CSR goes with the request).
        self._certificates = certificates
        self._backoff = Backoff(
            self._timings.retry_initial_seconds, self._timings.retry_maximum_seconds
        )

    @property
    def token_file(self) -> Path:
        """Return where the enrollment token is expected."""
        return self.config.enrollment_token_file

    async def run(self) -> ServerIdentity:
        """Enroll, waiting as long as it takes; return the stored identity."""
        key = self.state.key()
        log.info(
            "enrolling this server",
            platform=str(self.url),
            token_file=str(self.token_file),
            agent_key=key.fingerprint,
        )
        while True:
            text, stamp = await self._token()
            try:
                return await self._attempt(text, key)
            except _Refused as refused:
                log.error(
                    "enrollment refused", reason=str(refused), token_file=str(self.token_file)
                )
                await self._new_token(stamp)
            except _RetryLater as failed:
                delay = self._backoff.next_delay()
                log.warning(
                    "enrollment failed; retrying",
                    reason=str(failed),
                    retry_in_seconds=round(delay, 1),
                )
                await asyncio.sleep(delay)

    async def _token(self) -> tuple[str, _Stamp | None]:
        """Return the token file's text once there is one, saying once a minute why not."""
        last_logged: float | None = None
        while True:
            stamp = _stamp(self.token_file)
            problem = None
            try:
                text = await asyncio.to_thread(self.token_file.read_text, encoding="utf-8")
            except FileNotFoundError:
                text = ""
            except (OSError, UnicodeDecodeError) as exc:
                text, problem = "", str(exc)
            if text.strip():
                return text.strip(), stamp
            now = time.monotonic()
            if last_logged is None or now - last_logged >= self._timings.missing_token_log_seconds:
                last_logged = now
                if problem is not None:
                    log.error(
                        "cannot read the enrollment token file",
                        token_file=str(self.token_file),
                        reason=problem,
                    )
                else:
                    log.info(
                        "waiting for an enrollment token",
                        token_file=str(self.token_file),
                        hint="write a token from `sft admin token create --project P` into it",
                    )
            await asyncio.sleep(self._timings.token_poll_seconds)

    async def _new_token(self, refused: _Stamp | None) -> None:
        """Return once the token file differs from the refused one (checked every 30 s)."""
        log.info(
            "waiting for a new enrollment token",
            token_file=str(self.token_file),
            check_every_seconds=self._timings.refused_token_poll_seconds,
        )
        # Polling: a file written by cloud-init or an operator raises no event to await.
        while _stamp(self.token_file) == refused:  # noqa: ASYNC110
            await asyncio.sleep(self._timings.refused_token_poll_seconds)
        self._backoff.reset()

    async def _attempt(self, text: str, key: AgentKey) -> ServerIdentity:
        try:
            code = PinnedCode.parse(text, CodeKind.SERVER_ENROLLMENT)
        except InvalidInput as exc:
            raise _Refused(f"the token file does not hold a usable token: {exc.message}") from None
        try:
            chain = await asyncio.to_thread(fetch_presented_chain, self.url)
            ca = find_pinned_ca(chain, code.ca_sha256, self.url)
        except PlatformUnreachable as exc:
            raise _RetryLater(str(exc)) from None
        except PinMismatch as exc:
            raise _Refused(str(exc)) from None
        ca_pem = ca.public_bytes(serialization.Encoding.PEM)
        host_keys = await asyncio.to_thread(read_host_keys, self.config)
        facts = await asyncio.to_thread(gather_facts, self.config)
        if facts.os == "linux" and not host_keys:
            # sshd makes its keys on first start, which may come after sftd's.
            raise _RetryLater(
                "no SSH host keys found (HostKey in "
                f"{self.config.sshd_config_file}, else sshd's defaults); the platform "
                "certifies them, so enrollment waits for sshd's keys"
            )
        broker_key = None
        if self._certificates is not None and self._certificates.broker is not None:
            broker_key = BrokerKey.generate()
        request = agent_service_pb2.EnrollServerRequest(
            enrollment_token=code.encode(),
            agent_public_key=key.public_line,
            host_public_keys=[host_key.public_line for host_key in host_keys],
            broker_csr_pem=broker_key.csr_pem() if broker_key is not None else "",
            facts=facts_message(facts),
        )
        try:
            async with platform_channel(self.url, ca_pem) as channel:
                stub = agent_service_pb2_grpc.AgentServiceStub(channel)
                reply = await stub.EnrollServer(request, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            details = error.details() or error.code().name
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise _Refused(f"the platform refused the token: {details}") from None
            if is_transient(error):
                raise _RetryLater(f"the platform at {self.url} is unavailable: {details}") from None
            raise _RetryLater(
                f"the platform refused enrollment ({error.code().name}): {details}"
            ) from None
        identity = self._store(reply, key, code, ca_pem, host_keys)
        if broker_key is not None and self._certificates is not None:
            # After server.json: a crash in between leaves "enrolled, no broker
            # certificate", which the daemon renews on its first heartbeat.
            self._certificates.store_broker_certificate(
                broker_key, reply.broker_certificate_pem, reply.trust_anchors.x509_ca_bundle_pem
            )
        return identity

    def _store(
        self,
        reply: agent_service_pb2.EnrollServerResponse,
        key: AgentKey,
        code: PinnedCode,
        ca_pem: bytes,
        host_keys: tuple[HostKey, ...],
    ) -> ServerIdentity:
        subject = reply.credential.subject
        if not subject.startswith("teams/") or "/servers/" not in subject:
            raise _RetryLater(f"the platform answered with no server identity ({subject!r})")
        if reply.credential.key_fingerprint != key.fingerprint:
            raise _RetryLater("the platform answered for another agent key")
        identity = ServerIdentity(
            server=subject,
            platform_url=str(self.url),
            ca_sha256=code.ca_sha256.hex(),
            agent_key_fingerprint=key.fingerprint,
            enrolled_at=self._clock(),
        )
        self.state.write_enrollment(
            identity,
            ca_pem,
            host_certificates(host_keys, list(reply.host_certificates)),
            trust_anchors(reply.trust_anchors),
        )
        # Only now: a crash before this line leaves the token for a retry with the same key.
        try:
            self.token_file.unlink(missing_ok=True)
        except OSError as exc:
            log.warning(
                "enrolled, but cannot delete the token file",
                file=str(self.token_file),
                reason=str(exc),
            )
        log.info(
            "enrolled",
            server=identity.server,
            platform=identity.platform_url,
            host_certificates=len(reply.host_certificates),
        )
        return identity
