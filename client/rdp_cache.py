"""The RDP credential cache of one team: an X.509 client key, and a certificate per server.

Layout under `teams/<team>/rdp/` (directory 0700, files 0600, every write atomic):

- `client_key.pem`: the team's EC P-256 key the client certificates certify (made here,
  never sent anywhere; only its public half goes to the platform);
- `servers/<id>.json`: the platform's answer for a server (how to reach its broker, the
  CA bundle and URI its certificate must carry, bastions) with the client certificate,
  kept until shortly before the certificate ends; `servers/<id>.pem` the certificate
  alone, for TLS libraries that read files;
- `names.json`: which server each name typed by the user meant;
- `<server name>.rdp`: the default `.rdp` file of a server.

`forget()` (for `sft logout`) removes all but the key.

Reads never fail: damage reads as a miss. Writers hold `lock` (see client.rdp_credentials).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, NamedTuple

from client.files import make_private_dir, write_atomic
from client.ssh_cache import RENEW_BEFORE_SECONDS, Hop, TeamCache, read_json, safe_name

__all__ = ["RDPCache", "RDPRecord"]


class RDPRecord(NamedTuple):
    """A client certificate for one server's broker, and how to reach and check that broker."""

    server: str  # teams/T/projects/P/servers/ID
    project: str  # teams/T/projects/P
    canonical_name: str
    hostname: str
    address: str
    broker_port: int
    #: The SAN URI the broker's certificate must carry (`sft://T/P/servers/ID`).
    broker_uri: str
    #: The project's X.509 CAs, PEM: the broker's certificate must chain to one.
    ca_bundle_pem: str
    account: str
    certificate_pem: str
    serial: int
    valid_after: float
    valid_before: float
    #: The public key the certificate certifies (PEM): a record for another key is a miss.
    public_key_pem: str
    bastions: tuple[Hop, ...] = ()

    @property
    def server_id(self) -> str:
        """Return the server's id (the last part of its resource name)."""
        return self.server.rsplit("/", 1)[-1]

    @property
    def display_name(self) -> str:
        """Return the name to show a person (canonical name, else host name, else id)."""
        return self.canonical_name or self.hostname or self.server_id

    @property
    def broker_address(self) -> str:
        """Return `address:port` of the broker (brackets around an IPv6 address)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.broker_port}"

    def as_json(self) -> dict[str, Any]:
        """Return the servers/<id>.json form."""
        data = self._asdict()
        data["bastions"] = [hop._asdict() for hop in self.bastions]
        return data

    @classmethod
    def from_json(cls, data: Any) -> RDPRecord:
        """Read a servers/<id>.json object; ValueError (or KeyError/TypeError) if malformed."""
        hops = tuple(Hop(**hop) for hop in data.pop("bastions", ()))
        record = cls(**data, bastions=hops)
        numbers = (record.broker_port, record.serial, record.valid_after, record.valid_before)
        texts = (record.server, record.address, record.broker_uri, record.certificate_pem)
        if not all(isinstance(value, int | float) for value in numbers) or not all(
            isinstance(value, str) for value in texts
        ):
            raise ValueError("malformed RDP record")
        return record


class RDPCache(TeamCache):
    """One team's RDP cache directory."""

    kind = "rdp"

    @property
    def key_file(self) -> str:
        """Return the client private key (PEM PKCS#8, 0600)."""
        return self._path("client_key.pem")

    def record_file(self, server_id: str) -> str:
        """Return the record of a server."""
        return self._path("servers", f"{server_id}.json")

    def certificate_file(self, server_id: str) -> str:
        """Return the client certificate (PEM) for a server's broker."""
        return self._path("servers", f"{server_id}.pem")

    def rdp_file(self, name: str) -> str:
        """Return the default `.rdp` file for the server the user called `name`."""
        stem = name if safe_name(name) else "server"
        return self._path(f"{stem}.rdp")

    def ensure_directories(self) -> None:
        """Create the cache directories, 0700."""
        for path in (self.root, self._path("servers")):
            make_private_dir(path)

    # --- reads -----------------------------------------------------------------------

    def record(self, resource: str) -> RDPRecord | None:
        """Return the cached record of a server resource, or None."""
        server_id = resource.rsplit("/", 1)[-1]
        if not safe_name(server_id):
            return None
        try:
            record = RDPRecord.from_json(read_json(self.record_file(server_id)))
        except (TypeError, ValueError, KeyError, AttributeError):
            return None
        if record.server != resource or not os.path.isfile(self.certificate_file(server_id)):
            return None
        return record

    def lookup(
        self,
        name: str,
        public_key_pem: str,
        *,
        now: float | None = None,
        margin: float = RENEW_BEFORE_SECONDS,
    ) -> RDPRecord | None:
        """Return the record of the server `name` meant, if it certifies `public_key_pem`
        and stays valid for `margin` more seconds; else None."""
        resource = name if name.startswith("teams/") else self.names().get(name)
        if resource is None:
            return None
        record = self.record(resource)
        now = time.time() if now is None else now
        if record is None or record.public_key_pem != public_key_pem:
            return None
        return record if record.valid_before - now >= margin else None

    # --- writes (under the lock) -------------------------------------------------------

    def store(self, record: RDPRecord, names: list[str]) -> None:
        """Write a server's certificate, then its record, and remember what `names` mean."""
        if not safe_name(record.server_id):
            raise ValueError(f"server id {record.server_id!r} cannot name a file")
        write_atomic(self.certificate_file(record.server_id), record.certificate_pem.encode())
        write_atomic(self.record_file(record.server_id), json.dumps(record.as_json()).encode())
        self.remember_names(record.server, [n for n in names if not n.startswith("teams/")])

    def forget(self) -> list[str]:
        """Delete every cached certificate, server record and default .rdp file (the key stays)."""
        import shutil

        removed: list[str] = []
        servers = self._path("servers")
        if os.path.isdir(servers):
            shutil.rmtree(servers)
            removed.append(servers)
        entries = sorted(os.listdir(self.root)) if os.path.isdir(self.root) else []
        for entry in entries:
            if entry.endswith(".rdp") or entry == "names.json":
                os.unlink(self._path(entry))
                removed.append(self._path(entry))
        return removed
