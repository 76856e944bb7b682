"""Tunnel refusals through the real gRPC server: every refusal ends the call with one status."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import grpc
import grpc.aio
import pytest

from runtime.server import Endpoint
from services.broker.tests.conftest import BrokerWorld
from sft.broker.v1 import broker_pb2, broker_service_pb2
from tests.support.ports import free_port

Request = broker_service_pb2.TunnelRequest


def _open(grant_id: str) -> Request:
    return Request(open=broker_pb2.TunnelOpen(grant_id=grant_id))


def _data(payload: bytes) -> Request:
    return Request(data=broker_pb2.Frame(payload=payload))


async def _status(call: Any) -> tuple[grpc.StatusCode, str]:
    """Read the call to its end; return its status and details."""
    try:
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details()
    return await call.code(), await call.details()


async def _refused(world: BrokerWorld, *messages: Request, stub: Any = None) -> tuple[Any, str]:
    """Send `messages`, then read until the end; return the status (refusal expected)."""
    call = (stub or world.stub()).Tunnel()
    for message in messages:
        await call.write(message)
    return await _status(call)


async def test_first_message_without_open_is_invalid(world: BrokerWorld) -> None:
    code, details = await _refused(world, _data(b"x"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "open" in details


async def test_first_message_with_open_and_a_frame_is_invalid(world: BrokerWorld) -> None:
    grant_id = await world.grant()
    both = Request(
        open=broker_pb2.TunnelOpen(grant_id=grant_id), data=broker_pb2.Frame(payload=b"x")
    )
    code, _ = await _refused(world, both)
    assert code is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_stream_ended_before_open_is_invalid(world: BrokerWorld) -> None:
    call = world.stub().Tunnel()
    await call.done_writing()
    code, _ = await _status(call)
    assert code is grpc.StatusCode.INVALID_ARGUMENT


async def test_malformed_grant_id_is_invalid(world: BrokerWorld) -> None:
    code, details = await _refused(world, _open("no spaces/here"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "grant_id" in details


@pytest.mark.parametrize(
    ("second", "words"),
    [
        (_open("again"), "one `open`"),
        (_data(b"x" * 65537), "over the 65536-byte limit"),
        (_data(b""), "empty"),
        (Request(), "one `data` frame"),
    ],
    ids=["second-open", "oversized-frame", "empty-frame", "missing-frame"],
)
async def test_malformed_later_messages_end_the_call(
    world: BrokerWorld, second: Request, words: str
) -> None:
    grant_id = await world.grant()
    call = world.stub().Tunnel()
    await call.write(_open(grant_id))
    first = await call.read()
    assert first.HasField("opened")
    await call.write(second)
    code, details = await _status(call)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert words in details


async def test_unknown_grant_is_not_found(world: BrokerWorld) -> None:
    code, _ = await _refused(world, _open("nosuchgrant"))
    assert code is grpc.StatusCode.NOT_FOUND


async def test_another_users_grant_is_denied(world: BrokerWorld) -> None:
    grant_id = await world.grant()
    bob = world.stub(world.pki.client_cert("bob", "bob"))
    code, _ = await _refused(world, _open(grant_id), stub=bob)
    assert code is grpc.StatusCode.PERMISSION_DENIED


async def test_same_user_with_another_account_is_denied(world: BrokerWorld) -> None:
    grant_id = await world.grant()
    other_account = world.stub(world.pki.client_cert("alice", "bob"))
    code, _ = await _refused(world, _open(grant_id), stub=other_account)
    assert code is grpc.StatusCode.PERMISSION_DENIED


async def test_released_grant_is_a_failed_precondition(world: BrokerWorld) -> None:
    stub = world.stub()
    grant_id = await world.grant(stub)
    await stub.ReleaseAccess(broker_service_pb2.ReleaseAccessRequest(grant_id=grant_id))
    code, details = await _refused(world, _open(grant_id), stub=stub)
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "request access again" in details


@pytest.mark.parametrize(
    "broker_options", [{"grant_seconds": 0.3}], indirect=True, ids=["short-grant"]
)
async def test_expired_grant_is_a_failed_precondition(world: BrokerWorld) -> None:
    grant_id = await world.grant()
    await world.agent.wait_disabled(grant_id)
    code, _ = await _refused(world, _open(grant_id))
    assert code is grpc.StatusCode.FAILED_PRECONDITION


_CLOSED_PORT = free_port()


@pytest.mark.parametrize(
    "broker_options",
    [{"target": Endpoint("127.0.0.1", _CLOSED_PORT)}],
    indirect=True,
    ids=["closed-port"],
)
async def test_unreachable_target_is_unavailable(world: BrokerWorld) -> None:
    grant_id = await world.grant()
    code, details = await _refused(world, _open(grant_id))
    assert code is grpc.StatusCode.UNAVAILABLE
    assert f"cannot reach the RDP service at 127.0.0.1:{_CLOSED_PORT}" in details


@pytest.mark.parametrize(
    "broker_options",
    [{"max_tunnels_per_user": 2, "max_tunnels": 3}],
    indirect=True,
    ids=["limits"],
)
async def test_concurrency_limits_are_resource_exhausted(world: BrokerWorld) -> None:
    alice = world.stub()
    grant_id = await world.grant(alice)
    calls = []
    for _ in range(2):
        call = alice.Tunnel()
        await call.write(_open(grant_id))
        assert (await call.read()).HasField("opened")
        calls.append(call)
    code, details = await _refused(world, _open(grant_id), stub=alice)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 tunnels open" in details
    bob = world.stub(world.pki.client_cert("bob", "bob"))
    bob_grant = await world.grant(bob)
    call = bob.Tunnel()
    await call.write(_open(bob_grant))
    assert (await call.read()).HasField("opened")
    code, details = await _refused(world, _open(bob_grant), stub=bob)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 3 tunnels" in details
    # A closed tunnel frees its place.
    calls[0].cancel()
    await asyncio.sleep(0.2)
    again = alice.Tunnel()
    await again.write(_open(grant_id))
    assert (await again.read()).HasField("opened")
    for open_call in (*calls, call, again):
        open_call.cancel()


@pytest.mark.parametrize(
    ("client", "code"),
    [
        ({"uris": ["sft://acme/win/users/alice"]}, grpc.StatusCode.UNAUTHENTICATED),
        (
            {"uris": ["sft://acme/win/users/alice", "sft://acme/win/accounts/%zz"]},
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        ({"server": "srv-2"}, grpc.StatusCode.PERMISSION_DENIED),
        (
            {"uris": ["sft://acme/other/users/alice", "sft://acme/other/accounts/alice"]},
            grpc.StatusCode.PERMISSION_DENIED,
        ),
    ],
    ids=["no-account", "garbled-uri", "other-server", "other-project"],
)
async def test_identity_refusals_on_request_access(
    world: BrokerWorld, client: dict[str, Any], code: grpc.StatusCode
) -> None:
    stub = world.stub(world.pki.client_cert(**client))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.RequestAccess(broker_service_pb2.RequestAccessRequest())
    assert refused.value.code() is code
    assert not world.agent.calls


async def test_request_access_for_an_unmanaged_account_is_not_found(world: BrokerWorld) -> None:
    stub = world.stub(world.pki.client_cert("carol", "carol"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.RequestAccess(broker_service_pb2.RequestAccessRequest())
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND


async def test_request_access_with_the_agent_down_is_unavailable(world: BrokerWorld) -> None:
    world.agent.socket_path.unlink()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await world.stub().RequestAccess(broker_service_pb2.RequestAccessRequest())
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "\n" not in (refused.value.details() or "")


async def test_request_access_returns_a_grant_with_a_password(world: BrokerWorld) -> None:
    reply = await world.stub().RequestAccess(broker_service_pb2.RequestAccessRequest())
    grant = reply.grant
    assert grant.account_name == "alice"
    assert grant.password == world.agent.passwords["alice"]
    assert len(grant.grant_id) >= 24
    remaining = grant.expire_time.ToDatetime(tzinfo=dt.UTC) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(seconds=290) < remaining <= dt.timedelta(seconds=300)
    assert world.agent.enabled(grant.grant_id)[0].ttl_seconds == 300


async def test_release_of_another_users_grant_is_denied(world: BrokerWorld) -> None:
    grant_id = await world.grant()
    bob = world.stub(world.pki.client_cert("bob", "bob"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await bob.ReleaseAccess(broker_service_pb2.ReleaseAccessRequest(grant_id=grant_id))
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert not world.agent.disabled(grant_id)


async def test_release_of_an_unknown_grant_is_ok(world: BrokerWorld) -> None:
    await world.stub().ReleaseAccess(broker_service_pb2.ReleaseAccessRequest(grant_id="unknown"))
    assert not world.agent.disabled("unknown")
