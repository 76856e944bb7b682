"""Run the real CA service in-process on loopback: migrated database, public and internal
listeners, and a service certificate per platform service to call it as.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from runtime.database import Database
from runtime.migrations import upgrade
from runtime.server import Endpoint, PlatformServer, ServiceBinding
from runtime.service_identity import service_channel
from runtime.tls import TLSFiles, ensure_dev_pki, service_tls_files
from services.ca import app as ca_app
from services.ca.key_encryption import LocalKeyEncryption, generate_key_file
from services.ca.service import CertificateAuthority
from sft.ca.v1 import ca_service_pb2_grpc

__all__ = ["CAServer", "Clock", "running_ca"]

SERVICES = ("ca", "inventory", "auth")


@dataclass
class Clock:
    """A settable clock for the servicer: real time plus `offset`."""

    offset: dt.timedelta = field(default_factory=dt.timedelta)

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset


@dataclass
class CAServer:
    """A started CA service and what a test needs to call it."""

    server: PlatformServer
    database: Database
    tls: TLSFiles
    tls_dir: Path
    kek: LocalKeyEncryption
    clock: Clock
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    def public(self) -> ca_service_pb2_grpc.CertificateAuthorityServiceStub:
        """Return a stub on the public listener (no client certificate: anonymous)."""
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{self.server.port}",
            grpc.ssl_channel_credentials(self.tls.ca_file.read_bytes()),
        )
        self._channels.append(channel)
        return ca_service_pb2_grpc.CertificateAuthorityServiceStub(channel)

    def as_service(self, name: str) -> ca_service_pb2_grpc.CertificateAuthorityServiceStub:
        """Return a stub on the internal listener, presenting `name`'s service certificate."""
        channel = service_channel(
            f"127.0.0.1:{self.server.internal_port}", service_tls_files(self.tls_dir, name)
        )
        self._channels.append(channel)
        return ca_service_pb2_grpc.CertificateAuthorityServiceStub(channel)

    async def close_channels(self) -> None:
        """Close every channel handed out."""
        for channel in self._channels:
            await channel.close()


@asynccontextmanager
async def running_ca(
    database_url: str, directory: Path, *, clock: Clock | None = None
) -> AsyncIterator[CAServer]:
    """Migrate `database_url`, serve the CA on free loopback ports, stop it afterwards."""
    tls_dir = directory / "tls"
    tls = ensure_dev_pki(tls_dir, ["127.0.0.1", "localhost"], services=SERVICES)
    kek_file = directory / "ca-kek.key"
    kek = (
        LocalKeyEncryption.from_file(kek_file) if kek_file.exists() else generate_key_file(kek_file)
    )
    the_clock = clock or Clock()
    database = Database.connect(database_url)
    await upgrade(database, [ca_app.HISTORY])
    servicer = CertificateAuthority(database, kek, clock=the_clock)
    binding = ServiceBinding.from_package(
        "ca", "sft.ca.v1", implementations={"CertificateAuthorityService": servicer}
    )
    server = PlatformServer(
        [binding],
        Endpoint("127.0.0.1", 0),
        tls,
        internal_listen=Endpoint("127.0.0.1", 0),
        grace_seconds=0,
    )
    await server.start()
    ca = CAServer(server, database, tls, tls_dir, kek, the_clock)
    try:
        yield ca
    finally:
        await ca.close_channels()
        await server.stop()
        await database.close()
