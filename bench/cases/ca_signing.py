"""What a signed certificate costs through the CA's gRPC API, issuance-log write included.

Candidate: SignUserCertificate on the real CA servicer behind runtime.server.PlatformServer,
called as the "auth" service on the internal mutual-TLS listener, at 1, 16 and 200
callers, on SQLite and on a throwaway PostgreSQL. Baselines from the same run: an empty
unary RPC (grpc.health.v1 Check) on the same server, listener, channel and interceptor
(the gRPC ceiling; it passes the same interceptor: peer-certificate identity, metrics,
log context), and sign_user_certificate called in-process in a tight loop (the signing
ceiling). Each server runs in its own process, one at a time, logging at warning.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import multiprocessing
import queue
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.harness import LoadStats, Result, case, closed_loop
from runtime.database import default_sqlite_url
from runtime.service_identity import service_channel
from runtime.tls import ensure_dev_pki, service_tls_files
from services.ca.ssh_signer import UserCertificateRequest, sign_user_certificate
from sft.ca.v1 import ca_service_pb2, ca_service_pb2_grpc
from tests.support.postgres import postgres_server
from tests.support.real_software import find_program

CASE = "ca_signing"
SERVICES = ("ca", "inventory", "auth")
HOSTS = ["127.0.0.1"]
PROJECT = "teams/acme/projects/web"
USER = "teams/acme/users/alice"
LEVELS = (1, 16, 200)
# The targets, at 16 callers on SQLite: signing at least half the empty-RPC
# rate (signing and persistence cost no more than the RPC itself), p99 within 20 ms.
TARGET_LEVEL = 16
TARGET_RATIO = 0.5
TARGET_P99_MS = 20.0
# Nothing should take this long; a hung server fails the case instead of stalling it.
CALL_TIMEOUT_SECONDS = 30.0
STARTUP_SECONDS = 60.0
EMPTY_RPC = "empty RPC (health Check), same listener"


@dataclass(frozen=True)
class Timing:
    """How long each closed loop runs and warms up, in seconds."""

    seconds: float
    warmup: float


@dataclass(frozen=True)
class Level:
    """Signing and the empty RPC at one concurrency, measured back to back."""

    sign: LoadStats
    empty: LoadStats


async def _serve(
    database_url: str, tls_dir: str, data_dir: str, ports: multiprocessing.Queue[int], stop: Event
) -> None:
    """Serve the real CA on `database_url` (migrated, fresh KEK) until `stop` is set."""
    from runtime.database import Database
    from runtime.logging import configure_logging
    from runtime.migrations import upgrade
    from runtime.server import Endpoint, PlatformServer
    from services.ca import app as ca_app
    from services.ca.key_encryption import generate_key_file

    configure_logging("warning", "json")
    tls = ensure_dev_pki(Path(tls_dir), HOSTS, services=SERVICES)
    kek = generate_key_file(Path(data_dir) / "ca-kek.key")
    database = Database.connect(database_url)
    await upgrade(database, [ca_app.HISTORY])
    server = PlatformServer(
        [ca_app.binding(database, kek)],
        Endpoint("127.0.0.1", 0),
        tls,
        internal_listen=Endpoint("127.0.0.1", 0),
        grace_seconds=0,
    )
    await server.start()
    try:
        ports.put(server.internal_port)
        await asyncio.to_thread(stop.wait)
    finally:
        await server.stop()
        await database.close()


def _child(
    database_url: str, tls_dir: str, data_dir: str, ports: multiprocessing.Queue[int], stop: Event
) -> None:
    """Run `_serve` in the spawned server process."""
    Path(data_dir).mkdir(exist_ok=True)
    asyncio.run(_serve(database_url, tls_dir, data_dir, ports, stop))


def _port_of(process: BaseProcess, ports: multiprocessing.Queue[int]) -> int:
    """Return the port the server process reports, or raise if it dies or stalls first."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        try:
            return ports.get(timeout=0.2)
        except queue.Empty:
            if not process.is_alive():
                raise RuntimeError(
                    f"the CA server process exited with code {process.exitcode} before "
                    "listening; its traceback is above"
                ) from None
    raise RuntimeError(f"the CA server process did not listen within {STARTUP_SECONDS:g} s")


def _subject_key() -> str:
    """Return a fresh Ed25519 public key in OpenSSH format (the key being certified)."""
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


async def _measure(
    database_url: str, tls_dir: Path, data_dir: Path, subject: str, timing: Timing
) -> list[Level]:
    """Serve the CA on `database_url` in a child process and load it at every level."""
    ctx = multiprocessing.get_context("spawn")
    ports: multiprocessing.Queue[int] = ctx.Queue()
    stop = ctx.Event()
    process = ctx.Process(
        target=_child, args=(database_url, str(tls_dir), str(data_dir), ports, stop), daemon=True
    )
    process.start()
    try:
        port = await asyncio.to_thread(_port_of, process, ports)
        target = f"127.0.0.1:{port}"
        async with service_channel(target, service_tls_files(tls_dir, "inventory")) as admin:
            await ca_service_pb2_grpc.CertificateAuthorityServiceStub(
                admin
            ).CreateProjectAuthorities(
                ca_service_pb2.CreateProjectAuthoritiesRequest(project=PROJECT),
                timeout=CALL_TIMEOUT_SECONDS,
            )
        async with service_channel(target, service_tls_files(tls_dir, "auth")) as channel:
            ca = ca_service_pb2_grpc.CertificateAuthorityServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            sign = ca_service_pb2.SignUserCertificateRequest(
                project=PROJECT,
                public_key=subject,
                principal="alice",
                ttl_seconds=600,
                user=USER,
                request_id="bench-ca-signing",
                extensions=ca_service_pb2.UserCertificateExtensions(permit_pty=True),
            )
            empty = health_pb2.HealthCheckRequest(service="")
            levels: list[Level] = []
            for concurrency in LEVELS:
                # Back to back at each level, so drift on a shared machine hits both alike.
                empty_stats = await closed_loop(
                    lambda: health.Check(empty, timeout=CALL_TIMEOUT_SECONDS),
                    concurrency,
                    timing.seconds,
                    timing.warmup,
                )
                sign_stats = await closed_loop(
                    lambda: ca.SignUserCertificate(sign, timeout=CALL_TIMEOUT_SECONDS),
                    concurrency,
                    timing.seconds,
                    timing.warmup,
                )
                levels.append(Level(sign_stats, empty_stats))
            return levels
    finally:
        stop.set()
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join(5)


def _raw_signing_rate(subject: str, seconds: float) -> tuple[float, int]:
    """Return signatures/s and count of sign_user_certificate in one thread, no RPC, no DB."""
    ca_key = ed25519.Ed25519PrivateKey.generate()
    # What the servicer builds from the benchmark's request.
    wanted = UserCertificateRequest(
        public_key=subject,
        user="alice@acme",
        account="alice",
        project="web",
        device_id="-",
        request_id="bench-ca-signing",
        ttl_seconds=600,
        permit_pty=True,
        permit_port_forwarding=False,
        permit_agent_forwarding=False,
        permit_user_rc=False,
        permit_x11_forwarding=False,
    )
    calls = 0
    begin = time.perf_counter()
    deadline = begin + seconds
    while time.perf_counter() < deadline:
        calls += 1
        sign_user_certificate(ca_key, wanted, calls, dt.datetime.now(dt.UTC))
    return calls / (time.perf_counter() - begin), calls


def _rows(
    database: str, levels: list[Level], raw_rate: float, targets: bool, timing: Timing
) -> list[Result]:
    """Return the compared metrics of one database's run."""
    results: list[Result] = []
    for concurrency, level in zip(LEVELS, levels, strict=True):
        gated = targets and concurrency == TARGET_LEVEL
        notes: dict[str, float | str] = {
            "database": database,
            "concurrency": concurrency,
            "seconds": timing.seconds,
            "sign_calls": level.sign.calls,
            "empty_calls": level.empty.calls,
        }
        where = f"@{concurrency}, {database}"
        results += [
            Result(
                CASE,
                f"sign calls/s {where}",
                "calls/s",
                level.sign.rate,
                level.empty.rate,
                EMPTY_RPC,
                "higher",
                TARGET_RATIO if gated else None,
                notes,
            ),
            Result(
                CASE,
                f"sign p50 {where}",
                "ms",
                level.sign.p50_ms,
                level.empty.p50_ms,
                EMPTY_RPC,
                "lower",
                None,
                notes,
            ),
            Result(
                CASE,
                f"sign p99 {where}",
                "ms",
                level.sign.p99_ms,
                level.empty.p99_ms,
                EMPTY_RPC,
                "lower",
                None,
                notes,
                absolute_target=TARGET_P99_MS if gated else None,
            ),
        ]
    best = levels[LEVELS.index(TARGET_LEVEL)]
    results.append(
        Result(
            CASE,
            f"sign calls/s @{TARGET_LEVEL} vs raw signing, {database}",
            "calls/s",
            best.sign.rate,
            raw_rate,
            "sign_user_certificate in-process, 1 thread",
            "higher",
            None,
            {"database": database, "concurrency": TARGET_LEVEL, "seconds": timing.seconds},
        )
    )
    return results


@case(CASE, "SSH user certificates signed per second through the CA's gRPC API")
async def ca_signing(quick: bool) -> list[Result]:
    """Measure signing on SQLite and PostgreSQL against the empty RPC and raw signing."""
    timing = Timing(0.3, 0.2) if quick else Timing(4.0, 0.5)
    subject = _subject_key()
    raw_rate, _ = _raw_signing_rate(subject, 0.5 if quick else 2.0)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="sft-bench-ca-") as name:
        tls_dir, sqlite_dir = Path(name) / "tls", Path(name) / "sqlite"
        # Made here once: the client needs the service certificates, both servers the rest.
        ensure_dev_pki(tls_dir, HOSTS, services=SERVICES)
        sqlite = await _measure(
            default_sqlite_url(sqlite_dir), tls_dir, sqlite_dir, subject, timing
        )
        results += _rows("SQLite", sqlite, raw_rate, True, timing)
        if find_program("initdb", "/usr/lib/postgresql/*/bin/initdb") is None:
            print(
                f"- {CASE}: PostgreSQL is not installed (no initdb); its rows are skipped",
                file=sys.stderr,
            )
            return results
        with postgres_server() as postgres:
            postgresql = await _measure(
                postgres.url(), tls_dir, Path(name) / "postgresql", subject, timing
            )
        results += _rows("PostgreSQL", postgresql, raw_rate, False, timing)
    return results
