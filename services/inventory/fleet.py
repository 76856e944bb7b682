"""The fleet: enrolled servers, the names they answer to, enrollment tokens, the accounts
each server should have, and who may reach which server as which account.

Queries and rules only: every function takes a session and never commits (the servicer
owns the transaction), and nothing here imports protobuf or grpc. Never stores or logs
an enrollment token's secret; only its hash is passed in.
"""

from __future__ import annotations

import base64
import datetime as dt
import difflib
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy import Select, and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from runtime.errors import (
    Conflict,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from runtime.page_tokens import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    decode_page_token,
    encode_page_token,
    filter_digest,
)
from services.inventory.models import (
    Bastion,
    EnrollmentTokenRow,
    Grant,
    GrantRole,
    Group,
    GroupMember,
    Project,
    Server,
    ServerName,
    Team,
    User,
    UserStatus,
)

__all__ = [
    "AccessDecision",
    "Ambiguous",
    "DesiredAccount",
    "DesiredAccounts",
    "Enrolled",
    "Hop",
    "PublicKey",
    "ServerChanges",
    "ServerFacts",
    "ServerView",
    "TokenRefused",
    "TokenSettings",
    "Viewer",
    "agent_server",
    "bump_accounts_revision",
    "check_server_access",
    "create_token",
    "delete_server",
    "desired_accounts",
    "enroll_server",
    "get_project",
    "get_server",
    "get_team",
    "host_principals",
    "list_servers",
    "list_tokens",
    "parse_agent_key",
    "parse_host_key",
    "parse_selector",
    "record_heartbeat",
    "resolve_server",
    "revoke_token",
    "server_resource",
    "split_token_name",
    "team_revision",
    "token_resource",
    "update_server",
    "viewer_for",
]

MAX_NAME_CHARS = 253
MAX_ALT_NAMES = 32
MAX_LABELS = 64
MAX_ADDRESSES = 64
MAX_HOST_KEYS = 8
MAX_KEY_CHARS = 16 * 1024
MAX_SELECTOR_CHARS = 1000
#: The token table's description column holds 500 characters (the proto allows 1000).
MAX_TOKEN_DESCRIPTION = 500
TOKEN_DEFAULT_TTL = dt.timedelta(hours=24)
TOKEN_MAX_TTL = dt.timedelta(days=30)
#: Most names a difflib "did you mean" compares against (the NOT_FOUND path only).
_CLOSE_MATCH_POOL = 20_000
_MAX_CANDIDATES = 20

# The CA's host-principal rule (lowercase DNS labels): a name we store must be
# certifiable, or enrollment would fail later at signing.
_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_LABEL_KEY = re.compile(r"^[A-Za-z0-9._/-]{1,63}$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9._/-]{0,255}$")
_AGENT_VERSION = re.compile(r"^[A-Za-z0-9.+_~-]{0,64}$")
_TOKEN_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_HOST_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
_OPERATING_SYSTEMS = ("linux", "windows")
_TOKEN_ADVICE = "ask a project admin for a new one: `sft admin token create --project {project}`"  # noqa: S105 (advice, not a secret)


# --- resource names ------------------------------------------------------------------


def server_resource(team: str, project: str, server_id: str) -> str:
    """Return `teams/{team}/projects/{project}/servers/{id}`."""
    return f"teams/{team}/projects/{project}/servers/{server_id}"


def token_resource(team: str, project: str, token_id: str) -> str:
    """Return `teams/{team}/projects/{project}/enrollmentTokens/{id}` (the proto's spelling)."""
    return f"teams/{team}/projects/{project}/enrollmentTokens/{token_id}"


def split_token_name(name: str) -> tuple[str, str, str]:
    """Return (team, project, token id) of an enrollment token resource name."""
    parts = name.split("/")
    if (
        len(parts) != 6
        or parts[0] != "teams"
        or parts[2] != "projects"
        or parts[4] not in ("enrollmentTokens", "enrollment_tokens")
        or not all(parts[1::2])
        or not _TOKEN_ID.fullmatch(parts[5])
    ):
        raise InvalidInput(
            f"{name[:200]!r} is not an enrollment token name; use "
            "teams/TEAM/projects/PROJECT/enrollmentTokens/ID (as `sft admin token list` shows)"
        )
    return parts[1], parts[3], parts[5]


# --- keys ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    """An OpenSSH public key: its canonical line (no comment) and its SHA256 fingerprint."""

    line: str
    fingerprint: str


def _fingerprint(line: str) -> str:
    """Return `SHA256:<unpadded base64>` of a key line's blob, as ssh-keygen -l prints."""
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _load_ssh_key(text: str, what: str) -> tuple[object, str]:
    """Return a parsed OpenSSH public key and its canonical line (comment dropped)."""
    line = text.strip()
    if not line or len(line) > MAX_KEY_CHARS or "\n" in line:
        raise InvalidInput(f"{what} must be one OpenSSH public key line of at most 16 KiB")
    try:
        key = serialization.load_ssh_public_key(line.encode())
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidInput(
            f"{what} is not a valid OpenSSH public key; send the whole `TYPE AAAA…` line"
        ) from None
    canonical = key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return key, canonical


def parse_agent_key(text: str) -> PublicKey:
    """Return the agent's key from an `ssh-ed25519 AAAA…` line; refuse any other kind."""
    if not text.strip().startswith("ssh-ed25519 "):
        raise InvalidInput(
            "agent_public_key must be the agent's Ed25519 key in OpenSSH format "
            "(`ssh-ed25519 AAAA…`); sftd makes it in its state dir"
        )
    key, line = _load_ssh_key(text, "agent_public_key")
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise InvalidInput("agent_public_key must be an Ed25519 key")
    return PublicKey(line, _fingerprint(line))


def parse_host_key(text: str, index: int) -> PublicKey:
    """Return an SSH host key (Ed25519, ECDSA, or RSA of 2048 bits or more)."""
    what = f"host_public_keys[{index}]"
    if text.strip().split(" ", 1)[0] not in _HOST_KEY_TYPES:
        raise InvalidInput(
            f"{what} must be an ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa key "
            "in OpenSSH format (the .pub file beside sshd's HostKey)"
        )
    key, line = _load_ssh_key(text, what)
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise InvalidInput(
            f"{what} is a {key.key_size}-bit RSA key; OpenSSH refuses RSA keys under 2048 "
            "bits, so certify an Ed25519 or larger RSA host key instead"
        )
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise InvalidInput(f"{what} is not a supported host key type")
    return PublicKey(line, _fingerprint(line))


# --- facts and admin-settable fields -------------------------------------------------


def _dns_name(value: str, what: str) -> str:
    """Return `value` as a lowercase DNS name, or raise InvalidInput naming `what`."""
    name = value.strip().lower().removesuffix(".")
    if not _DNS_NAME.fullmatch(name):
        raise InvalidInput(
            f"{what} {value[:80]!r} is not a valid name: use DNS labels of letters, digits and "
            "'-' separated by dots, at most 253 characters"
        )
    return name


def _address(value: str, what: str) -> str:
    """Return `value` as a canonical IP address, or raise InvalidInput naming `what`."""
    text = value.strip()
    try:
        if "%" in text:
            raise ValueError(text)
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InvalidInput(
            f"{what} {value[:80]!r} is not an IP address; use IPv4 dotted or IPv6 text form"
        ) from None


def _host(value: str, what: str) -> str:
    """Return an IP address or DNS name (what clients dial), normalized."""
    text = value.strip()
    try:
        return _address(text, what)
    except InvalidInput:
        return _dns_name(text, what)


def _names(values: Sequence[str], what: str) -> tuple[str, ...]:
    """Return DNS names, normalized and without repeats (at most MAX_ALT_NAMES)."""
    if len(values) > MAX_ALT_NAMES:
        raise InvalidInput(f"{what} has {len(values)} entries; at most {MAX_ALT_NAMES} are allowed")
    return tuple(dict.fromkeys(_dns_name(v, f"{what} entry") for v in values))


def _labels(values: Mapping[str, str]) -> dict[str, str]:
    """Return labels sorted by key, or raise InvalidInput naming the bad pair."""
    if len(values) > MAX_LABELS:
        raise InvalidInput(f"labels has {len(values)} entries; at most {MAX_LABELS} are allowed")
    for key, value in values.items():
        if not _LABEL_KEY.fullmatch(key):
            raise InvalidInput(
                f"label key {key[:80]!r} is not valid: use 1-63 letters, digits, '.', '_', "
                "'/' and '-'"
            )
        if not _LABEL_VALUE.fullmatch(value):
            raise InvalidInput(
                f"label {key}={value[:80]!r} is not valid: values are at most 255 letters, "
                "digits, '.', '_', '/' and '-' (no ',' or '=', so selectors can name them)"
            )
    return dict(sorted(values.items()))


def _port(value: int, what: str, *, default: int, allow_zero: bool = False) -> int:
    """Return a TCP port (0 means `default` unless `allow_zero`)."""
    if value == 0 and not allow_zero:
        return default
    if not 0 <= value <= 65535:
        raise InvalidInput(f"{what} {value} is out of range; use 1 to 65535")
    return value


@dataclass(frozen=True)
class ServerFacts:
    """What an agent reports about its server; `checked()` validates and normalizes it."""

    hostname: str
    os: str
    canonical_name: str = ""
    alt_names: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    addresses: tuple[str, ...] = ()
    access_address: str = ""
    ssh_port: int = 22
    broker_port: int = 0
    agent_version: str = ""
    bastion: str = ""

    def checked(self) -> ServerFacts:
        """Return these facts normalized (names lowercase), or raise InvalidInput saying why."""
        if not self.hostname.strip():
            raise InvalidInput("facts.hostname is required: the server's OS host name")
        if self.os not in _OPERATING_SYSTEMS:
            raise InvalidInput("facts.os is required: OPERATING_SYSTEM_LINUX or _WINDOWS")
        if len(self.addresses) > MAX_ADDRESSES:
            raise InvalidInput(
                f"facts.addresses has {len(self.addresses)} entries; at most {MAX_ADDRESSES}"
            )
        if not _AGENT_VERSION.fullmatch(self.agent_version):
            raise InvalidInput(
                f"facts.agent_version {self.agent_version[:80]!r} is not valid: at most 64 "
                "letters, digits and '.+_~-'"
            )
        hostname = _dns_name(self.hostname, "facts.hostname")
        return ServerFacts(
            hostname=hostname,
            os=self.os,
            canonical_name=(
                _dns_name(self.canonical_name, "facts.canonical_name")
                if self.canonical_name.strip()
                else hostname
            ),
            alt_names=_names(self.alt_names, "facts.alt_names"),
            labels=_labels(self.labels),
            addresses=tuple(
                dict.fromkeys(_address(a, "facts.addresses entry") for a in self.addresses)
            ),
            access_address=(
                _host(self.access_address, "facts.access_address")
                if self.access_address.strip()
                else ""
            ),
            ssh_port=_port(self.ssh_port, "facts.ssh_port", default=22),
            broker_port=_port(self.broker_port, "facts.broker_port", default=0, allow_zero=True),
            agent_version=self.agent_version,
            bastion=_dns_name(self.bastion, "facts.bastion") if self.bastion.strip() else "",
        )


@dataclass(frozen=True)
class ServerChanges:
    """An admin's changes to a server (UpdateServer); None leaves a field as it is."""

    canonical_name: str | None = None
    alt_names: tuple[str, ...] | None = None
    labels: Mapping[str, str] | None = None
    access_address: str | None = None
    bastion: str | None = None

    def checked(self) -> ServerChanges:
        """Return the changes normalized, or raise InvalidInput saying what is wrong."""
        canonical = self.canonical_name
        if canonical is not None:
            if not canonical.strip():
                raise InvalidInput(
                    "server.canonical_name cannot be empty; give the name clients should use"
                )
            canonical = _dns_name(canonical, "server.canonical_name")
        return ServerChanges(
            canonical_name=canonical,
            alt_names=(
                _names(self.alt_names, "server.alt_names") if self.alt_names is not None else None
            ),
            labels=_labels(self.labels) if self.labels is not None else None,
            access_address=(
                (_host(self.access_address, "server.access_address") if self.access_address else "")
                if self.access_address is not None
                else None
            ),
            bastion=(
                (_dns_name(self.bastion, "server.bastion") if self.bastion.strip() else "")
                if self.bastion is not None
                else None
            ),
        )


def parse_selector(text: str) -> dict[str, str]:
    """Return the `k=v,k2=v2` pairs of a label selector; refuse anything else."""
    if len(text) > MAX_SELECTOR_CHARS:
        raise InvalidInput(f"selector is longer than {MAX_SELECTOR_CHARS} characters")
    pairs: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip() and not text.strip():
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise InvalidInput(
                f"selector part {part.strip()[:80]!r} is not key=value; write pairs like "
                "`env=prod,role=web` (keys and values of letters, digits, '.', '_', '/', '-')"
            )
        if key in pairs and pairs[key] != value:
            raise InvalidInput(f"selector names label {key!r} twice with different values")
        pairs[key] = value
    return pairs


def host_principals(row: Server) -> tuple[str, ...]:
    """Return every name and address a client may dial, canonical name first, no repeats."""
    names = [row.canonical_name, row.hostname, *row.alt_names, row.access_address, *row.addresses]
    return tuple(dict.fromkeys(name for name in names if name))


def _server_names(row: Server) -> set[str]:
    """Return every name a server answers to, lowercase (its ServerName rows)."""
    return {name.lower() for name in host_principals(row)}


# --- teams, projects, visibility -----------------------------------------------------


async def get_team(session: AsyncSession, name: str) -> Team:
    """Return team `name`, or raise NotFound."""
    team = await session.scalar(select(Team).where(Team.name == name))
    if team is None:
        raise NotFound(f"team {name!r} does not exist")
    return team


async def get_project(session: AsyncSession, team: Team, name: str) -> Project:
    """Return project `name` of `team`, or raise NotFound."""
    project = await session.scalar(
        select(Project).where(Project.team_id == team.id, Project.name == name)
    )
    if project is None:
        raise NotFound(
            f"project {name!r} does not exist in team {team.name!r}; list projects with "
            "`sft admin project list`"
        )
    return project


async def team_revision(session: AsyncSession, team_id: str) -> int | None:
    """Return the team's accounts revision, or None if the team is gone."""
    return await session.scalar(select(Team.accounts_revision).where(Team.id == team_id))


async def bump_accounts_revision(session: AsyncSession, team_id: str) -> None:
    """Advance the team's accounts revision (in the caller's transaction)."""
    await session.execute(
        update(Team).where(Team.id == team_id).values(accounts_revision=Team.accounts_revision + 1)
    )


@dataclass(frozen=True)
class Viewer:
    """Which of a team's projects a caller may see: every one (None), or these ids."""

    project_ids: frozenset[str] | None

    def sees(self, project_id: str) -> bool:
        """Return whether servers of `project_id` are visible."""
        return self.project_ids is None or project_id in self.project_ids


async def viewer_for(session: AsyncSession, team: Team, user_name: str | None) -> Viewer:
    """Return what `user_name` may see (None: a platform service, which sees everything).

    Team admins see every project; other people the projects their groups are granted.
    """
    if user_name is None:
        return Viewer(None)
    user = await session.scalar(select(User).where(User.team_id == team.id, User.name == user_name))
    if user is None or user.status is not UserStatus.ACTIVE:
        return Viewer(frozenset())
    if user.team_admin:
        return Viewer(None)
    granted = await session.scalars(
        select(Grant.project_id)
        .join(GroupMember, GroupMember.group_id == Grant.group_id)
        .where(GroupMember.user_id == user.id)
        .distinct()
    )
    return Viewer(frozenset(granted))


# --- servers -------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerView:
    """A server row with the names of its team and project (what its resource name needs)."""

    row: Server
    team: str
    project: str

    @property
    def name(self) -> str:
        """Return the server's resource name."""
        return server_resource(self.team, self.project, self.row.id)

    @property
    def project_name(self) -> str:
        """Return the project's resource name."""
        return f"teams/{self.team}/projects/{self.project}"


def _servers() -> Select[Server, str]:
    """Return a query for servers with their project's name."""
    return select(Server, Project.name).join(Project, Project.id == Server.project_id)


async def get_server(
    session: AsyncSession, team: Team, project: str, server_id: str, viewer: Viewer
) -> ServerView:
    """Return a server the viewer may see, or raise NotFound (also when it may not)."""
    found = (
        await session.execute(
            _servers().where(
                Server.id == server_id.lower(),
                Server.team_id == team.id,
                Project.name == project,
            )
        )
    ).first()
    if found is None or not viewer.sees(found[0].project_id):
        raise NotFound(
            f"server {server_id!r} does not exist in project {project!r} (or you have no grant "
            "on that project); find servers with `sft list-servers`"
        )
    return ServerView(found[0], team.name, found[1])


async def agent_server(session: AsyncSession, team_name: str, server_id: str) -> ServerView:
    """Return the calling agent's server, or NotFound if it was deleted."""
    found = (
        await session.execute(
            _servers()
            .join(Team, Team.id == Server.team_id)
            .where(Server.id == server_id, Team.name == team_name)
        )
    ).first()
    if found is None:
        raise NotFound(
            "this server is no longer enrolled (it was deleted); enroll it again with a new "
            "enrollment token from a project admin"
        )
    return ServerView(found[0], team_name, found[1])


async def list_servers(
    session: AsyncSession,
    team: Team,
    *,
    project: Project | None,
    viewer: Viewer,
    selector: Mapping[str, str],
    os: str,
    page_size: int,
    page_token: str,
) -> tuple[list[ServerView], str]:
    """Return one page of servers, newest first, and the next page token.

    Walks the (team|project, created_at, id) index backwards; labels and OS filter rows
    in the database, so a page costs one indexed range scan even with 100k servers.
    """
    if page_size < 0:
        raise InvalidInput("page_size must not be negative; use 0 for the default of 50")
    size = DEFAULT_PAGE_SIZE if page_size == 0 else min(page_size, MAX_PAGE_SIZE)
    query = _servers()
    if project is not None:
        query = query.where(Server.project_id == project.id)
    else:
        query = query.where(Server.team_id == team.id)
        if viewer.project_ids is not None:
            if not viewer.project_ids:
                return [], ""
            query = query.where(Server.project_id.in_(sorted(viewer.project_ids)))
    if os:
        query = query.where(Server.os == os)
    for key, value in sorted(selector.items()):
        query = query.where(Server.labels[key].as_string() == value)
    digest = filter_digest(
        "servers", team.id, project.id if project else "-", sorted(selector.items()), os
    )
    if page_token:
        after_time, after_id = decode_page_token(page_token, digest)
        query = query.where(
            or_(
                Server.created_at < after_time,
                and_(Server.created_at == after_time, Server.id < after_id),
            )
        )
    ordered = query.order_by(Server.created_at.desc(), Server.id.desc()).limit(size + 1)
    rows = list(await session.execute(ordered))
    views = [ServerView(row, team.name, project_name) for row, project_name in rows[:size]]
    if len(rows) <= size:
        return views, ""
    last = views[-1].row
    return views, encode_page_token(last.created_at, last.id, digest)


async def _sync_names(session: AsyncSession, row: Server) -> None:
    """Make the ServerName rows match the server's names (one row per name)."""
    wanted = _server_names(row)
    existing = set(
        await session.scalars(select(ServerName.name).where(ServerName.server_id == row.id))
    )
    stale = existing - wanted
    if stale:
        await session.execute(
            delete(ServerName).where(ServerName.server_id == row.id, ServerName.name.in_(stale))
        )
    for name in sorted(wanted - existing):
        session.add(ServerName(server_id=row.id, name=name, team_id=row.team_id))
    await session.flush()


def _apply_reported(row: Server, facts: ServerFacts) -> None:
    """Copy what only the agent knows (OS, addresses, ports, version) onto the row."""
    row.hostname = facts.hostname
    row.os = facts.os
    row.addresses = list(facts.addresses)
    row.ssh_port = facts.ssh_port
    row.broker_port = facts.broker_port
    row.agent_version = facts.agent_version


def _apply_configured(row: Server, facts: ServerFacts) -> None:
    """Copy the sftd.yaml fields an admin may also set (names, labels, access, bastion)."""
    row.canonical_name = facts.canonical_name
    row.alt_names = list(facts.alt_names)
    row.labels = dict(facts.labels)
    row.access_address = facts.access_address
    row.bastion = facts.bastion


async def update_server(
    session: AsyncSession, view: ServerView, changes: ServerChanges, now: dt.datetime
) -> ServerView:
    """Apply an admin's (checked) changes and keep the server's names in sync."""
    row = view.row
    if changes.canonical_name is not None:
        row.canonical_name = changes.canonical_name
    if changes.alt_names is not None:
        row.alt_names = list(changes.alt_names)
    if changes.labels is not None:
        row.labels = dict(changes.labels)
    if changes.access_address is not None:
        row.access_address = changes.access_address
    if changes.bastion is not None:
        row.bastion = changes.bastion
    row.updated_at = now
    await session.flush()
    await _sync_names(session, row)
    return view


async def delete_server(session: AsyncSession, view: ServerView) -> None:
    """Delete a server and its names, and bump the team's accounts revision.

    The bump is how every replica's WatchAccounts hub learns the server is gone, so its
    agent's account stream ends.
    """
    await session.execute(delete(ServerName).where(ServerName.server_id == view.row.id))
    await session.execute(delete(Server).where(Server.id == view.row.id))
    await bump_accounts_revision(session, view.row.team_id)


async def record_heartbeat(
    session: AsyncSession, view: ServerView, facts: ServerFacts, now: dt.datetime
) -> bool:
    """Store an agent's reported facts and its last-seen time.

    Returns whether the names clients dial changed (the host certificates need renewing).
    The sftd.yaml fields an admin can also set are not overwritten here: without a record
    of what the agent reported last, a heartbeat could not tell an sftd.yaml change from
    an admin's change, and the admin's would be lost within a minute.
    """
    row = view.row
    before = host_principals(row)
    _apply_reported(row, facts)
    row.last_seen_at = now
    changed = host_principals(row) != before
    if changed:
        row.updated_at = now
        await _sync_names(session, row)
    await session.flush()
    return changed


# --- enrollment tokens ---------------------------------------------------------------


@dataclass(frozen=True)
class TokenSettings:
    """What a project admin chooses for a new enrollment token."""

    description: str = ""
    expire_time: dt.datetime | None = None
    max_uses: int = 0

    def checked(self, now: dt.datetime) -> TokenSettings:
        """Return the settings with defaults applied, or raise InvalidInput saying why."""
        if len(self.description) > MAX_TOKEN_DESCRIPTION:
            raise InvalidInput(
                f"description is {len(self.description)} characters; at most "
                f"{MAX_TOKEN_DESCRIPTION} are allowed"
            )
        expire = self.expire_time or now + TOKEN_DEFAULT_TTL
        if expire <= now:
            raise InvalidInput("expire_time is in the past; choose a time in the future")
        if expire - now > TOKEN_MAX_TTL:
            raise InvalidInput(
                "expire_time is more than 30 days away; tokens live at most 30 days (create a "
                "new one when it runs out)"
            )
        if self.max_uses < 0:
            raise InvalidInput("max_uses must not be negative; 0 means unlimited")
        return TokenSettings(self.description, expire, self.max_uses)


async def create_token(
    session: AsyncSession,
    project: Project,
    settings: TokenSettings,
    *,
    secret_hash: str,
    creator: str,
    now: dt.datetime,
) -> EnrollmentTokenRow:
    """Record a new token of `project` by the hash of its secret (checked settings)."""
    assert settings.expire_time is not None
    row = EnrollmentTokenRow(
        project_id=project.id,
        description=settings.description,
        secret_hash=secret_hash,
        expire_time=settings.expire_time,
        max_uses=settings.max_uses,
        creator=creator,
        created_at=now,
    )
    session.add(row)
    await session.flush()
    return row


async def list_tokens(
    session: AsyncSession,
    project: Project,
    *,
    show_revoked: bool,
    page_size: int,
    page_token: str,
) -> tuple[list[EnrollmentTokenRow], str]:
    """Return one page of a project's tokens, newest first, and the next page token."""
    if page_size < 0:
        raise InvalidInput("page_size must not be negative; use 0 for the default of 50")
    size = DEFAULT_PAGE_SIZE if page_size == 0 else min(page_size, MAX_PAGE_SIZE)
    query = select(EnrollmentTokenRow).where(EnrollmentTokenRow.project_id == project.id)
    if not show_revoked:
        query = query.where(EnrollmentTokenRow.revoked_at.is_(None))
    digest = filter_digest("tokens", project.id, show_revoked)
    if page_token:
        after_time, after_id = decode_page_token(page_token, digest)
        query = query.where(
            or_(
                EnrollmentTokenRow.created_at < after_time,
                and_(
                    EnrollmentTokenRow.created_at == after_time,
                    EnrollmentTokenRow.id < after_id,
                ),
            )
        )
    ordered = query.order_by(
        EnrollmentTokenRow.created_at.desc(), EnrollmentTokenRow.id.desc()
    ).limit(size + 1)
    rows = list(await session.scalars(ordered))
    if len(rows) <= size:
        return rows, ""
    last = rows[size - 1]
    return rows[:size], encode_page_token(last.created_at, last.id, digest)


async def revoke_token(
    session: AsyncSession, project: Project, token_id: str, now: dt.datetime
) -> EnrollmentTokenRow:
    """Revoke a token of `project` (idempotent: a revoked token keeps its revoke time)."""
    row = await session.scalar(
        select(EnrollmentTokenRow).where(
            EnrollmentTokenRow.id == token_id, EnrollmentTokenRow.project_id == project.id
        )
    )
    if row is None:
        raise NotFound(
            f"enrollment token {token_id!r} does not exist in project {project.name!r}; list "
            f"them with `sft admin token list --project {project.name}`"
        )
    if row.revoked_at is None:
        row.revoked_at = now
        await session.flush()
    return row


# --- enrollment ----------------------------------------------------------------------


class TokenRefused(Unauthenticated):
    """An enrollment token that cannot enroll; carries where to audit the refusal."""

    def __init__(self, message: str, *, team: str | None = None, token: str = "") -> None:
        super().__init__(message)
        self.team = team
        self.token = token


@dataclass(frozen=True)
class Enrolled:
    """The outcome of an enrollment: the server, and whether this call created it."""

    server: ServerView
    created: bool
    token: str


def _ago(delta: dt.timedelta) -> str:
    """Return a rough, short age like `3h` or `2d`."""
    seconds = max(0, int(delta.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


async def enroll_server(
    session: AsyncSession,
    *,
    secret_hash: str,
    agent_key: PublicKey,
    host_keys: Sequence[PublicKey],
    facts: ServerFacts,
    now: dt.datetime,
) -> Enrolled:
    """Enroll (or re-enroll) the server of `agent_key` with the token hashing to `secret_hash`.

    Re-enrollment is idempotent: an agent key already enrolled with this token gets its
    facts updated and keeps its id, and uses none of the token (so a restarted agent, or
    a retry after the CA failed, never makes a second server, even with a used-up token).
    `facts` must be checked. Raises TokenRefused, or Conflict when the key belongs to a
    server of another project or enrolled with another token.
    """
    token = await session.scalar(
        select(EnrollmentTokenRow)
        .where(EnrollmentTokenRow.secret_hash == secret_hash)
        .with_for_update()
    )
    if token is None:
        raise TokenRefused(
            "this enrollment token is not known here (never issued by this platform, or its "
            "project was deleted); ask a project admin for a new one: "
            "`sft admin token create --project PROJECT`"
        )
    project = await session.get_one(Project, token.project_id)
    team = await session.get_one(Team, project.team_id)
    name = token_resource(team.name, project.name, token.id)
    advice = _TOKEN_ADVICE.format(project=project.name)
    if token.revoked_at is not None:
        raise TokenRefused(
            f"enrollment token {token.id} of project {project.name!r} was revoked "
            f"{_ago(now - token.revoked_at)} ago; {advice}",
            team=team.name,
            token=name,
        )
    if token.expire_time <= now:
        raise TokenRefused(
            f"enrollment token {token.id} of project {project.name!r} expired "
            f"{_ago(now - token.expire_time)} ago; {advice}",
            team=team.name,
            token=name,
        )
    existing = await session.scalar(
        select(Server).where(Server.agent_key_fingerprint == agent_key.fingerprint)
    )
    if existing is not None:
        if existing.project_id != project.id:
            other = await session.get_one(Project, existing.project_id)
            raise Conflict(
                f"this agent key already belongs to server {existing.id} in project "
                f"{other.name!r}; delete that server first (`sft admin server delete`), or "
                "clear sftd's state dir so it makes a new key"
            )
        if existing.enrollment_token_id != token.id:
            # The agent key is public (GetServer shows it), so without this check anyone
            # holding any token of the project could take over an enrolled server's
            # record (its access address) by replaying its key.
            raise Conflict(
                f"this agent key is already enrolled as server {existing.id} with another "
                "enrollment token; sftd needs no new enrollment (check its state dir), or "
                "delete the server (`sft admin server delete`) to enroll it afresh"
            )
        _apply_reported(existing, facts)
        _apply_configured(existing, facts)
        existing.host_key_fingerprints = [key.fingerprint for key in host_keys]
        existing.updated_at = now
        existing.last_seen_at = now
        await session.flush()
        await _sync_names(session, existing)
        return Enrolled(ServerView(existing, team.name, project.name), False, name)
    if token.max_uses and token.uses >= token.max_uses:
        raise TokenRefused(
            f"enrollment token {token.id} of project {project.name!r} is used up (it allowed "
            f"{token.max_uses} enrollment{'s' if token.max_uses != 1 else ''}); {advice}",
            team=team.name,
            token=name,
        )
    row = Server(
        team_id=team.id,
        project_id=project.id,
        agent_public_key=agent_key.line,
        agent_key_fingerprint=agent_key.fingerprint,
        host_key_fingerprints=[key.fingerprint for key in host_keys],
        enrollment_token_id=token.id,
        created_at=now,
        updated_at=now,
        last_seen_at=now,
    )
    _apply_reported(row, facts)
    _apply_configured(row, facts)
    session.add(row)
    await session.flush()
    await _sync_names(session, row)
    token.uses += 1
    token.last_used_at = now
    await session.flush()
    return Enrolled(ServerView(row, team.name, project.name), True, name)


# --- desired accounts ----------------------------------------------------------------


@dataclass(frozen=True)
class DesiredAccount:
    """One account a server should have (the domain twin of ServerAccount)."""

    name: str
    user: str
    uid: int
    gid: int
    primary_group: str
    supplementary_groups: tuple[str, ...]
    admin: bool
    windows_name: str
    full_name: str


# eq=False: identity hashing, so a rendered message can be cached per list cheaply.
@dataclass(frozen=True, eq=False)
class DesiredAccounts:
    """The complete account list of a project's servers at one accounts revision."""

    project_id: str
    revision: int
    accounts: tuple[DesiredAccount, ...]
    create_missing: bool
    #: Digest of the content, so a stream skips re-sending an unchanged list cheaply.
    digest: str


async def desired_accounts(
    session: AsyncSession, project_id: str, revision: int
) -> DesiredAccounts | None:
    """Return the accounts every server of the project should have, or None if it is gone.

    Active users in groups granted on the project; admin if any of their grants there is
    ADMIN; supplementary groups are their granted groups' names. One query.
    """
    create_missing = await session.scalar(
        select(Project.create_server_users).where(Project.id == project_id)
    )
    if create_missing is None:
        return None
    rows = await session.execute(
        select(User, Group.name, Grant.role)
        .join(GroupMember, GroupMember.user_id == User.id)
        .join(Group, Group.id == GroupMember.group_id)
        .join(Grant, Grant.group_id == Group.id)
        .where(Grant.project_id == project_id, User.status == UserStatus.ACTIVE)
    )
    users: dict[str, User] = {}
    groups: dict[str, set[str]] = {}
    admins: set[str] = set()
    for user, group, role in rows:
        users[user.id] = user
        groups.setdefault(user.id, set()).add(group)
        if role is GrantRole.ADMIN:
            admins.add(user.id)
    accounts = tuple(
        sorted(
            (_account(user, groups[user.id], user.id in admins) for user in users.values()),
            key=lambda account: account.name,
        )
    )
    digest = hashlib.sha256(repr((accounts, create_missing)).encode()).hexdigest()
    return DesiredAccounts(project_id, revision, accounts, bool(create_missing), digest)


def _account(user: User, groups: Iterable[str], admin: bool) -> DesiredAccount:
    """Return a user's own account with the given groups and admin right."""
    return DesiredAccount(
        name=user.name,
        user=user.name,
        uid=user.unix_uid,
        gid=user.unix_gid,
        primary_group=user.name,
        supplementary_groups=tuple(sorted(groups)),
        admin=admin,
        windows_name=user.windows_name,
        full_name=user.display_name,
    )


# --- resolve -------------------------------------------------------------------------


@dataclass(frozen=True)
class Ambiguous:
    """More than one server answers to a query (in its deciding tier)."""

    query: str
    candidates: tuple[ServerView, ...]

    def message(self) -> str:
        """Return the sentence that names the candidates and says how to pick one."""
        shown = ", ".join(
            f"{view.row.canonical_name} (project {view.project}, id {view.row.id})"
            for view in self.candidates[:5]
        )
        more = f" and {len(self.candidates) - 5} more" if len(self.candidates) > 5 else ""
        return (
            f"{self.query!r} names {len(self.candidates)} servers: {shown}{more}; use the "
            "server id, or narrow it with `--project`"
        )


def _tier(row: Server, query: str) -> int:
    """Return which ResolveServer tier `query` matches `row` in (5: an address)."""
    if row.canonical_name == query:
        return 2
    if row.hostname == query:
        return 3
    if query in row.alt_names:
        return 4
    return 5


async def resolve_server(
    session: AsyncSession,
    team: Team,
    query: str,
    *,
    viewer: Viewer,
    project: Project | None = None,
) -> ServerView | Ambiguous:
    """Return the one server `query` names among those the viewer may see, or Ambiguous.

    By id (or resource name) first, then by one indexed lookup of the ServerName table;
    the best tier (canonical name, hostname, alt name, address) decides. Raises NotFound
    with up to three close matches among the names the viewer may see.
    """
    text = query.strip()
    if not text:
        raise InvalidInput("query is required: a server name, alias, address or id")
    if len(text) > MAX_NAME_CHARS:
        raise InvalidInput(f"query is longer than {MAX_NAME_CHARS} characters")
    wanted = text.lower()
    server_id = wanted.rsplit("/servers/", 1)[-1] if wanted.startswith("teams/") else wanted

    def allowed(query: Select[Server, str]) -> Select[Server, str]:
        """Limit `query` to the team, the project asked for and what the viewer sees."""
        query = query.where(Server.team_id == team.id)
        if project is not None:
            query = query.where(Server.project_id == project.id)
        if viewer.project_ids is not None:
            query = query.where(Server.project_id.in_(sorted(viewer.project_ids)))
        return query

    by_id = (await session.execute(allowed(_servers().where(Server.id == server_id)))).first()
    if by_id is not None:
        return ServerView(by_id[0], team.name, by_id[1])
    named = (
        await session.execute(
            allowed(
                _servers()
                .join(ServerName, ServerName.server_id == Server.id)
                .where(ServerName.team_id == team.id, ServerName.name == wanted)
            ).limit(500)
        )
    ).all()
    views = [ServerView(row, team.name, project_name) for row, project_name in named]
    if not views:
        raise NotFound(await _not_found_message(session, team, wanted, viewer, project))
    best = min(_tier(view.row, wanted) for view in views)
    chosen = sorted(
        (view for view in views if _tier(view.row, wanted) == best),
        key=lambda view: (view.project, view.row.canonical_name, view.row.id),
    )
    if len(chosen) == 1:
        return chosen[0]
    return Ambiguous(text, tuple(chosen[:_MAX_CANDIDATES]))


async def _not_found_message(
    session: AsyncSession, team: Team, wanted: str, viewer: Viewer, project: Project | None
) -> str:
    """Return the NOT_FOUND sentence, with up to three close visible names."""
    names = select(ServerName.name).where(ServerName.team_id == team.id)
    if project is not None or viewer.project_ids is not None:
        names = names.join(Server, Server.id == ServerName.server_id)
        if project is not None:
            names = names.where(Server.project_id == project.id)
        if viewer.project_ids is not None:
            names = names.where(Server.project_id.in_(sorted(viewer.project_ids)))
    pool = sorted(set(await session.scalars(names.limit(_CLOSE_MATCH_POOL))))
    close = difflib.get_close_matches(wanted, pool, n=3)
    where = f"project {project.name!r}" if project is not None else f"team {team.name!r}"
    message = f"no server you can see in {where} is called {wanted!r}"
    if close:
        return f"{message}; did you mean {', '.join(close)}?"
    return f"{message}; list servers with `sft list-servers`"


# --- access --------------------------------------------------------------------------


@dataclass(frozen=True)
class Hop:
    """One jump on the way to a server: an enrolled server or a plain address."""

    server: str
    address: str
    ssh_port: int


@dataclass(frozen=True)
class AccessDecision:
    """A user may reach a server: with which role, as which account, through which hops."""

    server: ServerView
    project: Project
    user: User
    role: GrantRole
    account: DesiredAccount
    hops: tuple[Hop, ...]


async def check_server_access(
    session: AsyncSession,
    team: Team,
    *,
    project: str,
    server_id: str,
    user_name: str,
    account_name: str,
) -> AccessDecision:
    """Decide whether `user_name` may reach the server, and as which account.

    Raises NotFound (no such server or user), FailedPrecondition (the user is disabled,
    or a named bastion does not exist) or PermissionDenied saying what is missing.
    """
    view = await get_server(session, team, project, server_id, Viewer(None))
    project_row = await session.get_one(Project, view.row.project_id)
    user = await session.scalar(select(User).where(User.team_id == team.id, User.name == user_name))
    if user is None:
        raise NotFound(f"user {user_name!r} does not exist in team {team.name!r}")
    if user.status is not UserStatus.ACTIVE:
        raise FailedPrecondition(
            f"user {user_name!r} is disabled in team {team.name!r}; a team admin can enable "
            "them again"
        )
    grants = (
        await session.execute(
            select(Group.name, Grant.role)
            .join(GroupMember, GroupMember.group_id == Group.id)
            .join(Grant, Grant.group_id == Group.id)
            .where(GroupMember.user_id == user.id, Grant.project_id == project_row.id)
        )
    ).all()
    held = list(grants)
    if not held:
        raise PermissionDenied(
            f"user {user_name!r} has no grant on project {project_row.name!r}; a team admin "
            f"can grant one of their groups: `sft admin project grant GROUP {project_row.name}`"
        )
    role = GrantRole.ADMIN if any(r is GrantRole.ADMIN for _, r in held) else GrantRole.USER
    own = _account(user, (group for group, _ in held), role is GrantRole.ADMIN)
    wanted = account_name.strip()
    if wanted in ("", user.name) or (view.row.os == "windows" and wanted == user.windows_name):
        account = own
    else:
        account = _admin_account(project_row, user, role, wanted)
    hops = await bastion_hops(session, team, project_row, view)
    return AccessDecision(view, project_row, user, role, account, hops)


def _admin_account(project: Project, user: User, role: GrantRole, name: str) -> DesiredAccount:
    """Return a shared admin account (e.g. root) if the user and project allow it."""
    allowed = list(project.allowed_admin_account_names or [])
    if role is not GrantRole.ADMIN:
        raise PermissionDenied(
            f"logging in as {name!r} needs an admin grant on project {project.name!r}; "
            f"user {user.name!r} holds a user grant only (log in as {user.name!r} instead)"
        )
    if name not in allowed:
        listed = ", ".join(repr(a) for a in allowed) if allowed else "none"
        raise PermissionDenied(
            f"project {project.name!r} does not allow logging in as {name!r} (allowed admin "
            f"account names: {listed}); a project admin can change that with "
            "`sft admin project update`"
        )
    return DesiredAccount(
        name=name,
        user=user.name,
        uid=0,
        gid=0,
        primary_group=name,
        supplementary_groups=(),
        admin=True,
        windows_name=name[:20],
        full_name=user.display_name,
    )


async def bastion_hops(
    session: AsyncSession, team: Team, project: Project, target: ServerView
) -> tuple[Hop, ...]:
    """Return the jumps before `target`: the project's required bastion, then its own."""
    hops: list[Hop] = []
    if project.required_bastion:
        hops.append(
            await _hop(session, team, project.required_bastion, f"project {project.name!r}")
        )
    if target.row.bastion:
        whose = f"server {target.row.canonical_name!r} (its sftd.yaml Bastion)"
        own = await _hop(session, team, target.row.bastion, whose, by_server_name=True)
        if own not in hops and own.server != target.name:
            hops.append(own)
    return tuple(hops)


def _server_hop(view: ServerView) -> Hop:
    """Return the hop for an enrolled bastion server: its access address and sshd port."""
    row = view.row
    address = row.access_address or (row.addresses[0] if row.addresses else row.canonical_name)
    return Hop(view.name, address, row.ssh_port)


async def _hop(
    session: AsyncSession, team: Team, name: str, whose: str, *, by_server_name: bool = False
) -> Hop:
    """Return the hop a bastion name stands for (a Bastion, or a server's own name)."""
    bastion = await session.scalar(
        select(Bastion).where(Bastion.team_id == team.id, Bastion.name == name)
    )
    if bastion is not None:
        if bastion.server_id is None:
            return Hop("", bastion.address, bastion.ssh_port or 22)
        found = (await session.execute(_servers().where(Server.id == bastion.server_id))).first()
        if found is not None:
            return _server_hop(ServerView(found[0], team.name, found[1]))
    elif by_server_name:
        try:
            resolved = await resolve_server(session, team, name, viewer=Viewer(None))
        except NotFound:
            resolved = None
        if isinstance(resolved, ServerView):
            return _server_hop(resolved)
    raise FailedPrecondition(
        f"{whose} names bastion {name!r}, which does not exist in team {team.name!r}; a team "
        "admin can create it (`sft admin bastion create`) or clear the setting"
    )
