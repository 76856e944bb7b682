"""Who may call what, declared in one place per RPC and checked the same way everywhere.

Every servicer method a platform service implements is wrapped with `@requires(...)`,
naming what the caller needs and which request field names the resource it acts on:

    @requires(Need.PROJECT_ADMIN, resource="parent")
    async def CreateEnrollmentToken(self, request, context): ...

The check runs before the method body: the caller's kind, then that the resource is
in the caller's own team, then (for the admin needs) the caller's standing, which the
servicer's `roles` resolver reads from the inventory. `ServiceBinding` refuses to
serve a method without a declaration, so a forgotten check fails closed at start.

A denial is PERMISSION_DENIED naming what is missing; no credentials is
UNAUTHENTICATED. This module has no grpc import: it reads `current_identity`.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import structlog

from runtime.errors import InvalidInput, PermissionDenied, Unauthenticated
from runtime.identity import CallerKind, Identity, current_identity
from runtime.service_identity import require_platform_service

__all__ = [
    "Need",
    "RoleResolver",
    "Standing",
    "declared_need",
    "requires",
    "resource_scope",
]

NEED_ATTRIBUTE = "__sft_need__"

log = structlog.get_logger("sft.authorization")


class Need(enum.Enum):
    """What a caller must be for an RPC to run."""

    #: No credentials needed (enrollment and token exchange: the caller proves itself).
    ANYONE = "anyone"
    #: Any active person or service user of the resource's team; results are filtered
    #: to what their grants show.
    MEMBER = "member"
    #: A team admin, or an admin grant on the resource's project.
    PROJECT_ADMIN = "project admin"
    #: A team admin of the resource's team.
    TEAM_ADMIN = "team admin"
    #: An enrolled server's agent (its own server only; the servicer scopes by identity).
    AGENT = "agent"
    #: Another platform service, over the internal listener (see `services`).
    PLATFORM_SERVICE = "platform service"


@dataclass(frozen=True)
class Standing:
    """What the inventory says about a person or service user right now."""

    active: bool
    team_admin: bool
    #: Names of the projects where the caller holds an admin grant.
    admin_projects: frozenset[str] = field(default_factory=frozenset)


class RoleResolver(Protocol):
    """Reads a caller's standing (the inventory's tables, or the inventory over gRPC)."""

    async def standing(self, identity: Identity) -> Standing:
        """Return `identity`'s standing; an unknown user is not active."""
        ...


@dataclass(frozen=True)
class Scope:
    """The team (and project, when named) a resource name points into."""

    team: str
    project: str | None


def resource_scope(name: str) -> Scope:
    """Return the team and project of a resource name `teams/T[/projects/P[/…]]`.

    Raises InvalidInput for anything that does not start with `teams/TEAM`.
    """
    parts = name.split("/")
    if len(parts) < 2 or parts[0] != "teams" or not parts[1]:
        raise InvalidInput(
            f"{name!r} is not a resource name of a team; names start with teams/TEAM"
        )
    project = parts[3] if len(parts) >= 4 and parts[2] == "projects" and parts[3] else None
    return Scope(parts[1], project)


def _field(request: object, path: str) -> str:
    value: object = request
    for part in path.split("."):
        value = getattr(value, part)
    return str(value)


_CALLER_WORDS = {
    CallerKind.AGENT: "a server's agent",
    CallerKind.PLATFORM_SERVICE: "a platform service",
}


def _require_person(identity: Identity) -> None:
    if identity.kind is CallerKind.ANONYMOUS:
        raise Unauthenticated(
            "this call needs an access token; run `sft login` (or `sft enroll` first)"
        )
    if identity.kind not in (CallerKind.USER, CallerKind.SERVICE_USER):
        raise PermissionDenied(
            "only people and service users of a team may call this, not "
            + _CALLER_WORDS.get(identity.kind, identity.kind.value)
        )


async def check_need(
    need: Need,
    identity: Identity,
    *,
    resource: str | None,
    roles: RoleResolver | None,
    services: tuple[str, ...] = (),
) -> None:
    """Raise Unauthenticated or PermissionDenied unless `identity` meets `need`.

    A platform service named in `services` may always call (e.g. auth reading a
    user from the inventory); with Need.PLATFORM_SERVICE only those may.
    """
    if need is Need.ANYONE:
        return
    if identity.kind is CallerKind.PLATFORM_SERVICE and identity.name in services:
        return
    if need is Need.PLATFORM_SERVICE:
        require_platform_service(*services)
        return
    if need is Need.AGENT:
        if identity.kind is CallerKind.ANONYMOUS:
            raise Unauthenticated("this call needs the agent's access token; restart sftd")
        if identity.kind is not CallerKind.AGENT:
            raise PermissionDenied("only an enrolled server's agent (sftd) may call this")
        return
    _require_person(identity)
    scope = resource_scope(resource) if resource is not None else Scope(str(identity.team), None)
    if scope.team != identity.team:
        raise PermissionDenied(
            f"this resource belongs to team {scope.team!r} and your token is for team "
            f"{identity.team!r}; switch with `sft use {scope.team}`"
        )
    if roles is None:
        raise PermissionDenied("this service cannot check roles; the call is refused")
    standing = await roles.standing(identity)
    if not standing.active:
        raise PermissionDenied(
            f"user {identity.name!r} is disabled or unknown in team {identity.team!r}; "
            "ask a team admin"
        )
    if need is Need.MEMBER or standing.team_admin:
        return
    if need is Need.TEAM_ADMIN:
        raise PermissionDenied(
            f"this needs the team admin role in team {identity.team!r}, which "
            f"{identity.name!r} does not have"
        )
    if scope.project is not None and scope.project in standing.admin_projects:
        return
    where = f"project {scope.project!r}" if scope.project else "this project"
    raise PermissionDenied(
        f"this needs an admin grant on {where} (or the team admin role), which "
        f"{identity.name!r} does not have"
    )


Method = TypeVar("Method", bound=Callable[..., Awaitable[Any]])


def requires(
    need: Need, *, resource: str | None = None, services: tuple[str, ...] = ()
) -> Callable[[Method], Method]:
    """Declare (and enforce) what a servicer method needs.

    `resource` is the request field (dotted for nested) holding the resource name the
    call acts on; without it the caller's own team is the scope. `services` names the
    platform services that may also call (and, for PLATFORM_SERVICE, the only ones).
    The servicer provides `self.roles` for the MEMBER and admin needs.
    """

    def decorate(method: Method) -> Method:
        @functools.wraps(method)
        async def checked(self: Any, request: object, context: object) -> Any:
            target = _field(request, resource) if resource is not None else None
            identity = current_identity.get()
            try:
                await check_need(
                    need,
                    identity,
                    resource=target,
                    roles=getattr(self, "roles", None),
                    services=services,
                )
            except PermissionDenied as denied:
                await _audit_denial(self, method.__name__, identity, target, denied)
                raise
            return await method(self, request, context)

        setattr(checked, NEED_ATTRIBUTE, need)
        return checked  # type: ignore[return-value]

    return decorate


async def _audit_denial(
    servicer: Any, rpc: str, identity: Identity, target: str | None, denied: PermissionDenied
) -> None:
    """Record a refused call in the caller's team's audit trail (when the servicer has one).

    Only callers of a team are recorded: an anonymous caller names no team, and letting
    strangers write into a team's trail would let them flood it.
    """
    trail = getattr(servicer, "_trail", None)
    if trail is None or identity.team is None or identity.kind is CallerKind.ANONYMOUS:
        return
    # Imported here: runtime.audit needs the generated protobuf code, this module not.
    from runtime.audit import DENIED, audit_event

    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", rpc).lower()
    event = audit_event(
        f"rpc.{snake}",
        target or f"teams/{identity.team}",
        outcome=DENIED,
        details={"reason": denied.message[:500]},
        actor=identity,
    )
    try:
        await trail.record(identity.team, event)
    except Exception:  # the refusal stands whether or not it could be recorded
        log.exception("could not audit a refused call", rpc=rpc)


def streaming_requires(
    need: Need, *, services: tuple[str, ...] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`requires` for a server-streaming method (an async generator); no resource field."""

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        async def checked(self: Any, request: object, context: object) -> Any:
            await check_need(
                need,
                current_identity.get(),
                resource=None,
                roles=getattr(self, "roles", None),
                services=services,
            )
            async for item in method(self, request, context):
                yield item

        setattr(checked, NEED_ATTRIBUTE, need)
        return checked

    return decorate


def declared_need(method: object) -> Need | None:
    """Return what a servicer method declared with `requires`, if anything."""
    return getattr(method, NEED_ATTRIBUTE, None)
