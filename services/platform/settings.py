"""`sft-platform` settings: every key, its default and its check, in one model.

Keys may come from a YAML file (`--config`), `SFT_PLATFORM_<KEY>` environment
variables, or flags; see runtime.config for precedence and error wording.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, SecretStr, field_validator, model_validator

from runtime.config import ConfigError
from runtime.database import default_sqlite_url, normalize_database_url
from runtime.server import Endpoint, parse_endpoint

__all__ = ["ENV_PREFIX", "SERVICE_NAMES", "PlatformSettings", "check_data_dir"]

ENV_PREFIX = "SFT_PLATFORM_"
SERVICE_NAMES = ("ca", "inventory", "auth")


def _default_data_dir() -> Path:
    return platformdirs.user_data_path("sft-platform")


class PlatformSettings(BaseModel):
    """Settings for serve, migrate and init."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Address the gRPC endpoint listens on (TLS always).
    listen: Endpoint = Endpoint("127.0.0.1", 8443)
    #: Address platform services call each other on: mutual TLS, service
    #: certificates only. `off` runs without one (then no service can call another).
    internal_listen: Endpoint | None = Endpoint("127.0.0.1", 8444)
    #: Internal addresses (host:port) of services this process does not run; a service
    #: run here is reached on this process's own internal listener.
    ca_address: str | None = None
    inventory_address: str | None = None
    auth_address: str | None = None
    #: URL clients are told to use; defaults to https://<listen>.
    public_url: str | None = None
    #: Holds the SQLite database and the self-made TLS material in dev.
    data_dir: Path = _default_data_dir()
    #: sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB; default: SQLite in data_dir.
    database_url: str | None = None
    #: Which services this process runs.
    services: tuple[str, ...] = SERVICE_NAMES
    #: Where /metrics is served (Prometheus); unset = no metrics listener.
    metrics_listen: Endpoint | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    #: Operator-supplied TLS files (all three or none); none = self-made in data_dir/tls.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    #: Extra DNS names / IPs for the self-made server certificate.
    tls_server_names: tuple[str, ...] = ()
    #: File holding the CA's key-encryption key (base64 of 32 bytes, mode 0600).
    ca_kek_file: Path | None = None
    #: The CA's key-encryption key itself (base64), e.g. from a Kubernetes Secret
    #: via SFT_PLATFORM_CA_KEK. Give this or ca_kek_file, not both. With neither,
    #: a laptop platform on its default SQLite file makes data_dir/ca-kek.key.
    ca_kek: SecretStr | None = None
    #: Apply pending migrations at start instead of refusing to serve.
    auto_migrate: bool = False
    #: Seconds calls in flight get to finish after SIGTERM.
    shutdown_grace_seconds: float = 10.0

    @field_validator("listen", "metrics_listen", "internal_listen", mode="before")
    @classmethod
    def _endpoint(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("off", "none", ""):
            return None
        return parse_endpoint(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _distinct_listeners(self) -> PlatformSettings:
        if self.internal_listen is not None and self.internal_listen == self.listen:
            raise ValueError(
                "internal_listen must differ from listen: the internal listener requires "
                "service certificates, the public one must not"
            )
        return self

    @field_validator("services", "tls_server_names", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("services")
    @classmethod
    def _known_services(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in SERVICE_NAMES]
        if unknown:
            raise ValueError(
                f"unknown service {unknown[0]!r}; choose from {', '.join(SERVICE_NAMES)}"
            )
        if not value:
            raise ValueError(f"name at least one of {', '.join(SERVICE_NAMES)}")
        return tuple(dict.fromkeys(value))

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        return None if value is None else normalize_database_url(value)

    @field_validator("shutdown_grace_seconds")
    @classmethod
    def _grace(cls, value: float) -> float:
        if not 0 <= value <= 300:
            raise ValueError("must be between 0 and 300 seconds")
        return value

    @model_validator(mode="after")
    def _tls_all_or_none(self) -> PlatformSettings:
        given = [self.tls_cert_file, self.tls_key_file, self.tls_ca_file]
        if any(given) and not all(given):
            raise ValueError("give tls_cert_file, tls_key_file and tls_ca_file together, or none")
        return self

    @model_validator(mode="after")
    def _one_kek_source(self) -> PlatformSettings:
        if self.ca_kek_file is not None and self.ca_kek is not None:
            raise ValueError("give ca_kek_file or ca_kek, not both")
        return self

    @field_validator("ca_address", "inventory_address", "auth_address")
    @classmethod
    def _peer_address(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return str(parse_endpoint(value.strip()))

    @property
    def peer_addresses(self) -> dict[str, str]:
        """Return the configured internal address of each service not run here."""
        given = {"ca": self.ca_address, "inventory": self.inventory_address}
        given["auth"] = self.auth_address
        return {name: address for name, address in given.items() if address}

    @property
    def effective_database_url(self) -> str:
        """Return the configured database URL, or the SQLite file in the data dir."""
        return self.database_url or default_sqlite_url(self.data_dir)

    @property
    def effective_public_url(self) -> str:
        """Return the URL clients should use to reach this platform."""
        if self.public_url:
            return self.public_url
        host = self.listen.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"https://{Endpoint(host, self.listen.port)}"


def check_data_dir(path: Path) -> Path:
    """Create `path` if needed and prove it writable, or raise ConfigError saying why."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = path / f".write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"data dir {path} is not usable ({reason}); pass --data-dir with a writable directory"
        ) from None
    if not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError(f"data dir {path} is not readable; fix its permissions")
    return path
