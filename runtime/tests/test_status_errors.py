"""One table turns a peer's gRPC refusal into sft's domain error."""

from __future__ import annotations

import grpc
import pytest

from runtime.errors import Conflict, NotFound, ResourceExhausted, Unauthenticated
from runtime.status_errors import refusal


def test_a_refusal_keeps_the_peers_words_or_falls_back() -> None:
    found = refusal(grpc.StatusCode.NOT_FOUND, "no grant g")
    assert isinstance(found, NotFound) and found.message == "no grant g"
    taken = refusal(grpc.StatusCode.ALREADY_EXISTS, "", default="taken")
    assert isinstance(taken, Conflict) and taken.message == "taken"
    bare = refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, None)
    assert isinstance(bare, ResourceExhausted) and bare.message == "RESOURCE_EXHAUSTED"


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN]
)
def test_failures_are_not_refusals(code: grpc.StatusCode) -> None:
    assert refusal(code, "boom") is None


def test_unauthenticated_is_a_refusal_unless_the_caller_says_otherwise() -> None:
    assert isinstance(refusal(grpc.StatusCode.UNAUTHENTICATED, "who?"), Unauthenticated)
    assert refusal(grpc.StatusCode.UNAUTHENTICATED, "who?", unauthenticated=False) is None
