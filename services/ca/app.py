"""How the CA service plugs into a platform server: its migrations and its servicers."""

from __future__ import annotations

from runtime.clock import Clock, utc_now
from runtime.database import Database
from runtime.migrations import MigrationHistory
from runtime.server import ServiceBinding
from services.ca.key_encryption import KeyEncryption
from services.ca.service import CertificateAuthority

__all__ = ["HISTORY", "binding"]

HISTORY = MigrationHistory(
    service="ca", script_location="services.ca:migrations", table_prefix="ca_"
)


def binding(
    database: Database, key_encryption: KeyEncryption, clock: Clock = utc_now
) -> ServiceBinding:
    """Return the CA service's gRPC services, bound to `database` and the CA keys' KEK."""
    return ServiceBinding.from_package(
        "ca",
        "sft.ca.v1",
        implementations={
            "CertificateAuthorityService": CertificateAuthority(
                database, key_encryption, clock=clock
            )
        },
    )
