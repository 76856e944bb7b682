"""What can go wrong in `sft`, said in words a person can act on.

Every failure the CLI reports is a ClientError: one line, what is wrong and what to do.
gRPC statuses become ClientErrors here, in one place, so each verb reads the same.
Never puts a token, code or private key into a message.
"""

from __future__ import annotations

import copy
from typing import Protocol

__all__ = [
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "ClientError",
    "NotEnrolled",
    "PlatformUnreachable",
    "RpcFailure",
    "describe_rpc_failure",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2

ENROLL_METHOD = "/sft.auth.v1.DeviceService/EnrollDevice"
LOGIN_METHOD = "/sft.auth.v1.TokenService/CreateAccessToken"

ENROLL_HINT = "`sft enroll --url URL --team TEAM --code CODE`"


class ClientError(Exception):
    """A failure to report as one line on stderr, with the exit status to use.

    `reason` says what is wrong, `hint` what to do about it; `message` is both.
    """

    def __init__(
        self, reason: str, exit_code: int = EXIT_FAILURE, *, hint: str | None = None
    ) -> None:
        message = f"{reason}; {hint}" if hint else reason
        super().__init__(message)
        self.reason = reason
        self.hint = hint
        self.message = message
        self.exit_code = exit_code

    def with_hint(self, hint: str) -> ClientError:
        """Return the same error (same class and status) with another `hint`."""
        clone = copy.copy(self)
        clone.hint = hint
        clone.message = f"{self.reason}; {hint}"
        clone.args = (clone.message,)
        return clone


class NotEnrolled(ClientError):
    """This machine has no device in the team a verb needs."""


class PlatformUnreachable(ClientError):
    """The platform could not be reached (network, DNS, TLS, or it is down)."""


class RpcFailure(ClientError):
    """The platform answered a call with an error status."""

    def __init__(self, reason: str, status: str, *, hint: str | None = None) -> None:
        super().__init__(reason, hint=hint)
        self.status = status

    def __reduce__(self) -> tuple[object, ...]:
        # copy.copy (ClientError.with_hint) rebuilds an exception from its reduce value;
        # the default one passes only the message, and the status would be lost.
        return (type(self), (self.reason, self.status), self.__dict__)


class RpcErrorLike(Protocol):
    """The parts of grpc.RpcError (grpc ships no types) this module reads."""

    def code(self) -> object:
        """Return the grpc.StatusCode."""

    def details(self) -> str | None:
        """Return the status message."""


def _status_name(error: RpcErrorLike) -> str:
    code = error.code()
    name = getattr(code, "name", None)
    return name if isinstance(name, str) else str(code)


def describe_rpc_failure(
    error: RpcErrorLike, *, method: str, url: str, team: str = ""
) -> ClientError:
    """Return the one-line error a person should see for a failed call to `method`."""
    status = _status_name(error)
    details = (error.details() or "").strip() or status.lower().replace("_", " ")
    team_flag = f" --team {team}" if team else ""
    if status == "UNAVAILABLE":
        return PlatformUnreachable(f"cannot reach the platform at {url}: {details}")
    if status == "DEADLINE_EXCEEDED":
        return PlatformUnreachable(
            f"the platform at {url} did not answer in time", hint="check the network and try again"
        )
    if status == "UNAUTHENTICATED" and method == ENROLL_METHOD:
        return RpcFailure(
            "the enrollment code is unknown, used or expired",
            status,
            hint="ask a team admin for a new one (`sft admin user invite`)",
        )
    if status == "UNAUTHENTICATED" and method == LOGIN_METHOD:
        return RpcFailure(
            f"the platform refused this device's key ({details})",
            status,
            hint=f"if the device was revoked, forget it here with `sft unenroll{team_flag} "
            "--force` and enroll again with a new code",
        )
    if status == "UNIMPLEMENTED":
        return RpcFailure(
            f"the platform at {url} does not offer {method.rsplit('/', 1)[-1]} yet",
            status,
            hint="it is older than this sft; upgrade the platform",
        )
    if status in ("INTERNAL", "UNKNOWN", "DATA_LOSS"):
        return RpcFailure(
            f"the platform at {url} failed ({details})",
            status,
            hint="try again, and quote this line to its operator if it persists",
        )
    return RpcFailure(details, status)
