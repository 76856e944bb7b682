"""The enrollment-code servicer: a person makes a code to enroll another device of their
own; a team admin makes one for any person of the team (`sft admin user invite`). The
code is returned once and never logged or audited (the event names its id).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from runtime.audit import audit_event
from runtime.authorization import Need, RoleResolver, requires
from runtime.cert_uris import split_user_name
from runtime.clock import Clock, timestamp, utc_now
from runtime.database import Database
from runtime.errors import FailedPrecondition, InvalidInput, NotFound
from runtime.identity import current_identity
from runtime.peers import Peers
from runtime.pinned_codes import CodeKind, PinnedCode
from runtime.tls import ca_sha256
from services.auth import repository
from services.auth.audit_service import LocalAuditTrail
from services.auth.enrollment_codes import DEFAULT_CODE_TTL, MAX_CODE_TTL, issue_enrollment_code
from services.auth.inventory_calls import InventoryCalls
from services.auth.standing import require_team_admin
from sft.auth.v1 import (
    enrollment_code_pb2,
    enrollment_code_service_pb2,
    enrollment_code_service_pb2_grpc,
)
from sft.inventory.v1 import user_pb2

__all__ = ["EnrollmentCodeServicer"]

Context = Any  # grpc.aio.ServicerContext; grpc ships no type information

MIN_CODE_TTL = dt.timedelta(seconds=60)


class EnrollmentCodeServicer(enrollment_code_service_pb2_grpc.EnrollmentCodeServiceServicer):
    """Serves sft.auth.v1.EnrollmentCodeService."""

    def __init__(
        self,
        database: Database,
        roles: RoleResolver,
        peers: Peers,
        inventory: InventoryCalls,
        trail: LocalAuditTrail,
        clock: Clock = utc_now,
    ) -> None:
        self._database = database
        self.roles = roles
        self._peers = peers
        self._inventory = inventory
        self._trail = trail
        self._clock = clock

    @requires(Need.MEMBER, resource="parent")
    async def CreateEnrollmentCode(
        self, request: enrollment_code_service_pb2.CreateEnrollmentCodeRequest, context: Context
    ) -> enrollment_code_service_pb2.CreateEnrollmentCodeResponse:
        """Make a one-time code for the user `parent`, voiding their earlier unused ones."""
        team, user_id = split_user_name(request.parent)
        ttl = _ttl(request.ttl_seconds)
        identity = current_identity.get()
        if request.parent != identity.user_resource:
            await require_team_admin(
                self.roles,
                identity,
                "you may create enrollment codes only for yourself; a code for another "
                f"user needs the team admin role in team {team!r}",
            )
        target = await self._inventory.user(request.parent)
        if target is None:
            raise NotFound(
                f"user {user_id!r} does not exist in team {team!r}; create it first "
                "(`sft admin user invite` does both)"
            )
        if target.kind == user_pb2.USER_KIND_SERVICE:
            raise FailedPrecondition(
                f"{user_id!r} is a service user: it authenticates with API keys "
                "(`sft admin service-user key create`), not with enrolled devices"
            )
        if target.status != user_pb2.USER_STATUS_ACTIVE:
            raise FailedPrecondition(
                f"user {user_id!r} is disabled in team {team!r}; enable it before inviting it"
            )
        pin = ca_sha256(self._peers.platform_ca_pem())
        now = self._clock()
        async with self._database.sessions.begin() as session:
            voided = await repository.void_unused_codes(session, request.parent)
            issued = await issue_enrollment_code(
                session,
                team=team,
                user=request.parent,
                created_by=identity.user_resource,
                ca_sha256=pin,
                ttl=ttl,
                now=now,
            )
            secret_hash = PinnedCode.parse(issued.code, CodeKind.DEVICE_ENROLLMENT).secret_hash
            row = await repository.enrollment_code_by_hash(session, secret_hash)
            name = f"{request.parent}/enrollmentCodes/{row.id}"
            await self._trail.append_in(
                session,
                team,
                audit_event(
                    "enrollment_code.create",
                    request.parent,
                    details={
                        "enrollment_code": name,
                        "expire_time": row.expire_time.isoformat(),
                        "voided_codes": str(voided),
                    },
                ),
            )
        return enrollment_code_service_pb2.CreateEnrollmentCodeResponse(
            enrollment_code=enrollment_code_pb2.EnrollmentCode(
                name=name,
                expire_time=timestamp(row.expire_time),
                creator=row.created_by,
                create_time=timestamp(row.created_at),
            ),
            code=issued.code,
        )


def _ttl(ttl_seconds: int) -> dt.timedelta:
    if ttl_seconds == 0:
        return DEFAULT_CODE_TTL
    low, high = int(MIN_CODE_TTL.total_seconds()), int(MAX_CODE_TTL.total_seconds())
    if not low <= ttl_seconds <= high:
        raise InvalidInput(f"ttl_seconds must be from {low} to {high} (7 days), or 0 for one day")
    return dt.timedelta(seconds=ttl_seconds)
