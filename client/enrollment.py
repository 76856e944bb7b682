"""Enrolling this machine as a device of a team, and unenrolling it.

Enrollment pins the platform before it says anything (the code carries the CA's
SHA-256), makes the key pair here, and writes the team's state only after the
platform accepted the device: a refused or interrupted enrollment leaves nothing
behind. The private key never leaves this machine.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from client.channels import PlatformCallInterceptor, platform_channel
from client.device_key import (
    generate_device_key,
    private_key_openssh,
    public_key_fingerprint,
    public_key_line,
)
from client.errors import EXIT_USAGE, ClientError
from client.pinning import fetch_presented_chain, find_pinned_ca
from client.platform_url import PlatformURL, parse_platform_url
from client.session import LoginResult, Session
from client.state import DeviceRecord, Home, TeamDir, check_team_name, write_atomic
from runtime.errors import InvalidInput
from runtime.pinned_codes import CodeKind, PinnedCode
from sft.auth.v1 import device_service_pb2, device_service_pb2_grpc

__all__ = ["EnrollResult", "UnenrollResult", "enroll", "local_os", "unenroll"]

Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def local_os() -> str:
    """Return this machine's OS as the platform names it: linux, darwin or windows."""
    return {"win32": "windows", "cygwin": "windows"}.get(sys.platform, sys.platform)


@dataclass(frozen=True)
class EnrollResult:
    """What `sft enroll` established."""

    record: DeviceRecord
    fingerprint: str
    became_current: bool
    login: LoginResult | None
    login_error: ClientError | None


@dataclass(frozen=True)
class UnenrollResult:
    """What `sft unenroll` did."""

    team: str
    device: str
    revoked: bool
    warning: str | None


def _parse_code(text: str) -> PinnedCode:
    try:
        return PinnedCode.parse(text, CodeKind.DEVICE_ENROLLMENT)
    except InvalidInput as exc:
        raise ClientError(exc.message, EXIT_USAGE) from None


async def _register_device(
    url: PlatformURL, ca_pem: bytes, request: device_service_pb2.EnrollDeviceRequest
) -> device_service_pb2.EnrollDeviceResponse:
    interceptor = PlatformCallInterceptor(url, request.team.removeprefix("teams/"), tokens=None)
    async with platform_channel(url, ca_pem, [interceptor]) as channel:
        stub = device_service_pb2_grpc.DeviceServiceStub(channel)
        reply: device_service_pb2.EnrollDeviceResponse = await stub.EnrollDevice(request)
        return reply


def _check_reply(reply: device_service_pb2.EnrollDeviceResponse, team: str) -> None:
    prefix = f"teams/{team}/users/"
    if not reply.user.startswith(prefix) or not reply.device.name.startswith(f"{reply.user}/"):
        raise ClientError(
            f"the platform answered with a device outside team {team} ({reply.device.name!r})",
            hint="this sft and the platform disagree; nothing was saved",
        )


async def enroll(
    home: Home,
    *,
    url: str,
    team: str,
    code: str,
    display_name: str | None = None,
    clock: Clock = _utc_now,
) -> EnrollResult:
    """Enroll this machine in `team` at `url` with a one-time code, then log in."""
    address = parse_platform_url(url)
    team = check_team_name(team)
    pinned = _parse_code(code)
    if home.team_dir(team).path.exists():
        raise ClientError(
            f"this machine is already enrolled in team {team}",
            hint=f"run `sft unenroll --team {team}` first",
        )
    # Trust nothing the platform says until it has shown the CA the code pins.
    chain = await asyncio.to_thread(fetch_presented_chain, address)
    ca = find_pinned_ca(chain, pinned.ca_sha256, address)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)

    hostname = socket.gethostname()
    staging = home.new_staging_dir(team)
    try:
        key = generate_device_key()
        # The key is on disk before the one-time code is spent: if this machine cannot
        # keep it, better to fail now than to enroll a key that is then lost.
        write_atomic(staging.device_key_file, private_key_openssh(key))
        public_line = public_key_line(key)
        write_atomic(
            staging.device_public_key_file,
            f"{public_line} sft-device {team}@{hostname}\n".encode(),
        )
        reply = await _register_device(
            address,
            ca_pem,
            device_service_pb2.EnrollDeviceRequest(
                team=f"teams/{team}",
                code=pinned.encode(),
                public_key=public_line,
                display_name=display_name or hostname,
                hostname=hostname,
                os=local_os(),
            ),
        )
        _check_reply(reply, team)
        record = DeviceRecord(
            url=str(address),
            team=team,
            device=reply.device.name,
            user=reply.user,
            ca_sha256=pinned.ca_sha256.hex(),
            enrolled_at=clock(),
        )
        write_atomic(staging.ca_file, ca_pem)
        write_atomic(staging.device_file, (json.dumps(record.as_json(), indent=2) + "\n").encode())
        team_dir = home.commit_staging(staging)
    except BaseException:
        shutil.rmtree(staging.path, ignore_errors=True)
        raise

    current = home.current_team()
    became_current = current is None or not home.team_dir(current).path.is_dir()
    if became_current:
        home.set_current_team(team)
    login, login_error = await _first_login(team_dir, clock)
    return EnrollResult(record, public_key_fingerprint(key), became_current, login, login_error)


async def _first_login(
    team_dir: TeamDir, clock: Clock
) -> tuple[LoginResult | None, ClientError | None]:
    try:
        async with Session(team_dir, clock=clock) as session:
            return await session.login(), None
    except ClientError as exc:
        # The device is enrolled either way; the caller says how to get a token later.
        return None, exc


def _force_hint(team: str) -> str:
    return (
        f"to remove this device's local state anyway, run `sft unenroll --team {team} --force` "
        "(a device still enrolled on the platform stays there until a team admin revokes it)"
    )


async def unenroll(home: Home, team: str | None, *, force: bool = False) -> UnenrollResult:
    """Revoke this machine's device in `team` on the platform, then delete its local state."""
    team_dir = home.enrolled(team)
    device, warning, revoked = "", None, False
    try:
        async with Session(team_dir) as session:
            device = session.record.device
            stub = device_service_pb2_grpc.DeviceServiceStub(session.channel())
            await stub.RevokeDevice(device_service_pb2.RevokeDeviceRequest(name=device))
            revoked = True
    except ClientError as exc:
        if not force:
            raise exc.with_hint(_force_hint(team_dir.team)) from None
        warning = exc.reason
    home.remove_team_dir(team_dir)
    return UnenrollResult(team_dir.team, device, revoked, warning)
