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

import json
import os
import time
from typing import Any, NamedTuple

from client.files import PathLike, make_private_dir, write_atomic

__all__ = [
    "RENEW_BEFORE_SECONDS",
    "USABLE_FOR_SECONDS",
    "Credential",
    "Hop",
    "Route",
    "SSHCache",
    "ServerRecord",
    "TeamCache",
    "known_hosts_patterns",
    "read_json",
    "read_names",
    "safe_name",
]

#: A certificate this close to its end is replaced before use, so a login never races it.
RENEW_BEFORE_SECONDS = 60.0
#: When the platform cannot be reached, a cached certificate still good for this long is used.
USABLE_FOR_SECONDS = 5.0
_NAME_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_NAME_REST = _NAME_FIRST | frozenset(".:@%+-")


def safe_name(name: str) -> bool:
    """Return whether `name` (a server id, or what ssh passes for `%n`) may name a file."""
    return 0 < len(name) <= 253 and name[0] in _NAME_FIRST and all(c in _NAME_REST for c in name)


class Hop(NamedTuple):
    """One jump on the way to a server: an enrolled server (`server`) or a bare address."""

    address: str
    ssh_port: int
    server: str = ""


class ServerRecord(NamedTuple):
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
        data = self._asdict()
        data["bastions"] = [hop._asdict() for hop in self.bastions]
        return data

    @classmethod
    def from_json(cls, data: Any) -> ServerRecord:
        """Read a servers/<id>.json object; ValueError (or KeyError/TypeError) if malformed."""
        hops = tuple(Hop(**hop) for hop in data.pop("bastions", ()))
        record = cls(**data, bastions=hops)
        if not isinstance(record.ssh_port, int) or not isinstance(record.expires, int | float):
            raise ValueError("malformed server record")
        return record


class Credential(NamedTuple):
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
        return self._asdict()

    @classmethod
    def from_json(cls, data: Any) -> Credential:
        """Read a credentials/<name>.json object; ValueError (or KeyError) if malformed."""
        credential = cls(**data)
        if not isinstance(credential.valid_before, int | float):
            raise ValueError("malformed credential")
        return credential


class Route(NamedTuple):
    """Everything needed to run ssh to a server: its record, its hops, their certificates."""

    target: ServerRecord
    #: In dial order; each an enrolled server's record or a bare Hop.
    hops: tuple[ServerRecord | Hop, ...] = ()

    def expires(self) -> float:
        """Return when the first certificate on the route needs replacing."""
        return min(
            [self.target.expires]
            + [hop.expires for hop in self.hops if isinstance(hop, ServerRecord)]
        )


def read_json(path: str) -> Any:
    """Return the JSON in `path`, or None when it is missing or damaged."""
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read())
    except (OSError, ValueError):
        return None  # a damaged or missing cache entry costs one refresh, nothing more


def read_names(path: str) -> dict[str, str]:
    """Return a names.json table (name typed → server resource); damage reads as empty."""
    data = read_json(path)
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def _credential_stem(project_id: str, requested_account: str) -> str:
    return f"{project_id}@{requested_account}" if requested_account else project_id


class TeamCache:
    """A credential cache directory of one team (`teams/<team>/<kind>/`): its lock and the
    names.json table of which server each typed name meant. SSH's and RDP's share this."""

    kind = ""

    def __init__(self, team_path: PathLike) -> None:
        self.root = os.path.join(os.fspath(team_path), self.kind)

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def lock_file(self) -> str:
        """Return the file writers lock (filelock) while they change the cache."""
        return self._path("lock")

    @property
    def names_file(self) -> str:
        """Return names.json (name typed → server resource)."""
        return self._path("names.json")

    def names(self) -> dict[str, str]:
        """Return which server resource each typed name meant."""
        return read_names(self.names_file)

    def remember_names(self, resource: str, names: list[str]) -> None:
        """Remember that each of `names` means server `resource` (names.json, if it changed)."""
        table = self.names()
        changed = False
        for name in names:
            if table.get(name) != resource:
                table[name] = resource
                changed = True
        if changed:
            write_atomic(self.names_file, json.dumps(table, sort_keys=True).encode())


class SSHCache(TeamCache):
    """One team's SSH cache directory. Reads never fail: damage reads as a miss."""

    kind = "ssh"

    # --- paths ----------------------------------------------------------------------

    @property
    def key_file(self) -> str:
        """Return the private key (OpenSSH format, 0600)."""
        return self._path("id_ed25519")

    @property
    def public_key_file(self) -> str:
        """Return the public key line."""
        return self._path("id_ed25519.pub")

    @property
    def known_hosts_file(self) -> str:
        """Return the known_hosts file ssh checks host certificates against."""
        return self._path("known_hosts")

    @property
    def hosts_dir(self) -> str:
        """Return the directory of certificates put where plain ssh looks (`%n-cert.pub`)."""
        return self._path("hosts")

    def certificate_file(self, project_id: str, requested_account: str = "") -> str:
        """Return the certificate file ssh reads for a project (and admin account)."""
        stem = _credential_stem(project_id, requested_account)
        return self._path("credentials", f"{stem}-cert.pub")

    def _credential_json(self, project_id: str, requested_account: str) -> str:
        return self._path("credentials", f"{_credential_stem(project_id, requested_account)}.json")

    def server_file(self, server_id: str) -> str:
        """Return the record of a server."""
        return self._path("servers", f"{server_id}.json")

    def host_certificate_file(self, name: str) -> str:
        """Return where plain ssh's `CertificateFile …/hosts/%n-cert.pub` looks for `name`."""
        if not safe_name(name):
            raise ValueError(f"{name!r} cannot name a file")
        return os.path.join(self.hosts_dir, f"{name}-cert.pub")

    # --- reads (standard library only) -----------------------------------------------

    def public_key(self) -> str | None:
        """Return the public key line, or None when there is no key yet."""
        return _read_text(self.public_key_file).strip() or None

    def server(self, resource: str) -> ServerRecord | None:
        """Return the cached record of a server resource, or None."""
        server_id = resource.rsplit("/", 1)[-1]
        if not safe_name(server_id):
            return None
        record = _server_record(self.server_file(server_id))
        return record if record is not None and record.server == resource else None

    def credential(self, project_id: str, requested_account: str = "") -> Credential | None:
        """Return the cached certificate of a project (and account), or None."""
        data = read_json(self._credential_json(project_id, requested_account))
        try:
            credential = Credential.from_json(data)
        except (TypeError, ValueError, KeyError):
            return None
        if not os.path.isfile(self.certificate_file(project_id, requested_account)):
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
        hops = self.hops(via, target.bastions, now=now, margin=margin)
        return None if hops is None else Route(target, hops)

    def hops(
        self,
        via: list[str],
        bastions: tuple[Hop, ...],
        *,
        now: float | None = None,
        margin: float = RENEW_BEFORE_SECONDS,
    ) -> tuple[ServerRecord | Hop, ...] | None:
        """Return the hops through `via` (names), then `bastions`, if each is fresh, else None.

        `sft rdp` asks this for its bastion chain: the same hops `sft ssh` would make.
        """
        now = time.time() if now is None else now
        hops: list[ServerRecord | Hop] = []
        for hop_name in via:
            record = self.lookup(hop_name, now=now, margin=margin)
            if record is None:
                return None
            hops.append(record)
        for bastion in bastions:
            if not bastion.server:
                hops.append(bastion)
                continue
            record = self.fresh_server(bastion.server, "", now=now, margin=margin)
            if record is None:
                return None
            hops.append(record)
        return tuple(hops)

    # --- writes (under the lock) -------------------------------------------------------

    def ensure_directories(self) -> None:
        """Create the cache directories, 0700."""
        for path in (self.root, self._path("credentials"), self._path("servers")):
            make_private_dir(path)

    def store_credential(self, credential: Credential) -> None:
        """Write a certificate, then its record (a reader never sees a record alone)."""
        project_id = credential.project.rsplit("/", 1)[-1]
        certificate = self.certificate_file(project_id, credential.requested_account)
        write_atomic(certificate, credential.certificate.strip().encode() + b"\n")
        write_atomic(
            self._credential_json(project_id, credential.requested_account),
            json.dumps(credential.as_json()).encode(),
        )

    def store_server(self, record: ServerRecord, names: list[str]) -> None:
        """Write a server's record and remember that each of `names` means it."""
        if not safe_name(record.server_id):
            raise ValueError(f"server id {record.server_id!r} cannot name a file")
        write_atomic(self.server_file(record.server_id), json.dumps(record.as_json()).encode())
        self.remember_names(record.server, names)

    def rebuild_known_hosts(self) -> None:
        """Write known_hosts from every cached server record (the names typed for it included)."""
        names_by_server: dict[str, list[str]] = {}
        for name, resource in self.names().items():
            names_by_server.setdefault(resource, []).append(name)
        lines: list[str] = []
        directory = self._path("servers")
        entries = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
        for entry in entries:
            record = _server_record(os.path.join(directory, entry))
            if record is None or not entry.endswith(".json"):
                continue
            typed = sorted(n for n in names_by_server.get(record.server, []) if safe_name(n))
            lines.extend(_with_patterns(record.known_hosts, typed))
        self.write_if_changed(self.known_hosts_file, "".join(dict.fromkeys(lines)))

    def write_if_changed(self, path: str, text: str) -> None:
        """Write `text` to `path` (0600, atomic) unless it already holds exactly that."""
        if os.path.exists(path) and _read_text(path) == text:
            return
        make_private_dir(os.path.dirname(path))
        write_atomic(path, text.encode())

    def route_file(self, text: str) -> str:
        """Return where the hop config with content `text` lives (named by its digest)."""
        import hashlib

        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self._path("routes", f"{digest}.conf")

    def forget(self) -> list[str]:
        """Delete every cached certificate and server record (the key pair stays)."""
        import shutil

        removed: list[str] = []
        for name in ("credentials", "servers", "hosts", "routes"):
            path = self._path(name)
            if os.path.isdir(path):
                shutil.rmtree(path)
                removed.append(path)
        for path in (self.names_file, self.known_hosts_file):
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed.append(path)
        return removed


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, ValueError):
        return ""


def _server_record(path: str) -> ServerRecord | None:
    try:
        return ServerRecord.from_json(read_json(path))
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


def _ca_line(line: str) -> tuple[list[str], str] | None:
    """Return (host patterns, key) of an `@cert-authority PATTERNS KEY` line, else None."""
    parts = line.split(None, 2)
    if len(parts) == 3 and parts[0] == "@cert-authority":
        return parts[1].split(","), parts[2]
    return None


def known_hosts_patterns(known_hosts: str) -> set[str]:
    """Return every host pattern the `@cert-authority` lines of `known_hosts` name."""
    patterns: set[str] = set()
    for line in known_hosts.splitlines():
        parsed = _ca_line(line)
        if parsed is not None:
            patterns.update(parsed[0])
    return patterns


def _with_patterns(known_hosts: str, extra: list[str]) -> list[str]:
    """Return the `@cert-authority` lines with `extra` host names added to their patterns."""
    lines = []
    for line in known_hosts.splitlines():
        parsed = _ca_line(line)
        if parsed is not None and extra:
            patterns, key = parsed
            patterns += [name for name in extra if name not in patterns]
            line = f"@cert-authority {','.join(patterns)} {key}"
        if line.strip():
            lines.append(line + "\n")
    return lines
