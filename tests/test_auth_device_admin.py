"""Team admins over other people's devices, and disabled or deleted users, through the
real platform on SQLite and PostgreSQL: admins list and revoke anyone's devices (and
that is audited); members cannot; a disabled user gets no token and the tokens they
hold stop working at once; enabling them again restores access.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import delete, select

from services.auth.models import AuditEventRow
from services.inventory.models import User
from sft.auth.v1 import (
    device_pb2,
    device_service_pb2,
    device_service_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)
from sft.inventory.v1 import user_service_pb2, user_service_pb2_grpc
from tests.support.platform import Platform, running_platform

TEAM = "acme"
PARENT = f"teams/{TEAM}"
Code = grpc.StatusCode


@pytest.fixture
async def platform(database_url: str, tmp_path: Path) -> AsyncIterator[Platform]:
    """The platform with team acme: alice (team admin), bob and carol (members)."""
    async with running_platform(database_url, tmp_path) as running:
        await running.create_team(TEAM, "alice", members=("bob", "carol"))
        yield running


def _devices(platform: Platform, token: str) -> device_service_pb2_grpc.DeviceServiceStub:
    return platform.stub(device_service_pb2_grpc.DeviceServiceStub, token)


async def _refusal(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def _events(platform: Platform, action: str) -> list[AuditEventRow]:
    async with platform.database.sessions() as session:
        return list(
            await session.scalars(
                select(AuditEventRow)
                .where(AuditEventRow.action == action)
                .order_by(AuditEventRow.sequence)
            )
        )


async def test_enrolling_a_device_is_audited_as_its_owner(platform: Platform) -> None:
    device = await platform.enroll(TEAM, "bob")
    (event,) = await _events(platform, "device.enroll")
    assert (event.actor, event.actor_kind, event.outcome) == (
        f"{PARENT}/users/bob",
        "user",
        "success",
    )
    assert event.resource == device.name
    assert event.details["fingerprint"] == device.fingerprint


async def test_a_team_admin_lists_anyones_devices(platform: Platform) -> None:
    admin = await platform.login(TEAM, "alice")
    bob = await platform.enroll(TEAM, "bob")
    carol = await platform.enroll(TEAM, "carol")
    listed = await _devices(platform, admin).ListDevices(
        device_service_pb2.ListDevicesRequest(parent=f"{PARENT}/users/bob")
    )
    assert [d.name for d in listed.devices] == [bob.name]
    everyone = await _devices(platform, admin).ListDevices(
        device_service_pb2.ListDevicesRequest(parent=f"{PARENT}/users/-")
    )
    assert {d.name for d in everyone.devices} >= {bob.name, carol.name}
    assert len(everyone.devices) == 3  # alice's own too


async def test_a_team_admin_revokes_another_users_device_and_it_is_audited(
    platform: Platform,
) -> None:
    admin = await platform.login(TEAM, "alice")
    bob = await platform.enroll(TEAM, "bob")
    bob_token = await platform.token(bob)
    revoked = await _devices(platform, admin).RevokeDevice(
        device_service_pb2.RevokeDeviceRequest(name=bob.name)
    )
    assert revoked.device.state == device_pb2.DEVICE_STATE_REVOKED
    error = await _refusal(
        _devices(platform, bob_token).ListDevices(
            device_service_pb2.ListDevicesRequest(parent=f"{PARENT}/users/bob")
        )
    )
    assert error.code() == Code.UNAUTHENTICATED
    (event,) = await _events(platform, "device.revoke")
    assert (event.actor, event.resource, event.outcome) == (
        f"{PARENT}/users/alice",
        bob.name,
        "success",
    )
    # Revoking again changes nothing and records nothing more.
    await _devices(platform, admin).RevokeDevice(
        device_service_pb2.RevokeDeviceRequest(name=bob.name)
    )
    assert len(await _events(platform, "device.revoke")) == 1
    listed = await _devices(platform, admin).ListDevices(
        device_service_pb2.ListDevicesRequest(
            parent=f"{PARENT}/users/-", state=device_pb2.DEVICE_STATE_REVOKED
        )
    )
    assert [d.name for d in listed.devices] == [bob.name]


async def test_a_member_cannot_touch_other_devices_and_the_attempt_is_audited(
    platform: Platform,
) -> None:
    alice = await platform.enroll(TEAM, "alice")
    bob_token = await platform.login(TEAM, "bob")
    error = await _refusal(
        _devices(platform, bob_token).RevokeDevice(
            device_service_pb2.RevokeDeviceRequest(name=alice.name)
        )
    )
    assert error.code() == Code.PERMISSION_DENIED
    assert "team admin" in (error.details() or "")
    (denied,) = await _events(platform, "device.revoke")
    assert (denied.actor, denied.outcome) == (f"{PARENT}/users/bob", "denied")
    assert "team admin" in denied.details["reason"]
    listed = await _devices(platform, await platform.token(alice)).ListDevices(
        device_service_pb2.ListDevicesRequest(parent=f"{PARENT}/users/alice")
    )
    assert listed.devices[0].state == device_pb2.DEVICE_STATE_ACTIVE  # untouched


async def test_a_disabled_user_gets_no_token_and_loses_the_ones_it_has(
    platform: Platform,
) -> None:
    admin = await platform.login(TEAM, "alice")
    device = await platform.enroll(TEAM, "bob")
    token = await platform.token(device)
    users = platform.stub(user_service_pb2_grpc.UserServiceStub, admin)
    await users.DisableUser(user_service_pb2.DisableUserRequest(name=f"{PARENT}/users/bob"))

    error = await _refusal(platform.token(device))
    assert error.code() == Code.PERMISSION_DENIED
    assert "user 'bob' is disabled in team 'acme'" in (error.details() or "")
    assert "team admin" in (error.details() or "")
    error = await _refusal(
        _devices(platform, token).ListDevices(
            device_service_pb2.ListDevicesRequest(parent=f"{PARENT}/users/bob")
        )
    )
    assert error.code() == Code.PERMISSION_DENIED
    assert "disabled" in (error.details() or "")

    # A refused exchange spends nothing: the same assertion works once enabled again.
    assertion = device.assertion()
    request = token_service_pb2.CreateAccessTokenRequest(assertion=assertion)
    tokens = platform.stub(token_service_pb2_grpc.TokenServiceStub)
    assert (await _refusal(tokens.CreateAccessToken(request))).code() == Code.PERMISSION_DENIED
    await users.EnableUser(user_service_pb2.EnableUserRequest(name=f"{PARENT}/users/bob"))
    await tokens.CreateAccessToken(request)
    await _devices(platform, token).ListDevices(
        device_service_pb2.ListDevicesRequest(parent=f"{PARENT}/users/bob")
    )


async def test_a_deleted_user_gets_no_token(platform: Platform) -> None:
    device = await platform.enroll(TEAM, "carol")
    async with platform.database.sessions.begin() as session:
        await session.execute(delete(User).where(User.name == "carol"))
    error = await _refusal(platform.token(device))
    assert error.code() == Code.PERMISSION_DENIED
    assert "deleted" in (error.details() or "")


async def test_device_requests_in_another_team_are_refused(platform: Platform) -> None:
    token = await platform.login(TEAM, "alice")
    for call in (
        _devices(platform, token).ListDevices(
            device_service_pb2.ListDevicesRequest(parent="teams/other/users/-")
        ),
        _devices(platform, token).RevokeDevice(
            device_service_pb2.RevokeDeviceRequest(name="teams/other/users/x/devices/y")
        ),
    ):
        error = await _refusal(call)
        assert error.code() == Code.PERMISSION_DENIED
        assert "sft use other" in (error.details() or "")
