"""The subjectAltName URIs that say whom an X.509 certificate is for, and resource-name splitting.

Shared by the CA (which builds them), the broker and the client (which parse them). Pure: no
I/O, no grpc, no generated code; it must never accept two spellings of the same URI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args
from urllib.parse import quote, unquote

from runtime.errors import InvalidInput

__all__ = [
    "SFT_URI_SCHEME",
    "SftUri",
    "SftUriKind",
    "account_uri",
    "parse_sft_uri",
    "server_uri",
    "split_project_name",
    "split_server_name",
    "split_team_name",
    "split_user_name",
    "user_uri",
]

SFT_URI_SCHEME = "sft"
SftUriKind = Literal["users", "accounts", "servers"]
_KINDS: tuple[str, ...] = get_args(SftUriKind)
_PREFIX = f"{SFT_URI_SCHEME}://"
# Certificates are small; a longer SAN URI is not one we made.
_MAX_URI_LENGTH = 2048

_TEAM_OR_PROJECT = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_USER = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,63}")
_SERVER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SEGMENT_RULES = (
    "team and project ids are 1-63 lowercase letters, digits and '-' starting with a letter or "
    "digit"
)


@dataclass(frozen=True)
class SftUri:
    """One parsed sft:// URI: which team and project, and which user, account or server."""

    team: str
    project: str
    kind: SftUriKind
    name: str


def user_uri(team: str, project: str, user: str) -> str:
    """Return the URI naming `user` (a user id) in a project: sft://team/project/users/user."""
    return _build(team, project, "users", user)


def account_uri(team: str, project: str, account: str) -> str:
    """Return the URI naming a server account in a project: sft://team/project/accounts/name."""
    return _build(team, project, "accounts", account)


def server_uri(team: str, project: str, server: str) -> str:
    """Return the URI naming a server (by id) in a project: sft://team/project/servers/id."""
    return _build(team, project, "servers", server)


def parse_sft_uri(uri: str) -> SftUri:
    """Return what an sft:// URI names; refuse anything the builders above would not produce."""
    shown = repr(uri[:80])
    if len(uri) > _MAX_URI_LENGTH or not uri.isascii():
        raise InvalidInput(
            f"URI {shown} is not an sft URI: it must be ASCII and at most {_MAX_URI_LENGTH} "
            "characters; expected sft://{team}/{project}/{users|accounts|servers}/{name}"
        )
    if not uri.startswith(_PREFIX):
        raise InvalidInput(
            f"URI {shown} is not an sft URI: it must start with {_PREFIX!r}; expected "
            "sft://{team}/{project}/{users|accounts|servers}/{name}"
        )
    if "?" in uri or "#" in uri:
        raise InvalidInput(
            f"URI {shown} has a query or fragment; sft URIs carry neither: "
            "sft://{team}/{project}/{users|accounts|servers}/{name}"
        )
    raw = uri[len(_PREFIX) :].split("/")
    if len(raw) != 4:
        raise InvalidInput(
            f"URI {shown} has {len(raw)} segments, not 4; expected "
            "sft://{team}/{project}/{users|accounts|servers}/{name}"
        )
    team, project, kind, name = (_decode(segment, shown) for segment in raw)
    if kind == "users":
        return SftUri(team, project, "users", name)
    if kind == "accounts":
        return SftUri(team, project, "accounts", name)
    if kind == "servers":
        return SftUri(team, project, "servers", name)
    raise InvalidInput(
        f"URI {shown} names a {kind[:20]!r}; sft URIs name one of {', '.join(_KINDS)}"
    )


def split_team_name(name: str) -> str:
    """Return the team of a team resource name "teams/{team}"."""
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "teams" or not _TEAM_OR_PROJECT.fullmatch(parts[1]):
        raise InvalidInput(
            f"team {name[:200]!r} is not a team resource name; use teams/{{team}} "
            f"({_SEGMENT_RULES})"
        )
    return parts[1]


def split_project_name(name: str) -> tuple[str, str]:
    """Return (team, project) of a project resource name "teams/{team}/projects/{project}"."""
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "teams"
        or parts[2] != "projects"
        or not _TEAM_OR_PROJECT.fullmatch(parts[1])
        or not _TEAM_OR_PROJECT.fullmatch(parts[3])
    ):
        raise InvalidInput(
            f"project {name[:200]!r} is not a project resource name; use "
            f"teams/{{team}}/projects/{{project}} ({_SEGMENT_RULES})"
        )
    return parts[1], parts[3]


def split_user_name(name: str) -> tuple[str, str]:
    """Return (team, user) of a user resource name "teams/{team}/users/{user}"."""
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "teams"
        or parts[2] != "users"
        or not _TEAM_OR_PROJECT.fullmatch(parts[1])
        or not _USER.fullmatch(parts[3])
    ):
        raise InvalidInput(
            f"user {name[:200]!r} is not a user resource name; use teams/{{team}}/users/{{user}} "
            f"({_SEGMENT_RULES}; user ids are 1-64 lowercase letters, digits, '_', '.' and '-' "
            "not starting with '.' or '-')"
        )
    return parts[1], parts[3]


def split_server_name(name: str) -> tuple[str, str, str]:
    """Return (team, project, server) of "teams/{team}/projects/{project}/servers/{server}"."""
    parts = name.split("/")
    if (
        len(parts) != 6
        or parts[0] != "teams"
        or parts[2] != "projects"
        or parts[4] != "servers"
        or not _TEAM_OR_PROJECT.fullmatch(parts[1])
        or not _TEAM_OR_PROJECT.fullmatch(parts[3])
        or not _SERVER_ID.fullmatch(parts[5])
    ):
        raise InvalidInput(
            f"server {name[:200]!r} is not a server resource name; use "
            f"teams/{{team}}/projects/{{project}}/servers/{{server}} ({_SEGMENT_RULES}; server "
            "ids are 1-64 letters, digits, '_' and '-')"
        )
    return parts[1], parts[3], parts[5]


def _build(team: str, project: str, kind: SftUriKind, name: str) -> str:
    """Return sft://team/project/kind/name with every segment percent-encoded."""
    for field, value in (("team", team), ("project", project), (kind, name)):
        if not value:
            raise InvalidInput(f"cannot name an empty {field} in an sft URI; pass its id")
    segments = (quote(value, safe="") for value in (team, project, kind, name))
    return _PREFIX + "/".join(segments)


def _decode(segment: str, shown: str) -> str:
    """Return the percent-decoded `segment`; refuse empty or non-canonical encodings."""
    if not segment:
        raise InvalidInput(
            f"URI {shown} has an empty segment; expected "
            "sft://{team}/{project}/{users|accounts|servers}/{name}"
        )
    try:
        value = unquote(segment, errors="strict")
    except UnicodeDecodeError:
        value = ""
    # One value, one spelling: a URI compared as a string must mean what it parses to.
    if not value or quote(value, safe="") != segment:
        raise InvalidInput(
            f"URI {shown} has a segment {segment[:40]!r} that is not canonically "
            "percent-encoded; build sft URIs with runtime.cert_uris"
        )
    return value
