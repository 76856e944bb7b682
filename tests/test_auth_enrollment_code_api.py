"""EnrollmentCodeService through the real platform, on SQLite and PostgreSQL: a person
makes a code for another device of their own; a team admin makes one for anyone
(`sft admin user invite`); the code pins the platform CA, is shown once, voids the
user's earlier unused code, and never reaches the audit trail.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select

from runtime.pinned_codes import CodeKind, PinnedCode
from services.auth.models import AuditEventRow, EnrollmentCode
from services.inventory.models import User, UserKind, UserStatus
from sft.auth.v1 import enrollment_code_service_pb2, enrollment_code_service_pb2_grpc
from tests.support.platform import Platform, running_platform

TEAM = "acme"
PARENT = f"teams/{TEAM}"
Code = grpc.StatusCode


@pytest.fixture
async def platform(database_url: str, tmp_path: Path) -> AsyncIterator[Platform]:
    """Team acme: alice (team admin), bob and carol (members), dave (disabled), bot (service)."""
    async with running_platform(database_url, tmp_path) as running:
        await running.create_team(TEAM, "alice", members=("bob", "carol", "dave", "bot"))
        async with running.database.sessions.begin() as session:
            for user in await session.scalars(select(User).where(User.name.in_(["dave", "bot"]))):
                if user.name == "dave":
                    user.status = UserStatus.DISABLED
                else:
                    user.kind = UserKind.SERVICE
        yield running


def _codes(
    platform: Platform, token: str
) -> enrollment_code_service_pb2_grpc.EnrollmentCodeServiceStub:
    return platform.stub(enrollment_code_service_pb2_grpc.EnrollmentCodeServiceStub, token)


def _request(user: str, **fields: Any) -> enrollment_code_service_pb2.CreateEnrollmentCodeRequest:
    return enrollment_code_service_pb2.CreateEnrollmentCodeRequest(
        parent=f"{PARENT}/users/{user}", **fields
    )


async def _refusal(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def _unused_codes(platform: Platform) -> int:
    async with platform.database.sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(EnrollmentCode).where(EnrollmentCode.used_at.is_(None))
        )
    return int(count or 0)


async def test_a_person_makes_a_code_for_another_device_of_their_own(platform: Platform) -> None:
    token = await platform.login(TEAM, "bob")
    reply = await _codes(platform, token).CreateEnrollmentCode(_request("bob"))
    code = PinnedCode.parse(reply.code, CodeKind.DEVICE_ENROLLMENT)
    assert code.pins(platform.pin)
    record = reply.enrollment_code
    assert record.name.startswith(f"{PARENT}/users/bob/enrollmentCodes/")
    assert record.creator == f"{PARENT}/users/bob"
    lifetime = record.expire_time.ToDatetime(dt.UTC) - record.create_time.ToDatetime(dt.UTC)
    assert lifetime == dt.timedelta(hours=24)
    assert not record.HasField("use_time")
    second = await platform.enroll(TEAM, "bob", code=reply.code)
    assert second.name.startswith(f"{PARENT}/users/bob/devices/")
    async with platform.database.sessions() as session:
        (event,) = await session.scalars(
            select(AuditEventRow).where(AuditEventRow.action == "enrollment_code.create")
        )
    assert event.resource == f"{PARENT}/users/bob"
    assert event.details["enrollment_code"] == record.name
    secret_part = reply.code.split("_")[1]
    assert reply.code not in repr(vars(event)) and secret_part not in repr(vars(event))


async def test_a_team_admin_invites_anyone_and_a_new_code_voids_the_old(
    platform: Platform,
) -> None:
    admin = _codes(platform, await platform.login(TEAM, "alice"))
    first = await admin.CreateEnrollmentCode(_request("carol"))
    second = await admin.CreateEnrollmentCode(_request("carol", ttl_seconds=60))
    lifetime = second.enrollment_code.expire_time.ToDatetime(
        dt.UTC
    ) - second.enrollment_code.create_time.ToDatetime(dt.UTC)
    assert lifetime == dt.timedelta(seconds=60)
    assert second.enrollment_code.creator == f"{PARENT}/users/alice"
    error = await _refusal(platform.enroll(TEAM, "carol", code=first.code))
    assert error.code() == Code.UNAUTHENTICATED
    device = await platform.enroll(TEAM, "carol", code=second.code)
    assert device.name.startswith(f"{PARENT}/users/carol/devices/")


@pytest.mark.parametrize(
    ("case", "caller", "request_fields", "code", "expected"),
    [
        (
            "member-for-another",
            "bob",
            {"parent": f"{PARENT}/users/carol"},
            Code.PERMISSION_DENIED,
            "team admin",
        ),
        (
            "other-team",
            "alice",
            {"parent": "teams/other/users/carol"},
            Code.PERMISSION_DENIED,
            "other",
        ),
        ("too-short", "alice", {"ttl_seconds": 59}, Code.INVALID_ARGUMENT, "ttl_seconds"),
        ("too-long", "alice", {"ttl_seconds": 604801}, Code.INVALID_ARGUMENT, "7 days"),
        ("huge", "alice", {"ttl_seconds": 2**62}, Code.INVALID_ARGUMENT, "ttl_seconds"),
        ("negative", "alice", {"ttl_seconds": -5}, Code.INVALID_ARGUMENT, "ttl_seconds"),
        (
            "unknown-user",
            "alice",
            {"parent": f"{PARENT}/users/zed"},
            Code.NOT_FOUND,
            "does not exist",
        ),
        (
            "disabled-user",
            "alice",
            {"parent": f"{PARENT}/users/dave"},
            Code.FAILED_PRECONDITION,
            "disabled",
        ),
        (
            "service-user",
            "alice",
            {"parent": f"{PARENT}/users/bot"},
            Code.FAILED_PRECONDITION,
            "API keys",
        ),
        (
            "not-a-user",
            "alice",
            {"parent": f"{PARENT}/projects/web"},
            Code.INVALID_ARGUMENT,
            "user",
        ),
    ],
)
async def test_refused_code_requests_write_nothing(
    platform: Platform,
    case: str,
    caller: str,
    request_fields: dict[str, Any],
    code: grpc.StatusCode,
    expected: str,
) -> None:
    token = await platform.login(TEAM, caller)
    fields: dict[str, Any] = {"parent": f"{PARENT}/users/carol", **request_fields}
    before = await _unused_codes(platform)
    error = await _refusal(
        _codes(platform, token).CreateEnrollmentCode(
            enrollment_code_service_pb2.CreateEnrollmentCodeRequest(**fields)
        )
    )
    assert error.code() == code
    assert expected in (error.details() or "")
    assert await _unused_codes(platform) == before
    async with platform.database.sessions() as session:
        events = await session.scalar(
            select(func.count())
            .select_from(AuditEventRow)
            .where(AuditEventRow.action == "enrollment_code.create")
        )
    assert events == 0


async def test_a_code_needs_a_caller(platform: Platform) -> None:
    anonymous = platform.stub(enrollment_code_service_pb2_grpc.EnrollmentCodeServiceStub)
    error = await _refusal(anonymous.CreateEnrollmentCode(_request("bob")))
    assert error.code() == Code.UNAUTHENTICATED
