"""A peer's gRPC refusal as sft's own domain error: one table for every caller.

The platform's services relaying each other, `sft rdp` reading the broker, and the
broker reading sftd's control channel all turn the same status codes into the same
runtime.errors exceptions; what is not a refusal about the request (the peer is down,
or failed) stays the caller's to word.
"""

from __future__ import annotations

import grpc

from runtime.errors import (
    Conflict,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SftError,
    Unauthenticated,
)

__all__ = ["REFUSALS", "refusal"]

#: Status codes that refuse the request itself, and the domain error each becomes.
REFUSALS: dict[grpc.StatusCode, type[SftError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: Conflict,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}


def refusal(
    code: grpc.StatusCode,
    details: str | None,
    *,
    default: str = "",
    unauthenticated: bool = True,
) -> SftError | None:
    """Return the refusal `code` means, with `details` (else `default`, else the code's name).

    None when `code` is no refusal (UNAVAILABLE, INTERNAL, …), and for UNAUTHENTICATED
    when `unauthenticated` is false: between platform services that means the peer
    refused *our* certificate, which the original caller can do nothing about.
    """
    kind = REFUSALS.get(code)
    if kind is None or (kind is Unauthenticated and not unauthenticated):
        return None
    return kind(details or default or code.name)
