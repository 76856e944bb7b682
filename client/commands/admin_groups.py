"""`sft admin group`: groups of users, which projects grant access to."""

from __future__ import annotations

from typing import Any

import click

from client.commands.admin_users import user_resource
from client.commands.calls import (
    list_every,
    message_time,
    run_in_session,
    team_resource,
)
from client.commands.options import team_option
from client.output import (
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
from sft.inventory.v1 import group_pb2, group_service_pb2, group_service_pb2_grpc

__all__ = ["group_group", "group_json"]


def group_json(group: group_pb2.Group) -> dict[str, Any]:
    """Return the JSON form of a group."""
    return {
        "name": short_id(group.name),
        "resource": group.name,
        "description": group.description,
        "member_count": group.member_count,
        "create_time": iso_time(message_time(group, "create_time")),
    }


GROUP_COLUMNS = (
    Column("name", lambda g: g["name"]),
    Column("member_count", lambda g: str(g["member_count"]), "members"),
    Column("description", lambda g: g["description"]),
)
MEMBER_COLUMNS = (
    Column("user", lambda m: m["user"]),
    Column("create_time", lambda m: short_time(m["create_time"]), "added"),
)


def _groups(session: Session) -> group_service_pb2_grpc.GroupServiceStub:
    return group_service_pb2_grpc.GroupServiceStub(session.channel())


def _group_resource(session: Session, group: str) -> str:
    return f"{team_resource(session)}/groups/{group}"


@click.group("group")
def group_group() -> None:
    """Create groups and choose their members; projects grant access to groups.

    \b
    Examples:
      sft admin group create developers --description "Everyone who ships code"
      sft admin group add-user developers bob
      sft admin project grant developers web
    """


@group_group.command("create")
@team_option
@click.argument("name")
@click.option("--description", default="", metavar="TEXT", help="What the group is for.")
@output_option
def create_group_command(team: str | None, name: str, description: str, output: str) -> None:
    """Create group NAME.

    \b
    Examples:
      sft admin group create developers
      sft admin group create dba --description "Database administrators"
    """

    async def work(session: Session) -> group_pb2.Group:
        reply: group_service_pb2.CreateGroupResponse = await _groups(session).CreateGroup(
            group_service_pb2.CreateGroupRequest(
                parent=team_resource(session),
                group_id=name,
                group=group_pb2.Group(description=description),
            )
        )
        return reply.group

    group = group_json(run_in_session(team, work))
    emit(
        output,
        group,
        f"Created group {name}; add people with `sft admin group add-user {name} USER`.",
    )


@group_group.command("list")
@team_option
@table_output_option
def list_groups_command(team: str | None, output: str) -> None:
    """List the team's groups.

    \b
    Examples:
      sft admin group list
      sft admin group list -o json
    """

    groups = list_every(
        team,
        "groups",
        lambda session: (
            _groups(session).ListGroups,
            group_service_pb2.ListGroupsRequest(parent=team_resource(session)),
        ),
    )
    items = [group_json(group) for group in groups]
    emit(output, items, render_columns(GROUP_COLUMNS, items, "No groups."))


@group_group.command("delete")
@team_option
@click.argument("name")
@output_option
def delete_group_command(team: str | None, name: str, output: str) -> None:
    """Delete group NAME, its memberships and its project grants.

    \b
    Examples:
      sft admin group delete contractors
    """

    async def work(session: Session) -> None:
        await _groups(session).DeleteGroup(
            group_service_pb2.DeleteGroupRequest(name=_group_resource(session, name))
        )

    run_in_session(team, work)
    emit(output, {"name": name, "deleted": True}, f"Deleted group {name}.")


def _membership(team: str | None, group: str, user: str, add: bool) -> None:
    async def work(session: Session) -> None:
        stub = _groups(session)
        group_name = _group_resource(session, group)
        user_name = user_resource(session, user)
        if add:
            await stub.AddGroupMember(
                group_service_pb2.AddGroupMemberRequest(group=group_name, user=user_name)
            )
        else:
            await stub.RemoveGroupMember(
                group_service_pb2.RemoveGroupMemberRequest(group=group_name, user=user_name)
            )

    run_in_session(team, work)


@group_group.command("add-user")
@team_option
@click.argument("group")
@click.argument("user")
@output_option
def add_user_command(team: str | None, group: str, user: str, output: str) -> None:
    """Add USER to GROUP (no change if already a member).

    \b
    Examples:
      sft admin group add-user developers bob
    """
    _membership(team, group, user, add=True)
    emit(output, {"group": group, "user": user, "member": True}, f"Added {user} to group {group}.")


@group_group.command("remove-user")
@team_option
@click.argument("group")
@click.argument("user")
@output_option
def remove_user_command(team: str | None, group: str, user: str, output: str) -> None:
    """Remove USER from GROUP (no change if not a member).

    \b
    Examples:
      sft admin group remove-user developers bob
    """
    _membership(team, group, user, add=False)
    emit(
        output,
        {"group": group, "user": user, "member": False},
        f"Removed {user} from group {group}.",
    )


@group_group.command("members")
@team_option
@click.argument("group")
@table_output_option
def members_command(team: str | None, group: str, output: str) -> None:
    """List the members of GROUP.

    \b
    Examples:
      sft admin group members developers
      sft admin group members developers -o json
    """

    members = list_every(
        team,
        "members",
        lambda session: (
            _groups(session).ListGroupMembers,
            group_service_pb2.ListGroupMembersRequest(parent=_group_resource(session, group)),
        ),
    )
    items = [
        {
            "user": short_id(member.user),
            "resource": member.user,
            "create_time": iso_time(message_time(member, "create_time")),
        }
        for member in members
    ]
    emit(output, items, render_columns(MEMBER_COLUMNS, items, f"Group {group} has no members."))
