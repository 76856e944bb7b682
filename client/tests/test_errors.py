"""gRPC statuses become one line that says what to do."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest

from client.errors import (
    ENROLL_METHOD,
    LOGIN_METHOD,
    PlatformUnreachable,
    RpcFailure,
    describe_rpc_failure,
)

URL = "https://sft.example.com:443"


@dataclass
class FakeRpcError:
    status: grpc.StatusCode
    message: str

    def code(self) -> grpc.StatusCode:
        return self.status

    def details(self) -> str:
        return self.message


def test_refused_enrollment_code_names_who_issues_a_new_one() -> None:
    error = describe_rpc_failure(
        FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "code expired 3h ago"),
        method=ENROLL_METHOD,
        url=URL,
    )
    assert isinstance(error, RpcFailure) and error.status == "UNAUTHENTICATED"
    assert error.message == (
        "the enrollment code is unknown, used or expired; ask a team admin for a new one "
        "(`sft admin user invite`)"
    )


def test_unavailable_names_the_platform_and_the_cause() -> None:
    error = describe_rpc_failure(
        FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"),
        method="/sft.auth.v1.DeviceService/ListDevices",
        url=URL,
    )
    assert isinstance(error, PlatformUnreachable)
    assert (
        error.message == f"cannot reach the platform at {URL}: failed to connect to all addresses"
    )


def test_refused_device_key_says_how_to_forget_the_device() -> None:
    error = describe_rpc_failure(
        FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "this device was revoked"),
        method=LOGIN_METHOD,
        url=URL,
        team="acme",
    )
    assert error.reason == "the platform refused this device's key (this device was revoked)"
    assert "`sft unenroll --team acme --force`" in error.message


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, f"the platform at {URL} did not answer in time"),
        (grpc.StatusCode.UNIMPLEMENTED, f"the platform at {URL} does not offer ListDevices yet"),
        (grpc.StatusCode.INTERNAL, f"the platform at {URL} failed (boom, request id r-1)"),
        (grpc.StatusCode.PERMISSION_DENIED, "boom, request id r-1"),
        (grpc.StatusCode.INVALID_ARGUMENT, "boom, request id r-1"),
    ],
)
def test_other_statuses_keep_the_platforms_words(status: grpc.StatusCode, expected: str) -> None:
    error = describe_rpc_failure(
        FakeRpcError(status, "boom, request id r-1"),
        method="/sft.auth.v1.DeviceService/ListDevices",
        url=URL,
    )
    assert error.reason == expected
    assert "\n" not in error.message
    assert error.exit_code == 1


def test_an_empty_status_message_still_says_something() -> None:
    error = describe_rpc_failure(
        FakeRpcError(grpc.StatusCode.NOT_FOUND, ""), method="/x.v1.S/GetThing", url=URL
    )
    assert error.message == "not found"
