"""Domain errors: what went wrong, in words a person can act on.

Domain code raises these; one gRPC interceptor (runtime.interceptors) maps them to
status codes. This module must not import grpc, so domain code stays free of it.
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "FailedPrecondition",
    "InvalidInput",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SftError",
    "Unauthenticated",
    "Unavailable",
]


class SftError(Exception):
    """Base of every error whose message is safe and useful to show the caller."""

    #: gRPC status code name this error maps to (see runtime.interceptors).
    status_name = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(SftError):
    """The request itself is wrong; retrying it unchanged cannot succeed."""

    status_name = "INVALID_ARGUMENT"


class NotFound(SftError):
    """The named resource does not exist (or the caller may not know it exists)."""

    status_name = "NOT_FOUND"


class Conflict(SftError):
    """The resource already exists or was changed concurrently."""

    status_name = "ALREADY_EXISTS"


class FailedPrecondition(SftError):
    """The system is not in a state that allows this (e.g. database not migrated)."""

    status_name = "FAILED_PRECONDITION"


class PermissionDenied(SftError):
    """The caller is known but lacks the role this needs."""

    status_name = "PERMISSION_DENIED"


class Unauthenticated(SftError):
    """The caller could not be identified (no, expired or revoked credentials)."""

    status_name = "UNAUTHENTICATED"


class ResourceExhausted(SftError):
    """A limit was reached (rate limit, concurrency limit, quota)."""

    status_name = "RESOURCE_EXHAUSTED"


class Unavailable(SftError):
    """A dependency is down; retrying later may succeed."""

    status_name = "UNAVAILABLE"
