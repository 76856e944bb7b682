"""Service users through the real platform, on SQLite and PostgreSQL: team admins create
them (backed by inventory users of kind SERVICE) and their API keys; a key id + secret
buys a short-lived token; wrong, unknown and deleted keys get one refusal, guesses are
rate-limited, and nothing is half-written after a refused call.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select

from services.auth.models import AccessTokenRow, AuditEventRow, ServiceKeyRow, ServiceUserRow
from services.auth.token_service import KEY_FAILURES_ALLOWED
from services.inventory import repository as inventory
from services.inventory.models import User, UserKind
from sft.auth.v1 import (
    device_service_pb2,
    device_service_pb2_grpc,
    identity_pb2,
    service_user_pb2,
    service_user_service_pb2,
    service_user_service_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)
from sft.inventory.v1 import user_pb2, user_service_pb2, user_service_pb2_grpc
from tests.support.platform import Platform, running_platform

TEAM = "acme"
PARENT = f"teams/{TEAM}"
Code = grpc.StatusCode


@pytest.fixture
async def platform(database_url: str, tmp_path: Path) -> AsyncIterator[Platform]:
    """The platform with team acme: alice (team admin) and bob (member)."""
    async with running_platform(database_url, tmp_path) as running:
        await running.create_team(TEAM, "alice", members=("bob",))
        yield running


async def _admin(platform: Platform) -> service_user_service_pb2_grpc.ServiceUserServiceStub:
    token = await platform.login(TEAM, "alice")
    return platform.stub(service_user_service_pb2_grpc.ServiceUserServiceStub, token)


async def _create(
    stub: service_user_service_pb2_grpc.ServiceUserServiceStub, name: str = "ci-bot"
) -> service_user_pb2.ServiceUser:
    reply = await stub.CreateServiceUser(
        service_user_service_pb2.CreateServiceUserRequest(
            parent=PARENT,
            service_user_id=name,
            service_user=service_user_pb2.ServiceUser(description="deploys from CI"),
        )
    )
    created: service_user_pb2.ServiceUser = reply.service_user
    return created


async def _key(
    stub: service_user_service_pb2_grpc.ServiceUserServiceStub, name: str = "ci-bot"
) -> service_user_service_pb2.CreateServiceUserKeyResponse:
    reply: service_user_service_pb2.CreateServiceUserKeyResponse = await stub.CreateServiceUserKey(
        service_user_service_pb2.CreateServiceUserKeyRequest(parent=f"{PARENT}/serviceUsers/{name}")
    )
    return reply


def _tokens(platform: Platform) -> token_service_pb2_grpc.TokenServiceStub:
    return platform.stub(token_service_pb2_grpc.TokenServiceStub)


async def _exchange(
    platform: Platform, key_id: str, secret: str
) -> token_service_pb2.CreateServiceUserTokenResponse:
    reply: token_service_pb2.CreateServiceUserTokenResponse = await _tokens(
        platform
    ).CreateServiceUserToken(
        token_service_pb2.CreateServiceUserTokenRequest(key_id=key_id, secret=secret)
    )
    return reply


async def _refusal(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def _count(platform: Platform, model: Any) -> int:
    async with platform.database.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def _actions(platform: Platform) -> list[str]:
    async with platform.database.sessions() as session:
        return list(
            await session.scalars(select(AuditEventRow.action).order_by(AuditEventRow.sequence))
        )


async def test_a_service_user_key_buys_a_token_that_acts_as_the_service_user(
    platform: Platform,
) -> None:
    admin = await _admin(platform)
    created = await _create(admin)
    assert created.name == f"{PARENT}/serviceUsers/ci-bot"
    assert created.user == f"{PARENT}/users/ci-bot"
    assert created.description == "deploys from CI"
    backing = await platform.as_service(user_service_pb2_grpc.UserServiceStub, "auth").GetUser(
        user_service_pb2.GetUserRequest(name=created.user)
    )
    assert backing.user.kind == user_pb2.USER_KIND_SERVICE
    key = await _key(admin)
    assert uuid.UUID(key.key.key_id) and key.key.name == f"{created.name}/keys/{key.key.key_id}"
    assert key.secret.startswith("sftk1_") and len(key.secret) <= 128

    minted = await _exchange(platform, key.key.key_id, key.secret)
    assert minted.identity.kind == identity_pb2.IDENTITY_KIND_SERVICE_USER
    assert minted.identity.user == created.user
    assert minted.identity.service_user_key == key.key.name
    assert not minted.identity.device
    # The token works for member calls, as the service user.
    users = platform.stub(user_service_pb2_grpc.UserServiceStub, minted.access_token)
    itself = await users.GetUser(user_service_pb2.GetUserRequest(name=created.user))
    assert itself.user.name == created.user

    listed = await admin.ListServiceUsers(
        service_user_service_pb2.ListServiceUsersRequest(parent=PARENT)
    )
    assert [s.name for s in listed.service_users] == [created.name]
    assert [k.key_id for k in listed.service_users[0].keys] == [key.key.key_id]
    assert listed.service_users[0].keys[0].HasField("last_use_time")
    # Only hashes are stored, and no secret reaches the audit trail.
    async with platform.database.sessions() as session:
        stored = list(await session.scalars(select(ServiceKeyRow.secret_hash)))
        details = list(await session.scalars(select(AuditEventRow.details)))
    assert stored == [hashlib.sha256(key.secret.encode()).hexdigest()]
    assert key.secret not in repr(details) and minted.access_token not in repr(details)
    assert {"service_user.create", "service_user_key.create"} <= set(await _actions(platform))


async def test_wrong_unknown_and_deleted_keys_get_one_refusal(platform: Platform) -> None:
    admin = await _admin(platform)
    await _create(admin)
    key = await _key(admin)
    other = await _key(admin)
    minted = await _exchange(platform, other.key.key_id, other.secret)
    await admin.DeleteServiceUserKey(
        service_user_service_pb2.DeleteServiceUserKeyRequest(name=other.key.name)
    )
    messages = set()
    for key_id, secret in (
        (key.key.key_id, other.secret),  # wrong secret
        (str(uuid.uuid4()), key.secret),  # unknown key
        (other.key.key_id, other.secret),  # deleted key
        ("not-a-key-id", key.secret),
        (key.key.key_id, ""),
    ):
        error = await _refusal(_exchange(platform, key_id, secret))
        assert error.code() == Code.UNAUTHENTICATED
        messages.add(error.details())
    assert len(messages) == 1
    # The deleted key's token stopped at once.
    users = platform.stub(user_service_pb2_grpc.UserServiceStub, minted.access_token)
    error = await _refusal(
        users.GetUser(user_service_pb2.GetUserRequest(name=f"{PARENT}/users/ci-bot"))
    )
    assert error.code() == Code.UNAUTHENTICATED
    async with platform.database.sessions() as session:
        kinds = list(await session.scalars(select(AccessTokenRow.kind)))
    assert "service_user" not in kinds
    assert "service_user_key.delete" in await _actions(platform)
    # The good key still works.
    await _exchange(platform, key.key.key_id, key.secret)


async def test_repeated_bad_secrets_are_rate_limited(platform: Platform) -> None:
    admin = await _admin(platform)
    await _create(admin)
    key = await _key(admin)
    for _ in range(KEY_FAILURES_ALLOWED):
        error = await _refusal(_exchange(platform, key.key.key_id, "sftk1_guess"))
        assert error.code() == Code.UNAUTHENTICATED
    error = await _refusal(_exchange(platform, key.key.key_id, key.secret))
    assert error.code() == Code.RESOURCE_EXHAUSTED
    assert "wait 10 minutes" in (error.details() or "")


async def test_creating_is_retry_safe_and_adopts_a_left_behind_inventory_user(
    platform: Platform,
) -> None:
    admin = await _admin(platform)
    # An earlier attempt created the inventory user, then failed before auth's row.
    async with platform.database.sessions.begin() as session:
        team = await inventory.get_team(session, TEAM)
        user = await inventory.create_user(session, team, "half-made", team_admin=False)
        user.kind = UserKind.SERVICE
    created = await _create(admin, "half-made")
    assert created.user == f"{PARENT}/users/half-made"
    error = await _refusal(_create(admin, "half-made"))
    assert error.code() == Code.ALREADY_EXISTS
    # A person's name cannot be taken over by a service user.
    error = await _refusal(_create(admin, "bob"))
    assert error.code() == Code.ALREADY_EXISTS
    assert "person" in (error.details() or "")
    assert await _count(platform, ServiceUserRow) == 1


@pytest.mark.parametrize(
    ("case", "request_fields", "code", "expected"),
    [
        ("bad-id", {"service_user_id": "Bad Bot"}, Code.INVALID_ARGUMENT, "service_user_id"),
        ("too-long-id", {"service_user_id": "b" * 33}, Code.INVALID_ARGUMENT, "32"),
        (
            "long-description",
            {"service_user": service_user_pb2.ServiceUser(description="x" * 1001)},
            Code.INVALID_ARGUMENT,
            "description",
        ),
        ("other-team", {"parent": "teams/other"}, Code.PERMISSION_DENIED, "other"),
    ],
)
async def test_bad_service_user_requests_are_refused_and_nothing_is_written(
    platform: Platform,
    case: str,
    request_fields: dict[str, Any],
    code: grpc.StatusCode,
    expected: str,
) -> None:
    admin = await _admin(platform)
    fields: dict[str, Any] = {"parent": PARENT, "service_user_id": "ci-bot", **request_fields}
    error = await _refusal(
        admin.CreateServiceUser(service_user_service_pb2.CreateServiceUserRequest(**fields))
    )
    assert error.code() == code
    assert expected in (error.details() or "")
    assert await _count(platform, ServiceUserRow) == 0
    async with platform.database.sessions() as session:
        services = await session.scalar(
            select(func.count()).select_from(User).where(User.kind == UserKind.SERVICE)
        )
    assert services == 0


async def test_only_team_admins_manage_service_users(platform: Platform) -> None:
    admin = await _admin(platform)
    await _create(admin)
    key = await _key(admin)
    bob = platform.stub(
        service_user_service_pb2_grpc.ServiceUserServiceStub, await platform.login(TEAM, "bob")
    )
    for call in (
        bob.CreateServiceUser(
            service_user_service_pb2.CreateServiceUserRequest(parent=PARENT, service_user_id="mine")
        ),
        bob.ListServiceUsers(service_user_service_pb2.ListServiceUsersRequest(parent=PARENT)),
        bob.CreateServiceUserKey(
            service_user_service_pb2.CreateServiceUserKeyRequest(
                parent=f"{PARENT}/serviceUsers/ci-bot"
            )
        ),
        bob.DeleteServiceUserKey(
            service_user_service_pb2.DeleteServiceUserKeyRequest(name=key.key.name)
        ),
    ):
        error = await _refusal(call)
        assert error.code() == Code.PERMISSION_DENIED
        assert "team admin" in (error.details() or "")
    assert await _count(platform, ServiceKeyRow) == 1
    assert await _count(platform, ServiceUserRow) == 1


async def test_keys_of_unknown_service_users_and_unknown_keys_are_not_found(
    platform: Platform,
) -> None:
    admin = await _admin(platform)
    await _create(admin)
    error = await _refusal(_key(admin, "ghost"))
    assert error.code() == Code.NOT_FOUND
    error = await _refusal(
        admin.DeleteServiceUserKey(
            service_user_service_pb2.DeleteServiceUserKeyRequest(
                name=f"{PARENT}/serviceUsers/ci-bot/keys/{uuid.uuid4()}"
            )
        )
    )
    assert error.code() == Code.NOT_FOUND
    error = await _refusal(
        admin.DeleteServiceUserKey(
            service_user_service_pb2.DeleteServiceUserKeyRequest(
                name=f"{PARENT}/serviceUsers/ci-bot/keys/nope"
            )
        )
    )
    assert error.code() == Code.INVALID_ARGUMENT
    for _ in range(10):
        await _key(admin)
    error = await _refusal(_key(admin))
    assert error.code() == Code.FAILED_PRECONDITION
    assert await _count(platform, ServiceKeyRow) == 10


async def test_a_disabled_service_user_gets_no_token_and_its_token_stops(
    platform: Platform,
) -> None:
    admin_token = await platform.login(TEAM, "alice")
    admin = platform.stub(service_user_service_pb2_grpc.ServiceUserServiceStub, admin_token)
    await _create(admin)
    key = await _key(admin)
    minted = await _exchange(platform, key.key.key_id, key.secret)
    users = platform.stub(user_service_pb2_grpc.UserServiceStub, admin_token)
    await users.DisableUser(user_service_pb2.DisableUserRequest(name=f"{PARENT}/users/ci-bot"))
    error = await _refusal(_exchange(platform, key.key.key_id, key.secret))
    assert error.code() == Code.PERMISSION_DENIED
    assert "disabled" in (error.details() or "") and TEAM in (error.details() or "")
    as_bot = platform.stub(device_service_pb2_grpc.DeviceServiceStub, minted.access_token)
    error = await _refusal(
        as_bot.ListDevices(device_service_pb2.ListDevicesRequest(parent=f"{PARENT}/users/ci-bot"))
    )
    assert error.code() == Code.PERMISSION_DENIED


async def test_service_users_page_by_id(platform: Platform) -> None:
    admin = await _admin(platform)
    names = ["delta", "alpha", "charlie", "bravo", "echo"]
    for name in names:
        await _create(admin, name)
    seen: list[str] = []
    token = ""
    while True:
        page = await admin.ListServiceUsers(
            service_user_service_pb2.ListServiceUsersRequest(
                parent=PARENT, page_size=2, page_token=token
            )
        )
        seen += [s.name.rpartition("/")[2] for s in page.service_users]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(names)
