"""The auth service's tables (all prefixed `auth_`). Secrets are stored only as hashes."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, MetaData, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from runtime.database import NAMING_CONVENTION, UTCDateTime

__all__ = [
    "AccessTokenRow",
    "AuditEventRow",
    "AuditHeadRow",
    "Base",
    "DeviceRow",
    "EnrollmentCode",
    "FailedAttempt",
    "ServiceKeyRow",
    "ServiceUserRow",
    "UsedAssertion",
]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base for auth tables only."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class EnrollmentCode(Base):
    """A one-time code that binds one new device to one user."""

    __tablename__ = "auth_enrollment_codes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    #: Resource name of the user the device will belong to: teams/{team}/users/{user}.
    user: Mapped[str] = mapped_column(String(200), index=True)
    team: Mapped[str] = mapped_column(String(63), index=True)
    #: Hex SHA-256 of the code's secret; the code itself is never stored.
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=_now)
    expire_time: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)


class DeviceRow(Base):
    """A client machine enrolled by a user; only its public key is known here."""

    __tablename__ = "auth_devices"

    #: Server-assigned id, the last segment of the device resource name.
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    team: Mapped[str] = mapped_column(String(63))
    #: teams/{team}/users/{user}
    user: Mapped[str] = mapped_column(String(200), index=True)
    display_name: Mapped[str] = mapped_column(String(200))
    hostname: Mapped[str] = mapped_column(String(253))
    os: Mapped[str] = mapped_column(String(64))
    public_key: Mapped[str] = mapped_column(String(200))
    #: SHA256:… of the OpenSSH key blob: the `kid` of the device's assertions.
    fingerprint: Mapped[str] = mapped_column(String(60), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    create_time: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_use_time: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    revoke_time: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)


class AccessTokenRow(Base):
    """An issued bearer token, stored by hash only."""

    __tablename__ = "auth_access_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: Hex SHA-256 of the token; the token itself is never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    team: Mapped[str] = mapped_column(String(63))
    #: USER / SERVICE_USER: teams/{team}/users/{user}; SERVER: the server resource name.
    principal: Mapped[str] = mapped_column(String(300))
    device_id: Mapped[str | None] = mapped_column(
        ForeignKey("auth_devices.id", ondelete="CASCADE"), default=None, index=True
    )
    create_time: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expire_time: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    #: SERVICE_USER only: the API key the token was got with (deleting it ends the token).
    service_key_id: Mapped[str | None] = mapped_column(
        ForeignKey("auth_service_keys.id", ondelete="CASCADE"), default=None, index=True
    )


class UsedAssertion(Base):
    """A key assertion's jti, kept until it expires so it cannot be replayed."""

    __tablename__ = "auth_used_assertions"

    issuer: Mapped[str] = mapped_column(String(300), primary_key=True)
    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    expire_time: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)


class FailedAttempt(Base):
    """A refused guess at a secret (e.g. an enrollment code), for rate limiting by source."""

    __tablename__ = "auth_failed_attempts"
    __table_args__ = (
        Index("ix_auth_failed_attempts_scope_source", "scope", "source", "create_time"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    scope: Mapped[str] = mapped_column(String(32))
    #: Who guessed: the peer's IP address.
    source: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class ServiceUserRow(Base):
    """A service user's auth side; its backing inventory user has the same id (`name`)."""

    __tablename__ = "auth_service_users"
    __table_args__ = (UniqueConstraint("team", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    team: Mapped[str] = mapped_column(String(63))
    #: The service user id, also the backing user's id: teams/{team}/users/{name}.
    name: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(String(1000))
    create_time: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class ServiceKeyRow(Base):
    """A service user's API key: its public id and the hash of its secret."""

    __tablename__ = "auth_service_keys"

    #: The key id integrators send (a UUID); the last segment of the key resource name.
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    service_user_id: Mapped[str] = mapped_column(
        ForeignKey("auth_service_users.id", ondelete="CASCADE"), index=True
    )
    team: Mapped[str] = mapped_column(String(63))
    #: Hex SHA-256 of the secret; the secret itself is never stored.
    secret_hash: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_use_time: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)


class AuditEventRow(Base):
    """One event of a team's hash-chained audit trail (see services.auth.audit_chain)."""

    __tablename__ = "auth_audit_events"
    __table_args__ = (
        # The backstop behind the head lock: two events can never share a place.
        UniqueConstraint("team", "sequence"),
        Index("ix_auth_audit_events_team_time", "team", "time"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    team: Mapped[str] = mapped_column(String(63))
    #: 1, 2, 3 … per team, without gaps.
    sequence: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(500))
    #: user, service_user, server, platform or anonymous.
    actor_kind: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(500))
    #: success, denied or failed.
    outcome: Mapped[str] = mapped_column(String(16))
    source_address: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, str]] = mapped_column(JSON)
    previous_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHeadRow(Base):
    """The last event appended to a team's chain; appends lock this row, one at a time."""

    __tablename__ = "auth_audit_heads"

    team: Mapped[str] = mapped_column(String(63), primary_key=True)
    last_sequence: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))
