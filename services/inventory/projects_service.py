"""The project servicer: projects with their certificate settings (authorities made at the
CA first), and the grants that give groups access to them.

Each RPC: validate → authorize (the `@requires` declaration) → one transaction (queries in
services.inventory.repository) → protobuf (services.inventory.views) → audit after commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.exc import IntegrityError

from runtime.authorization import Need, requires
from runtime.cert_uris import split_project_name, split_team_name
from runtime.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from runtime.page_tokens import filter_digest, page_limit
from services.inventory import repository
from services.inventory.certificate_calls import CertificateCalls
from services.inventory.models import Project, Team
from services.inventory.names import (
    MAX_ADMIN_ACCOUNT_NAMES,
    check_account_name,
    check_description,
    check_project_name,
    split_bastion_name,
    split_grant_name,
    split_group_name,
)
from services.inventory.servicer import (
    Context,
    DirectoryServicer,
    audit_details,
    caller,
    mask_paths,
    same_team,
)
from services.inventory.views import (
    GRANT_ROLE_FROM_PROTO,
    grant_message,
    grant_resource,
    project_message,
    project_resource,
)
from sft.inventory.v1 import project_pb2, project_service_pb2, project_service_pb2_grpc

__all__ = ["ProjectServicer"]

#: How long CreateProject waits for the CA to make the project's authorities.
CA_TIMEOUT_SECONDS = 30.0

DEFAULT_TTL_SECONDS = 600
DEFAULT_MAX_TTL_SECONDS = 3600
MIN_TTL_SECONDS = 60
MAX_TTL_SECONDS = 86400

_PROJECT_MUTABLE = (
    "description",
    "certificate_ttl_seconds",
    "certificate_max_ttl_seconds",
    "create_server_users",
    "permit_port_forwarding",
    "permit_agent_forwarding",
    "rdp_enabled",
    "required_bastion",
    "allowed_admin_account_names",
)
_PROJECT_FIXED = {
    "name": "the project id cannot change; create a new project",
    "create_time": "create_time is output only",
    "update_time": "update_time is output only",
}


def _check_ttls(ttl: int, max_ttl: int) -> None:
    if not MIN_TTL_SECONDS <= max_ttl <= MAX_TTL_SECONDS:
        raise InvalidInput(
            f"certificate_max_ttl_seconds is {max_ttl}; use {MIN_TTL_SECONDS} to "
            f"{MAX_TTL_SECONDS} (one day), or 0 at creation for {DEFAULT_MAX_TTL_SECONDS}"
        )
    if not MIN_TTL_SECONDS <= ttl <= max_ttl:
        raise InvalidInput(
            f"certificate_ttl_seconds is {ttl}; use {MIN_TTL_SECONDS} to "
            f"certificate_max_ttl_seconds ({max_ttl}), or 0 at creation for "
            f"{DEFAULT_TTL_SECONDS}"
        )


def _check_admin_accounts(names: Iterable[str]) -> list[str]:
    accounts = list(names)
    if len(accounts) > MAX_ADMIN_ACCOUNT_NAMES:
        raise InvalidInput(
            f"allowed_admin_account_names has {len(accounts)} names; at most "
            f"{MAX_ADMIN_ACCOUNT_NAMES} are allowed"
        )
    for name in accounts:
        check_account_name(name)
    if len(set(accounts)) != len(accounts):
        raise InvalidInput("allowed_admin_account_names lists a name twice; list each once")
    return accounts


def _required_bastion(value: str, team: str) -> str:
    """Return the bastion id a project's required_bastion names ("" for none)."""
    if not value:
        return ""
    bastion_team, bastion = split_bastion_name(value)
    same_team(bastion_team, team, "required_bastion")
    return bastion


def _new_project_settings(project: project_pb2.Project, team: str) -> dict[str, object]:
    """Return the columns of a project created with `project`'s settings.

    TTLs of 0 mean the defaults. The two switches that default to on are proto3
    `optional`, so an unset one is told from false: unset means on.
    """
    ttl = project.certificate_ttl_seconds or DEFAULT_TTL_SECONDS
    max_ttl = project.certificate_max_ttl_seconds or DEFAULT_MAX_TTL_SECONDS
    if project.certificate_ttl_seconds and not project.certificate_max_ttl_seconds:
        max_ttl = max(max_ttl, ttl)
    _check_ttls(ttl, max_ttl)
    return {
        "description": check_description(project.description),
        "certificate_ttl_seconds": ttl,
        "certificate_max_ttl_seconds": max_ttl,
        "create_server_users": (
            project.create_server_users if project.HasField("create_server_users") else True
        ),
        "permit_port_forwarding": project.permit_port_forwarding,
        "permit_agent_forwarding": project.permit_agent_forwarding,
        "rdp_enabled": project.rdp_enabled if project.HasField("rdp_enabled") else True,
        "required_bastion": _required_bastion(project.required_bastion, team),
        "allowed_admin_account_names": _check_admin_accounts(project.allowed_admin_account_names),
    }


def _project_changes(
    given: project_pb2.Project, paths: list[str], current: Project, team: str
) -> dict[str, object]:
    """Return the columns UpdateProject changes, checked together with the unchanged ones."""
    changes: dict[str, object] = {}
    for path in paths:
        if path == "description":
            changes[path] = check_description(given.description)
        elif path == "required_bastion":
            changes[path] = _required_bastion(given.required_bastion, team)
        elif path == "allowed_admin_account_names":
            changes[path] = _check_admin_accounts(given.allowed_admin_account_names)
        else:
            changes[path] = getattr(given, path)
    ttl = changes.get("certificate_ttl_seconds", current.certificate_ttl_seconds)
    max_ttl = changes.get("certificate_max_ttl_seconds", current.certificate_max_ttl_seconds)
    assert isinstance(ttl, int) and isinstance(max_ttl, int)
    _check_ttls(ttl, max_ttl)
    return changes


class ProjectServicer(DirectoryServicer, project_service_pb2_grpc.ProjectServiceServicer):
    """Serves sft.inventory.v1.ProjectService."""

    @requires(Need.TEAM_ADMIN, resource="parent")
    async def CreateProject(
        self, request: project_service_pb2.CreateProjectRequest, context: Context
    ) -> project_service_pb2.CreateProjectResponse:
        """Create a project and (first) its certificate authorities at the CA."""
        team_name = split_team_name(request.parent)
        name = check_project_name(request.project_id)
        settings = _new_project_settings(request.project, team_name)
        resource = project_resource(team_name, name)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            if await repository.project_exists(session, team, name):
                raise Conflict(f"project {name!r} already exists in team {team_name!r}")
            if settings["required_bastion"]:
                await repository.get_bastion(session, team, str(settings["required_bastion"]))
        # Authorities first: the CA's create is idempotent, so a project row never exists
        # without them, and a retry after a failure here simply tries again.
        await CertificateCalls(self._peers).create_project_authorities(
            resource, timeout_seconds=CA_TIMEOUT_SECONDS
        )
        try:
            async with self._database.sessions.begin() as session:
                team = await repository.get_team(session, team_name)
                if settings["required_bastion"]:
                    await repository.get_bastion(session, team, str(settings["required_bastion"]))
                project = await repository.create_project(
                    session, team, name, settings, now=self._clock()
                )
        except IntegrityError:
            raise Conflict(f"project {name!r} already exists in team {team_name!r}") from None
        await self._committed(team, "project.create", resource, audit_details(settings))
        return project_service_pb2.CreateProjectResponse(
            project=project_message(team_name, project)
        )

    async def _visible_to(self, session: Any, team: Team) -> str | None:
        """Return the caller's user id when their project view is limited by grants, or
        None when they see every project (team admins)."""
        identity = caller()
        user = await repository.find_user(session, team.name, identity.name)
        if user is None:
            raise PermissionDenied(f"user {identity.name!r} is unknown in team {team.name!r}")
        return None if user.team_admin else user.id

    @requires(Need.MEMBER, resource="name")
    async def GetProject(
        self, request: project_service_pb2.GetProjectRequest, context: Context
    ) -> project_service_pb2.GetProjectResponse:
        """Return a project the caller may see (team admins: all; others: granted ones)."""
        team_name, name = split_project_name(request.name)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            project = await repository.get_project(session, team, name)
            viewer = await self._visible_to(session, team)
            if viewer is not None and not await repository.project_visible_to(
                session, project, viewer
            ):
                raise NotFound(
                    f"project {name!r} does not exist in team {team_name!r}, or none of your "
                    "groups is granted it; ask a team admin"
                )
        return project_service_pb2.GetProjectResponse(project=project_message(team_name, project))

    @requires(Need.MEMBER, resource="parent")
    async def ListProjects(
        self, request: project_service_pb2.ListProjectsRequest, context: Context
    ) -> project_service_pb2.ListProjectsResponse:
        """List the projects the caller may see, by project id."""
        team_name = split_team_name(request.parent)
        page_limit(request.page_size)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            viewer = await self._visible_to(session, team)
            projects, token = await repository.list_projects(
                session,
                team,
                granted_to=viewer,
                page_size=request.page_size,
                page_token=request.page_token,
                digest=filter_digest("projects", team_name, viewer),
            )
        return project_service_pb2.ListProjectsResponse(
            projects=[project_message(team_name, project) for project in projects],
            next_page_token=token,
        )

    @requires(Need.PROJECT_ADMIN, resource="project.name")
    async def UpdateProject(
        self, request: project_service_pb2.UpdateProjectRequest, context: Context
    ) -> project_service_pb2.UpdateProjectResponse:
        """Change the project's settings named in update_mask."""
        team_name, name = split_project_name(request.project.name)
        paths = mask_paths(
            request.update_mask.paths,
            request.HasField("update_mask"),
            _PROJECT_MUTABLE,
            _PROJECT_FIXED,
        )
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            project = await repository.get_project(session, team, name)
            changes = _project_changes(request.project, paths, project, team_name)
            bastion = changes.get("required_bastion")
            if bastion:
                await repository.get_bastion(session, team, str(bastion))
            accounts_changed = (
                "create_server_users" in changes
                and changes["create_server_users"] != project.create_server_users
            )
            if accounts_changed:
                await repository.bump_accounts_revision(session, team)
            repository.update_row(project, changes, self._clock())
        await self._committed(
            team,
            "project.update",
            request.project.name,
            audit_details(changes),
            accounts_changed=accounts_changed,
        )
        return project_service_pb2.UpdateProjectResponse(
            project=project_message(team_name, project)
        )

    @requires(Need.TEAM_ADMIN, resource="name")
    async def DeleteProject(
        self, request: project_service_pb2.DeleteProjectRequest, context: Context
    ) -> project_service_pb2.DeleteProjectResponse:
        """Delete a project without servers, with its grants and enrollment tokens."""
        team_name, name = split_project_name(request.name)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            await repository.bump_accounts_revision(session, team)
            project = await repository.get_project(session, team, name)
            await repository.delete_project(session, project)
        await self._committed(team, "project.delete", request.name, accounts_changed=True)
        return project_service_pb2.DeleteProjectResponse()

    @requires(Need.TEAM_ADMIN, resource="parent")
    async def CreateGrant(
        self, request: project_service_pb2.CreateGrantRequest, context: Context
    ) -> project_service_pb2.CreateGrantResponse:
        """Grant a group USER or ADMIN access to a project."""
        team_name, project_name = split_project_name(request.parent)
        group_team, group_name = split_group_name(request.grant.group)
        same_team(group_team, team_name, "grant.group")
        role = GRANT_ROLE_FROM_PROTO.get(request.grant.role)
        if role is None:
            raise InvalidInput("grant.role must be GRANT_ROLE_USER or GRANT_ROLE_ADMIN")
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            await repository.bump_accounts_revision(session, team)
            project = await repository.get_project(session, team, project_name)
            group = await repository.get_group(session, team, group_name)
            grant = await repository.create_grant(session, project, group, role, now=self._clock())
        await self._committed(
            team,
            "grant.create",
            grant_resource(team_name, project_name, group_name),
            {"group": request.grant.group, "role": role.value},
            accounts_changed=True,
        )
        return project_service_pb2.CreateGrantResponse(
            grant=grant_message(team_name, project_name, group_name, grant)
        )

    @requires(Need.PROJECT_ADMIN, resource="parent")
    async def ListGrants(
        self, request: project_service_pb2.ListGrantsRequest, context: Context
    ) -> project_service_pb2.ListGrantsResponse:
        """List a project's grants by group id."""
        team_name, project_name = split_project_name(request.parent)
        page_limit(request.page_size)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            project = await repository.get_project(session, team, project_name)
            rows, token = await repository.list_grants(
                session,
                project,
                page_size=request.page_size,
                page_token=request.page_token,
                digest=filter_digest("grants", team_name, project_name),
            )
        return project_service_pb2.ListGrantsResponse(
            grants=[grant_message(team_name, project_name, group, grant) for grant, group in rows],
            next_page_token=token,
        )

    @requires(Need.TEAM_ADMIN, resource="name")
    async def DeleteGrant(
        self, request: project_service_pb2.DeleteGrantRequest, context: Context
    ) -> project_service_pb2.DeleteGrantResponse:
        """Remove a group's grant on a project."""
        team_name, project_name, group_name = split_grant_name(request.name)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            await repository.bump_accounts_revision(session, team)
            project = await repository.get_project(session, team, project_name)
            group = await repository.get_group(session, team, group_name)
            grant = await repository.get_grant(session, project, group)
            await repository.delete_grant(session, grant)
        await self._committed(
            team,
            "grant.delete",
            request.name,
            {"role": grant.role.value},
            accounts_changed=True,
        )
        return project_service_pb2.DeleteGrantResponse()
