"""What sftd keeps in its StateDir: its key, its server identity, what the platform gave it.

Layout: `agent_key` (Ed25519, OpenSSH format; never leaves the machine) and
`agent_key.pub`, `platform-ca.pem` (the pinned platform CA, the only one sftd trusts),
`host_certificates.json`, `trusted_user_ca_keys.pub`, `x509_ca_bundle.pem`,
`accounts.json` (last applied revision), `server.json` (the identity, written last:
its presence means "enrolled"), and `status.json` (a report for `sftd status`).
The directory is 0700 (0710 for the broker's group, traverse only, when the broker
runs as its own user: it reaches `broker/` and `control.sock`) and every file 0600,
replaced atomically. A file that cannot
be read is refused with a StateError naming it, and never overwritten. Knows no network.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from runtime.files import write_atomic

__all__ = [
    "BROKER_DIR_MODE",
    "DIR_MODE",
    "FILE_MODE",
    "AgentKey",
    "AgentState",
    "HostCertificate",
    "ServerIdentity",
    "StateError",
    "StatusReport",
    "TrustAnchors",
]

DIR_MODE = 0o700
#: With a broker user: its group may traverse (reach named files), never list or write.
BROKER_DIR_MODE = 0o710
FILE_MODE = 0o600


class StateError(Exception):
    """A state file is unusable; the message names it and says what to do."""


@dataclass(frozen=True)
class AgentKey:
    """The agent's Ed25519 key: it signs the agent's token assertions."""

    private: ed25519.Ed25519PrivateKey

    @classmethod
    def generate(cls) -> AgentKey:
        """Make a fresh key."""
        return cls(ed25519.Ed25519PrivateKey.generate())

    @property
    def public_line(self) -> str:
        """Return `ssh-ed25519 AAAA…` (OpenSSH authorized_keys format, no comment)."""
        return (
            self.private.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )

    @property
    def fingerprint(self) -> str:
        """Return `SHA256:<unpadded base64>` of the public key blob, as `ssh-keygen -l` prints."""
        blob = base64.b64decode(self.public_line.split()[1])
        return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")

    def openssh(self) -> bytes:
        """Return the private key in OpenSSH format, unencrypted (the file is 0600)."""
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True)
class ServerIdentity:
    """What enrollment established: which platform, and which server this is on it."""

    #: The server's resource name, teams/T/projects/P/servers/ID (the assertions' iss/sub).
    server: str
    #: InitialURL at enrollment, https://HOST:PORT.
    platform_url: str
    #: Hex SHA-256 (DER) of the pinned platform CA.
    ca_sha256: str
    agent_key_fingerprint: str
    enrolled_at: dt.datetime

    @property
    def server_id(self) -> str:
        """Return the server id (the last segment of `server`)."""
        return self.server.rsplit("/", 1)[-1]

    def as_json(self) -> dict[str, str]:
        """Return the server.json form."""
        return {**asdict(self), "enrolled_at": self.enrolled_at.isoformat()}

    @classmethod
    def from_json(cls, data: Any) -> ServerIdentity:
        """Read a server.json object; ValueError if anything is missing or malformed."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        fields = {}
        for key in ("server", "platform_url", "ca_sha256", "agent_key_fingerprint"):
            value = data.get(key)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{key} is missing")
            fields[key] = value
        if not fields["server"].startswith("teams/") or "/servers/" not in fields["server"]:
            raise ValueError("server is not a server resource name")
        return cls(**fields, enrolled_at=_parse_time(data.get("enrolled_at")))


@dataclass(frozen=True)
class HostCertificate:
    """An SSH host certificate the platform issued for one of sshd's host keys."""

    #: The private host key file it certifies (its certificate goes beside it).
    host_key_file: str
    host_key_fingerprint: str
    #: One OpenSSH certificate line.
    certificate: str
    principals: tuple[str, ...]
    valid_after: dt.datetime
    valid_before: dt.datetime

    def as_json(self) -> dict[str, Any]:
        """Return the host_certificates.json entry."""
        return {
            **asdict(self),
            "principals": list(self.principals),
            "valid_after": self.valid_after.isoformat(),
            "valid_before": self.valid_before.isoformat(),
        }

    @classmethod
    def from_json(cls, data: Any) -> HostCertificate:
        """Read one entry; ValueError if malformed."""
        if not isinstance(data, dict):
            raise ValueError("an entry is not a JSON object")
        texts = {}
        for key in ("host_key_file", "host_key_fingerprint", "certificate"):
            value = data.get(key)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{key} is missing")
            texts[key] = value
        principals = data.get("principals")
        if not isinstance(principals, list) or not all(isinstance(p, str) for p in principals):
            raise ValueError("principals is not a list of names")
        return cls(
            **texts,
            principals=tuple(principals),
            valid_after=_parse_time(data.get("valid_after")),
            valid_before=_parse_time(data.get("valid_before")),
        )


@dataclass(frozen=True)
class TrustAnchors:
    """The project's CA material a server needs (sshd's TrustedUserCAKeys, the broker's CAs)."""

    #: SSH user CA public keys, one OpenSSH line each.
    trusted_user_ca_keys: str
    #: The project's X.509 CA certificates, PEM.
    x509_ca_bundle_pem: str


@dataclass(frozen=True)
class StatusReport:
    """What the daemon last saw, for `sftd status` (a report, not state: never trusted)."""

    pid: int
    updated_at: dt.datetime
    platform_reachable: bool
    last_heartbeat_time: dt.datetime | None = None
    last_sync_time: dt.datetime | None = None
    applied_revision: int = 0
    managed_accounts: int = 0
    problems: tuple[str, ...] = field(default_factory=tuple)
    #: disabled, starting, running or failed; None when nothing reported it (no daemon).
    broker_state: str | None = None

    def as_json(self) -> dict[str, Any]:
        """Return the status.json form."""
        data = asdict(self)
        for key in ("updated_at", "last_heartbeat_time", "last_sync_time"):
            value = data[key]
            data[key] = value.isoformat() if value is not None else None
        data["problems"] = list(self.problems)
        return data

    @classmethod
    def from_json(cls, data: Any) -> StatusReport:
        """Read status.json; ValueError if malformed."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")

        def optional_time(key: str) -> dt.datetime | None:
            value = data.get(key)
            return None if value is None else _parse_time(value)

        problems = data.get("problems", [])
        numbers = [data.get(key) for key in ("pid", "applied_revision", "managed_accounts")]
        if not all(isinstance(n, int) for n in numbers) or not isinstance(problems, list):
            raise ValueError("a field has the wrong type")
        return cls(
            pid=int(data["pid"]),
            updated_at=_parse_time(data.get("updated_at")),
            platform_reachable=bool(data.get("platform_reachable")),
            last_heartbeat_time=optional_time("last_heartbeat_time"),
            last_sync_time=optional_time("last_sync_time"),
            applied_revision=int(data["applied_revision"]),
            managed_accounts=int(data["managed_accounts"]),
            problems=tuple(str(p) for p in problems),
            broker_state=broker if isinstance(broker := data.get("broker_state"), str) else None,
        )


def _parse_time(value: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise ValueError("a time is missing")
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("a time has no timezone")
    return parsed.astimezone(dt.UTC)


def _dump(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


class AgentState:
    """sftd's StateDir. Methods that read raise StateError for a file they cannot use."""

    KEY = "agent_key"
    PUBLIC_KEY = "agent_key.pub"
    IDENTITY = "server.json"
    CA = "platform-ca.pem"
    HOST_CERTIFICATES = "host_certificates.json"
    USER_CA_KEYS = "trusted_user_ca_keys.pub"
    X509_CA_BUNDLE = "x509_ca_bundle.pem"
    ACCOUNTS = "accounts.json"
    STATUS = "status.json"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        """Return the path of state file `name`."""
        return self.directory / name

    def ensure_directory(self, *, group: int | None = None) -> None:
        """Create the state dir 0700 (tightening an existing one: it holds a private key).

        With `group` (the broker's, when it runs as another user): 0710 and that group,
        so the broker can reach its files and the control socket, and list nothing.
        """
        mode = DIR_MODE if group is None else BROKER_DIR_MODE
        try:
            self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            if os.name != "posix":
                return
            info = self.directory.stat()
            if group is not None and info.st_gid != group:
                os.chown(self.directory, -1, group)
            if info.st_mode & 0o777 != mode:
                self.directory.chmod(mode)
        except OSError as exc:
            raise StateError(
                f"cannot use {self.directory} as the state dir ({exc.strerror or exc}); run "
                "sftd as root, or set StateDir in sftd.yaml"
            ) from None

    def _corrupt(self, name: str, why: str) -> StateError:
        return StateError(
            f"state file {self.path(name)} is unusable ({why}); sftd leaves it as it is. To "
            f"enroll this server again, move {self.directory} aside, put a new enrollment "
            "token in EnrollmentTokenFile, and restart sftd"
        )

    def _read(self, name: str) -> bytes | None:
        try:
            return self.path(name).read_bytes()
        except FileNotFoundError:
            return None
        except PermissionError:
            raise StateError(
                f"cannot read {self.path(name)}: permission denied (run sftd as root)"
            ) from None
        except OSError as exc:
            raise self._corrupt(name, exc.strerror or str(exc)) from None

    def _read_json(self, name: str) -> Any:
        data = self._read(name)
        if data is None:
            return None
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise self._corrupt(name, "not valid JSON") from None

    def _write(self, name: str, data: bytes) -> None:
        write_atomic(self.path(name), data)

    # --- the agent key ------------------------------------------------------------------

    def read_key(self) -> AgentKey | None:
        """Return the agent key, or None if there is none yet."""
        data = self._read(self.KEY)
        if data is None:
            return None
        try:
            key = serialization.load_ssh_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise self._corrupt(self.KEY, "not an OpenSSH private key") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise self._corrupt(self.KEY, "not an Ed25519 key")
        return AgentKey(key)

    def key(self) -> AgentKey:
        """Return the agent key, making and storing one first if there is none.

        The key is kept whatever happens next, so a retried enrollment presents the same
        key (the platform makes that idempotent: no second server).
        """
        existing = self.read_key()
        if existing is not None:
            return existing
        key = AgentKey.generate()
        self._write(self.KEY, key.openssh())
        self._write(self.PUBLIC_KEY, f"{key.public_line} sftd\n".encode())
        return key

    # --- the identity -------------------------------------------------------------------

    def read_identity(self) -> ServerIdentity | None:
        """Return the server identity, or None if not enrolled; check it fits the key and CA."""
        data = self._read_json(self.IDENTITY)
        if data is None:
            return None
        try:
            identity = ServerIdentity.from_json(data)
        except ValueError as exc:
            raise self._corrupt(self.IDENTITY, str(exc)) from None
        key = self.read_key()
        if key is None:
            raise self._corrupt(self.KEY, "missing, but server.json says this server enrolled")
        if key.fingerprint != identity.agent_key_fingerprint:
            raise self._corrupt(self.KEY, "not the key this server enrolled with")
        self.read_ca_pem(identity)
        return identity

    def read_ca_pem(self, identity: ServerIdentity) -> bytes:
        """Return the pinned platform CA, checked against the hash recorded at enrollment."""
        data = self._read(self.CA)
        if data is None:
            raise self._corrupt(self.CA, "missing, but server.json says this server enrolled")
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError:
            raise self._corrupt(self.CA, "not a PEM certificate") from None
        digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
        if digest != identity.ca_sha256:
            raise self._corrupt(self.CA, "not the CA pinned at enrollment")
        return data

    def write_enrollment(
        self,
        identity: ServerIdentity,
        ca_pem: bytes,
        certificates: tuple[HostCertificate, ...],
        anchors: TrustAnchors,
    ) -> None:
        """Store what enrollment returned; server.json last, so a crash leaves "not enrolled"."""
        self._write(self.CA, ca_pem)
        self.write_host_certificates(certificates)
        self.write_trust_anchors(anchors)
        self._write(self.IDENTITY, _dump(identity.as_json()))

    # --- what the platform gives --------------------------------------------------------

    def read_host_certificates(self) -> tuple[HostCertificate, ...]:
        """Return the stored host certificates (none before enrollment)."""
        data = self._read_json(self.HOST_CERTIFICATES)
        if data is None:
            return ()
        try:
            if not isinstance(data, list):
                raise ValueError("not a JSON list")
            return tuple(HostCertificate.from_json(item) for item in data)
        except ValueError as exc:
            raise self._corrupt(self.HOST_CERTIFICATES, str(exc)) from None

    def write_host_certificates(self, certificates: tuple[HostCertificate, ...]) -> None:
        """Replace the stored host certificates."""
        self._write(self.HOST_CERTIFICATES, _dump([c.as_json() for c in certificates]))

    def read_trust_anchors(self) -> TrustAnchors | None:
        """Return the stored trust anchors, or None before enrollment."""
        keys, bundle = self._read(self.USER_CA_KEYS), self._read(self.X509_CA_BUNDLE)
        if keys is None or bundle is None:
            return None
        try:
            return TrustAnchors(keys.decode(), bundle.decode())
        except UnicodeDecodeError:
            raise self._corrupt(self.USER_CA_KEYS, "not text") from None

    def write_trust_anchors(self, anchors: TrustAnchors) -> None:
        """Replace the stored trust anchors."""
        self._write(self.USER_CA_KEYS, anchors.trusted_user_ca_keys.encode())
        self._write(self.X509_CA_BUNDLE, anchors.x509_ca_bundle_pem.encode())

    def read_applied_revision(self) -> int:
        """Return the revision of the last desired account list applied (0: none)."""
        data = self._read_json(self.ACCOUNTS)
        if data is None:
            return 0
        revision = data.get("applied_revision") if isinstance(data, dict) else None
        if not isinstance(revision, int) or revision < 0:
            raise self._corrupt(self.ACCOUNTS, "applied_revision is not a revision number")
        return revision

    def write_applied_revision(self, revision: int) -> None:
        """Record that the desired account list at `revision` was applied."""
        self._write(self.ACCOUNTS, _dump({"applied_revision": revision}))

    # --- the status report --------------------------------------------------------------

    def read_status(self) -> StatusReport | None:
        """Return the daemon's last report, or None if there is none (or it is damaged)."""
        data = self._read(self.STATUS)
        if data is None:
            return None
        try:
            return StatusReport.from_json(json.loads(data))
        except (ValueError, KeyError):
            return None  # a report cut short or damaged says nothing; the daemon rewrites it

    def write_status(self, report: StatusReport) -> None:
        """Replace the status report (it is rewritten often; never read back as truth)."""
        self._write(self.STATUS, _dump(report.as_json()))
