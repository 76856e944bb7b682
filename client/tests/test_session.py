"""Enrollment and the session layer against a stand-in platform on a loopback TLS port.

What the client sends (and does not), what it keeps, and how it recovers tokens.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client.device_key import public_key_line
from client.enrollment import enroll, unenroll
from client.errors import ClientError, PlatformUnreachable, RpcFailure
from client.pinning import PinMismatch, certificate_sha256
from client.session import Session
from client.state import Home, StoredToken
from client.tests.fake_platform import PROBE_METHOD_READ, PROBE_METHOD_WRITE, FakePlatform
from client.tests.pki import make_pki
from runtime.pinned_codes import CodeKind, PinnedCode
from sft.auth.v1 import device_service_pb2, device_service_pb2_grpc


@pytest.fixture
async def platform() -> AsyncIterator[FakePlatform]:
    fake = await FakePlatform().start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "home")


async def _enroll(home: Home, platform: FakePlatform, team: str = "acme") -> None:
    await enroll(home, url=platform.url, team=team, code=platform.new_code(), display_name="lap")


async def test_enroll_pins_the_ca_sends_only_the_public_key_and_logs_in(
    home: Home, platform: FakePlatform
) -> None:
    result = await enroll(
        home, url=platform.url, team="acme", code=platform.new_code(), display_name="lap"
    )
    team_dir = home.team_dir("acme")
    key = team_dir.read_device_key()
    (request,) = platform.enroll_requests
    assert request.team == "teams/acme"
    assert request.public_key == public_key_line(key)
    assert "PRIVATE" not in str(request)
    assert request.display_name == "lap" and request.hostname and request.os
    assert platform.methods() == ["EnrollDevice", "CreateAccessToken"]
    # Calls whose proof is in the request carry no bearer token.
    assert [call.bearer for call in platform.calls] == [None, None]
    assert team_dir.ca_file.read_bytes() == platform.pki.ca_pem
    record = team_dir.read_device()
    assert record.device == result.record.device == "teams/acme/users/ada/devices/d1"
    assert record.ca_sha256 == certificate_sha256(platform.pki.ca).hex()
    assert result.login is not None and result.login_error is None
    token = team_dir.read_token()
    assert token is not None and token.access_token in platform.tokens
    assert result.became_current and home.current_team() == "acme"
    assert team_dir.device_public_key_file.read_text().startswith(public_key_line(key))


async def test_a_refused_code_leaves_no_state_behind(home: Home, platform: FakePlatform) -> None:
    unknown = PinnedCode.generate(
        CodeKind.DEVICE_ENROLLMENT, certificate_sha256(platform.pki.ca)
    ).encode()
    with pytest.raises(RpcFailure) as caught:
        await enroll(home, url=platform.url, team="acme", code=unknown)
    assert caught.value.message.startswith("the enrollment code is unknown, used or expired")
    assert list(home.teams_dir.iterdir()) == []
    assert home.current_team() is None


async def test_a_platform_without_the_pinned_ca_is_told_nothing(
    home: Home, platform: FakePlatform
) -> None:
    other_ca = make_pki().ca
    code = PinnedCode.generate(CodeKind.DEVICE_ENROLLMENT, certificate_sha256(other_ca))
    with pytest.raises(PinMismatch, match="possible man-in-the-middle"):
        await enroll(home, url=platform.url, team="acme", code=code.encode())
    assert platform.calls == []
    assert not home.teams_dir.exists() or list(home.teams_dir.iterdir()) == []


async def test_the_pinned_ca_must_also_name_the_host_dialled(
    home: Home, platform: FakePlatform
) -> None:
    # The fake's certificate names 127.0.0.1 only; its CA is pinned, yet gRPC's own
    # check of the host name still refuses "localhost".
    with pytest.raises(
        PlatformUnreachable, match=r"cannot reach the platform at https://localhost"
    ):
        await enroll(
            home, url=f"https://localhost:{platform.port}", team="acme", code=platform.new_code()
        )
    assert platform.calls == []
    assert list(home.teams_dir.iterdir()) == []


async def test_a_second_enrollment_in_the_same_team_is_refused_before_any_call(
    home: Home, platform: FakePlatform
) -> None:
    await _enroll(home, platform)
    before = list(platform.calls)
    with pytest.raises(ClientError, match="already enrolled in team acme; run `sft unenroll"):
        await _enroll(home, platform)
    assert platform.calls == before


async def test_session_reuses_a_fresh_token_and_renews_one_about_to_expire(
    home: Home, platform: FakePlatform
) -> None:
    await _enroll(home, platform)
    first = home.team_dir("acme").read_token()
    assert first is not None
    async with Session.for_team(home, None) as session:
        assert await session.ensure_token() == first
    logins = platform.methods().count("CreateAccessToken")
    almost = first.expire_time - dt.timedelta(seconds=30)
    async with Session.for_team(home, "acme", clock=lambda: almost) as session:
        renewed = await session.ensure_token()
    assert renewed != first
    assert platform.methods().count("CreateAccessToken") == logins + 1
    assert home.team_dir("acme").read_token() == renewed


async def test_a_missing_token_is_fetched_before_the_first_call(
    home: Home, platform: FakePlatform
) -> None:
    await _enroll(home, platform)
    home.team_dir("acme").forget_credentials()
    async with Session.for_team(home, "acme") as session:
        stub = device_service_pb2_grpc.DeviceServiceStub(session.channel())
        reply = await stub.ListDevices(device_service_pb2.ListDevicesRequest())
    assert reply.devices[0].name == "teams/acme/users/ada/devices/d1"
    assert platform.methods()[-2:] == ["CreateAccessToken", "ListDevices"]
    assert platform.calls[-1].bearer in platform.tokens


async def test_a_read_refused_as_unauthenticated_logs_in_once_and_retries(
    home: Home, platform: FakePlatform
) -> None:
    await _enroll(home, platform)
    platform.forget_tokens()
    async with Session.for_team(home, "acme") as session:
        read = session.channel().unary_unary(PROBE_METHOD_READ)
        assert await read(b"x") == b"ok:x"
    assert platform.methods()[-3:] == ["GetThing", "CreateAccessToken", "GetThing"]
    stale, fresh = platform.calls[-3].bearer, platform.calls[-1].bearer
    assert stale != fresh and fresh in platform.tokens


async def test_a_write_refused_as_unauthenticated_is_not_repeated(
    home: Home, platform: FakePlatform
) -> None:
    await _enroll(home, platform)
    platform.forget_tokens()
    async with Session.for_team(home, "acme") as session:
        write = session.channel().unary_unary(PROBE_METHOD_WRITE)
        with pytest.raises(RpcFailure) as caught:
            await write(b"x")
    assert caught.value.status == "UNAUTHENTICATED"
    assert caught.value.message == "the access token is unknown"
    assert platform.methods()[-1] == "CreateThing"
    assert platform.methods().count("CreateThing") == 1


async def test_a_revoked_device_cannot_log_in_and_says_how_to_forget_it(
    home: Home, platform: FakePlatform
) -> None:
    await _enroll(home, platform)
    platform.revoked.add("teams/acme/users/ada/devices/d1")
    async with Session.for_team(home, "acme") as session:
        with pytest.raises(RpcFailure) as caught:
            await session.login()
    assert caught.value.message == (
        "the platform refused this device's key (this device was revoked); if the device was "
        "revoked, forget it here with `sft unenroll --team acme --force` and enroll again with "
        "a new code"
    )


async def test_unenroll_revokes_the_device_then_deletes_its_state(
    home: Home, platform: FakePlatform
) -> None:
    await _enroll(home, platform)
    result = await unenroll(home, None)
    assert result.revoked and result.warning is None
    assert platform.revoked == {"teams/acme/users/ada/devices/d1"}
    assert platform.calls[-1].bearer in platform.tokens
    assert home.enrolled_teams() == [] and home.current_team() is None


async def test_unenroll_from_an_unreachable_platform_needs_force(
    home: Home, platform: FakePlatform
) -> None:
    await _enroll(home, platform)
    home.team_dir("acme").write_token(StoredToken("token-1", dt.datetime.now(dt.UTC)))
    await platform.stop()
    with pytest.raises(PlatformUnreachable) as caught:
        await unenroll(home, "acme")
    assert caught.value.message.startswith(f"cannot reach the platform at {platform.url}: ")
    assert "`sft unenroll --team acme --force`" in caught.value.message
    assert home.enrolled_teams() == ["acme"]
    result = await unenroll(home, "acme", force=True)
    assert not result.revoked and result.warning is not None
    assert home.enrolled_teams() == []


async def test_an_endpoint_that_does_not_speak_tls_is_one_line(home: Home) -> None:
    async def answer_in_plain_http(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(b"HTTP/1.0 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_in_plain_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    code = PinnedCode.generate(CodeKind.DEVICE_ENROLLMENT, b"\0" * 32).encode()
    try:
        with pytest.raises(PlatformUnreachable) as caught:
            await enroll(home, url=f"https://127.0.0.1:{port}", team="acme", code=code)
    finally:
        server.close()
        await server.wait_closed()
    assert caught.value.message.startswith(
        f"the TLS handshake with the platform at https://127.0.0.1:{port} failed ("
    )
    assert "\n" not in caught.value.message
    assert not home.teams_dir.exists()
