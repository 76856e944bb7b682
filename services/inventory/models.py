"""The inventory service's tables (all prefixed `inventory_`). No other service reads them."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from runtime.database import NAMING_CONVENTION, UTCDateTime

__all__ = [
    "Base",
    "Bastion",
    "EnrollmentTokenRow",
    "Grant",
    "GrantRole",
    "Group",
    "GroupMember",
    "Project",
    "Server",
    "ServerName",
    "Team",
    "User",
    "UserKind",
    "UserStatus",
]


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


class UserKind(enum.Enum):
    """A person, or a service user an integration acts as."""

    HUMAN = "human"
    SERVICE = "service"


class GrantRole(enum.Enum):
    """What a grant gives a group on a project's servers."""

    #: Log in as one's own account.
    USER = "user"
    #: Also sudo on Linux (group sft-admin), Administrators on Windows.
    ADMIN = "admin"


class Team(Base):
    """A tenant: everything else belongs to exactly one team."""

    __tablename__ = "inventory_teams"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_uuid)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    #: Bumped (in the same transaction) by every change that alters some server's
    #: desired accounts: users, memberships, grants, project settings. Agents' account
    #: streams watch it; a replica polling it sees another replica's changes.
    accounts_revision: Mapped[int] = mapped_column(BigInteger, default=1)
    #: What people see; empty means the name.
    display_name: Mapped[str] = mapped_column(String(200), default="")
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)


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
    kind: Mapped[UserKind] = mapped_column(
        Enum(UserKind, native_enum=False, length=16), default=UserKind.HUMAN
    )
    display_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)


class Group(Base):
    """A named set of users; grants give groups (never single users) access to projects."""

    __tablename__ = "inventory_groups"
    __table_args__ = (UniqueConstraint("team_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_uuid)
    team_id: Mapped[str] = mapped_column(ForeignKey("inventory_teams.id", ondelete="CASCADE"))
    #: Also the unix group name on servers, so it follows the account-name rules.
    name: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=_now)


class GroupMember(Base):
    """A user's membership of a group."""

    __tablename__ = "inventory_group_members"

    group_id: Mapped[str] = mapped_column(
        ForeignKey("inventory_groups.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("inventory_users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=_now)


class Project(Base):
    """A set of servers with its own certificate authorities and settings."""

    __tablename__ = "inventory_projects"
    __table_args__ = (UniqueConstraint("team_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_uuid)
    team_id: Mapped[str] = mapped_column(ForeignKey("inventory_teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(String(500), default="")
    #: Lifetime of user certificates, and the most a caller may ask for.
    certificate_ttl_seconds: Mapped[int] = mapped_column(Integer, default=600)
    certificate_max_ttl_seconds: Mapped[int] = mapped_column(Integer, default=3600)
    #: Whether agents create accounts for granted users (off: only existing ones are used).
    create_server_users: Mapped[bool] = mapped_column(default=True)
    permit_port_forwarding: Mapped[bool] = mapped_column(default=False)
    permit_agent_forwarding: Mapped[bool] = mapped_column(default=False)
    rdp_enabled: Mapped[bool] = mapped_column(default=True)
    #: Name of a bastion every connection to this project must go through ("" = none).
    required_bastion: Mapped[str] = mapped_column(String(63), default="")
    #: Privileged account names (e.g. root) this project lets admins log in as.
    allowed_admin_account_names: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=_now)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)


class Grant(Base):
    """Group → project access, as user or admin."""

    __tablename__ = "inventory_grants"
    __table_args__ = (UniqueConstraint("project_id", "group_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_uuid)
    project_id: Mapped[str] = mapped_column(ForeignKey("inventory_projects.id", ondelete="CASCADE"))
    group_id: Mapped[str] = mapped_column(
        ForeignKey("inventory_groups.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[GrantRole] = mapped_column(Enum(GrantRole, native_enum=False, length=16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=_now)


class Bastion(Base):
    """A jump host (an enrolled server or a plain address) connections may go through."""

    __tablename__ = "inventory_bastions"
    __table_args__ = (UniqueConstraint("team_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_uuid)
    team_id: Mapped[str] = mapped_column(ForeignKey("inventory_teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    #: The enrolled server acting as bastion, or None when `address` names it.
    server_id: Mapped[str | None] = mapped_column(
        ForeignKey("inventory_servers.id", ondelete="CASCADE"), default=None
    )
    address: Mapped[str] = mapped_column(String(253), default="")
    ssh_port: Mapped[int] = mapped_column(Integer, default=22)
    description: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=_now)


class Server(Base):
    """An enrolled server: what its agent reported, and the key it proves itself with."""

    __tablename__ = "inventory_servers"
    __table_args__ = (
        Index("ix_inventory_servers_team_created", "team_id", "created_at", "id"),
        Index("ix_inventory_servers_project_created", "project_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_uuid)
    team_id: Mapped[str] = mapped_column(ForeignKey("inventory_teams.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(ForeignKey("inventory_projects.id", ondelete="CASCADE"))
    hostname: Mapped[str] = mapped_column(String(253))
    canonical_name: Mapped[str] = mapped_column(String(253))
    alt_names: Mapped[list[str]] = mapped_column(JSON, default=list)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    #: "linux" or "windows".
    os: Mapped[str] = mapped_column(String(16))
    addresses: Mapped[list[str]] = mapped_column(JSON, default=list)
    access_address: Mapped[str] = mapped_column(String(253), default="")
    ssh_port: Mapped[int] = mapped_column(Integer, default=22)
    broker_port: Mapped[int] = mapped_column(Integer, default=4421)
    #: Name of the bastion this server's agent says to use ("" = none).
    bastion: Mapped[str] = mapped_column(String(63), default="")
    host_key_fingerprints: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: The agent's own public key (OpenSSH line); it signs the agent's token assertions.
    agent_public_key: Mapped[str] = mapped_column(String(200))
    agent_key_fingerprint: Mapped[str] = mapped_column(String(60), unique=True)
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    enrollment_token_id: Mapped[str | None] = mapped_column(String(36), default=None)
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=_now)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)


class ServerName(Base):
    """Every name a server answers to (canonical, hostname, alt names), for one-index lookup."""

    __tablename__ = "inventory_server_names"
    __table_args__ = (Index("ix_inventory_server_names_team_name", "team_id", "name"),)

    server_id: Mapped[str] = mapped_column(
        ForeignKey("inventory_servers.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(36))


class EnrollmentTokenRow(Base):
    """A server enrollment token of a project, stored only as the hash of its secret."""

    __tablename__ = "inventory_enrollment_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_uuid)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("inventory_projects.id", ondelete="CASCADE"), index=True
    )
    description: Mapped[str] = mapped_column(String(500), default="")
    #: Hex SHA-256 of the token's secret.
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expire_time: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    #: 0 = unlimited.
    max_uses: Mapped[int] = mapped_column(Integer, default=0)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    #: Resource name of whoever made it.
    creator: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=_now)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
