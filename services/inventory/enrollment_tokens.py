"""Enrollment tokens and what they are for: create, list and revoke a project's tokens, and
enroll (or re-enroll) a server with one.

Takes a session and never commits; no protobuf. Never stores or logs a token's secret:
only its hash is passed in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from runtime.errors import Conflict, NotFound, Unauthenticated
from runtime.page_tokens import decode_page_token, encode_page_token, filter_digest, page_limit
from services.inventory.fleet_rules import ServerFacts, TokenSettings, token_resource
from services.inventory.models import EnrollmentTokenRow, Project, Server, Team
from services.inventory.server_keys import PublicKey
from services.inventory.servers import ServerView, apply_configured, apply_reported, sync_names

__all__ = [
    "Enrolled",
    "TokenRefused",
    "create_token",
    "enroll_server",
    "list_tokens",
    "revoke_token",
]

_TOKEN_ADVICE = "ask a project admin for a new one: `sft admin token create --project {project}`"  # noqa: S105 (advice, not a secret)


async def create_token(
    session: AsyncSession,
    project: Project,
    settings: TokenSettings,
    *,
    secret_hash: str,
    creator: str,
    now: dt.datetime,
) -> EnrollmentTokenRow:
    """Record a new token of `project` by the hash of its secret (checked settings)."""
    assert settings.expire_time is not None
    row = EnrollmentTokenRow(
        project_id=project.id,
        description=settings.description,
        secret_hash=secret_hash,
        expire_time=settings.expire_time,
        max_uses=settings.max_uses,
        creator=creator,
        created_at=now,
    )
    session.add(row)
    await session.flush()
    return row


async def list_tokens(
    session: AsyncSession,
    project: Project,
    *,
    show_revoked: bool,
    page_size: int,
    page_token: str,
) -> tuple[list[EnrollmentTokenRow], str]:
    """Return one page of a project's tokens, newest first, and the next page token."""
    size = page_limit(page_size)
    query = select(EnrollmentTokenRow).where(EnrollmentTokenRow.project_id == project.id)
    if not show_revoked:
        query = query.where(EnrollmentTokenRow.revoked_at.is_(None))
    digest = filter_digest("tokens", project.id, show_revoked)
    if page_token:
        after_time, after_id = decode_page_token(page_token, digest)
        query = query.where(
            tuple_(EnrollmentTokenRow.created_at, EnrollmentTokenRow.id) < (after_time, after_id)
        )
    ordered = query.order_by(
        EnrollmentTokenRow.created_at.desc(), EnrollmentTokenRow.id.desc()
    ).limit(size + 1)
    rows = list(await session.scalars(ordered))
    if len(rows) <= size:
        return rows, ""
    last = rows[size - 1]
    return rows[:size], encode_page_token(last.created_at, last.id, digest)


async def revoke_token(
    session: AsyncSession, project: Project, token_id: str, now: dt.datetime
) -> EnrollmentTokenRow:
    """Revoke a token of `project` (idempotent: a revoked token keeps its revoke time)."""
    row = await session.scalar(
        select(EnrollmentTokenRow).where(
            EnrollmentTokenRow.id == token_id, EnrollmentTokenRow.project_id == project.id
        )
    )
    if row is None:
        raise NotFound(
            f"enrollment token {token_id!r} does not exist in project {project.name!r}; list "
            f"them with `sft admin token list --project {project.name}`"
        )
    if row.revoked_at is None:
        row.revoked_at = now
        await session.flush()
    return row


class TokenRefused(Unauthenticated):
    """An enrollment token that cannot enroll; carries where to audit the refusal."""

    def __init__(self, message: str, *, team: str | None = None, token: str = "") -> None:
        super().__init__(message)
        self.team = team
        self.token = token


@dataclass(frozen=True)
class Enrolled:
    """The outcome of an enrollment: the server, and whether this call created it."""

    server: ServerView
    created: bool
    token: str


def _ago(delta: dt.timedelta) -> str:
    """Return a rough, short age like `3h` or `2d`."""
    seconds = max(0, int(delta.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


async def enroll_server(
    session: AsyncSession,
    *,
    secret_hash: str,
    agent_key: PublicKey,
    host_keys: Sequence[PublicKey],
    facts: ServerFacts,
    now: dt.datetime,
) -> Enrolled:
    """Enroll (or re-enroll) the server of `agent_key` with the token hashing to `secret_hash`.

    Re-enrollment is idempotent: an agent key already enrolled with this token gets its
    facts updated and keeps its id, and uses none of the token (so a restarted agent, or
    a retry after the CA failed, never makes a second server, even with a used-up token).
    `facts` must be checked. Raises TokenRefused, or Conflict when the key belongs to a
    server of another project or enrolled with another token.
    """
    token = await session.scalar(
        select(EnrollmentTokenRow)
        .where(EnrollmentTokenRow.secret_hash == secret_hash)
        .with_for_update()
    )
    if token is None:
        raise TokenRefused(
            "this enrollment token is not known here (never issued by this platform, or its "
            "project was deleted); ask a project admin for a new one: "
            "`sft admin token create --project PROJECT`"
        )
    project = await session.get_one(Project, token.project_id)
    team = await session.get_one(Team, project.team_id)
    name = token_resource(team.name, project.name, token.id)
    advice = _TOKEN_ADVICE.format(project=project.name)
    if token.revoked_at is not None:
        raise TokenRefused(
            f"enrollment token {token.id} of project {project.name!r} was revoked "
            f"{_ago(now - token.revoked_at)} ago; {advice}",
            team=team.name,
            token=name,
        )
    if token.expire_time <= now:
        raise TokenRefused(
            f"enrollment token {token.id} of project {project.name!r} expired "
            f"{_ago(now - token.expire_time)} ago; {advice}",
            team=team.name,
            token=name,
        )
    existing = await session.scalar(
        select(Server).where(Server.agent_key_fingerprint == agent_key.fingerprint)
    )
    if existing is not None:
        if existing.project_id != project.id:
            other = await session.get_one(Project, existing.project_id)
            raise Conflict(
                f"this agent key already belongs to server {existing.id} in project "
                f"{other.name!r}; delete that server first (`sft admin server delete`), or "
                "clear sftd's state dir so it makes a new key"
            )
        if existing.enrollment_token_id != token.id:
            # The agent key is public (GetServer shows it), so without this check anyone
            # holding any token of the project could take over an enrolled server's
            # record (its access address) by replaying its key.
            raise Conflict(
                f"this agent key is already enrolled as server {existing.id} with another "
                "enrollment token; sftd needs no new enrollment (check its state dir), or "
                "delete the server (`sft admin server delete`) to enroll it afresh"
            )
        apply_reported(existing, facts)
        apply_configured(existing, facts)
        existing.host_key_fingerprints = [key.fingerprint for key in host_keys]
        existing.updated_at = now
        existing.last_seen_at = now
        await session.flush()
        await sync_names(session, existing)
        return Enrolled(ServerView(existing, team.name, project.name), False, name)
    if token.max_uses and token.uses >= token.max_uses:
        raise TokenRefused(
            f"enrollment token {token.id} of project {project.name!r} is used up (it allowed "
            f"{token.max_uses} enrollment{'s' if token.max_uses != 1 else ''}); {advice}",
            team=team.name,
            token=name,
        )
    row = Server(
        team_id=team.id,
        project_id=project.id,
        agent_public_key=agent_key.line,
        agent_key_fingerprint=agent_key.fingerprint,
        host_key_fingerprints=[key.fingerprint for key in host_keys],
        enrollment_token_id=token.id,
        created_at=now,
        updated_at=now,
        last_seen_at=now,
    )
    apply_reported(row, facts)
    apply_configured(row, facts)
    session.add(row)
    await session.flush()
    await sync_names(session, row)
    token.uses += 1
    token.last_used_at = now
    await session.flush()
    return Enrolled(ServerView(row, team.name, project.name), True, name)
