"""The enrollment-token servicer: project admins create, list and revoke the tokens servers
enroll with. A token's secret comes back once, at creation, and is never logged.

Each RPC: validate → authorize (the `@requires` declaration) → one transaction
(services.inventory.enrollment_tokens) → protobuf → audit.
"""

from __future__ import annotations

import datetime as dt

import structlog

from runtime.authorization import Need, requires
from runtime.cert_uris import split_project_name
from runtime.identity import CallerKind, Identity
from runtime.pinned_codes import CodeKind, PinnedCode
from runtime.tls import ca_sha256
from services.inventory import enrollment_tokens, fleet_rules, repository, servers
from services.inventory.servicer import Context, FleetServicer, caller
from services.inventory.views import token_message
from sft.inventory.v1 import enrollment_token_service_pb2, enrollment_token_service_pb2_grpc

__all__ = ["EnrollmentTokenServicer"]

log = structlog.get_logger("sft.inventory.fleet")


def _actor_name(identity: Identity) -> str:
    """Return the resource name recorded as a token's creator."""
    if identity.kind in (CallerKind.USER, CallerKind.SERVICE_USER):
        return identity.user_resource
    return str(identity)


class EnrollmentTokenServicer(
    FleetServicer, enrollment_token_service_pb2_grpc.EnrollmentTokenServiceServicer
):
    """Serves sft.inventory.v1.EnrollmentTokenService: project admins only."""

    @requires(Need.PROJECT_ADMIN, resource="parent")
    async def CreateEnrollmentToken(
        self, request: enrollment_token_service_pb2.CreateEnrollmentTokenRequest, context: Context
    ) -> enrollment_token_service_pb2.CreateEnrollmentTokenResponse:
        """Create a token; its secret string comes back here, once, and is stored hashed."""
        team_name, project_name = split_project_name(request.parent)
        now = self._clock()
        given = request.enrollment_token
        settings = fleet_rules.TokenSettings(
            description=given.description,
            expire_time=(
                given.expire_time.ToDatetime(dt.UTC) if given.HasField("expire_time") else None
            ),
            max_uses=given.max_uses,
        ).checked(now)
        code = PinnedCode.generate(
            CodeKind.SERVER_ENROLLMENT, ca_sha256(self._peers.platform_ca_pem())
        )
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            project = await servers.get_project(session, team, project_name)
            row = await enrollment_tokens.create_token(
                session,
                project,
                settings,
                secret_hash=code.secret_hash,
                creator=_actor_name(caller()),
                now=now,
            )
        message = token_message(team_name, project_name, row)
        await self._audit(
            team_name,
            "token.create",
            message.name,
            details={
                "expire_time": row.expire_time.isoformat(),
                "max_uses": str(row.max_uses),
            },
        )
        log.info("enrollment token created", token=message.name)
        return enrollment_token_service_pb2.CreateEnrollmentTokenResponse(
            enrollment_token=message, token=code.encode()
        )

    @requires(Need.PROJECT_ADMIN, resource="parent")
    async def ListEnrollmentTokens(
        self, request: enrollment_token_service_pb2.ListEnrollmentTokensRequest, context: Context
    ) -> enrollment_token_service_pb2.ListEnrollmentTokensResponse:
        """List a project's tokens, newest first (revoked ones only when asked)."""
        team_name, project_name = split_project_name(request.parent)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            project = await servers.get_project(session, team, project_name)
            rows, next_token = await enrollment_tokens.list_tokens(
                session,
                project,
                show_revoked=request.show_revoked,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        return enrollment_token_service_pb2.ListEnrollmentTokensResponse(
            enrollment_tokens=[token_message(team_name, project_name, row) for row in rows],
            next_page_token=next_token,
        )

    @requires(Need.PROJECT_ADMIN, resource="name")
    async def RevokeEnrollmentToken(
        self, request: enrollment_token_service_pb2.RevokeEnrollmentTokenRequest, context: Context
    ) -> enrollment_token_service_pb2.RevokeEnrollmentTokenResponse:
        """Revoke a token (idempotent); servers it enrolled stay."""
        team_name, project_name, token_id = fleet_rules.split_token_name(request.name)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            project = await servers.get_project(session, team, project_name)
            row = await enrollment_tokens.revoke_token(session, project, token_id, self._clock())
        message = token_message(team_name, project_name, row)
        await self._audit(team_name, "token.revoke", message.name)
        return enrollment_token_service_pb2.RevokeEnrollmentTokenResponse(enrollment_token=message)
