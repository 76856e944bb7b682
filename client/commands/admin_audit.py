"""`sft admin audit`: read the team's audit trail, and check that nobody rewrote it.

`audit verify` prints the last SEQ:HASH as a checkpoint; kept somewhere the platform
cannot write, it lets a later verify notice history rewritten wholesale or truncated.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from client.commands.admin_params import POINT_IN_TIME, Checkpoint, CheckpointType
from client.commands.calls import (
    enum_name,
    every_page,
    message_time,
    run_in_session,
    team_resource,
)
from client.commands.options import team_option
from client.errors import ClientError
from client.output import (
    JSON,
    Column,
    emit,
    iso_time,
    output_option,
    render_columns,
    short_id,
    short_time,
    table_output_option,
)
from client.session import Session
from sft.auth.v1 import audit_pb2, audit_service_pb2, audit_service_pb2_grpc

__all__ = ["audit_group", "event_json", "scoped_resource"]

OUTCOMES = ("success", "denied", "failed")


def event_json(event: audit_pb2.AuditEvent) -> dict[str, Any]:
    """Return the JSON form of an audit event."""
    return {
        "sequence": event.sequence,
        "id": event.id,
        "time": iso_time(message_time(event, "time")),
        "actor": event.actor or None,
        "actor_kind": enum_name(audit_pb2.ActorKind, event.actor_kind, "ACTOR_KIND_"),
        "action": event.action,
        "resource": event.resource,
        "outcome": enum_name(audit_pb2.AuditOutcome, event.outcome, "AUDIT_OUTCOME_"),
        "source_address": event.source_address,
        "request_id": event.request_id,
        "details": dict(sorted(event.details.items())),
        "previous_hash": event.previous_hash,
        "hash": event.hash,
    }


def scoped_resource(team: str, value: str, collection: str = "") -> str:
    """Return `value` as a resource name of `team`: `projects/web` → `teams/T/projects/web`.

    With `collection` (`users`), a bare id is taken as one of those (`ada` → `teams/T/users/ada`).
    """
    if value.startswith("teams/"):
        return value
    if collection and "/" not in value:
        return f"teams/{team}/{collection}/{value}"
    return f"teams/{team}/{value}"


def _actor_cell(item: dict[str, Any]) -> str:
    if item["actor"]:
        return short_id(item["actor"])
    return item["actor_kind"] or "-"


def _resource_cell(team: str) -> Any:
    prefix = f"teams/{team}/"
    return lambda item: item["resource"].removeprefix(prefix)


def _columns(team: str) -> tuple[Column, ...]:
    return (
        Column("sequence", lambda e: str(e["sequence"]), "seq"),
        Column("time", lambda e: short_time(e["time"])),
        Column("actor", _actor_cell),
        Column("action", lambda e: e["action"]),
        Column("resource", _resource_cell(team)),
        Column("outcome", lambda e: e["outcome"]),
        Column("reason", lambda e: e["details"].get("reason", "")),
    )


def _audit(session: Session) -> audit_service_pb2_grpc.AuditServiceStub:
    return audit_service_pb2_grpc.AuditServiceStub(session.channel())


@click.group("audit")
def audit_group() -> None:
    """The team's tamper-evident audit trail: who did what, when, and how it ended.

    \b
    Examples:
      sft admin audit list --since 1h
      sft admin audit list --actor bob --action credentials. -o json
      sft admin audit verify --checkpoint 1042:9f86d081…(64 hex digits)
    """


@audit_group.command("list")
@team_option
@click.option(
    "--actor", default=None, metavar="USER", help="Only events by this user (or resource)."
)
@click.option(
    "--action",
    default=None,
    metavar="ACTION",
    help="Only this action (project.create), or every action with a prefix ending in `.` "
    "(server.).",
)
@click.option(
    "--resource",
    default=None,
    metavar="RESOURCE",
    help="Only events about this resource or anything under it (projects/web).",
)
@click.option("--outcome", type=click.Choice(OUTCOMES), default=None, help="Only this outcome.")
@click.option(
    "--since", type=POINT_IN_TIME, default=None, help="From this time: 1h (ago) or ISO 8601."
)
@click.option(
    "--until", type=POINT_IN_TIME, default=None, help="Before this time: 1h (ago) or ISO 8601."
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="At most this many events (the newest); 0 for all.",
)
@click.option("--oldest-first", is_flag=True, help="Oldest first (default: newest first).")
@table_output_option
def list_audit_command(
    team: str | None,
    actor: str | None,
    action: str | None,
    resource: str | None,
    outcome: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    limit: int,
    oldest_first: bool,
    output: str,
) -> None:
    """List audit events, newest first.

    \b
    Examples:
      sft admin audit list
      sft admin audit list --since 24h --action server. --outcome denied
      sft admin audit list --resource projects/web --since 2025-06-01T00:00:00Z -o json
    """
    if since is not None and until is not None and since >= until:
        raise click.BadParameter("--since must be before --until", param_hint="'--since'")

    async def work(session: Session) -> tuple[str, list[audit_pb2.AuditEvent]]:
        request = audit_service_pb2.ListAuditEventsRequest(
            parent=team_resource(session),
            actor=scoped_resource(session.team, actor, "users") if actor else "",
            action=action or "",
            resource=scoped_resource(session.team, resource) if resource else "",
            outcome=audit_pb2.AuditOutcome.Value(f"AUDIT_OUTCOME_{outcome.upper()}")
            if outcome
            else audit_pb2.AUDIT_OUTCOME_UNSPECIFIED,
            newest_first=not oldest_first,
        )
        if since is not None:
            request.start_time.FromDatetime(since)
        if until is not None:
            request.end_time.FromDatetime(until)
        events = await every_page(
            _audit(session).ListAuditEvents, request, "events", limit=limit or None
        )
        return session.team, events

    team_name, events = run_in_session(team, work)
    items = [event_json(event) for event in events]
    emit(output, items, render_columns(_columns(team_name), items, "No audit events match."))


def _break_text(first_break: audit_pb2.AuditChainBreak) -> str:
    kind = enum_name(audit_pb2.AuditChainBreakKind, first_break.kind, "AUDIT_CHAIN_BREAK_KIND_")
    what = {
        "changed": "was changed after it was written",
        "removed": "was removed",
        "inserted": "was inserted (or the chain re-linked)",
    }.get(kind, "does not verify")
    detail = f" ({first_break.detail})" if first_break.detail else ""
    return f"event {first_break.sequence} {what}{detail}"


@audit_group.command("verify")
@team_option
@click.option(
    "--checkpoint",
    type=CheckpointType(),
    default=None,
    metavar="SEQ:HASH",
    help="A checkpoint printed by an earlier verify; it must still match.",
)
@output_option
def verify_audit_command(team: str | None, checkpoint: Checkpoint | None, output: str) -> None:
    """Recompute the audit hash chain; exit 1 naming the first event changed, removed or inserted.

    Prints the last SEQ:HASH: keep it outside the platform and pass it to the next
    verify with --checkpoint.

    \b
    Examples:
      sft admin audit verify
      sft admin audit verify --checkpoint "$(cat ~/audit-checkpoint)"
    """

    async def work(session: Session) -> tuple[str, audit_service_pb2.VerifyAuditChainResponse]:
        request = audit_service_pb2.VerifyAuditChainRequest(parent=team_resource(session))
        if checkpoint is not None:
            request.checkpoint_sequence = checkpoint.sequence
            request.checkpoint_hash = checkpoint.hash
        return session.team, await _audit(session).VerifyAuditChain(request)

    team_name, reply = run_in_session(team, work)
    last = f"{reply.last_sequence}:{reply.last_hash}" if reply.last_sequence else None
    first_break = None
    if not reply.ok:
        first_break = {
            "sequence": reply.first_break.sequence,
            "event": reply.first_break.event or None,
            "kind": enum_name(
                audit_pb2.AuditChainBreakKind, reply.first_break.kind, "AUDIT_CHAIN_BREAK_KIND_"
            ),
            "detail": reply.first_break.detail,
        }
    document = {
        "team": team_name,
        "ok": reply.ok,
        "checked_events": reply.checked_events,
        "last_sequence": reply.last_sequence,
        "last_hash": reply.last_hash,
        "checkpoint": last,
        "first_break": first_break,
    }
    if not reply.ok:
        if output == JSON:
            emit(output, document, "")
        raise ClientError(
            f"the audit trail of team {team_name} is broken: {_break_text(reply.first_break)}",
            hint="keep the trail as it is and investigate; restore it from a backup only once "
            "you know how it changed",
        )
    if checkpoint is not None:
        anchored = f", including checkpoint {checkpoint.sequence}"
    else:
        anchored = ""
    text = [
        f"The audit trail of team {team_name} verifies: {reply.checked_events} events{anchored}.",
    ]
    if last:
        text.append(f"Checkpoint to keep for the next verify: {last}")
    emit(output, document, "\n".join(text))
