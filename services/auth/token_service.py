"""The token servicer and the platform's token checker. Tokens come from three kinds of
proof: a device's signed assertion (a person), an agent's signed assertion (a server,
whose key the inventory holds), and a service user's API key id + secret. Only token
hashes are stored; no token, assertion or secret is ever logged.

A disabled or deleted user gets no token; the tokens they already hold stop working for
every MEMBER call at once, because each call re-reads the caller's standing from the
inventory (runtime.authorization), and IssueCredentials asks the inventory again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from runtime.authorization import Need, requires
from runtime.cert_uris import split_server_name, split_user_name
from runtime.clock import Clock, timestamp, utc_now
from runtime.database import Database
from runtime.errors import InvalidInput, Unauthenticated
from runtime.identity import ANONYMOUS, CallerKind, Identity
from services.auth import repository
from services.auth.access_tokens import (
    ACCESS_TOKEN_TTL_SECONDS,
    hash_access_token,
    new_access_token,
)
from services.auth.assertions import AssertionHeader, read_assertion_header, verify_assertion
from services.auth.device_keys import parse_device_key
from services.auth.guesses import SERVICE_KEYS, peer_source
from services.auth.inventory_calls import InventoryCalls
from services.auth.models import AccessTokenRow, DeviceRow
from services.auth.service_users import check_key_id, key_name, secret_matches
from sft.auth.v1 import identity_pb2, token_service_pb2, token_service_pb2_grpc

__all__ = ["KEY_FAILURES_ALLOWED", "TokenServicer", "TokenVerifier"]

Context = Any  # grpc.aio.ServicerContext; grpc ships no type information

#: Refused API key secrets allowed per source address and window.
KEY_FAILURES_ALLOWED = SERVICE_KEYS.allowed

_KINDS = {
    "user": identity_pb2.IDENTITY_KIND_USER,
    "service_user": identity_pb2.IDENTITY_KIND_SERVICE_USER,
    "server": identity_pb2.IDENTITY_KIND_SERVER,
}


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
    if row.service_key_id:
        _, user = split_user_name(row.principal)
        message.service_user_key = key_name(row.team, user, row.service_key_id)
    return message


class TokenServicer(token_service_pb2_grpc.TokenServiceServicer):
    """Serves sft.auth.v1.TokenService: tokens for devices, agents and service users."""

    def __init__(
        self,
        database: Database,
        inventory: InventoryCalls,
        clock: Clock = utc_now,
        ttl: dt.timedelta = dt.timedelta(seconds=ACCESS_TOKEN_TTL_SECONDS),
    ) -> None:
        self._database = database
        self._inventory = inventory
        self._clock = clock
        self._ttl = ttl
        self._verifier = TokenVerifier(database, clock)

    @requires(Need.ANYONE)  # the signed assertion is the credential
    async def CreateAccessToken(
        self, request: token_service_pb2.CreateAccessTokenRequest, context: Context
    ) -> token_service_pb2.CreateAccessTokenResponse:
        """Exchange a device's or an agent's signed assertion for a short-lived access token."""
        header = read_assertion_header(request.assertion)
        if "/servers/" in header.issuer:
            return await self._agent_token(request.assertion, header)
        now = self._clock()
        async with self._database.sessions() as session:
            device = await repository.device_by_fingerprint(session, header.key_fingerprint)
        _check_device(device, header.issuer)
        assert device is not None, "_check_device refuses a missing device"
        verified = verify_assertion(
            request.assertion, parse_device_key(device.public_key).key, header.issuer, now
        )
        # Only a proven key holder learns whether its user is disabled.
        await self._inventory.require_active(device.user)
        async with self._database.sessions.begin() as session:
            device = await repository.get_device(session, device.user, device.id)
            _check_device(device, header.issuer)
            await repository.spend_assertion(
                session, verified.issuer, verified.jti, verified.expire_time, now
            )
            row, token = await self._new_token(
                session,
                kind="user",
                team=device.team,
                principal=device.user,
                now=now,
                device_id=device.id,
            )
            device.last_use_time = now
        return token_service_pb2.CreateAccessTokenResponse(
            access_token=token,
            expire_time=timestamp(row.expire_time),
            identity=_identity_message(row, header.issuer),
        )

    async def _agent_token(
        self, assertion: str, header: AssertionHeader
    ) -> token_service_pb2.CreateAccessTokenResponse:
        """Exchange an agent's assertion (its server's key, held by the inventory)."""
        try:
            team, _, _ = split_server_name(header.issuer)
        except InvalidInput as error:
            raise Unauthenticated(
                f"the assertion's issuer is not a server: {error.message}"
            ) from None
        now = self._clock()
        server = await self._inventory.server(header.issuer)
        re_enroll = (
            "re-enroll this server: put a new enrollment token in sftd's EnrollmentTokenFile, "
            "remove its state dir and restart sftd"
        )
        if server is None or server.name != header.issuer:
            raise Unauthenticated(
                f"server {header.issuer} is not enrolled (it was deleted, or never enrolled); "
                f"{re_enroll}"
            )
        try:
            key = parse_device_key(server.agent_public_key)
        except InvalidInput:
            raise Unauthenticated(
                f"the platform holds no usable agent key for this server; {re_enroll}"
            ) from None
        if key.fingerprint != header.key_fingerprint:
            raise Unauthenticated(
                f"the assertion's key ({header.key_fingerprint}) is not the agent key enrolled "
                f"for server {header.issuer}; {re_enroll}"
            )
        verified = verify_assertion(assertion, key.key, header.issuer, now)
        async with self._database.sessions.begin() as session:
            await repository.spend_assertion(
                session, verified.issuer, verified.jti, verified.expire_time, now
            )
            row, token = await self._new_token(
                session, kind="server", team=team, principal=header.issuer, now=now
            )
        return token_service_pb2.CreateAccessTokenResponse(
            access_token=token,
            expire_time=timestamp(row.expire_time),
            identity=_identity_message(row, ""),
        )

    @requires(Need.ANYONE)  # the key secret is the credential
    async def CreateServiceUserToken(
        self, request: token_service_pb2.CreateServiceUserTokenRequest, context: Context
    ) -> token_service_pb2.CreateServiceUserTokenResponse:
        """Exchange a service user's API key id and secret for a short-lived access token."""
        source, now = peer_source(context), self._clock()
        await SERVICE_KEYS.check(self._database, source, now)
        # One message for every refusal: a guesser learns nothing about which keys exist.
        refused = Unauthenticated(
            "the API key id or secret is wrong, or the key was deleted; a team admin can make "
            "a new key with `sft admin service-user key create`"
        )
        try:
            key_id: str | None = check_key_id(request.key_id)
        except InvalidInput:
            key_id = None
        found = None
        if key_id is not None:
            async with self._database.sessions() as session:
                found = await repository.get_service_key(session, key_id)
        if not secret_matches(request.secret, found[0].secret_hash if found else None):
            await SERVICE_KEYS.spend(self._database, source, now)
            raise refused
        assert found is not None and key_id is not None, "secret_matches refuses unknown keys"
        service_user = found[1]
        user = f"teams/{service_user.team}/users/{service_user.name}"
        await self._inventory.require_active(user)
        async with self._database.sessions.begin() as session:
            current = await repository.get_service_key(session, key_id)
            if current is None:  # deleted a moment ago
                raise refused
            key = current[0]
            row, token = await self._new_token(
                session,
                kind="service_user",
                team=service_user.team,
                principal=user,
                now=now,
                service_key_id=key.id,
            )
            key.last_use_time = now
        return token_service_pb2.CreateServiceUserTokenResponse(
            access_token=token,
            expire_time=timestamp(row.expire_time),
            identity=_identity_message(row, ""),
        )

    async def _new_token(
        self,
        session: AsyncSession,
        *,
        kind: str,
        team: str,
        principal: str,
        now: dt.datetime,
        device_id: str | None = None,
        service_key_id: str | None = None,
    ) -> tuple[AccessTokenRow, str]:
        """Record a fresh token by its hash and return its row and the token (shown once)."""
        token = new_access_token()
        token_hash = hash_access_token(token)
        assert token_hash is not None, "new_access_token makes tokens hash_access_token takes"
        row = await repository.create_access_token(
            session,
            token_hash=token_hash,
            kind=kind,
            team=team,
            principal=principal,
            device_id=device_id,
            service_key_id=service_key_id,
            now=now,
            expire_time=now + self._ttl,
        )
        return row, token

    @requires(Need.PLATFORM_SERVICE)
    async def VerifyAccessToken(
        self, request: token_service_pb2.VerifyAccessTokenRequest, context: Context
    ) -> token_service_pb2.VerifyAccessTokenResponse:
        """Say whom a token identifies (platform services only)."""
        row = await self._verifier.token_row(request.access_token)
        device = f"{row.principal}/devices/{row.device_id}" if row.device_id else ""
        return token_service_pb2.VerifyAccessTokenResponse(identity=_identity_message(row, device))


def _check_device(device: DeviceRow | None, issuer: str) -> None:
    """Refuse an assertion whose key is no active device of the issuer it names."""
    if device is None or f"{device.user}/devices/{device.id}" != issuer:
        raise Unauthenticated(
            "the platform knows no device with this key; enroll it with `sft enroll`"
        )
    if device.state != repository.DEVICE_ACTIVE:
        raise Unauthenticated(
            "this device was revoked; remove its local state (`sft unenroll --force`) "
            "and enroll again with a new code"
        )


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
