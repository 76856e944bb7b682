"""The auth service's tables (all prefixed `auth_`). Secrets are stored only as hashes."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import DateTime, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from runtime.database import NAMING_CONVENTION

__all__ = ["Base", "EnrollmentCode"]


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
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    expire_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
