"""The bastion servicer: a team's jump hosts, an enrolled server or a host address.

Each RPC: validate → authorize (the `@requires` declaration) → one transaction (queries in
services.inventory.repository) → protobuf (services.inventory.views) → audit after commit.
"""

from __future__ import annotations

from runtime.authorization import Need, requires
from runtime.cert_uris import split_project_name, split_server_name, split_team_name
from runtime.errors import FailedPrecondition, InvalidInput
from runtime.page_tokens import filter_digest, page_limit
from services.inventory import repository
from services.inventory.names import (
    check_bastion_name,
    check_description,
    check_host_address,
    split_bastion_name,
)
from services.inventory.servicer import Context, DirectoryServicer, same_team
from services.inventory.views import bastion_message, bastion_resource, project_resource
from sft.inventory.v1 import bastion_service_pb2, bastion_service_pb2_grpc

__all__ = ["BastionServicer"]

DEFAULT_SSH_PORT = 22


def _bastion_parent(parent: str) -> tuple[str, str | None]:
    """Return (team, project or None) of a bastion listing's parent: a project or a team."""
    if "/projects/" in parent:
        return split_project_name(parent)
    return split_team_name(parent), None


def _server_resource(team: str, project: str | None, server_id: str | None) -> str:
    if project is None or server_id is None:
        return ""
    return f"{project_resource(team, project)}/servers/{server_id}"


class BastionServicer(DirectoryServicer, bastion_service_pb2_grpc.BastionServiceServicer):
    """Serves sft.inventory.v1.BastionService. Bastions belong to the team: any project
    may use one, so a project parent only scopes the call, not the bastion."""

    @requires(Need.TEAM_ADMIN, resource="parent")
    async def CreateBastion(
        self, request: bastion_service_pb2.CreateBastionRequest, context: Context
    ) -> bastion_service_pb2.CreateBastionResponse:
        """Create a bastion: an enrolled server of the team, or a host address."""
        team_name, project_name = _bastion_parent(request.parent)
        name = check_bastion_name(request.bastion_id)
        given = request.bastion
        description = check_description(given.description)
        if given.ssh_port > 65535:
            raise InvalidInput(f"ssh_port {given.ssh_port} is not a TCP port; use 1 to 65535")
        ssh_port = given.ssh_port or DEFAULT_SSH_PORT
        target = given.WhichOneof("target")
        server: tuple[str, str] | None = None
        address = ""
        if target == "server":
            server_team, server_project, enrolled_id = split_server_name(given.server)
            same_team(server_team, team_name, "bastion.server")
            server = (server_project, enrolled_id)
        elif target == "address":
            address = check_host_address(given.address)
        else:
            raise InvalidInput(
                "bastion needs a target: set bastion.server (an enrolled server's resource "
                "name) or bastion.address (a host name or IP address)"
            )
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            if project_name is not None:
                await repository.get_project(session, team, project_name)
            server_id: str | None = None
            if server is not None:
                server_id = (await repository.get_server(session, team, *server)).id
            bastion = await repository.create_bastion(
                session,
                team,
                name,
                server_id=server_id,
                address=address,
                ssh_port=ssh_port,
                description=description,
                now=self._clock(),
            )
        details = {"server": given.server} if server else {"address": address}
        details["ssh_port"] = str(ssh_port)
        await self._committed(team, "bastion.create", bastion_resource(team_name, name), details)
        return bastion_service_pb2.CreateBastionResponse(
            bastion=bastion_message(team_name, bastion, given.server if server else "")
        )

    @requires(Need.MEMBER, resource="parent")
    async def ListBastions(
        self, request: bastion_service_pb2.ListBastionsRequest, context: Context
    ) -> bastion_service_pb2.ListBastionsResponse:
        """List the team's bastions by bastion id."""
        team_name, project_name = _bastion_parent(request.parent)
        page_limit(request.page_size)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            if project_name is not None:
                await repository.get_project(session, team, project_name)
            rows, token = await repository.list_bastions(
                session,
                team,
                page_size=request.page_size,
                page_token=request.page_token,
                digest=filter_digest("bastions", team_name),
            )
        return bastion_service_pb2.ListBastionsResponse(
            bastions=[
                bastion_message(
                    team_name, bastion, _server_resource(team_name, project, bastion.server_id)
                )
                for bastion, project in rows
            ],
            next_page_token=token,
        )

    @requires(Need.TEAM_ADMIN, resource="name")
    async def DeleteBastion(
        self, request: bastion_service_pb2.DeleteBastionRequest, context: Context
    ) -> bastion_service_pb2.DeleteBastionResponse:
        """Delete a bastion no project requires."""
        team_name, name = split_bastion_name(request.name)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            bastion = await repository.get_bastion(session, team, name)
            requiring = await repository.projects_requiring_bastion(session, team, name)
            if requiring:
                raise FailedPrecondition(
                    f"bastion {name!r} is the required bastion of project(s) "
                    f"{', '.join(requiring)}; change their required_bastion first"
                )
            await repository.delete_bastion(session, bastion)
        await self._committed(team, "bastion.delete", bastion_resource(team_name, name))
        return bastion_service_pb2.DeleteBastionResponse()
