"""What the `sft-platform` verbs do, as plain async functions (the CLI only parses flags)."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog

from runtime.config import ConfigError
from runtime.database import Database, redact_url
from runtime.errors import Conflict, FailedPrecondition
from runtime.migrations import pending_services, upgrade
from runtime.peers import Peers
from runtime.server import Endpoint, PlatformServer
from runtime.tls import TLSFiles, ca_sha256, ensure_dev_pki
from services.ca.key_encryption import KeyEncryption, LocalKeyEncryption, generate_key_file
from services.platform.registry import authenticator_for, histories_for, service_bindings
from services.platform.settings import SERVICE_NAMES, PlatformSettings, check_data_dir

__all__ = [
    "BootstrapResult",
    "bootstrap_team",
    "ca_key_encryption",
    "issue_code_for",
    "migrate_platform",
    "serve_platform",
]

log = structlog.get_logger("sft.platform")

#: Where a laptop platform keeps the CA's key-encryption key (outside the database).
DEV_KEK_FILE = "ca-kek.key"


def platform_tls(settings: PlatformSettings) -> TLSFiles:
    """Return the operator's TLS files, or self-made ones in the data dir."""
    if settings.tls_cert_file and settings.tls_key_file and settings.tls_ca_file:
        return TLSFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
    hosts = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *settings.tls_server_names]
    if settings.listen.host not in ("0.0.0.0", "::", ""):
        hosts.insert(0, settings.listen.host)
    return ensure_dev_pki(settings.data_dir / "tls", hosts, services=SERVICE_NAMES)


def ca_key_encryption(settings: PlatformSettings) -> KeyEncryption:
    """Return the CA's key-encryption key from the settings (or the laptop's own file)."""
    if settings.ca_kek is not None:
        return LocalKeyEncryption.from_env(settings.ca_kek.get_secret_value())
    if settings.ca_kek_file is not None:
        return LocalKeyEncryption.from_file(settings.ca_kek_file)
    if settings.database_url is not None:
        # Every replica must seal and open CA keys with the same KEK; one made here
        # would be this process's alone.
        raise ConfigError(
            "the CA service needs a key-encryption key shared by every replica: set "
            "ca_kek_file or SFT_PLATFORM_CA_KEK (make one with `sft-platform generate-kek`)"
        )
    path = settings.data_dir / DEV_KEK_FILE
    if path.exists():
        return LocalKeyEncryption.from_file(path)
    log.info("made a key-encryption key for the CA", path=str(path))
    return generate_key_file(path)


@asynccontextmanager
async def open_database(settings: PlatformSettings) -> AsyncIterator[Database]:
    """Connect to the configured database and close it afterwards."""
    check_data_dir(settings.data_dir)
    database = Database.connect(settings.effective_database_url)
    try:
        yield database
    finally:
        await database.close()


async def require_migrated(database: Database, services: tuple[str, ...]) -> None:
    """Raise FailedPrecondition naming the command to run if any schema is behind."""
    pending = await pending_services(database, histories_for(services))
    if pending:
        raise FailedPrecondition(
            f"the database {redact_url(database.url)} is not migrated for "
            f"{', '.join(pending)}; run `sft-platform migrate` with the same --data-dir / "
            "--database-url (or start serve with --auto-migrate)"
        )


async def migrate_platform(
    settings: PlatformSettings, services: tuple[str, ...], *, check_only: bool
) -> list[str]:
    """Apply (or, with check_only, just list) pending migrations of `services`."""
    async with open_database(settings) as database:
        return await _apply_pending(database, services, check_only=check_only)


async def _apply_pending(
    database: Database, services: tuple[str, ...], *, check_only: bool = False
) -> list[str]:
    histories = histories_for(services)
    pending = await pending_services(database, histories)
    if not check_only and pending:
        await upgrade(database, [h for h in histories if h.service in pending])
        log.info("migrated", services=pending, database=redact_url(database.url))
    elif not pending:
        log.info("database is current", services=list(services))
    return pending


async def serve_platform(settings: PlatformSettings) -> None:
    """Serve the configured services until SIGTERM."""
    async with open_database(settings) as database:
        if settings.auto_migrate:
            await _apply_pending(database, settings.services)
        await require_migrated(database, settings.services)
        tls = platform_tls(settings)
        server: PlatformServer | None = None

        def local_address() -> str | None:
            if server is None or settings.internal_listen is None or not server.internal_port:
                return None
            host = settings.internal_listen.host
            host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
            return str(Endpoint(host, server.internal_port))

        peers = Peers(
            "platform",
            tls.ca_file.parent,
            settings.peer_addresses,
            local_address=local_address,
        )
        server = PlatformServer(
            service_bindings(
                settings.services,
                database,
                ca_key_encryption=(
                    ca_key_encryption(settings) if "ca" in settings.services else None
                ),
                peers=peers,
            ),
            settings.listen,
            tls,
            authenticate=authenticator_for(settings.services, database),
            metrics_listen=settings.metrics_listen,
            internal_listen=settings.internal_listen,
            grace_seconds=settings.shutdown_grace_seconds,
        )
        try:
            await server.run_until_signalled()
        finally:
            await peers.close()


@dataclass(frozen=True)
class BootstrapResult:
    """What `init` and `enrollment-code` print."""

    team: str
    user: str
    code: str
    expire_time: dt.datetime
    url: str
    ca_sha256: str
    created: bool

    def as_json(self) -> dict[str, str | bool]:
        """Return the machine-readable form (`code` is the secret, shown once)."""
        return {
            "team": self.team,
            "user": self.user,
            "code": self.code,
            "expire_time": self.expire_time.isoformat(),
            "url": self.url,
            "ca_sha256": self.ca_sha256,
            "created": self.created,
        }

    def describe(self) -> str:
        """Return the text a person reads."""
        if self.created:
            head = f'Created team "{self.team}" with admin "{self.user}".'
        else:
            head = f'Team "{self.team}" already exists; issued a new code for "{self.user}".'
        return (
            f"{head}\n"
            f"One-time enrollment code for {self.user} "
            f"(expires {self.expire_time:%Y-%m-%d %H:%M} UTC):\n"
            f"  {self.code}\n"
            f"Enroll a device as {self.user} with:\n"
            f"  sft enroll --url {self.url} --team {self.team} --code {self.code}"
        )


async def _issue(
    settings: PlatformSettings, team: str, user: str, *, create: bool, existing_ok: bool
) -> BootstrapResult:
    # The composition root may touch both services' tables in one transaction: init
    # must not leave a team without its admin's code.
    from services.auth.enrollment_codes import issue_enrollment_code
    from services.inventory import repository as inventory

    pin = ca_sha256(platform_tls(settings).ca_file.read_bytes())
    async with open_database(settings) as database:
        await require_migrated(database, ("inventory", "auth"))
        async with database.sessions.begin() as session:
            created = False
            if create:
                try:
                    team_row = await inventory.create_team(session, team)
                    await inventory.create_user(session, team_row, user, team_admin=True)
                    created = True
                except Conflict:
                    if not existing_ok:
                        raise Conflict(
                            f"team {team!r} already exists; to enroll another device use "
                            f"`sft-platform enrollment-code --team {team} --user {user}`"
                        ) from None
            if not created:
                team_row = await inventory.get_team(session, team)
                await inventory.get_user(session, team_row, user)
            issued = await issue_enrollment_code(
                session,
                team=team,
                user=f"teams/{team}/users/{user}",
                created_by="platform-operator",
                ca_sha256=pin,
            )
    return BootstrapResult(
        team,
        user,
        issued.code,
        issued.expire_time,
        settings.effective_public_url,
        pin.hex(),
        created,
    )


async def bootstrap_team(
    settings: PlatformSettings, team: str, admin: str, *, existing_ok: bool
) -> BootstrapResult:
    """Create `team` with `admin` as its first admin and a one-time enrollment code."""
    return await _issue(settings, team, admin, create=True, existing_ok=existing_ok)


async def issue_code_for(settings: PlatformSettings, team: str, user: str) -> BootstrapResult:
    """Issue a fresh enrollment code for an existing user."""
    return await _issue(settings, team, user, create=False, existing_ok=True)
