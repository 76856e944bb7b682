"""A small stand-in for the platform's DeviceService and TokenService on a loopback TLS port.

It checks what the real one checks where the client's behaviour depends on it
(single-use codes, the assertion's signature and claims, bearer tokens) and records
every call, so tests can say what the client sent, and what it did not.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.timestamp_pb2 import Timestamp

from client.pinning import certificate_sha256
from client.tests.pki import ThrowawayPKI, make_pki
from runtime.pinned_codes import CodeKind, PinnedCode
from sft.auth.v1 import (
    device_pb2,
    device_service_pb2,
    device_service_pb2_grpc,
    identity_pb2,
    token_service_pb2,
    token_service_pb2_grpc,
)

__all__ = ["PROBE_METHOD_READ", "PROBE_METHOD_WRITE", "Call", "FakePlatform"]

Context = Any
PROBE_SERVICE = "sft.test.v1.Probe"
PROBE_METHOD_READ = f"/{PROBE_SERVICE}/GetThing"
PROBE_METHOD_WRITE = f"/{PROBE_SERVICE}/CreateThing"


@dataclass(frozen=True)
class Call:
    """One call the fake received: which method, and the bearer token it carried."""

    method: str
    bearer: str | None


def _bearer(context: Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return str(value).removeprefix("Bearer ")
    return None


def _timestamp(value: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


@dataclass
class FakePlatform:
    """The fake's state; `start()` serves it on 127.0.0.1."""

    pki: ThrowawayPKI = field(default_factory=make_pki)
    token_ttl: dt.timedelta = dt.timedelta(hours=1)
    codes: set[str] = field(default_factory=set)
    devices: dict[str, str] = field(default_factory=dict)  # name -> public key line
    revoked: set[str] = field(default_factory=set)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> device
    calls: list[Call] = field(default_factory=list)
    enroll_requests: list[device_service_pb2.EnrollDeviceRequest] = field(default_factory=list)
    port: int = 0
    _server: Any = None
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        """Return the URL the client is given."""
        return f"https://127.0.0.1:{self.port}"

    def new_code(self) -> str:
        """Return a fresh single-use code pinned to this fake's CA."""
        code = PinnedCode.generate(CodeKind.DEVICE_ENROLLMENT, certificate_sha256(self.pki.ca))
        self.codes.add(code.encode())
        return code.encode()

    def methods(self) -> list[str]:
        """Return the names of the methods called so far, in order."""
        return [call.method.rsplit("/", 1)[-1] for call in self.calls]

    def forget_tokens(self) -> None:
        """Make every token issued so far unknown (as after a platform-side revocation)."""
        self.tokens.clear()

    async def start(self) -> FakePlatform:
        """Serve on a free loopback port."""
        server = grpc.aio.server()
        device_service_pb2_grpc.add_DeviceServiceServicer_to_server(_Devices(self), server)
        token_service_pb2_grpc.add_TokenServiceServicer_to_server(_Tokens(self), server)
        server.add_generic_rpc_handlers([_probe_handler(self)])
        credentials = grpc.ssl_server_credentials([(self.pki.leaf_key_pem, self.pki.chain_pem)])
        self.port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        self._server = server
        return self

    async def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            await self._server.stop(None)
            self._server = None

    async def authenticate(self, context: Context, method: str) -> str:
        """Record the call; return the device its token names or abort UNAUTHENTICATED."""
        bearer = _bearer(context)
        self.calls.append(Call(method, bearer))
        device = self.tokens.get(bearer or "")
        if device is None or device in self.revoked:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the access token is unknown")
        assert device is not None
        return device


class _Devices(device_service_pb2_grpc.DeviceServiceServicer):
    def __init__(self, fake: FakePlatform) -> None:
        self.fake = fake

    async def EnrollDevice(
        self, request: device_service_pb2.EnrollDeviceRequest, context: Context
    ) -> device_service_pb2.EnrollDeviceResponse:
        self.fake.calls.append(Call("/sft.auth.v1.DeviceService/EnrollDevice", _bearer(context)))
        self.fake.enroll_requests.append(request)
        if request.code not in self.fake.codes:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown code")
        self.fake.codes.discard(request.code)
        team = request.team.removeprefix("teams/")
        user = f"teams/{team}/users/ada"
        name = f"{user}/devices/d{next(self.fake._ids)}"
        self.fake.devices[name] = request.public_key
        return device_service_pb2.EnrollDeviceResponse(
            device=device_pb2.Device(name=name, public_key=request.public_key), user=user
        )

    async def ListDevices(
        self, request: device_service_pb2.ListDevicesRequest, context: Context
    ) -> device_service_pb2.ListDevicesResponse:
        device = await self.fake.authenticate(context, "/sft.auth.v1.DeviceService/ListDevices")
        return device_service_pb2.ListDevicesResponse(devices=[device_pb2.Device(name=device)])

    async def RevokeDevice(
        self, request: device_service_pb2.RevokeDeviceRequest, context: Context
    ) -> device_service_pb2.RevokeDeviceResponse:
        await self.fake.authenticate(context, "/sft.auth.v1.DeviceService/RevokeDevice")
        self.fake.revoked.add(request.name)
        return device_service_pb2.RevokeDeviceResponse(device=device_pb2.Device(name=request.name))


class _Tokens(token_service_pb2_grpc.TokenServiceServicer):
    def __init__(self, fake: FakePlatform) -> None:
        self.fake = fake

    async def CreateAccessToken(
        self, request: token_service_pb2.CreateAccessTokenRequest, context: Context
    ) -> token_service_pb2.CreateAccessTokenResponse:
        self.fake.calls.append(
            Call("/sft.auth.v1.TokenService/CreateAccessToken", _bearer(context))
        )
        issuer = jwt.decode(request.assertion, options={"verify_signature": False})["iss"]
        line = self.fake.devices.get(issuer)
        if line is None or issuer in self.fake.revoked:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "this device was revoked")
        assert line is not None
        key = serialization.load_ssh_public_key(line.encode())
        assert isinstance(key, ed25519.Ed25519PublicKey)
        try:
            jwt.decode(
                request.assertion,
                key,
                algorithms=["EdDSA"],
                audience="/sft.auth.v1.TokenService/CreateAccessToken",
                issuer=issuer,
                options={"verify_exp": False, "verify_iat": False},
            )
        except jwt.PyJWTError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"bad assertion: {exc}")
        token = f"token-{next(self.fake._ids)}"
        self.fake.tokens[token] = issuer
        expire = dt.datetime.now(dt.UTC) + self.fake.token_ttl
        user = issuer.rsplit("/devices/", 1)[0]
        return token_service_pb2.CreateAccessTokenResponse(
            access_token=token,
            expire_time=_timestamp(expire),
            identity=identity_pb2.Identity(
                kind=identity_pb2.IDENTITY_KIND_USER,
                team="teams/acme",
                user=user,
                device=issuer,
                token_id=token.upper(),
                expire_time=_timestamp(expire),
            ),
        )


def _probe_handler(fake: FakePlatform) -> Any:
    def answering(method: str) -> Any:
        async def answer(request: bytes, context: Context) -> bytes:
            await fake.authenticate(context, method)
            return b"ok:" + request

        return grpc.unary_unary_rpc_method_handler(answer)

    return grpc.method_handlers_generic_handler(
        PROBE_SERVICE,
        {"GetThing": answering(PROBE_METHOD_READ), "CreateThing": answering(PROBE_METHOD_WRITE)},
    )
