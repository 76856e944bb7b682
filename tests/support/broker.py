"""Test helpers for the RDP broker: a project PKI, a running `sft-broker`, a stand-in agent.

- `TestPKI`: a project X.509 CA (as services.ca makes one) that issues client
  certificates (`client_cert`) and broker server certificates (`server_cert`), with any
  validity window or usage, and writes a broker's --tls-dir (`write_tls_dir`).
- `start_broker(...)`: runs the real `sft-broker` on a free loopback port, waits until
  it accepts TCP connections, and always stops it by PID (SIGTERM, then SIGKILL).
- `agent_control_stub(socket_path, accounts)`: serves AgentControlService on a Unix
  socket, enabling the listed accounts with a generated password and recording every
  Enable/Disable call, so a test can assert that a grant was released.
- `broker_channel(...)`: a grpc.aio mTLS channel to a broker with a client certificate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from runtime.cert_uris import account_uri, server_uri, user_uri
from runtime.clock import timestamp
from sft.agent.v1 import agent_control_service_pb2, agent_control_service_pb2_grpc
from tests.support.ports import free_port, listening
from tests.support.processes import stop_process

__all__ = [
    "BROKER_BIN",
    "AgentControlStub",
    "BrokerProcess",
    "ControlCall",
    "IssuedCert",
    "TestPKI",
    "agent_control_stub",
    "broker_channel",
    "serve_agent_control_stub",
    "start_broker",
]

BROKER_BIN = str(Path(sys.executable).parent / "sft-broker")
_PEM = serialization.Encoding.PEM


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@dataclass(frozen=True)
class IssuedCert:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write `<stem>.crt` and `<stem>.key` (0600) into `directory`; return their paths."""
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_path.write_bytes(self.cert_pem)
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(self.key_pem)
        return cert_path, key_path


class TestPKI:
    """A project's X.509 CA for tests: team/project ids, CA key and certificate."""

    __test__ = False  # not a pytest test class

    def __init__(self, team: str = "acme", project: str = "win", server: str = "srv-1") -> None:
        self.team, self.project, self.server = team, project, server
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sft"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"sft CA {team}/{project}"),
            ]
        )
        now = _now()
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()),
                critical=False,
            )
            .sign(self.ca_key, hashes.SHA256())
        )

    @property
    def ca_pem(self) -> bytes:
        """Return the CA certificate, PEM (what ca.pem holds)."""
        return self.ca_cert.public_bytes(_PEM)

    def _issue(
        self,
        subject: str,
        uris: Sequence[str],
        usages: Sequence[ObjectIdentifier],
        *,
        not_before: dt.datetime | None,
        not_after: dt.datetime | None,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        self_signed: bool = False,
    ) -> IssuedCert:
        import ipaddress

        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        names += [x509.UniformResourceIdentifier(u) for u in uris]
        subject_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject_name)
            .issuer_name(subject_name if self_signed else self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(minutes=1))
            .not_valid_after(not_after or now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(key if self_signed else self.ca_key, hashes.SHA256())
        return IssuedCert(cert.public_bytes(_PEM), _key_pem(key))

    def client_cert(
        self,
        user: str = "alice",
        account: str = "alice",
        server: str | None = None,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        usages: Sequence[ObjectIdentifier] = (ExtendedKeyUsageOID.CLIENT_AUTH,),
        uris: Sequence[str] | None = None,
        self_signed: bool = False,
    ) -> IssuedCert:
        """Return a client certificate naming `user` and `account` (and `server` if given).

        `uris` replaces the sft:// URIs entirely (for garbled-identity tests).
        """
        if uris is None:
            uris = [
                user_uri(self.team, self.project, user),
                account_uri(self.team, self.project, account),
            ]
            if server is not None:
                uris.append(server_uri(self.team, self.project, server))
        return self._issue(
            user,
            uris,
            usages,
            not_before=not_before,
            not_after=not_after,
            self_signed=self_signed,
        )

    def server_cert(
        self,
        server: str | None = None,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        dns_names: Sequence[str] = ("localhost",),
        ip_addresses: Sequence[str] = ("127.0.0.1",),
    ) -> IssuedCert:
        """Return a broker (serverAuth) certificate for `server` (default: this PKI's)."""
        return self._issue(
            dns_names[0] if dns_names else "broker",
            [server_uri(self.team, self.project, server or self.server)],
            (ExtendedKeyUsageOID.SERVER_AUTH,),
            not_before=not_before,
            not_after=not_after,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
        )

    def write_tls_dir(self, directory: Path, server: IssuedCert | None = None) -> Path:
        """Write broker.crt, broker.key and ca.pem into `directory` (each by rename)."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        server = server or self.server_cert()
        for name, data, mode in (
            ("broker.key", server.key_pem, 0o600),
            ("broker.crt", server.cert_pem, 0o644),
            ("ca.pem", self.ca_pem, 0o644),
        ):
            staging = directory / f".{name}.new"
            descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
            os.replace(staging, directory / name)
        return directory


def broker_channel(
    port: int, pki: TestPKI, client: IssuedCert | None, *, host: str = "127.0.0.1"
) -> grpc.aio.Channel:
    """Return an mTLS grpc.aio channel to a broker, presenting `client` (None: no cert)."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    # The certificate names 127.0.0.1 and localhost; tests dial the address.
    return grpc.aio.secure_channel(
        f"{host}:{port}",
        credentials,
        options=[("grpc.ssl_target_name_override", "localhost")],
    )


@dataclass
class BrokerProcess:
    """A running `sft-broker`."""

    port: int
    tls_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    metrics_port: int | None = None

    @property
    def pid(self) -> int:
        """Return the broker's PID."""
        return self.process.pid

    def log(self) -> str:
        """Return everything the broker printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, wait, SIGKILL if needed; return the exit code."""
        return stop_process(self.process, timeout)


@contextmanager
def start_broker(
    tls_dir: Path,
    control: Path,
    target: str,
    *,
    extra_args: Iterable[str] = (),
    log_dir: Path | None = None,
    metrics: bool = False,
    timeout_seconds: float = 20,
) -> Iterator[BrokerProcess]:
    """Run `sft-broker` on a free 127.0.0.1 port until the block ends; stop it by PID."""
    port = free_port()
    metrics_port = free_port() if metrics else None
    log_path = (log_dir or tls_dir.parent) / f"broker-{port}.log"
    args = [
        BROKER_BIN,
        "--listen",
        f"127.0.0.1:{port}",
        "--tls-dir",
        str(tls_dir),
        "--control",
        str(control),
        "--target",
        target,
        "--log-level",
        "debug",
        *(["--metrics-listen", f"127.0.0.1:{metrics_port}"] if metrics_port else []),
        *extra_args,
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
    broker = BrokerProcess(port, tls_dir, log_path, process, metrics_port)
    try:
        deadline = time.monotonic() + timeout_seconds
        while not listening(port):
            if process.poll() is not None:
                raise RuntimeError(f"sft-broker exited {process.returncode}:\n{broker.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"sft-broker did not listen in time:\n{broker.log()}")
            time.sleep(0.05)
        yield broker
    finally:
        broker.stop()


@dataclass(frozen=True)
class ControlCall:
    """One call the stand-in agent received (never the password)."""

    method: str  # "EnableAccount" or "DisableAccount"
    account_name: str
    grant_id: str
    ttl_seconds: int = 0
    reason: int = 0


@dataclass
class AgentControlStub(agent_control_service_pb2_grpc.AgentControlServiceServicer):
    """A stand-in for sftd's control channel: enables listed accounts, records every call."""

    accounts: set[str]
    socket_path: Path
    calls: list[ControlCall] = field(default_factory=list)
    #: account -> live grant ids
    grants: dict[str, set[str]] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)

    def EnableAccount(  # type: ignore[override]  # served by a sync grpc server
        self, request: agent_control_service_pb2.EnableAccountRequest, context: Any
    ) -> agent_control_service_pb2.EnableAccountResponse:
        """Enable a listed account (NOT_FOUND otherwise); a live grant id only renews."""
        self.calls.append(
            ControlCall(
                "EnableAccount", request.account_name, request.grant_id, request.ttl_seconds
            )
        )
        if request.account_name not in self.accounts:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"account {request.account_name!r} is not managed"
            )
        live = self.grants.setdefault(request.account_name, set())
        expire = timestamp(_now() + dt.timedelta(seconds=request.ttl_seconds))
        if request.grant_id in live:
            return agent_control_service_pb2.EnableAccountResponse(expire_time=expire)
        live.add(request.grant_id)
        password = secrets.token_urlsafe(24) + "aA1!"
        self.passwords[request.account_name] = password
        return agent_control_service_pb2.EnableAccountResponse(
            password=password, expire_time=expire
        )

    def DisableAccount(  # type: ignore[override]  # served by a sync grpc server
        self, request: agent_control_service_pb2.DisableAccountRequest, context: Any
    ) -> agent_control_service_pb2.DisableAccountResponse:
        """End a grant; report whether the account is now disabled."""
        self.calls.append(
            ControlCall(
                "DisableAccount", request.account_name, request.grant_id, reason=request.reason
            )
        )
        live = self.grants.setdefault(request.account_name, set())
        live.discard(request.grant_id)
        return agent_control_service_pb2.DisableAccountResponse(account_disabled=not live)

    def disabled(self, grant_id: str) -> list[ControlCall]:
        """Return the DisableAccount calls for `grant_id`."""
        return [c for c in self.calls if c.method == "DisableAccount" and c.grant_id == grant_id]

    def enabled(self, grant_id: str) -> list[ControlCall]:
        """Return the EnableAccount calls for `grant_id` (the first, then renewals)."""
        return [c for c in self.calls if c.method == "EnableAccount" and c.grant_id == grant_id]

    async def wait_disabled(self, grant_id: str, timeout_seconds: float = 10) -> ControlCall:
        """Wait until `grant_id` was disabled; return that call (fail on timeout)."""
        deadline = time.monotonic() + timeout_seconds
        while not self.disabled(grant_id):
            if time.monotonic() > deadline:
                raise AssertionError(f"grant {grant_id} was not disabled in {timeout_seconds}s")
            await asyncio.sleep(0.02)
        return self.disabled(grant_id)[0]


@contextmanager
def serve_agent_control_stub(
    socket_path: Path, accounts: Iterable[str] = ("alice",)
) -> Iterator[AgentControlStub]:
    """Serve a stand-in AgentControlService on Unix socket `socket_path` until the block ends.

    A thread-pool (sync) grpc server, so it answers even while the test's event loop is
    blocked, e.g. waiting for a broker process that ends its grants as it stops.
    """
    stub = AgentControlStub(set(accounts), socket_path)
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    agent_control_service_pb2_grpc.add_AgentControlServiceServicer_to_server(stub, server)
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    try:
        yield stub
    finally:
        server.stop(0).wait()


@asynccontextmanager
async def agent_control_stub(
    socket_path: Path, accounts: Iterable[str] = ("alice",)
) -> AsyncIterator[AgentControlStub]:
    """`serve_agent_control_stub` as an async context manager."""
    with serve_agent_control_stub(socket_path, accounts) as stub:
        yield stub
