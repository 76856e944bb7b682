"""The auth service's device and token servicers: validate → authorize → one
transaction → protobuf. No SQL and no crypto here. Never logs a code, assertion or
token.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

from runtime.authorization import Need, RoleResolver, requires
from runtime.cert_uris import split_team_name, split_user_name
from runtime.clock import Clock, timestamp, utc_now
from runtime.database import Database
from runtime.errors import InvalidInput, PermissionDenied, ResourceExhausted, Unauthenticated
from runtime.identity import ANONYMOUS, CallerKind, Identity, current_identity
from runtime.pinned_codes import CodeKind, PinnedCode
from services.auth import repository
from services.auth.access_tokens import (
    ACCESS_TOKEN_TTL_SECONDS,
    hash_access_token,
    new_access_token,
)
from services.auth.assertions import read_assertion_header, verify_assertion
from services.auth.device_keys import parse_device_key
from services.auth.models import AccessTokenRow, DeviceRow
from sft.auth.v1 import (
    device_pb2,
    device_service_pb2,
    device_service_pb2_grpc,
    identity_pb2,
    token_service_pb2,
    token_service_pb2_grpc,
)

__all__ = ["DeviceServicer", "TokenServicer", "TokenVerifier"]

Context = Any  # grpc.aio.ServicerContext; grpc ships no type information

#: Refused enrollment-code guesses allowed per source address and window.
ENROLL_FAILURES_ALLOWED = 10
ENROLL_FAILURE_WINDOW = dt.timedelta(minutes=10)
_PEER_IP = re.compile(r"^ipv[46]:\[?([0-9A-Fa-f:.]+)\]?:\d+$")
_KINDS = {
    "user": identity_pb2.IDENTITY_KIND_USER,
    "service_user": identity_pb2.IDENTITY_KIND_SERVICE_USER,
    "server": identity_pb2.IDENTITY_KIND_SERVER,
}
_STATES = {
    repository.DEVICE_ACTIVE: device_pb2.DEVICE_STATE_ACTIVE,
    repository.DEVICE_REVOKED: device_pb2.DEVICE_STATE_REVOKED,
}


def _peer_source(context: Context) -> str:
    peer = str(context.peer() or "")
    match = _PEER_IP.match(peer)
    return match.group(1) if match else peer[:64]


def _bounded(value: str, field: str, limit: int) -> str:
    if len(value) > limit or any(ch in value for ch in "\r\n\0"):
        raise InvalidInput(f"{field} must be one line of at most {limit} characters")
    return value


def device_message(row: DeviceRow) -> device_pb2.Device:
    """Return the protobuf view of a device row."""
    message = device_pb2.Device(
        name=f"{row.user}/devices/{row.id}",
        display_name=row.display_name,
        hostname=row.hostname,
        os=row.os,
        public_key=row.public_key,
        public_key_fingerprint=row.fingerprint,
        state=_STATES[row.state],
        create_time=timestamp(row.create_time),
    )
    if row.last_use_time is not None:
        message.last_use_time.CopyFrom(timestamp(row.last_use_time))
    if row.revoke_time is not None:
        message.revoke_time.CopyFrom(timestamp(row.revoke_time))
    return message


def _identity_message(row: AccessTokenRow, device: str) -> identity_pb2.Identity:
    message = identity_pb2.Identity(
        kind=_KINDS[row.kind],
        team=f"teams/{row.team}",
        token_id=row.id,
        expire_time=timestamp(row.expire_time),
    )
    if row.kind == "server":
        message.server = row.principal
    else:
        message.user = row.principal
    if device:
        message.device = device
    return message


def _require_user() -> Identity:
    identity = current_identity.get()
    if identity is ANONYMOUS or identity.kind is CallerKind.ANONYMOUS:
        raise Unauthenticated(
            "this call needs an access token; run `sft login` (or `sft enroll` first)"
        )
    if identity.kind is not CallerKind.USER:
        raise PermissionDenied("only a person on an enrolled device may manage devices")
    return identity


class DeviceServicer(device_service_pb2_grpc.DeviceServiceServicer):
    """Serves sft.auth.v1.DeviceService."""

    def __init__(self, database: Database, roles: RoleResolver, clock: Clock = utc_now) -> None:
        self._database = database
        self.roles = roles
        self._clock = clock

    @requires(Need.ANYONE)  # the enrollment code is the credential
    async def EnrollDevice(
        self, request: device_service_pb2.EnrollDeviceRequest, context: Context
    ) -> device_service_pb2.EnrollDeviceResponse:
        """Bind a new device key to the user an enrollment code was made for."""
        team = split_team_name(request.team)
        key = parse_device_key(request.public_key)
        display_name = _bounded(request.display_name or request.hostname, "display_name", 200)
        hostname = _bounded(request.hostname, "hostname", 253)
        os_name = _bounded(request.os, "os", 64)
        source, now = _peer_source(context), self._clock()
        await self._check_guess_budget(source, now)
        try:
            code = PinnedCode.parse(request.code, CodeKind.DEVICE_ENROLLMENT)
        except InvalidInput as error:
            await self._record_failure(source, now)
            raise Unauthenticated(error.message) from None
        try:
            async with self._database.sessions.begin() as session:
                redeemed = await repository.redeem_enrollment_code(
                    session, team, code.secret_hash, now
                )
                row = await repository.create_device(
                    session,
                    team=team,
                    user=redeemed.user,
                    display_name=display_name or "device",
                    hostname=hostname,
                    os=os_name,
                    public_key=key.public_line,
                    fingerprint=key.fingerprint,
                    now=now,
                )
        except Unauthenticated:
            await self._record_failure(source, now)
            raise
        return device_service_pb2.EnrollDeviceResponse(
            device=device_message(row), user=redeemed.user
        )

    async def _check_guess_budget(self, source: str, now: dt.datetime) -> None:
        async with self._database.sessions() as session:
            failures = await repository.count_failed_attempts(
                session, "enroll", source, now - ENROLL_FAILURE_WINDOW
            )
        if failures >= ENROLL_FAILURES_ALLOWED:
            minutes = int(ENROLL_FAILURE_WINDOW.total_seconds() // 60)
            raise ResourceExhausted(
                f"too many refused enrollment codes from {source}; wait {minutes} minutes "
                "and check the code with whoever issued it"
            )

    async def _record_failure(self, source: str, now: dt.datetime) -> None:
        # Its own transaction: the refused call's work is rolled back, the record stays.
        async with self._database.sessions.begin() as session:
            await repository.record_failed_attempt(
                session, "enroll", source, now, keep_since=now - ENROLL_FAILURE_WINDOW
            )

    @requires(Need.MEMBER, resource="parent")
    async def ListDevices(
        self, request: device_service_pb2.ListDevicesRequest, context: Context
    ) -> device_service_pb2.ListDevicesResponse:
        """List the caller's own devices, newest first."""
        identity = _require_user()
        if request.parent.endswith("/users/-"):
            split_team_name(request.parent.removesuffix("/users/-"))
            raise PermissionDenied(
                "listing every user's devices needs the team admin role; list your own with "
                f"parent {identity.user_resource}"
            )
        split_user_name(request.parent)
        if request.parent != identity.user_resource:
            raise PermissionDenied(
                "you may list only your own devices (teams/TEAM/users/YOU); listing other "
                "users' devices needs the team admin role"
            )
        if request.page_size < 0:
            raise InvalidInput("page_size must not be negative; use 0 for the default of 50")
        state = {
            device_pb2.DEVICE_STATE_ACTIVE: repository.DEVICE_ACTIVE,
            device_pb2.DEVICE_STATE_REVOKED: repository.DEVICE_REVOKED,
        }.get(request.state)
        async with self._database.sessions() as session:
            rows, token = await repository.list_devices(
                session,
                team=str(identity.team),
                user=identity.user_resource,
                state=state,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        return device_service_pb2.ListDevicesResponse(
            devices=[device_message(row) for row in rows], next_page_token=token
        )

    @requires(Need.MEMBER, resource="name")
    async def RevokeDevice(
        self, request: device_service_pb2.RevokeDeviceRequest, context: Context
    ) -> device_service_pb2.RevokeDeviceResponse:
        """Revoke one of the caller's devices; its key and tokens stop working now."""
        identity = _require_user()
        user, marker, device_id = request.name.rpartition("/devices/")
        if not marker or not device_id or "/" in device_id:
            raise InvalidInput(
                f"device {request.name!r} is not a device resource name; use "
                "teams/TEAM/users/USER/devices/DEVICE"
            )
        split_user_name(user)
        if user != identity.user_resource:
            raise PermissionDenied(
                "you may revoke only your own devices; revoking another user's device needs "
                "the team admin role"
            )
        async with self._database.sessions.begin() as session:
            row = await repository.get_device(session, user, device_id)
            await repository.revoke_device(session, row, self._clock())
        return device_service_pb2.RevokeDeviceResponse(device=device_message(row))


class TokenServicer(token_service_pb2_grpc.TokenServiceServicer):
    """Serves sft.auth.v1.TokenService (device assertions; agents and service users later)."""

    def __init__(
        self,
        database: Database,
        clock: Clock = utc_now,
        ttl: dt.timedelta = dt.timedelta(seconds=ACCESS_TOKEN_TTL_SECONDS),
    ) -> None:
        self._database = database
        self._clock = clock
        self._ttl = ttl
        self._verifier = TokenVerifier(database, clock)

    @requires(Need.ANYONE)  # the signed assertion is the credential
    async def CreateAccessToken(
        self, request: token_service_pb2.CreateAccessTokenRequest, context: Context
    ) -> token_service_pb2.CreateAccessTokenResponse:
        """Exchange a device's signed assertion for a short-lived access token."""
        header = read_assertion_header(request.assertion)
        now = self._clock()
        async with self._database.sessions.begin() as session:
            device = await repository.device_by_fingerprint(session, header.key_fingerprint)
            if device is None or f"{device.user}/devices/{device.id}" != header.issuer:
                raise Unauthenticated(
                    "the platform knows no device with this key; enroll it with `sft enroll`"
                )
            if device.state != repository.DEVICE_ACTIVE:
                raise Unauthenticated(
                    "this device was revoked; remove its local state (`sft unenroll --force`) "
                    "and enroll again with a new code"
                )
            verified = verify_assertion(
                request.assertion, parse_device_key(device.public_key).key, header.issuer, now
            )
            await repository.spend_assertion(
                session, verified.issuer, verified.jti, verified.expire_time, now
            )
            token = new_access_token()
            token_hash = hash_access_token(token)
            assert token_hash is not None, "new_access_token makes tokens hash_access_token takes"
            row = await repository.create_access_token(
                session,
                token_hash=token_hash,
                kind="user",
                team=device.team,
                principal=device.user,
                device_id=device.id,
                now=now,
                expire_time=now + self._ttl,
            )
            device.last_use_time = now
        return token_service_pb2.CreateAccessTokenResponse(
            access_token=token,
            expire_time=timestamp(row.expire_time),
            identity=_identity_message(row, header.issuer),
        )

    @requires(Need.PLATFORM_SERVICE)
    async def VerifyAccessToken(
        self, request: token_service_pb2.VerifyAccessTokenRequest, context: Context
    ) -> token_service_pb2.VerifyAccessTokenResponse:
        """Say whom a token identifies (platform services only)."""
        row = await self._verifier.token_row(request.access_token)
        device = f"{row.principal}/devices/{row.device_id}" if row.device_id else ""
        return token_service_pb2.VerifyAccessTokenResponse(identity=_identity_message(row, device))


class TokenVerifier:
    """Turns `authorization: Bearer …` metadata into an Identity (the platform's authenticator)."""

    def __init__(self, database: Database, clock: Clock = utc_now) -> None:
        self._database = database
        self._clock = clock

    async def token_row(self, token: str) -> AccessTokenRow:
        """Return the live token row for `token`, or raise Unauthenticated."""
        token_hash = hash_access_token(token)
        row = None
        if token_hash is not None:
            async with self._database.sessions() as session:
                row = await repository.find_access_token(session, token_hash, self._clock())
        if row is None:
            raise Unauthenticated(
                "the access token is unknown, expired or revoked; run `sft login` for a new one"
            )
        return row

    async def __call__(self, metadata: Sequence[tuple[str, str | bytes]]) -> Identity:
        """Return the caller a bearer token names; anonymous without one."""
        for key, value in metadata:
            if key != "authorization":
                continue
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("the authorization header must be `Bearer <access token>`")
            row = await self.token_row(token.strip())
            if row.kind == "server":
                server_id = row.principal.rpartition("/")[2]
                return Identity(CallerKind.AGENT, server_id, row.team, token_id=row.id)
            _, user = split_user_name(row.principal)
            kind = CallerKind.USER if row.kind == "user" else CallerKind.SERVICE_USER
            device = f"{row.principal}/devices/{row.device_id}" if row.device_id else None
            return Identity(kind, user, row.team, device=device, token_id=row.id)
        return ANONYMOUS
