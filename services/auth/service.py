"""The auth service's device servicer: validate → authorize → one transaction →
protobuf, auditing each enrollment and revocation in the same transaction. No SQL and
no crypto here; never logs an enrollment code.

Tokens (TokenService) and the token checker live in services.auth.token_service; they
are re-exported here for the composition root.
"""

from __future__ import annotations

from typing import Any

from runtime.audit import audit_event
from runtime.authorization import Need, RoleResolver, requires
from runtime.cert_uris import split_team_name, split_user_name
from runtime.clock import Clock, timestamp, utc_now
from runtime.database import Database
from runtime.errors import InvalidInput, PermissionDenied, Unauthenticated
from runtime.identity import ANONYMOUS, CallerKind, Identity, current_identity
from runtime.page_tokens import page_limit
from runtime.pinned_codes import CodeKind, PinnedCode
from services.auth import repository
from services.auth.audit_service import LocalAuditTrail
from services.auth.device_keys import parse_device_key
from services.auth.guesses import ENROLLMENT_CODES, peer_source
from services.auth.models import DeviceRow
from services.auth.standing import require_team_admin
from services.auth.token_service import TokenServicer, TokenVerifier
from sft.auth.v1 import audit_pb2, device_pb2, device_service_pb2, device_service_pb2_grpc

__all__ = [
    "ENROLL_FAILURES_ALLOWED",
    "DeviceServicer",
    "TokenServicer",
    "TokenVerifier",
    "device_message",
]

Context = Any  # grpc.aio.ServicerContext; grpc ships no type information

#: Refused enrollment-code guesses allowed per source address and window.
ENROLL_FAILURES_ALLOWED = ENROLLMENT_CODES.allowed
ENROLL_FAILURE_WINDOW = ENROLLMENT_CODES.window
_STATES = {
    repository.DEVICE_ACTIVE: device_pb2.DEVICE_STATE_ACTIVE,
    repository.DEVICE_REVOKED: device_pb2.DEVICE_STATE_REVOKED,
}


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

    def __init__(
        self,
        database: Database,
        roles: RoleResolver,
        clock: Clock = utc_now,
        *,
        trail: LocalAuditTrail | None = None,
    ) -> None:
        self._database = database
        self.roles = roles
        self._clock = clock
        self._trail = trail or LocalAuditTrail(database, clock)

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
        source, now = peer_source(context), self._clock()
        await ENROLLMENT_CODES.check(self._database, source, now)
        try:
            code = PinnedCode.parse(request.code, CodeKind.DEVICE_ENROLLMENT)
        except InvalidInput as error:
            await ENROLLMENT_CODES.spend(self._database, source, now)
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
                name = f"{row.user}/devices/{row.id}"
                _, user_id = split_user_name(row.user)
                await self._trail.append_in(
                    session,
                    team,
                    audit_event(
                        "device.enroll",
                        name,
                        details={
                            "device": name,
                            "fingerprint": row.fingerprint,
                            "hostname": row.hostname,
                        },
                        actor=Identity(CallerKind.USER, user_id, team, device=name),
                    ),
                )
        except Unauthenticated:
            await ENROLLMENT_CODES.spend(self._database, source, now)
            raise
        return device_service_pb2.EnrollDeviceResponse(
            device=device_message(row), user=redeemed.user
        )

    async def _require_team_admin(self, identity: Identity, doing: str) -> None:
        """Refuse unless `identity` is a team admin; `doing` says what needed it."""
        await require_team_admin(
            self.roles,
            identity,
            f"{doing} needs the team admin role in team {identity.team!r}, which "
            f"{identity.name!r} does not have",
        )

    @requires(Need.MEMBER, resource="parent")
    async def ListDevices(
        self, request: device_service_pb2.ListDevicesRequest, context: Context
    ) -> device_service_pb2.ListDevicesResponse:
        """List one user's devices (team admins: anyone's, or `users/-` for all), newest first."""
        identity = current_identity.get()
        user: str | None
        if request.parent.endswith("/users/-"):
            team = split_team_name(request.parent.removesuffix("/users/-"))
            user = None
            await self._require_team_admin(identity, "listing every user's devices")
        else:
            team, _ = split_user_name(request.parent)
            user = request.parent
            if user != identity.user_resource:
                await self._require_team_admin(
                    identity,
                    f"listing another user's devices (yours are under {identity.user_resource})",
                )
            else:
                _require_user()
        page_limit(request.page_size)
        state = {
            device_pb2.DEVICE_STATE_ACTIVE: repository.DEVICE_ACTIVE,
            device_pb2.DEVICE_STATE_REVOKED: repository.DEVICE_REVOKED,
        }.get(request.state)
        async with self._database.sessions() as session:
            rows, token = await repository.list_devices(
                session,
                team=team,
                user=user,
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
        """Revoke a device (your own, or anyone's as a team admin); its key and tokens stop now."""
        identity = current_identity.get()
        user, marker, device_id = request.name.rpartition("/devices/")
        if not marker or not device_id or "/" in device_id:
            raise InvalidInput(
                f"device {request.name!r} is not a device resource name; use "
                "teams/TEAM/users/USER/devices/DEVICE"
            )
        team, _ = split_user_name(user)
        if user == identity.user_resource:
            _require_user()
        else:
            try:
                await self._require_team_admin(identity, "revoking another user's device")
            except PermissionDenied as denied:
                await self._trail.append(
                    team,
                    audit_event(
                        "device.revoke",
                        request.name,
                        outcome=audit_pb2.AUDIT_OUTCOME_DENIED,
                        details={"reason": denied.message},
                    ),
                )
                raise
        async with self._database.sessions.begin() as session:
            row = await repository.get_device(session, user, device_id)
            was_active = row.state == repository.DEVICE_ACTIVE
            await repository.revoke_device(session, row, self._clock())
            if was_active:
                await self._trail.append_in(
                    session,
                    team,
                    audit_event(
                        "device.revoke",
                        request.name,
                        details={"device": request.name, "user": user},
                    ),
                )
        return device_service_pb2.RevokeDeviceResponse(device=device_message(row))
