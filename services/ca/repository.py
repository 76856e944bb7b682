"""Queries over the CA tables. Takes a session; never commits (the servicer owns the
transaction). Private keys pass through here only sealed, or unsealed into memory.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from runtime.errors import Conflict, NotFound
from runtime.page_tokens import filter_digest, newest_first_page
from services.ca.authorities import (
    AuthorityKind,
    AuthorityState,
    PublishedAuthority,
    SigningKey,
    effective_state,
    generate_authority_key,
    load_signing_key,
)
from services.ca.key_encryption import KeyEncryption
from services.ca.models import AuthorityRow, IssuanceRow

__all__ = [
    "IssuanceFilter",
    "IssuanceRecord",
    "SigningKeys",
    "active_authority",
    "create_project_authorities",
    "list_authorities",
    "list_issuances",
    "new_serial",
    "published",
    "rotate_authority",
]


def new_serial() -> int:
    """Return a random certificate serial in 1..2^63-1 (positive as an X.509 INTEGER).

    Random rather than sequential so serials reveal nothing; uniqueness per project
    is enforced by the database, a collision (p ≈ 2^-63 per pair) fails the call.
    """
    return secrets.randbelow(2**63 - 1) + 1


def published(row: AuthorityRow, now: dt.datetime) -> PublishedAuthority:
    """Return the public half of `row`, in its state as of `now`."""
    return PublishedAuthority(
        kind=AuthorityKind(row.kind),
        state=effective_state(AuthorityState(row.state), row.retire_time, now),
        public_key=row.public_key,
        certificate_pem=row.certificate_pem,
        create_time=row.create_time,
    )


async def list_authorities(session: AsyncSession, project: str) -> list[AuthorityRow]:
    """Return every authority of `project`, oldest first."""
    rows = await session.scalars(
        select(AuthorityRow)
        .where(AuthorityRow.project == project)
        .order_by(AuthorityRow.create_time, AuthorityRow.id)
    )
    return list(rows)


async def active_authority(
    session: AsyncSession, project: str, kind: AuthorityKind
) -> AuthorityRow:
    """Return the key of `kind` that signs for `project`, or raise NotFound."""
    row = await session.scalar(
        select(AuthorityRow).where(
            AuthorityRow.project == project,
            AuthorityRow.kind == kind.value,
            AuthorityRow.state == AuthorityState.ACTIVE.value,
        )
    )
    if row is None:
        raise NotFound(
            f"project {project!r} has no {kind.value} authority; the project does not exist "
            "or was created before its authorities (call CreateProjectAuthorities)"
        )
    return row


def _new_row(
    project: str, kind: AuthorityKind, kek: KeyEncryption, now: dt.datetime
) -> AuthorityRow:
    material = generate_authority_key(kind, project, now)
    row_id = uuid.uuid4().hex
    return AuthorityRow(
        id=row_id,
        project=project,
        kind=kind.value,
        state=AuthorityState.ACTIVE.value,
        key_type=material.key_type,
        public_key=material.public_key,
        certificate_pem=material.certificate_pem,
        fingerprint=material.fingerprint,
        # The row id is the associated data: a sealed key copied to another row fails to open.
        sealed_private_key=kek.seal(material.private_key_der, row_id.encode()),
        kek_id=kek.key_id,
        create_time=now,
        not_after=material.not_after,
        retire_time=None,
    )


async def _flush_or_conflict(session: AsyncSession, project: str, doing: str) -> None:
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(
            f"another request is {doing} for project {project!r} at the same time; retry"
        ) from None


async def create_project_authorities(
    session: AsyncSession, project: str, kek: KeyEncryption, now: dt.datetime
) -> list[AuthorityRow]:
    """Return the project's active authorities, making whichever kinds are missing."""
    rows = {
        row.kind: row
        for row in await list_authorities(session, project)
        if row.state == AuthorityState.ACTIVE.value
    }
    for kind in AuthorityKind:
        if kind.value not in rows:
            rows[kind.value] = _new_row(project, kind, kek, now)
            session.add(rows[kind.value])
    await _flush_or_conflict(session, project, "creating authorities")
    return [rows[kind.value] for kind in AuthorityKind]


async def rotate_authority(
    session: AsyncSession,
    project: str,
    kind: AuthorityKind,
    retire_time: dt.datetime,
    kek: KeyEncryption,
    now: dt.datetime,
) -> tuple[AuthorityRow, AuthorityRow]:
    """Make a new active key of `kind`; the old one stays published until `retire_time`."""
    previous = await active_authority(session, project, kind)
    previous.state = AuthorityState.PUBLISHED.value
    previous.retire_time = retire_time
    # The old row must stop being "active" before the new one claims the unique index.
    await _flush_or_conflict(session, project, f"rotating the {kind.value} authority")
    current = _new_row(project, kind, kek, now)
    session.add(current)
    await _flush_or_conflict(session, project, f"rotating the {kind.value} authority")
    for row in await list_authorities(session, project):
        if row.state == AuthorityState.PUBLISHED.value and (
            effective_state(AuthorityState.PUBLISHED, row.retire_time, now)
            is AuthorityState.RETIRED
        ):
            row.state = AuthorityState.RETIRED.value
    return current, previous


class SigningKeys:
    """Unsealed CA keys kept in memory, by authority id (a row's key never changes)."""

    def __init__(self, kek: KeyEncryption) -> None:
        self.kek = kek
        self._keys: dict[str, SigningKey] = {}
        self._certificates: dict[str, x509.Certificate] = {}

    def key_for(self, row: AuthorityRow) -> SigningKey:
        """Return the private key of `row`, unsealing it on first use."""
        key = self._keys.get(row.id)
        if key is None:
            der = self.kek.open(row.sealed_private_key, row.id.encode())
            key = self._keys[row.id] = load_signing_key(AuthorityKind(row.kind), der)
        return key

    def ssh_key_for(self, row: AuthorityRow) -> ed25519.Ed25519PrivateKey:
        """Return the Ed25519 key of an SSH authority row."""
        key = self.key_for(row)
        assert isinstance(key, ed25519.Ed25519PrivateKey), "load_signing_key checks the type"
        return key

    def x509_key_for(self, row: AuthorityRow) -> ec.EllipticCurvePrivateKey:
        """Return the ECDSA key of an X.509 authority row."""
        key = self.key_for(row)
        assert isinstance(key, ec.EllipticCurvePrivateKey), "load_signing_key checks the type"
        return key

    def certificate_for(self, row: AuthorityRow) -> x509.Certificate:
        """Return the parsed CA certificate of an X.509 authority row."""
        certificate = self._certificates.get(row.id)
        if certificate is None:
            certificate = x509.load_pem_x509_certificate(row.certificate_pem.encode())
            self._certificates[row.id] = certificate
        return certificate


@dataclass(frozen=True)
class IssuanceRecord:
    """What the log keeps about one signed certificate."""

    team: str
    project: str
    serial: int
    kind: str  # "ssh_user", "ssh_host", "x509_client", "x509_server"
    subject: str
    principals: tuple[str, ...]
    key_id: str
    key_fingerprint: str
    authority: AuthorityRow
    valid_after: dt.datetime
    valid_before: dt.datetime
    caller: str
    request_id: str
    create_time: dt.datetime


@dataclass(frozen=True)
class IssuanceFilter:
    """Which issuances to list; empty fields match everything."""

    team: str
    project: str | None  # None: every project of the team
    kind: str | None = None
    subject: str | None = None
    request_id: str | None = None
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None

    def digest(self) -> str:
        """Return a short hash of the filter, bound into page tokens."""
        return filter_digest(
            self.team,
            self.project,
            self.kind,
            self.subject,
            self.request_id,
            self.start_time.isoformat() if self.start_time else None,
            self.end_time.isoformat() if self.end_time else None,
        )


async def list_issuances(
    session: AsyncSession, where: IssuanceFilter, page_size: int, page_token: str
) -> tuple[Sequence[IssuanceRow], str]:
    """Return one page of issuances, newest first, and the token for the next page."""
    query = select(IssuanceRow)
    if where.project is None:
        query = query.where(IssuanceRow.team == where.team)
    else:
        query = query.where(IssuanceRow.project == where.project)
    if where.kind:
        query = query.where(IssuanceRow.kind == where.kind)
    if where.subject:
        query = query.where(IssuanceRow.subject == where.subject)
    if where.request_id:
        query = query.where(IssuanceRow.request_id == where.request_id)
    if where.start_time:
        query = query.where(IssuanceRow.create_time >= where.start_time)
    if where.end_time:
        query = query.where(IssuanceRow.create_time < where.end_time)
    return await newest_first_page(
        session,
        query,
        IssuanceRow,
        page_size=page_size,
        page_token=page_token,
        digest=where.digest(),
        id_type=int,
    )
