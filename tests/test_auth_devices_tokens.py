"""Device enrollment and access tokens through the real platform (CA, inventory and auth
in one process), on SQLite and PostgreSQL: one-time codes, key assertions that cannot
be replayed, bearer tokens checked on every call, and revocation that takes effect at
once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import select

from runtime.pinned_codes import CodeKind, PinnedCode
from services.auth.enrollment_codes import issue_enrollment_code
from services.auth.models import AccessTokenRow, DeviceRow, EnrollmentCode
from services.auth.service import ENROLL_FAILURES_ALLOWED
from sft.auth.v1 import (
    device_pb2,
    device_service_pb2,
    device_service_pb2_grpc,
    identity_pb2,
    token_service_pb2,
    token_service_pb2_grpc,
)
from tests.support.platform import Device, Platform, bearer, public_key_line, running_platform

TEAM = "acme"


@pytest.fixture
async def auth(database_url: str, tmp_path: Path) -> AsyncIterator[Platform]:
    """The platform with team acme: alice (team admin), ada and bob (members)."""
    async with running_platform(database_url, tmp_path) as platform:
        await platform.create_team(TEAM, "alice", members=("ada", "bob"))
        yield platform


async def _code(auth: Platform, user: str = "teams/acme/users/ada", **kwargs: Any) -> str:
    async with auth.database.sessions.begin() as session:
        issued = await issue_enrollment_code(
            session,
            team=user.split("/")[1],
            user=user,
            created_by="test",
            ca_sha256=auth.pin,
            **kwargs,
        )
    return issued.code


def _devices(auth: Platform) -> device_service_pb2_grpc.DeviceServiceStub:
    return auth.stub(device_service_pb2_grpc.DeviceServiceStub)


def _tokens(auth: Platform) -> token_service_pb2_grpc.TokenServiceStub:
    return auth.stub(token_service_pb2_grpc.TokenServiceStub)


def _signed_by(device: Device, key: ed25519.Ed25519PrivateKey, **claims: Any) -> str:
    """Return an assertion naming `device` (its kid and iss) but signed with `key`."""
    forged = Device(key, device.name, device.fingerprint, device.team, device.user)
    return forged.assertion(**claims)


async def _enroll(auth: Platform, code: str, team: str = "teams/acme") -> Device:
    key = ed25519.Ed25519PrivateKey.generate()
    reply = await _devices(auth).EnrollDevice(
        device_service_pb2.EnrollDeviceRequest(
            team=team, code=code, public_key=public_key_line(key), hostname="laptop", os="linux"
        )
    )
    _, _, user = reply.user.rpartition("/")
    return Device(key, reply.device.name, reply.device.public_key_fingerprint, TEAM, user)


async def _token(auth: Platform, device: Device) -> str:
    return await auth.token(device)


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return bearer(token)


async def _refusal(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_enrolled_device_gets_a_token_that_identifies_it(auth: Platform) -> None:
    device = await _enroll(auth, await _code(auth))
    assert device.name.startswith("teams/acme/users/ada/devices/")
    reply = await _tokens(auth).CreateAccessToken(
        token_service_pb2.CreateAccessTokenRequest(assertion=device.assertion())
    )
    assert reply.identity.kind == identity_pb2.IDENTITY_KIND_USER
    assert reply.identity.user == "teams/acme/users/ada"
    assert reply.identity.device == device.name
    lifetime = reply.expire_time.ToDatetime(dt.UTC) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=59) < lifetime <= dt.timedelta(hours=1)
    listed = await _devices(auth).ListDevices(
        device_service_pb2.ListDevicesRequest(parent="teams/acme/users/ada"),
        metadata=_bearer(reply.access_token),
    )
    assert [d.name for d in listed.devices] == [device.name]
    assert listed.devices[0].HasField("last_use_time")
    # Only the token's hash is stored.
    async with auth.database.sessions() as session:
        stored = list(await session.scalars(select(AccessTokenRow.token_hash)))
    assert reply.access_token not in stored
    assert hashlib.sha256(reply.access_token.encode()).hexdigest() in stored


@pytest.mark.parametrize(
    ("case", "mutate"),
    [
        ("used", None),
        (
            "expired",
            {"ttl": dt.timedelta(minutes=1), "now": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)},
        ),
        ("other-team", "teams/other"),
        ("garbage", "sftc1_nope_nope"),
        ("token-not-code", "TOKEN"),
    ],
)
async def test_bad_enrollment_codes_are_unauthenticated_with_one_message(
    auth: Platform, case: str, mutate: Any
) -> None:
    team = "teams/acme"
    if case == "used":
        code = await _code(auth)
        await _enroll(auth, code)
    elif case == "expired":
        code = await _code(auth, **mutate)
    elif case == "other-team":
        code, team = await _code(auth), mutate
    elif case == "token-not-code":
        code = PinnedCode.generate(CodeKind.SERVER_ENROLLMENT, auth.pin).encode()
    else:
        code = mutate
    error = await _refusal(_enroll(auth, code, team))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "\n" not in (error.details() or "")
    async with auth.database.sessions() as session:
        devices = list(await session.scalars(select(DeviceRow)))
    assert len(devices) == (1 if case == "used" else 0)


async def test_refused_key_leaves_the_code_unused(auth: Platform) -> None:
    code = await _code(auth)
    error = await _refusal(
        _devices(auth).EnrollDevice(
            device_service_pb2.EnrollDeviceRequest(
                team="teams/acme", code=code, public_key="ssh-rsa AAAAB3NzaC1yc2E="
            )
        )
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    async with auth.database.sessions() as session:
        row = await session.scalar(select(EnrollmentCode))
    assert row is not None and row.used_at is None
    await _enroll(auth, code)  # still good


async def test_repeated_bad_guesses_are_rate_limited(auth: Platform) -> None:
    for _ in range(ENROLL_FAILURES_ALLOWED):
        bad = PinnedCode.generate(CodeKind.DEVICE_ENROLLMENT, auth.pin).encode()
        error = await _refusal(_enroll(auth, bad))
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    good = await _code(auth)
    error = await _refusal(_enroll(auth, good))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "wait 10 minutes" in (error.details() or "")


@pytest.mark.parametrize(
    ("case", "overrides", "expected"),
    [
        ("expired", {"iat": 1_600_000_000, "exp": 1_600_000_060}, "expired"),
        ("too-long", {"exp_in": 3600}, "longer than 300"),
        ("future", {"iat_in": 600, "exp_in": 660}, "in the future"),
        ("wrong-audience", {"aud": "/sft.auth.v1.TokenService/Other"}, "refused"),
        ("short-jti", {"jti": "abc"}, "jti"),
        ("forged", {"forge": True}, "signature does not match"),
        ("other-issuer", {"iss": "teams/acme/users/eve/devices/x"}, "iss and sub"),
    ],
)
async def test_bad_assertions_are_refused(
    auth: Platform, case: str, overrides: dict[str, Any], expected: str
) -> None:
    device = await _enroll(auth, await _code(auth))
    now = int(dt.datetime.now(dt.UTC).timestamp())
    claims = dict(overrides)
    if "exp_in" in claims:
        claims["exp"] = now + claims.pop("exp_in")
    if "iat_in" in claims:
        claims["iat"] = now + claims.pop("iat_in")
    if claims.pop("forge", False):
        assertion = _signed_by(device, ed25519.Ed25519PrivateKey.generate(), **claims)
    else:
        assertion = device.assertion(**claims)
    error = await _refusal(
        _tokens(auth).CreateAccessToken(
            token_service_pb2.CreateAccessTokenRequest(assertion=assertion)
        )
    )
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert expected in (error.details() or "")


async def test_an_assertion_cannot_be_replayed(auth: Platform) -> None:
    device = await _enroll(auth, await _code(auth))
    assertion = device.assertion()
    request = token_service_pb2.CreateAccessTokenRequest(assertion=assertion)
    await _tokens(auth).CreateAccessToken(request)
    error = await _refusal(_tokens(auth).CreateAccessToken(request))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "already used" in (error.details() or "")


async def test_revoking_a_device_stops_its_tokens_and_key_at_once(auth: Platform) -> None:
    device = await _enroll(auth, await _code(auth))
    token = await _token(auth, device)
    revoked = await _devices(auth).RevokeDevice(
        device_service_pb2.RevokeDeviceRequest(name=device.name), metadata=_bearer(token)
    )
    assert revoked.device.state == device_pb2.DEVICE_STATE_REVOKED
    error = await _refusal(
        _devices(auth).ListDevices(
            device_service_pb2.ListDevicesRequest(parent="teams/acme/users/ada"),
            metadata=_bearer(token),
        )
    )
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    error = await _refusal(_token(auth, device))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (error.details() or "")


@pytest.mark.parametrize(
    ("case", "call"),
    [
        (
            "no-token",
            lambda d, t: d.ListDevices(
                device_service_pb2.ListDevicesRequest(parent="teams/acme/users/ada")
            ),
        ),
        (
            "bad-scheme",
            lambda d, t: d.ListDevices(
                device_service_pb2.ListDevicesRequest(parent="teams/acme/users/ada"),
                metadata=(("authorization", f"Basic {t}"),),
            ),
        ),
        (
            "unknown-token",
            lambda d, t: d.ListDevices(
                device_service_pb2.ListDevicesRequest(parent="teams/acme/users/ada"),
                metadata=_bearer("sfta1_" + "x" * 43),
            ),
        ),
    ],
)
async def test_calls_without_a_valid_token_are_unauthenticated(
    auth: Platform, case: str, call: Callable[[Any, str], Any]
) -> None:
    token = await _token(auth, await _enroll(auth, await _code(auth)))
    error = await _refusal(call(_devices(auth), token))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_users_see_and_revoke_only_their_own_devices(auth: Platform) -> None:
    ada = await _enroll(auth, await _code(auth))
    bob = await _enroll(auth, await _code(auth, "teams/acme/users/bob"))
    bob_token = await _token(auth, bob)
    for request in (
        _devices(auth).ListDevices(
            device_service_pb2.ListDevicesRequest(parent="teams/acme/users/ada"),
            metadata=_bearer(bob_token),
        ),
        _devices(auth).ListDevices(
            device_service_pb2.ListDevicesRequest(parent="teams/acme/users/-"),
            metadata=_bearer(bob_token),
        ),
        _devices(auth).RevokeDevice(
            device_service_pb2.RevokeDeviceRequest(name=ada.name), metadata=_bearer(bob_token)
        ),
    ):
        error = await _refusal(request)
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "team admin" in (error.details() or "")


async def test_verify_access_token_is_for_platform_services_only(auth: Platform) -> None:
    device = await _enroll(auth, await _code(auth))
    token = await _token(auth, device)
    request = token_service_pb2.VerifyAccessTokenRequest(access_token=token)
    error = await _refusal(_tokens(auth).VerifyAccessToken(request))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    verified = await auth.as_service(
        token_service_pb2_grpc.TokenServiceStub, "inventory"
    ).VerifyAccessToken(request)
    assert verified.identity.device == device.name
    error = await _refusal(
        auth.as_service(token_service_pb2_grpc.TokenServiceStub, "inventory").VerifyAccessToken(
            token_service_pb2.VerifyAccessTokenRequest(access_token="sfta1_unknown")  # noqa: S106
        )
    )
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_a_key_cannot_be_enrolled_twice_and_long_names_are_refused(
    auth: Platform,
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    request = device_service_pb2.EnrollDeviceRequest(
        team="teams/acme", code=await _code(auth), public_key=public_key_line(key)
    )
    await _devices(auth).EnrollDevice(request)
    request.code = await _code(auth)
    error = await _refusal(_devices(auth).EnrollDevice(request))
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS
    request.public_key = public_key_line(ed25519.Ed25519PrivateKey.generate())
    request.display_name = "x" * 201
    error = await _refusal(_devices(auth).EnrollDevice(request))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "display_name" in (error.details() or "")
    await _devices(auth).EnrollDevice(  # neither refusal spent the second code
        device_service_pb2.EnrollDeviceRequest(
            team="teams/acme",
            code=request.code,
            public_key=public_key_line(ed25519.Ed25519PrivateKey.generate()),
        )
    )


@pytest.mark.parametrize(
    ("case", "rpc", "request_factory", "expected"),
    [
        (
            "malformed-device",
            "RevokeDevice",
            lambda: device_service_pb2.RevokeDeviceRequest(name="laptop"),
            "not a resource name",  # refused by the declared need, before the body
        ),
        (
            "bad-page-token",
            "ListDevices",
            lambda: device_service_pb2.ListDevicesRequest(
                parent="teams/acme/users/ada",
                page_token="nope",  # noqa: S106 (not a secret)
            ),
            "page_token is not valid",
        ),
        (
            "negative-page-size",
            "ListDevices",
            lambda: device_service_pb2.ListDevicesRequest(
                parent="teams/acme/users/ada", page_size=-1
            ),
            "page_size must not be negative",
        ),
    ],
)
async def test_bad_device_requests_are_invalid(
    auth: Platform, case: str, rpc: str, request_factory: Callable[[], Any], expected: str
) -> None:
    token = await _token(auth, await _enroll(auth, await _code(auth)))
    error = await _refusal(getattr(_devices(auth), rpc)(request_factory(), metadata=_bearer(token)))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (error.details() or "")


async def test_devices_list_in_pages_without_gaps_or_repeats(auth: Platform) -> None:
    names = [(await _enroll(auth, await _code(auth))).name for _ in range(3)]
    await _enroll(auth, await _code(auth, "teams/acme/users/bob"))  # not ada's: not listed
    last = await _enroll(auth, await _code(auth))
    token = await _token(auth, last)
    seen: list[str] = []
    page_token = ""
    while True:
        page = await _devices(auth).ListDevices(
            device_service_pb2.ListDevicesRequest(
                parent="teams/acme/users/ada", page_size=2, page_token=page_token
            ),
            metadata=_bearer(token),
        )
        seen += [device.name for device in page.devices]
        page_token = page.next_page_token
        if not page_token:
            break
    assert sorted(seen) == sorted([*names, last.name])
    assert len(seen) == 4
