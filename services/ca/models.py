"""The CA service's tables (all prefixed `ca_`). Private keys are only ever stored encrypted.

A database dump alone never reveals a CA key: `sealed_private_key` is AES-GCM under
the key-encryption key, which lives outside the database.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from runtime.database import NAMING_CONVENTION, UTCDateTime

__all__ = ["AuthorityRow", "Base", "IssuanceRow"]


class Base(DeclarativeBase):
    """Declarative base for CA tables only."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class AuthorityRow(Base):
    """One CA key of a project: ssh_user, ssh_host or x509; active, published or retired."""

    __tablename__ = "ca_authorities"
    __table_args__ = (
        # Exactly one key of each kind signs: a concurrent second "active" row fails here.
        Index(
            "uq_ca_authorities_active_kind",
            "project",
            "kind",
            unique=True,
            sqlite_where=text("state = 'active'"),
            postgresql_where=text("state = 'active'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: Project resource name: teams/{team}/projects/{project}.
    project: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    key_type: Mapped[str] = mapped_column(String(32))
    #: SSH kinds: the OpenSSH public key line; empty for x509.
    public_key: Mapped[str] = mapped_column(String(200))
    #: x509: the self-signed CA certificate, PEM; empty for the SSH kinds.
    certificate_pem: Mapped[str] = mapped_column(String(4000))
    fingerprint: Mapped[str] = mapped_column(String(60))
    #: The private key, sealed by the key-encryption key (associated data: the row id).
    sealed_private_key: Mapped[bytes] = mapped_column(LargeBinary)
    #: Which key-encryption key sealed it (see services.ca.key_encryption).
    kek_id: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    retire_time: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)


class IssuanceRow(Base):
    """One signed certificate, written in the same transaction as the signing."""

    __tablename__ = "ca_issuances"
    __table_args__ = (
        Index("uq_ca_issuances_project_serial", "project", "serial", unique=True),
        # Newest-first listing by project, and across a team's projects.
        Index("ix_ca_issuances_project_created", "project", "create_time", "serial"),
        Index("ix_ca_issuances_team_created", "team", "create_time", "serial"),
    )

    # SQLite only auto-increments an INTEGER PRIMARY KEY, hence the variant.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    team: Mapped[str] = mapped_column(String(63))
    project: Mapped[str] = mapped_column(String(200))
    serial: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(300), index=True)
    principals: Mapped[list[str]] = mapped_column(JSON)
    key_id: Mapped[str] = mapped_column(String(400))
    key_fingerprint: Mapped[str] = mapped_column(String(60))
    authority_id: Mapped[str] = mapped_column(ForeignKey("ca_authorities.id"))
    authority_fingerprint: Mapped[str] = mapped_column(String(60))
    valid_after: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    valid_before: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    caller: Mapped[str] = mapped_column(String(200))
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    create_time: Mapped[dt.datetime] = mapped_column(UTCDateTime())
