"""The team servicer: a caller sees and edits only its own team.

Each RPC: validate → authorize (the `@requires` declaration) → one transaction (queries in
services.inventory.repository) → protobuf (services.inventory.views) → audit after commit.
"""

from __future__ import annotations

from runtime.authorization import Need, requires
from runtime.cert_uris import split_team_name
from runtime.errors import InvalidInput, PermissionDenied
from runtime.page_tokens import page_limit
from services.inventory import repository
from services.inventory.names import check_display_name
from services.inventory.servicer import Context, DirectoryServicer, caller, mask_paths
from services.inventory.views import team_message
from sft.inventory.v1 import team_service_pb2, team_service_pb2_grpc

__all__ = ["TeamServicer"]


class TeamServicer(DirectoryServicer, team_service_pb2_grpc.TeamServiceServicer):
    """Serves sft.inventory.v1.TeamService: a caller sees and edits only its own team."""

    @requires(Need.MEMBER, resource="name")
    async def GetTeam(
        self, request: team_service_pb2.GetTeamRequest, context: Context
    ) -> team_service_pb2.GetTeamResponse:
        """Return the caller's team."""
        name = split_team_name(request.name)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, name)
        return team_service_pb2.GetTeamResponse(team=team_message(team))

    @requires(Need.MEMBER)
    async def ListTeams(
        self, request: team_service_pb2.ListTeamsRequest, context: Context
    ) -> team_service_pb2.ListTeamsResponse:
        """List the teams the caller may see: its own."""
        page_limit(request.page_size)
        if request.page_token:
            raise InvalidInput(
                "page_token is not valid: this listing has one page; call again without it"
            )
        async with self._database.sessions() as session:
            team = await repository.get_team(session, str(caller().team))
        return team_service_pb2.ListTeamsResponse(teams=[team_message(team)])

    @requires(Need.TEAM_ADMIN)
    async def CreateTeam(
        self, request: team_service_pb2.CreateTeamRequest, context: Context
    ) -> team_service_pb2.CreateTeamResponse:
        """Refuse: teams are made by the platform operator, not over the API."""
        raise PermissionDenied(
            "teams are created by the platform operator with `sft-platform init --team NAME "
            "--admin USER`; ask them for a new team"
        )

    @requires(Need.TEAM_ADMIN, resource="team.name")
    async def UpdateTeam(
        self, request: team_service_pb2.UpdateTeamRequest, context: Context
    ) -> team_service_pb2.UpdateTeamResponse:
        """Change the team's display name."""
        name = split_team_name(request.team.name)
        mask_paths(
            request.update_mask.paths,
            request.HasField("update_mask"),
            ["display_name"],
            {"name": "the team id cannot change", "create_time": "create_time is output only"},
        )
        display_name = check_display_name(request.team.display_name)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, name)
            team.display_name = display_name
            team.updated_at = self._clock()
            message = team_message(team)
        await self._committed(team, "team.update", message.name, {"display_name": display_name})
        return team_service_pb2.UpdateTeamResponse(team=message)
