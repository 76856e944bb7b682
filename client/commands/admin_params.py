"""What admin verbs accept on the command line: durations, points in time, audit checkpoints.

Each parser refuses bad input with a usage error (exit 2) that shows a good example.
Pure: no network, no state.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from dataclasses import dataclass
from typing import Any

import click

from client.errors import EXIT_USAGE, ClientError

__all__ = [
    "DURATION",
    "NEVER",
    "POINT_IN_TIME",
    "Checkpoint",
    "CheckpointType",
    "DurationType",
    "PointInTimeType",
    "confirm_or_refuse",
    "format_duration",
    "parse_checkpoint",
    "parse_duration",
    "parse_point_in_time",
    "refuse_without_terminal",
]

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)([smhdw])")
_WHOLE = re.compile(r"(?:\d+[smhdw])+")
_HASH = re.compile(r"[0-9a-f]{64}")
#: What `--expires never` means: no expiry at all.
NEVER = "never"

DURATION_EXAMPLES = "e.g. 90s, 10m, 1h, 1h30m, 7d"


def parse_duration(text: str) -> dt.timedelta:
    """Return `10m`, `1h`, `24h`, `7d`, `1h30m` (units s, m, h, d, w) as a timedelta.

    Raises ValueError with a message fit for a person when `text` is not one.
    """
    compact = text.strip().lower()
    if not _WHOLE.fullmatch(compact):
        raise ValueError(
            f"{text!r} is not a duration; write a number and a unit ({DURATION_EXAMPLES})"
        )
    seconds = sum(int(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(compact))
    if seconds <= 0:
        raise ValueError(f"{text!r} is no time at all; give a duration longer than 0")
    return dt.timedelta(seconds=seconds)


def format_duration(seconds: int) -> str:
    """Return `seconds` the way parse_duration reads it back (`600` → `10m`, `5400` → `1h30m`)."""
    if seconds <= 0:
        return "0s"
    parts: list[str] = []
    for unit in ("d", "h", "m", "s"):
        count, seconds = divmod(seconds, _UNIT_SECONDS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def parse_point_in_time(text: str, now: dt.datetime) -> dt.datetime:
    """Return `1h` (that long before `now`) or an ISO 8601 time as an aware UTC datetime.

    An ISO time without an offset is taken as UTC, which is how sft prints times.
    """
    stripped = text.strip()
    if _WHOLE.fullmatch(stripped.lower()):
        return now - parse_duration(stripped)
    try:
        value = dt.datetime.fromisoformat(stripped.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration ago (e.g. 30m, 1h, 7d) nor an ISO 8601 time "
            "(e.g. 2025-06-01T12:00:00Z)"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


@dataclass(frozen=True)
class Checkpoint:
    """An audit chain position saved by an earlier `sft admin audit verify`."""

    sequence: int
    hash: str

    def __str__(self) -> str:
        return f"{self.sequence}:{self.hash}"


def parse_checkpoint(text: str) -> Checkpoint:
    """Return `SEQ:HASH` (as `audit verify` prints it) as a Checkpoint."""
    sequence, colon, digest = text.strip().partition(":")
    digest = digest.lower()
    if not colon or not sequence.isdigit() or int(sequence) < 1 or not _HASH.fullmatch(digest):
        raise ValueError(
            f"{text!r} is not a checkpoint; use SEQUENCE:HASH as `sft admin audit verify` "
            "printed it (a positive number, a colon, 64 hex digits)"
        )
    return Checkpoint(int(sequence), digest)


class DurationType(click.ParamType[Any, Any]):
    """A click parameter for durations; `allow_never` also accepts `never` (returned as None)."""

    name = "duration"

    def __init__(self, *, allow_never: bool = False) -> None:
        self.allow_never = allow_never

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Return a timedelta (or None for `never`), or fail with a usage error."""
        if isinstance(value, dt.timedelta) or value is None:
            return value
        if self.allow_never and str(value).strip().lower() == NEVER:
            return None
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class PointInTimeType(click.ParamType[Any, Any]):
    """A click parameter for `--since`/`--until`: a duration ago, or an ISO 8601 time."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Return an aware UTC datetime, or fail with a usage error."""
        if isinstance(value, dt.datetime):
            return value
        try:
            return parse_point_in_time(str(value), dt.datetime.now(dt.UTC))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class CheckpointType(click.ParamType[Any, Any]):
    """A click parameter for `--checkpoint SEQ:HASH`."""

    name = "seq:hash"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Return a Checkpoint, or fail with a usage error."""
        if isinstance(value, Checkpoint):
            return value
        try:
            return parse_checkpoint(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = DurationType()
POINT_IN_TIME = PointInTimeType()


def refuse_without_terminal(*, yes: bool, flag: str = "--yes") -> None:
    """Refuse in one line when confirmation is needed (no `yes`) but nobody can be asked.

    A script (no terminal on stdin) must say `--yes` itself: a destructive verb never
    goes ahead on a guess, and never hangs waiting for an answer nobody can type.
    Call it before any network work, so a refused verb does nothing at all.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        raise ClientError(
            "refusing to go ahead without confirmation (stdin is not a terminal)",
            EXIT_USAGE,
            hint=f"rerun with {flag} if you are sure",
        )


def confirm_or_refuse(question: str, *, yes: bool, flag: str = "--yes") -> None:
    """Ask `question` on the terminal unless `yes`; refuse when there is no terminal or no yes."""
    if yes:
        return
    refuse_without_terminal(yes=yes, flag=flag)
    if not click.confirm(question, default=False, err=True):
        raise ClientError("cancelled; nothing was changed")
