"""The inventory service's tables (all prefixed `inventory_`). No other service reads them."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import DateTime, Enum, ForeignKey, Integer, MetaData, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from runtime.database import NAMING_CONVENTION

__all__ = ["Base", "Team", "User", "UserStatus"]


def _uuid() -> str:
    return str(uuid.uuid4())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base for inventory tables only."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UserStatus(enum.Enum):
    """Whether a user may get credentials."""

    ACTIVE = "active"
    DISABLED = "disabled"


class Team(Base):
    """A tenant: everything else belongs to exactly one team."""

    __tablename__ = "inventory_teams"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_uuid)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class User(Base):
    """A person (or service user) with the same unix ids on every server of the team."""

    __tablename__ = "inventory_users"
    __table_args__ = (
        UniqueConstraint("team_id", "name"),
        UniqueConstraint("team_id", "unix_uid"),
        UniqueConstraint("team_id", "unix_gid"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_uuid)
    team_id: Mapped[str] = mapped_column(ForeignKey("inventory_teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(32))
    unix_uid: Mapped[int] = mapped_column(Integer)
    unix_gid: Mapped[int] = mapped_column(Integer)
    #: Windows account names are limited to 20 characters.
    windows_name: Mapped[str] = mapped_column(String(20))
    status: Mapped[UserStatus] = mapped_column(
        Enum(UserStatus, native_enum=False, length=16), default=UserStatus.ACTIVE
    )
    team_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
