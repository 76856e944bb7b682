"""What the platform accepts about a server and its enrollment tokens: resource names,
reported facts, admin changes, label selectors and token settings.

Pure rules: no I/O, no SQL, no protobuf. Each value's `checked()` refuses bad input with
a message saying what to send instead.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from runtime.errors import InvalidInput
from services.inventory.models import Server

__all__ = [
    "MAX_ADDRESSES",
    "MAX_ALT_NAMES",
    "MAX_LABELS",
    "MAX_NAME_CHARS",
    "MAX_SELECTOR_CHARS",
    "MAX_TOKEN_DESCRIPTION",
    "TOKEN_DEFAULT_TTL",
    "TOKEN_MAX_TTL",
    "ServerChanges",
    "ServerFacts",
    "TokenSettings",
    "host_principals",
    "parse_selector",
    "server_names",
    "server_resource",
    "split_token_name",
    "token_resource",
]

MAX_NAME_CHARS = 253
MAX_ALT_NAMES = 32
MAX_LABELS = 64
MAX_ADDRESSES = 64
MAX_SELECTOR_CHARS = 1000
#: The token table's description column holds 500 characters (the proto allows 1000).
MAX_TOKEN_DESCRIPTION = 500
TOKEN_DEFAULT_TTL = dt.timedelta(hours=24)
TOKEN_MAX_TTL = dt.timedelta(days=30)

# The CA's host-principal rule (lowercase DNS labels): a name we store must be
# certifiable, or enrollment would fail later at signing.
_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_LABEL_KEY = re.compile(r"^[A-Za-z0-9._/-]{1,63}$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9._/-]{0,255}$")
_AGENT_VERSION = re.compile(r"^[A-Za-z0-9.+_~-]{0,64}$")
_TOKEN_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_OPERATING_SYSTEMS = ("linux", "windows")


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


def server_names(row: Server) -> set[str]:
    """Return every name a server answers to, lowercase (its ServerName rows)."""
    return {name.lower() for name in host_principals(row)}


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
