"""The SSH credential cache of one team: a key pair, a certificate per project, where servers are.

Layout under `teams/<team>/ssh/` (directory 0700, files 0600, every write atomic):

- `id_ed25519`, `id_ed25519.pub`: the key the certificates certify (made here, never sent);
- `credentials/<project>[@<account>]-cert.pub` and `.json`: the newest certificate for
  the project (and admin account), with when it stops working;
- `servers/<id>.json`: how to reach a server and check its identity (from the
  platform's answer that came with the certificate), kept as long as that certificate;
- `names.json`: which server each name typed by the user meant;
- `known_hosts`: `@cert-authority` lines of every cached server, rebuilt on each change;
- `routes/<digest>.conf`: ssh config for bastion hops; `hosts/<name>-cert.pub`: the
  certificate `sft proxycommand` puts where plain ssh's `CertificateFile` looks.

Reading needs only the standard library: a warm `sft ssh` decides from these files
alone and runs ssh without loading gRPC. Writers hold `lock` (see client.ssh_credentials).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from client.files import make_private_dir, write_atomic

__all__ = [
    "RENEW_BEFORE_SECONDS",
    "USABLE_FOR_SECONDS",
    "Credential",
    "Hop",
    "Route",
    "SSHCache",
    "ServerRecord",
]

#: A certificate this close to its end is replaced before use, so a login never races it.
RENEW_BEFORE_SECONDS = 60.0
#: When the platform cannot be reached, a cached certificate still good for this long is used.
USABLE_FOR_SECONDS = 5.0
#: Names that may become file names: what ssh passes for `%n` with a server's names.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:@%+-]{0,252}")


@dataclass(frozen=True)
class Hop:
    """One jump on the way to a server: an enrolled server (`server`) or a bare address."""

    address: str
    ssh_port: int
    server: str = ""


@dataclass(frozen=True)
class ServerRecord:
    """How to reach one server and check that it is the one (from IssueCredentials)."""

    server: str  # teams/T/projects/P/servers/ID
    project: str  # teams/T/projects/P
    canonical_name: str
    hostname: str
    address: str
    ssh_port: int
    known_hosts: str
    account: str
    #: The account asked for (`-l`), "" for the caller's own: part of the credential's key.
    requested_account: str
    #: Seconds since the epoch when this answer (and its certificate) stops being used.
    expires: float
    bastions: tuple[Hop, ...] = ()

    @property
    def server_id(self) -> str:
        """Return the server's id (the last part of its resource name)."""
        return self.server.rsplit("/", 1)[-1]

    @property
    def project_id(self) -> str:
        """Return the project's short name."""
        return self.project.rsplit("/", 1)[-1]

    def as_json(self) -> dict[str, Any]:
        """Return the servers/<id>.json form."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> ServerRecord:
        """Read a servers/<id>.json object; ValueError (or KeyError/TypeError) if malformed."""
        hops = tuple(Hop(**hop) for hop in data.pop("bastions", ()))
        record = cls(**data, bastions=hops)
        if not isinstance(record.ssh_port, int) or not isinstance(record.expires, int | float):
            raise ValueError("malformed server record")
        return record


@dataclass(frozen=True)
class Credential:
    """A cached SSH user certificate for one project (and account) and key."""

    project: str
    requested_account: str
    account: str
    certificate: str
    serial: int
    valid_after: float
    valid_before: float
    public_key: str

    def as_json(self) -> dict[str, Any]:
        """Return the credentials/<name>.json form."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Credential:
        """Read a credentials/<name>.json object; ValueError (or KeyError) if malformed."""
        credential = cls(**data)
        if not isinstance(credential.valid_before, int | float):
            raise ValueError("malformed credential")
        return credential


@dataclass(frozen=True)
class Route:
    """Everything needed to run ssh to a server: its record, its hops, their certificates."""

    target: ServerRecord
    #: In dial order; each an enrolled server's record or a bare Hop.
    hops: tuple[ServerRecord | Hop, ...] = field(default_factory=tuple)

    def expires(self) -> float:
        """Return when the first certificate on the route needs replacing."""
        return min(
            [self.target.expires]
            + [hop.expires for hop in self.hops if isinstance(hop, ServerRecord)]
        )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None  # a damaged or missing cache entry costs one refresh, nothing more


def _credential_stem(project_id: str, requested_account: str) -> str:
    return f"{project_id}@{requested_account}" if requested_account else project_id


class SSHCache:
    """One team's SSH cache directory. Reads never fail: damage reads as a miss."""

    def __init__(self, team_path: Path) -> None:
        self.root = team_path / "ssh"

    # --- paths ----------------------------------------------------------------------

    @property
    def key_file(self) -> Path:
        """Return the private key (OpenSSH format, 0600)."""
        return self.root / "id_ed25519"

    @property
    def public_key_file(self) -> Path:
        """Return the public key line."""
        return self.root / "id_ed25519.pub"

    @property
    def known_hosts_file(self) -> Path:
        """Return the known_hosts file ssh checks host certificates against."""
        return self.root / "known_hosts"

    @property
    def lock_file(self) -> Path:
        """Return the file writers lock (filelock) while they change the cache."""
        return self.root / "lock"

    @property
    def names_file(self) -> Path:
        """Return names.json (name typed → server resource)."""
        return self.root / "names.json"

    def certificate_file(self, project_id: str, requested_account: str = "") -> Path:
        """Return the certificate file ssh reads for a project (and admin account)."""
        stem = _credential_stem(project_id, requested_account)
        return self.root / "credentials" / f"{stem}-cert.pub"

    def _credential_json(self, project_id: str, requested_account: str) -> Path:
        return self.root / "credentials" / f"{_credential_stem(project_id, requested_account)}.json"

    def server_file(self, server_id: str) -> Path:
        """Return the record of a server."""
        return self.root / "servers" / f"{server_id}.json"

    def host_certificate_file(self, name: str) -> Path:
        """Return where plain ssh's `CertificateFile …/hosts/%n-cert.pub` looks for `name`."""
        if not _SAFE_NAME.fullmatch(name):
            raise ValueError(f"{name!r} cannot name a file")
        return self.root / "hosts" / f"{name}-cert.pub"

    # --- reads (standard library only) -----------------------------------------------

    def public_key(self) -> str | None:
        """Return the public key line, or None when there is no key yet."""
        try:
            return self.public_key_file.read_text().strip() or None
        except OSError:
            return None

    def names(self) -> dict[str, str]:
        """Return which server resource each typed name meant."""
        data = _read_json(self.names_file)
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}

    def server(self, resource: str) -> ServerRecord | None:
        """Return the cached record of a server resource, or None."""
        server_id = resource.rsplit("/", 1)[-1]
        if not _SAFE_NAME.fullmatch(server_id):
            return None
        data = _read_json(self.server_file(server_id))
        try:
            record = ServerRecord.from_json(data)
        except (TypeError, ValueError, KeyError, AttributeError):
            return None
        return record if record.server == resource else None

    def credential(self, project_id: str, requested_account: str = "") -> Credential | None:
        """Return the cached certificate of a project (and account), or None."""
        data = _read_json(self._credential_json(project_id, requested_account))
        try:
            credential = Credential.from_json(data)
        except (TypeError, ValueError, KeyError):
            return None
        if not self.certificate_file(project_id, requested_account).is_file():
            return None
        return credential

    def fresh_server(
        self, resource: str, requested_account: str, *, now: float, margin: float
    ) -> ServerRecord | None:
        """Return a server's record when it and its certificate are good for `margin` more."""
        record = self.server(resource)
        if record is None or record.requested_account != requested_account:
            return None
        credential = self.credential(record.project_id, requested_account)
        key = self.public_key()
        if credential is None or key is None or credential.public_key != key:
            return None
        if min(record.expires, credential.valid_before) - now < margin:
            return None
        return record

    def lookup(
        self, name: str, requested_account: str = "", *, now: float, margin: float
    ) -> ServerRecord | None:
        """Return the fresh record of the server `name` meant last time, or None."""
        resource = self.names().get(name)
        if resource is None:
            return None
        return self.fresh_server(resource, requested_account, now=now, margin=margin)

    def route(
        self,
        name: str,
        via: list[str],
        requested_account: str = "",
        *,
        now: float | None = None,
        margin: float = RENEW_BEFORE_SECONDS,
    ) -> Route | None:
        """Return the whole route to `name` through `via` if every part is fresh, else None."""
        now = time.time() if now is None else now
        target = self.lookup(name, requested_account, now=now, margin=margin)
        if target is None:
            return None
        hops: list[ServerRecord | Hop] = []
        for hop_name in via:
            record = self.lookup(hop_name, now=now, margin=margin)
            if record is None:
                return None
            hops.append(record)
        for bastion in target.bastions:
            if not bastion.server:
                hops.append(bastion)
                continue
            record = self.fresh_server(bastion.server, "", now=now, margin=margin)
            if record is None:
                return None
            hops.append(record)
        return Route(target, tuple(hops))

    # --- writes (under the lock) -------------------------------------------------------

    def ensure_directories(self) -> None:
        """Create the cache directories, 0700."""
        for path in (self.root, self.root / "credentials", self.root / "servers"):
            make_private_dir(path)

    def store_credential(self, credential: Credential) -> None:
        """Write a certificate and its record (the certificate first, so a reader never
        sees a record without its certificate)."""
        project_id = credential.project.rsplit("/", 1)[-1]
        certificate = self.certificate_file(project_id, credential.requested_account)
        write_atomic(certificate, credential.certificate.strip().encode() + b"\n")
        write_atomic(
            self._credential_json(project_id, credential.requested_account),
            json.dumps(credential.as_json()).encode(),
        )

    def store_server(self, record: ServerRecord, names: list[str]) -> None:
        """Write a server's record and remember that each of `names` means it."""
        if not _SAFE_NAME.fullmatch(record.server_id):
            raise ValueError(f"server id {record.server_id!r} cannot name a file")
        write_atomic(self.server_file(record.server_id), json.dumps(record.as_json()).encode())
        table = self.names()
        changed = False
        for name in names:
            if table.get(name) != record.server:
                table[name] = record.server
                changed = True
        if changed:
            write_atomic(self.names_file, json.dumps(table, sort_keys=True).encode())

    def rebuild_known_hosts(self) -> None:
        """Write known_hosts from every cached server record (the names typed for it included)."""
        names_by_server: dict[str, list[str]] = {}
        for name, resource in self.names().items():
            names_by_server.setdefault(resource, []).append(name)
        lines: list[str] = []
        directory = self.root / "servers"
        for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
            try:
                record = ServerRecord.from_json(_read_json(path))
            except (TypeError, ValueError, KeyError, AttributeError):
                continue
            typed = sorted(
                name
                for name in names_by_server.get(record.server, [])
                if _SAFE_NAME.fullmatch(name)
            )
            lines.extend(_with_patterns(record.known_hosts, typed))
        text = "".join(dict.fromkeys(lines))
        try:
            if self.known_hosts_file.read_text() == text:
                return
        except OSError:
            pass
        write_atomic(self.known_hosts_file, text.encode())

    def write_if_changed(self, path: Path, text: str) -> None:
        """Write `text` to `path` (0600, atomic) unless it already holds exactly that."""
        try:
            if path.read_text() == text:
                return
        except OSError:
            make_private_dir(path.parent)
        write_atomic(path, text.encode())

    def route_file(self, text: str) -> Path:
        """Return where the hop config with content `text` lives (named by its digest)."""
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self.root / "routes" / f"{digest}.conf"

    def forget(self) -> list[Path]:
        """Delete every cached certificate and server record (the key pair stays)."""
        removed: list[Path] = []
        for name in ("credentials", "servers", "hosts", "routes"):
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
                removed.append(path)
        for path in (self.names_file, self.known_hosts_file):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
        return removed


def _with_patterns(known_hosts: str, extra: list[str]) -> list[str]:
    """Return the `@cert-authority` lines with `extra` host names added to their patterns."""
    lines = []
    for line in known_hosts.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0] == "@cert-authority" and extra:
            patterns = parts[1].split(",")
            patterns += [name for name in extra if name not in patterns]
            line = f"{parts[0]} {','.join(patterns)} {parts[2]}"
        if line.strip():
            lines.append(line + "\n")
    return lines
