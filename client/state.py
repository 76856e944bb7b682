"""Where `sft` keeps what it knows, per team: device key, pinned platform CA, access token.

Layout under the home (`$SFT_HOME`, else the per-user config dir):
`current_team`, and `teams/<team>/` with `device_key` (never leaves this machine),
`device_key.pub`, `device.json`, `platform-ca.pem` and `token.json`. Directories are
0700 and files 0600; every file is replaced atomically, so a crash leaves the old
content or the new, never half of either. Knows no network.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.errors import ENROLL_HINT, EXIT_USAGE, ClientError, NotEnrolled
from client.files import (
    DIR_MODE,
    HOME_ENV,
    TEAM_ENV,
    fsync_dir,
    home_directory,
    make_private_dir,
    write_atomic,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ed25519

__all__ = [
    "HOME_ENV",
    "TEAM_ENV",
    "DeviceRecord",
    "Home",
    "StoredToken",
    "TeamDir",
    "check_team_name",
    "default_home",
    "write_atomic",
]

# The platform's team name rule; it also keeps a team name from escaping teams/.
_TEAM_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_STAGING_PREFIX = ".enrolling-"


def default_home() -> Path:
    """Return `$SFT_HOME`, or the per-user config directory for sft."""
    return Path(home_directory())


def check_team_name(team: str) -> str:
    """Return `team` if it is a valid team name; refuse it as a usage error otherwise."""
    if not _TEAM_NAME.fullmatch(team):
        raise ClientError(
            f"{team!r} is not a team name: use 1-63 lowercase letters, digits and dashes, "
            "starting with a letter or digit",
            EXIT_USAGE,
        )
    return team


def _timestamp(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


def _parse_time(value: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise ValueError("time is not a string")
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("time has no timezone")
    return parsed.astimezone(dt.UTC)


@dataclass(frozen=True)
class DeviceRecord:
    """What enrollment established: which platform, which team, which device and user."""

    url: str
    team: str
    device: str  # teams/{team}/users/{user}/devices/{device}
    user: str  # teams/{team}/users/{user}
    ca_sha256: str  # hex SHA-256 of the pinned platform CA (DER)
    enrolled_at: dt.datetime

    def as_json(self) -> dict[str, str]:
        """Return the device.json form."""
        return {
            "url": self.url,
            "team": self.team,
            "device": self.device,
            "user": self.user,
            "ca_sha256": self.ca_sha256,
            "enrolled_at": _timestamp(self.enrolled_at),
        }

    @classmethod
    def from_json(cls, data: Any) -> DeviceRecord:
        """Read a device.json object; ValueError if anything is missing or malformed."""
        if not isinstance(data, dict):
            raise ValueError("not an object")
        fields = {}
        for key in ("url", "team", "device", "user", "ca_sha256"):
            value = data.get(key)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{key} is missing")
            fields[key] = value
        return cls(**fields, enrolled_at=_parse_time(data.get("enrolled_at")))

    @property
    def user_name(self) -> str:
        """Return the user's short name (the last part of `user`)."""
        return self.user.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class StoredToken:
    """A bearer access token and when it stops working. The token itself is never printed."""

    access_token: str
    expire_time: dt.datetime

    def valid_for(self, now: dt.datetime) -> dt.timedelta:
        """Return how long the token still works (negative once expired)."""
        return self.expire_time - now

    def as_json(self) -> dict[str, str]:
        """Return the token.json form."""
        return {"access_token": self.access_token, "expire_time": _timestamp(self.expire_time)}

    @classmethod
    def from_json(cls, data: Any) -> StoredToken:
        """Read a token.json object; ValueError if malformed."""
        if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
            raise ValueError("not a token object")
        return cls(data["access_token"], _parse_time(data.get("expire_time")))


class TeamDir:
    """One team's directory: the device's identity in that team and its cached credentials."""

    def __init__(self, path: Path, team: str) -> None:
        self.path = path
        self.team = team

    @property
    def device_key_file(self) -> Path:
        """Return the private key file (0600; never leaves this machine)."""
        return self.path / "device_key"

    @property
    def device_public_key_file(self) -> Path:
        """Return the public key file."""
        return self.path / "device_key.pub"

    @property
    def device_file(self) -> Path:
        """Return device.json."""
        return self.path / "device.json"

    @property
    def ca_file(self) -> Path:
        """Return the pinned platform CA (PEM)."""
        return self.path / "platform-ca.pem"

    @property
    def token_file(self) -> Path:
        """Return token.json (0600)."""
        return self.path / "token.json"

    def _damaged(self, what: str, why: object) -> ClientError:
        return ClientError(
            f"{what} of team {self.team} in {self.path} is damaged ({why})",
            hint=f"remove this device's local state with `sft unenroll --team {self.team} "
            "--force` and enroll again",
        )

    def read_device(self) -> DeviceRecord:
        """Return device.json."""
        try:
            return DeviceRecord.from_json(json.loads(self.device_file.read_text()))
        except (OSError, ValueError) as exc:
            raise self._damaged("device.json", exc) from None

    def read_ca_pem(self) -> bytes:
        """Return the pinned platform CA, PEM."""
        try:
            return self.ca_file.read_bytes()
        except OSError as exc:
            raise self._damaged("the pinned platform CA", exc.strerror) from None

    def read_device_key(self) -> ed25519.Ed25519PrivateKey:
        """Return the device's private key."""
        from client.device_key import load_private_key  # cryptography: only when signing

        try:
            return load_private_key(self.device_key_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise self._damaged("the device key", exc) from None

    def read_token(self) -> StoredToken | None:
        """Return the cached access token, or None when there is none (or it is unreadable)."""
        try:
            return StoredToken.from_json(json.loads(self.token_file.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a damaged cache only costs one login

    def write_token(self, token: StoredToken) -> None:
        """Store the access token (0600)."""
        write_atomic(self.token_file, json.dumps(token.as_json()).encode())

    def forget_credentials(self) -> list[Path]:
        """Delete every cached credential of this team; return what was removed.

        The one hook for `sft logout`: the access token, the SSH and RDP caches'
        certificates, server records and .rdp files (their keys stay; a key certifies
        nothing by itself).
        """
        from client.rdp_cache import RDPCache
        from client.ssh_cache import SSHCache

        removed = []
        for path in (self.token_file,):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
        cached = SSHCache(self.path).forget() + RDPCache(self.path).forget()
        return removed + [Path(path) for path in cached]


class Home:
    """The sft home directory: every enrolled team and which one is current."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else default_home()

    @property
    def teams_dir(self) -> Path:
        """Return the directory holding one directory per team."""
        return self.root / "teams"

    @property
    def current_team_file(self) -> Path:
        """Return the file naming the default team."""
        return self.root / "current_team"

    def ensure(self) -> None:
        """Create the home and teams directories, 0700."""
        make_private_dir(self.root)
        make_private_dir(self.teams_dir)

    def team_dir(self, team: str) -> TeamDir:
        """Return the directory of `team` (which may not exist)."""
        return TeamDir(self.teams_dir / check_team_name(team), team)

    def enrolled_teams(self) -> list[str]:
        """Return the teams with a device on this machine, sorted."""
        if not self.teams_dir.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.teams_dir.iterdir()
            if entry.is_dir() and _TEAM_NAME.fullmatch(entry.name)
        )

    def current_team(self) -> str | None:
        """Return the default team, or None when none is set."""
        try:
            name = self.current_team_file.read_text().strip()
        except FileNotFoundError:
            return None
        return name if _TEAM_NAME.fullmatch(name) else None

    def set_current_team(self, team: str) -> None:
        """Make `team` the default for every verb."""
        self.ensure()
        write_atomic(self.current_team_file, f"{check_team_name(team)}\n".encode())

    def clear_current_team(self) -> None:
        """Forget the default team."""
        self.current_team_file.unlink(missing_ok=True)

    def resolve_team(self, explicit: str | None) -> str:
        """Return the team a verb acts on: `--team`/`$SFT_TEAM`, else the current team."""
        if explicit:
            return check_team_name(explicit)
        current = self.current_team()
        if current is not None:
            return current
        teams = self.enrolled_teams()
        if not teams:
            raise NotEnrolled("this machine is not enrolled in any team", hint=f"run {ENROLL_HINT}")
        raise ClientError(
            f"no current team (enrolled here: {', '.join(teams)})",
            hint="choose one with `sft use TEAM` or pass --team TEAM",
        )

    def enrolled(self, explicit: str | None) -> TeamDir:
        """Return the directory of the team a verb acts on, refusing a team not enrolled here."""
        team = self.resolve_team(explicit)
        team_dir = self.team_dir(team)
        if not team_dir.path.is_dir():
            others = self.enrolled_teams()
            also = f" (enrolled here: {', '.join(others)})" if others else ""
            raise NotEnrolled(
                f"this machine is not enrolled in team {team}{also}",
                hint=f"run `sft enroll --url URL --team {team} --code CODE`",
            )
        return team_dir

    def new_staging_dir(self, team: str) -> TeamDir:
        """Return a fresh private directory where an enrollment is assembled before commit."""
        self.ensure()
        path = self.teams_dir / f"{_STAGING_PREFIX}{check_team_name(team)}-{secrets.token_hex(4)}"
        path.mkdir(mode=DIR_MODE)
        if os.name == "posix":
            path.chmod(DIR_MODE)
        return TeamDir(path, team)

    def commit_staging(self, staging: TeamDir) -> TeamDir:
        """Move a complete staging directory into place as the team's directory, atomically."""
        target = self.team_dir(staging.team)
        try:
            # rename refuses a non-empty target: a concurrent enrollment wins, this one fails.
            staging.path.rename(target.path)
        except OSError:
            raise ClientError(
                f"this machine is already enrolled in team {staging.team}",
                hint=f"run `sft unenroll --team {staging.team}` first",
            ) from None
        fsync_dir(self.teams_dir)
        return target

    def remove_team_dir(self, team_dir: TeamDir) -> None:
        """Delete a team's directory and everything in it; clear it as current team."""
        shutil.rmtree(team_dir.path, ignore_errors=False)
        if self.current_team() == team_dir.team:
            self.clear_current_team()
