"""Writing audit events from any service: who did what to which resource, from where.

The auth service keeps the trail (one hash chain per team). Other services send their
events to it with `AuditService.CreateAuditEvent` over the internal listener; auth
itself appends to its own tables. Both go through the `AuditTrail` protocol, so a
servicer only calls `await trail.record(event)`.

The caller, request id and source address come from the current call (see
runtime.interceptors), so a servicer names only the action, resource and outcome.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol

import grpc
import structlog

from runtime.identity import CallerKind, Identity, current_identity
from runtime.peers import Peers
from sft.auth.v1 import audit_pb2, audit_service_pb2, audit_service_pb2_grpc

__all__ = ["DENIED", "AuditTrail", "RemoteAuditTrail", "actor_of", "audit_event"]

#: The outcome of a call refused for want of a role.
DENIED = audit_pb2.AUDIT_OUTCOME_DENIED

log = structlog.get_logger("sft.audit")

_ACTOR_KINDS = {
    CallerKind.USER: audit_pb2.ACTOR_KIND_USER,
    CallerKind.SERVICE_USER: audit_pb2.ACTOR_KIND_SERVICE_USER,
    CallerKind.AGENT: audit_pb2.ACTOR_KIND_SERVER,
    CallerKind.PLATFORM_SERVICE: audit_pb2.ACTOR_KIND_PLATFORM,
    CallerKind.ANONYMOUS: audit_pb2.ACTOR_KIND_ANONYMOUS,
}
_PEER_IP = re.compile(r"^ipv[46]:\[?([0-9A-Fa-f:.]+)\]?:\d+$")


def actor_of(identity: Identity) -> tuple[str, int]:
    """Return the actor resource name and ActorKind for `identity`."""
    kind = _ACTOR_KINDS[identity.kind]
    if identity.kind in (CallerKind.USER, CallerKind.SERVICE_USER):
        return identity.user_resource, kind
    if identity.kind is CallerKind.AGENT:
        return f"teams/{identity.team}/servers/{identity.name}", kind
    if identity.kind is CallerKind.PLATFORM_SERVICE:
        return f"services/{identity.name}", kind
    return "anonymous", kind


def audit_event(
    action: str,
    resource: str,
    *,
    outcome: int = audit_pb2.AUDIT_OUTCOME_SUCCESS,
    details: Mapping[str, str] | None = None,
    actor: Identity | None = None,
) -> audit_pb2.AuditEvent:
    """Return an event for `action` on `resource` by the current caller (or `actor`)."""
    who, kind = actor_of(actor or current_identity.get())
    bound = structlog.contextvars.get_contextvars()
    peer = str(bound.get("peer") or "")
    match = _PEER_IP.match(peer)
    return audit_pb2.AuditEvent(
        actor=who,
        actor_kind=kind,  # type: ignore[arg-type]
        action=action,
        resource=resource,
        outcome=outcome,  # type: ignore[arg-type]
        source_address=match.group(1) if match else peer[:64],
        request_id=str(bound.get("request_id") or ""),
        details=dict(details or {}),
    )


class AuditTrail(Protocol):
    """Somewhere audit events go."""

    async def record(self, team: str, event: audit_pb2.AuditEvent) -> None:
        """Append `event` to `team`'s trail."""
        ...


class RemoteAuditTrail:
    """Sends events to the auth service's AuditService as this service."""

    def __init__(self, peers: Peers, timeout: float = 5.0) -> None:
        self._peers = peers
        self._timeout = timeout

    async def record(self, team: str, event: audit_pb2.AuditEvent) -> None:
        """Append `event`; a failure is logged loudly, never raised into the caller's call.

        The change being audited is already committed by then; failing the call would
        tell the caller it did not happen.
        """
        stub = audit_service_pb2_grpc.AuditServiceStub(self._peers.channel("auth"))
        try:
            await stub.CreateAuditEvent(
                audit_service_pb2.CreateAuditEventRequest(parent=f"teams/{team}", event=event),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            log.error(
                "audit event not recorded",
                action=event.action,
                resource=event.resource,
                code=error.code().name,
                detail=error.details(),
            )
