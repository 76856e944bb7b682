"""Inventory rows as protobuf messages, and the resource names they carry.

The one place that spells resource names (`teams/T/users/U`, …) and maps the tables'
enums to the wire's. Pure: no I/O, no SQL.
"""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp

from runtime.clock import timestamp
from services.inventory.desired_accounts import DesiredAccount
from services.inventory.fleet_rules import token_resource
from services.inventory.models import (
    Bastion,
    EnrollmentTokenRow,
    Grant,
    GrantRole,
    Group,
    Project,
    Team,
    User,
    UserKind,
    UserStatus,
)
from services.inventory.servers import ServerView
from sft.inventory.v1 import (
    account_pb2,
    bastion_pb2,
    enrollment_token_pb2,
    group_pb2,
    project_pb2,
    server_pb2,
    team_pb2,
    user_pb2,
)

__all__ = [
    "GRANT_ROLE_FROM_PROTO",
    "GRANT_ROLE_TO_PROTO",
    "OS_FROM_PROTO",
    "OS_TO_PROTO",
    "USER_KIND_FROM_PROTO",
    "USER_KIND_TO_PROTO",
    "USER_STATUS_FROM_PROTO",
    "USER_STATUS_TO_PROTO",
    "account_message",
    "bastion_message",
    "bastion_resource",
    "grant_message",
    "grant_resource",
    "group_message",
    "group_resource",
    "member_message",
    "member_resource",
    "project_message",
    "project_resource",
    "server_message",
    "team_message",
    "team_resource",
    "token_message",
    "user_message",
    "user_resource",
]

USER_STATUS_TO_PROTO = {
    UserStatus.ACTIVE: user_pb2.USER_STATUS_ACTIVE,
    UserStatus.DISABLED: user_pb2.USER_STATUS_DISABLED,
}
USER_STATUS_FROM_PROTO = {value: key for key, value in USER_STATUS_TO_PROTO.items()}
USER_KIND_TO_PROTO = {
    UserKind.HUMAN: user_pb2.USER_KIND_HUMAN,
    UserKind.SERVICE: user_pb2.USER_KIND_SERVICE,
}
USER_KIND_FROM_PROTO = {value: key for key, value in USER_KIND_TO_PROTO.items()}
GRANT_ROLE_TO_PROTO = {
    GrantRole.USER: project_pb2.GRANT_ROLE_USER,
    GrantRole.ADMIN: project_pb2.GRANT_ROLE_ADMIN,
}
GRANT_ROLE_FROM_PROTO = {value: key for key, value in GRANT_ROLE_TO_PROTO.items()}
OS_FROM_PROTO = {
    server_pb2.OPERATING_SYSTEM_LINUX: "linux",
    server_pb2.OPERATING_SYSTEM_WINDOWS: "windows",
}
OS_TO_PROTO = {value: key for key, value in OS_FROM_PROTO.items()}


def team_resource(team: str) -> str:
    """Return `teams/{team}`."""
    return f"teams/{team}"


def user_resource(team: str, user: str) -> str:
    """Return `teams/{team}/users/{user}`."""
    return f"teams/{team}/users/{user}"


def group_resource(team: str, group: str) -> str:
    """Return `teams/{team}/groups/{group}`."""
    return f"teams/{team}/groups/{group}"


def member_resource(team: str, group: str, user: str) -> str:
    """Return `teams/{team}/groups/{group}/members/{user}`."""
    return f"teams/{team}/groups/{group}/members/{user}"


def project_resource(team: str, project: str) -> str:
    """Return `teams/{team}/projects/{project}`."""
    return f"teams/{team}/projects/{project}"


def grant_resource(team: str, project: str, group: str) -> str:
    """Return `teams/{team}/projects/{project}/grants/{group}` (a group's one grant)."""
    return f"teams/{team}/projects/{project}/grants/{group}"


def bastion_resource(team: str, bastion: str) -> str:
    """Return `teams/{team}/bastions/{bastion}`.

    Bastions are stored per team (any project may name one), so their resource name
    has no project segment.
    """
    return f"teams/{team}/bastions/{bastion}"


def _time(value: dt.datetime | None) -> Timestamp | None:
    return timestamp(value) if value is not None else None


def team_message(team: Team) -> team_pb2.Team:
    """Return `team` as a Team message (its name stands in for an empty display name)."""
    return team_pb2.Team(
        name=team_resource(team.name),
        display_name=team.display_name or team.name,
        create_time=_time(team.created_at),
        update_time=_time(team.updated_at or team.created_at),
    )


def user_message(team_name: str, user: User) -> user_pb2.User:
    """Return `user` (a user of team `team_name`) as a User message."""
    return user_pb2.User(
        name=user_resource(team_name, user.name),
        display_name=user.display_name,
        email=user.email,
        status=USER_STATUS_TO_PROTO[user.status],
        kind=USER_KIND_TO_PROTO[user.kind],
        unix_uid=user.unix_uid,
        unix_gid=user.unix_gid,
        windows_account_name=user.windows_name,
        team_admin=user.team_admin,
        create_time=_time(user.created_at),
        update_time=_time(user.updated_at or user.created_at),
    )


def group_message(team_name: str, group: Group, member_count: int) -> group_pb2.Group:
    """Return `group` with its member count as a Group message."""
    return group_pb2.Group(
        name=group_resource(team_name, group.name),
        description=group.description,
        member_count=member_count,
        create_time=_time(group.created_at),
    )


def member_message(
    team_name: str, group_name: str, user_name: str, added_at: dt.datetime
) -> group_pb2.GroupMember:
    """Return user `user_name`'s membership of group `group_name` as a GroupMember."""
    return group_pb2.GroupMember(
        name=member_resource(team_name, group_name, user_name),
        user=user_resource(team_name, user_name),
        create_time=_time(added_at),
    )


def project_message(team_name: str, project: Project) -> project_pb2.Project:
    """Return `project` as a Project message (required_bastion as a resource name)."""
    return project_pb2.Project(
        name=project_resource(team_name, project.name),
        description=project.description,
        certificate_ttl_seconds=project.certificate_ttl_seconds,
        certificate_max_ttl_seconds=project.certificate_max_ttl_seconds,
        create_server_users=project.create_server_users,
        permit_port_forwarding=project.permit_port_forwarding,
        permit_agent_forwarding=project.permit_agent_forwarding,
        rdp_enabled=project.rdp_enabled,
        required_bastion=(
            bastion_resource(team_name, project.required_bastion)
            if project.required_bastion
            else ""
        ),
        allowed_admin_account_names=list(project.allowed_admin_account_names or []),
        create_time=_time(project.created_at),
        update_time=_time(project.updated_at or project.created_at),
    )


def grant_message(
    team_name: str, project_name: str, group_name: str, grant: Grant
) -> project_pb2.ProjectGrant:
    """Return `grant` (group `group_name` on project `project_name`) as a ProjectGrant."""
    return project_pb2.ProjectGrant(
        name=grant_resource(team_name, project_name, group_name),
        group=group_resource(team_name, group_name),
        role=GRANT_ROLE_TO_PROTO[grant.role],
        create_time=_time(grant.created_at),
    )


def bastion_message(team_name: str, bastion: Bastion, server: str = "") -> bastion_pb2.Bastion:
    """Return `bastion` as a Bastion message.

    `server` is the server resource name (`teams/T/projects/P/servers/ID`) when the
    bastion is an enrolled server; the caller looks it up, since the row holds only its id.
    """
    message = bastion_pb2.Bastion(
        name=bastion_resource(team_name, bastion.name),
        ssh_port=bastion.ssh_port,
        description=bastion.description,
        create_time=_time(bastion.created_at),
    )
    if bastion.server_id is not None:
        message.server = server
    else:
        message.address = bastion.address
    return message


def server_message(view: ServerView) -> server_pb2.Server:
    """Return a server as the Server message (including the agent's public key)."""
    row = view.row
    message = server_pb2.Server(
        name=view.name,
        id=row.id,
        project=view.project_name,
        hostname=row.hostname,
        canonical_name=row.canonical_name,
        alt_names=list(row.alt_names),
        labels=dict(row.labels),
        os=OS_TO_PROTO.get(row.os, server_pb2.OPERATING_SYSTEM_UNSPECIFIED),
        addresses=list(row.addresses),
        access_address=row.access_address,
        ssh_port=row.ssh_port,
        broker_port=row.broker_port,
        bastion=row.bastion,
        host_key_fingerprints=list(row.host_key_fingerprints),
        agent_public_key=row.agent_public_key,
        agent_version=row.agent_version,
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at or row.created_at),
    )
    if row.last_seen_at is not None:
        message.last_seen_time.CopyFrom(timestamp(row.last_seen_at))
    return message


def token_message(
    team: str, project: str, row: EnrollmentTokenRow
) -> enrollment_token_pb2.EnrollmentToken:
    """Return a token row as an EnrollmentToken message (never its secret)."""
    message = enrollment_token_pb2.EnrollmentToken(
        name=token_resource(team, project, row.id),
        description=row.description,
        expire_time=timestamp(row.expire_time),
        max_uses=row.max_uses,
        uses=row.uses,
        revoked=row.revoked_at is not None,
        creator=row.creator,
        create_time=timestamp(row.created_at),
    )
    if row.revoked_at is not None:
        message.revoke_time.CopyFrom(timestamp(row.revoked_at))
    if row.last_used_at is not None:
        message.last_use_time.CopyFrom(timestamp(row.last_used_at))
    return message


def account_message(team: str, account: DesiredAccount) -> account_pb2.ServerAccount:
    """Return a desired account as a ServerAccount message."""
    return account_pb2.ServerAccount(
        name=account.name,
        user=f"teams/{team}/users/{account.user}",
        uid=account.uid,
        gid=account.gid,
        primary_group=account.primary_group,
        supplementary_groups=list(account.supplementary_groups),
        admin=account.admin,
        windows_name=account.windows_name,
        full_name=account.full_name,
    )
