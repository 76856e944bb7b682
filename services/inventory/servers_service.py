"""The server servicer: people see, change and delete the servers of projects they are
granted; auth resolves names and asks who may reach which server as which account.

Each RPC: validate → authorize (the `@requires` declaration) → one transaction
(services.inventory.servers, .server_access) → protobuf → audit. No SQL here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from runtime.authorization import Need, requires
from runtime.cert_uris import (
    split_project_name,
    split_server_name,
    split_team_name,
    split_user_name,
)
from runtime.errors import InvalidInput, NotFound, PermissionDenied, SftError
from runtime.identity import CallerKind
from services.inventory import fleet_rules, repository, server_access, servers
from services.inventory.models import Project, Team
from services.inventory.servicer import Context, FleetServicer, caller
from services.inventory.views import (
    GRANT_ROLE_TO_PROTO,
    OS_FROM_PROTO,
    account_message,
    project_message,
    server_message,
    user_message,
)
from sft.inventory.v1 import bastion_pb2, server_pb2, server_service_pb2, server_service_pb2_grpc

__all__ = ["ServerServicer"]

log = structlog.get_logger("sft.inventory.fleet")

_UPDATABLE = ("canonical_name", "alt_names", "labels", "access_address", "bastion")


def _viewer_name() -> str | None:
    """Return the person whose grants limit what they see; None for platform services."""
    identity = caller()
    return None if identity.kind is CallerKind.PLATFORM_SERVICE else identity.name


def _list_parent(parent: str) -> tuple[str, str | None]:
    """Return (team, project or None) of `teams/T`, `teams/T/projects/-` or a project."""
    parts = parent.split("/")
    if len(parts) == 2:
        return split_team_name(parent), None
    if len(parts) == 4 and parts[2] == "projects" and parts[3] == "-":
        return split_team_name("/".join(parts[:2])), None
    return split_project_name(parent)


def _changes(server: server_pb2.Server, paths: Sequence[str]) -> fleet_rules.ServerChanges:
    """Return the checked changes an UpdateServer request's mask names."""
    if not paths:
        raise InvalidInput(
            f"update_mask is required: name the fields to change ({', '.join(_UPDATABLE)})"
        )
    unknown = sorted(set(paths) - set(_UPDATABLE))
    if unknown:
        raise InvalidInput(
            f"update_mask names {', '.join(unknown)}, which cannot be changed; changeable "
            f"fields are {', '.join(_UPDATABLE)} (the rest is reported by the agent)"
        )
    return fleet_rules.ServerChanges(
        canonical_name=server.canonical_name if "canonical_name" in paths else None,
        alt_names=tuple(server.alt_names) if "alt_names" in paths else None,
        labels=dict(server.labels) if "labels" in paths else None,
        access_address=server.access_address if "access_address" in paths else None,
        bastion=server.bastion if "bastion" in paths else None,
    ).checked()


async def _seen_project(
    session: Any, team: Team, viewer: servers.Viewer, name: str | None, refusal: SftError
) -> Project | None:
    """Return project `name` (None for none named); raise `refusal` if the viewer cannot see it."""
    if name is None:
        return None
    project = await servers.get_project(session, team, name)
    if not viewer.sees(project.id):
        raise refusal
    return project


class ServerServicer(FleetServicer, server_service_pb2_grpc.ServerServiceServicer):
    """Serves sft.inventory.v1.ServerService: people see the servers of granted projects."""

    @requires(Need.MEMBER, resource="name", services=("auth",))
    async def GetServer(
        self, request: server_service_pb2.GetServerRequest, context: Context
    ) -> server_service_pb2.GetServerResponse:
        """Return one server (NOT_FOUND unless the caller may see its project)."""
        team_name, project, server_id = split_server_name(request.name)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            viewer = await servers.viewer_for(session, team, _viewer_name())
            view = await servers.get_server(session, team, project, server_id, viewer)
        return server_service_pb2.GetServerResponse(server=server_message(view))

    @requires(Need.MEMBER, resource="parent")
    async def ListServers(
        self, request: server_service_pb2.ListServersRequest, context: Context
    ) -> server_service_pb2.ListServersResponse:
        """List servers of one project or of every project the caller may see, newest first."""
        team_name, project_name = _list_parent(request.parent)
        selector = fleet_rules.parse_selector(request.selector)
        if request.os and request.os not in OS_FROM_PROTO:
            raise InvalidInput("os must be OPERATING_SYSTEM_LINUX, _WINDOWS or unset")
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            viewer = await servers.viewer_for(session, team, _viewer_name())
            project = await _seen_project(
                session,
                team,
                viewer,
                project_name,
                PermissionDenied(
                    f"you have no grant on project {project_name!r}; a team admin can "
                    f"grant one of your groups: `sft admin project grant GROUP {project_name}`"
                ),
            )
            views, next_token = await servers.list_servers(
                session,
                team,
                project=project,
                viewer=viewer,
                selector=selector,
                os=OS_FROM_PROTO.get(request.os, ""),
                page_size=request.page_size,
                page_token=request.page_token,
            )
        return server_service_pb2.ListServersResponse(
            servers=[server_message(view) for view in views], next_page_token=next_token
        )

    @requires(Need.PROJECT_ADMIN, resource="server.name")
    async def UpdateServer(
        self, request: server_service_pb2.UpdateServerRequest, context: Context
    ) -> server_service_pb2.UpdateServerResponse:
        """Change a server's names, labels, access address or bastion."""
        team_name, project, server_id = split_server_name(request.server.name)
        paths = list(request.update_mask.paths)
        changes = _changes(request.server, paths)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            view = await servers.get_server(session, team, project, server_id, servers.Viewer(None))
            await servers.update_server(session, view, changes, self._clock())
        await self._audit(
            team_name, "server.update", view.name, details={"fields": ",".join(sorted(paths))}
        )
        return server_service_pb2.UpdateServerResponse(server=server_message(view))

    @requires(Need.PROJECT_ADMIN, resource="name")
    async def DeleteServer(
        self, request: server_service_pb2.DeleteServerRequest, context: Context
    ) -> server_service_pb2.DeleteServerResponse:
        """Remove a server; its agent's calls fail from now on and its account stream ends."""
        team_name, project, server_id = split_server_name(request.name)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            view = await servers.get_server(session, team, project, server_id, servers.Viewer(None))
            await servers.delete_server(session, view)
        self._hub.notify(view.row.team_id)
        await self._audit(
            team_name,
            "server.delete",
            view.name,
            details={"canonical_name": view.row.canonical_name, "hostname": view.row.hostname},
        )
        return server_service_pb2.DeleteServerResponse()

    @requires(Need.MEMBER, resource="parent", services=("auth",))
    async def ResolveServer(
        self, request: server_service_pb2.ResolveServerRequest, context: Context
    ) -> server_service_pb2.ResolveServerResponse:
        """Find the one server a name, alias, address or id refers to.

        Ambiguous: the response lists the candidates instead (as the contract says; the
        client and auth treat them as an error), and the log line names them.
        """
        parts = request.parent.split("/")
        if len(parts) == 2:
            team_name, project_name = split_team_name(request.parent), None
        else:
            team_name, project_name = split_project_name(request.parent)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            viewer = await servers.viewer_for(session, team, _viewer_name())
            project = await _seen_project(
                session,
                team,
                viewer,
                project_name,
                NotFound(
                    f"no server you can see in project {project_name!r} is called "
                    f"{request.query[:253]!r}; you have no grant on that project"
                ),
            )
            found = await server_access.resolve_server(
                session, team, request.query, viewer=viewer, project=project
            )
        if isinstance(found, server_access.Ambiguous):
            log.info("ambiguous server name", detail=found.message())
            return server_service_pb2.ResolveServerResponse(
                candidates=[server_message(view) for view in found.candidates]
            )
        return server_service_pb2.ResolveServerResponse(server=server_message(found))

    @requires(Need.PLATFORM_SERVICE, services=("auth",))
    async def CheckServerAccess(
        self, request: server_service_pb2.CheckServerAccessRequest, context: Context
    ) -> server_service_pb2.CheckServerAccessResponse:
        """Decide whether a user may reach a server, as which account, through which hops."""
        team_name, project, server_id = split_server_name(request.server)
        user_team, user_name = split_user_name(request.user)
        if user_team != team_name:
            raise InvalidInput(
                f"user {request.user!r} is not in team {team_name!r}, the server's team"
            )
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            decision = await server_access.check_server_access(
                session,
                team,
                project=project,
                server_id=server_id,
                user_name=user_name,
                account_name=request.account_name,
            )
        return server_service_pb2.CheckServerAccessResponse(
            role=GRANT_ROLE_TO_PROTO[decision.role],
            account=account_message(team_name, decision.account),
            server=server_message(decision.server),
            project=project_message(team_name, decision.project),
            user=user_message(team_name, decision.user),
            bastion_hops=[
                bastion_pb2.BastionHop(
                    server=hop.server, address=hop.address, ssh_port=hop.ssh_port
                )
                for hop in decision.hops
            ],
        )
