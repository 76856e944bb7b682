"""The group servicer: groups and their members, which project grants name. Membership
changes bump the team's accounts revision.

Each RPC: validate → authorize (the `@requires` declaration) → one transaction (queries in
services.inventory.repository) → protobuf (services.inventory.views) → audit after commit.
"""

from __future__ import annotations

from runtime.authorization import Need, requires
from runtime.cert_uris import split_team_name
from runtime.cert_uris import split_user_name as split_user_resource
from runtime.page_tokens import filter_digest, page_limit
from services.inventory import repository
from services.inventory.names import check_description, check_group_name, split_group_name
from services.inventory.servicer import Context, DirectoryServicer, same_team
from services.inventory.views import group_message, group_resource, member_message, member_resource
from sft.inventory.v1 import group_service_pb2, group_service_pb2_grpc

__all__ = ["GroupServicer"]


class GroupServicer(DirectoryServicer, group_service_pb2_grpc.GroupServiceServicer):
    """Serves sft.inventory.v1.GroupService."""

    @requires(Need.TEAM_ADMIN, resource="parent")
    async def CreateGroup(
        self, request: group_service_pb2.CreateGroupRequest, context: Context
    ) -> group_service_pb2.CreateGroupResponse:
        """Create an empty group."""
        team_name = split_team_name(request.parent)
        name = check_group_name(request.group_id)
        description = check_description(request.group.description)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            group = await repository.create_group(
                session, team, name, description=description, now=self._clock()
            )
        await self._committed(team, "group.create", group_resource(team_name, name))
        return group_service_pb2.CreateGroupResponse(group=group_message(team_name, group, 0))

    @requires(Need.MEMBER, resource="name")
    async def GetGroup(
        self, request: group_service_pb2.GetGroupRequest, context: Context
    ) -> group_service_pb2.GetGroupResponse:
        """Return one group with its member count."""
        team_name, name = split_group_name(request.name)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            group = await repository.get_group(session, team, name)
            count = await repository.member_count(session, group)
        return group_service_pb2.GetGroupResponse(group=group_message(team_name, group, count))

    @requires(Need.MEMBER, resource="parent")
    async def ListGroups(
        self, request: group_service_pb2.ListGroupsRequest, context: Context
    ) -> group_service_pb2.ListGroupsResponse:
        """List the team's groups by group id."""
        team_name = split_team_name(request.parent)
        page_limit(request.page_size)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            rows, token = await repository.list_groups(
                session,
                team,
                page_size=request.page_size,
                page_token=request.page_token,
                digest=filter_digest("groups", team_name),
            )
        return group_service_pb2.ListGroupsResponse(
            groups=[group_message(team_name, group, count) for group, count in rows],
            next_page_token=token,
        )

    @requires(Need.TEAM_ADMIN, resource="name")
    async def DeleteGroup(
        self, request: group_service_pb2.DeleteGroupRequest, context: Context
    ) -> group_service_pb2.DeleteGroupResponse:
        """Delete a group with its memberships and grants."""
        team_name, name = split_group_name(request.name)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            await repository.bump_accounts_revision(session, team)
            group = await repository.get_group(session, team, name)
            await repository.delete_group(session, group)
        await self._committed(team, "group.delete", request.name, accounts_changed=True)
        return group_service_pb2.DeleteGroupResponse()

    @requires(Need.TEAM_ADMIN, resource="group")
    async def AddGroupMember(
        self, request: group_service_pb2.AddGroupMemberRequest, context: Context
    ) -> group_service_pb2.AddGroupMemberResponse:
        """Add a user to a group; adding a member again returns the membership."""
        team_name, group_name, user_name = _membership(request.group, request.user)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            await repository.bump_accounts_revision(session, team)
            group = await repository.get_group(session, team, group_name)
            user = await repository.get_user(session, team, user_name)
            member, added = await repository.add_member(session, group, user, now=self._clock())
        if added:
            await self._committed(
                team,
                "group.member.add",
                member_resource(team_name, group_name, user_name),
                {"user": request.user},
                accounts_changed=True,
            )
        return group_service_pb2.AddGroupMemberResponse(
            member=member_message(team_name, group_name, user_name, member.created_at)
        )

    @requires(Need.TEAM_ADMIN, resource="group")
    async def RemoveGroupMember(
        self, request: group_service_pb2.RemoveGroupMemberRequest, context: Context
    ) -> group_service_pb2.RemoveGroupMemberResponse:
        """Remove a user from a group; idempotent (a non-member is not an error)."""
        team_name, group_name, user_name = _membership(request.group, request.user)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            group = await repository.get_group(session, team, group_name)
            user = await repository.get_user(session, team, user_name)
            if not await repository.is_member(session, group, user):
                return group_service_pb2.RemoveGroupMemberResponse()
            await repository.bump_accounts_revision(session, team)
            await repository.remove_member(session, group, user)
        await self._committed(
            team,
            "group.member.remove",
            member_resource(team_name, group_name, user_name),
            {"user": request.user},
            accounts_changed=True,
        )
        return group_service_pb2.RemoveGroupMemberResponse()

    @requires(Need.MEMBER, resource="parent")
    async def ListGroupMembers(
        self, request: group_service_pb2.ListGroupMembersRequest, context: Context
    ) -> group_service_pb2.ListGroupMembersResponse:
        """List a group's members by user id."""
        team_name, group_name = split_group_name(request.parent)
        page_limit(request.page_size)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            group = await repository.get_group(session, team, group_name)
            rows, token = await repository.list_members(
                session,
                group,
                page_size=request.page_size,
                page_token=request.page_token,
                digest=filter_digest("members", team_name, group_name),
            )
        return group_service_pb2.ListGroupMembersResponse(
            members=[member_message(team_name, group_name, user, added) for user, added in rows],
            next_page_token=token,
        )


def _membership(group: str, user: str) -> tuple[str, str, str]:
    """Return (team, group, user) of a membership request; both of one team."""
    team_name, group_name = split_group_name(group)
    user_team, user_name = split_user_resource(user)
    same_team(user_team, team_name, "user")
    return team_name, group_name, user_name
