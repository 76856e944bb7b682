"""The audit trail's hash chain: the canonical encoding of an event, its hash, and the
verifier that finds the first place a stored chain was edited, cut or padded.

Pure: no database, no grpc, no clock. The encoding is part of what stored events mean:
changing it would make every stored event fail to verify, so version 1 never changes
(a new encoding would get a new version number and live beside it).
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from runtime.errors import InvalidInput

__all__ = [
    "ACTOR_KINDS",
    "ENCODING_VERSION",
    "GENESIS_HASH",
    "OUTCOMES",
    "Anchor",
    "BreakKind",
    "ChainBreak",
    "ChainVerifier",
    "ChainedEvent",
    "EventContent",
    "Verification",
    "canonical_encoding",
    "chain_event",
    "event_hash",
    "is_chain_hash",
]

ENCODING_VERSION = 1
#: previous_hash of a team's first event.
GENESIS_HASH = "0" * 64
ACTOR_KINDS = frozenset({"user", "service_user", "server", "platform", "anonymous"})
OUTCOMES = frozenset({"success", "denied", "failed"})

MAX_DETAILS = 32
MAX_DETAIL_KEY_CHARS = 64
MAX_DETAIL_VALUE_CHARS = 1024
MAX_ACTION_CHARS = 64
MAX_NAME_CHARS = 500
_ACTION = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
_HASH = re.compile(r"[0-9a-f]{64}")
# What a secret the platform makes looks like: a private key, an access token, a device
# code, a server enrollment token, a service-user key secret. None may enter the trail.
_SECRET_MARKERS = re.compile(r"PRIVATE KEY|\bsfta1_|\bsftc1_|\bsftt1_|\bsftk1_")


def is_chain_hash(value: str) -> bool:
    """Return whether `value` has the form of a chain hash (64 lowercase hex characters)."""
    return bool(_HASH.fullmatch(value))


def _one_line(value: str, what: str, limit: int) -> None:
    if len(value) > limit or any(ch in value for ch in "\r\n\0"):
        raise InvalidInput(f"{what} must be one line of at most {limit} characters")
    if _SECRET_MARKERS.search(value):
        raise InvalidInput(
            f"{what} looks like it holds a secret (a private key, token or code); audit "
            "events name secrets by id or fingerprint, never by value"
        )


@dataclass(frozen=True)
class EventContent:
    """Everything an audit event says, apart from its place in the chain."""

    id: str
    time: dt.datetime
    actor: str
    actor_kind: str
    action: str
    resource: str
    outcome: str
    source_address: str
    request_id: str
    details: Mapping[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """Refuse content the trail must not hold: malformed, oversized, or a secret."""
        if self.time.tzinfo is None:
            raise InvalidInput("an audit event's time must carry a time zone")
        if self.actor_kind not in ACTOR_KINDS:
            raise InvalidInput(f"actor_kind must be one of {', '.join(sorted(ACTOR_KINDS))}")
        if self.outcome not in OUTCOMES:
            raise InvalidInput(f"outcome must be one of {', '.join(sorted(OUTCOMES))}")
        if len(self.action) > MAX_ACTION_CHARS or not _ACTION.fullmatch(self.action):
            raise InvalidInput(
                "action must be `<resource kind>.<verb>` in lower snake case (e.g. "
                f"`server.enroll`), at most {MAX_ACTION_CHARS} characters"
            )
        _one_line(self.id, "id", 64)
        _one_line(self.actor, "actor", MAX_NAME_CHARS)
        _one_line(self.resource, "resource", MAX_NAME_CHARS)
        _one_line(self.source_address, "source_address", 64)
        _one_line(self.request_id, "request_id", 64)
        if len(self.details) > MAX_DETAILS:
            raise InvalidInput(f"an audit event carries at most {MAX_DETAILS} details")
        for key, value in self.details.items():
            if not key or len(key) > MAX_DETAIL_KEY_CHARS:
                raise InvalidInput(
                    f"detail keys are 1 to {MAX_DETAIL_KEY_CHARS} characters; {key[:80]!r} is not"
                )
            _one_line(key, "a detail key", MAX_DETAIL_KEY_CHARS)
            if len(value) > MAX_DETAIL_VALUE_CHARS:
                raise InvalidInput(
                    f"detail {key!r} is longer than {MAX_DETAIL_VALUE_CHARS} characters"
                )
            _one_line(value, f"detail {key!r}", MAX_DETAIL_VALUE_CHARS)


@dataclass(frozen=True)
class ChainedEvent:
    """An event with its place in its team's chain."""

    content: EventContent
    sequence: int
    previous_hash: str
    hash: str


def _time_text(value: dt.datetime) -> str:
    # Microseconds: what PostgreSQL and SQLite both keep, so a stored event re-encodes
    # to the same bytes it was hashed from.
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_encoding(content: EventContent, sequence: int, previous_hash: str) -> bytes:
    """Return the bytes an event's hash covers (encoding version 1).

    JSON with sorted keys, no insignificant whitespace and every non-ASCII character
    escaped: each string is quoted and escaped, so no two different events encode alike.
    """
    document = {
        "v": ENCODING_VERSION,
        "previous_hash": previous_hash,
        "id": content.id,
        "sequence": sequence,
        "time": _time_text(content.time),
        "actor": content.actor,
        "actor_kind": content.actor_kind,
        "action": content.action,
        "resource": content.resource,
        "outcome": content.outcome,
        "source_address": content.source_address,
        "request_id": content.request_id,
        "details": {str(key): str(value) for key, value in content.details.items()},
    }
    text = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return text.encode("ascii")


def event_hash(content: EventContent, sequence: int, previous_hash: str) -> str:
    """Return the lowercase hex SHA-256 of the event's canonical encoding."""
    return hashlib.sha256(canonical_encoding(content, sequence, previous_hash)).hexdigest()


def chain_event(content: EventContent, sequence: int, previous_hash: str) -> ChainedEvent:
    """Return `content` placed at `sequence`, after the event whose hash is `previous_hash`."""
    if sequence < 1:
        raise ValueError("audit sequences start at 1")
    return ChainedEvent(
        content, sequence, previous_hash, event_hash(content, sequence, previous_hash)
    )


@dataclass(frozen=True)
class Anchor:
    """A (sequence, hash) pair the chain must pass through: the event before a checked
    range, a checkpoint an admin kept, or the head the platform recorded last.
    """

    sequence: int
    hash: str


class BreakKind(enum.Enum):
    """How the chain was found broken."""

    #: An event's content no longer matches its hash, or a recorded hash changed.
    CHANGED = "changed"
    #: A sequence number is missing, an event links to one no longer there, or the
    #: checkpoint or the end of the chain is gone.
    REMOVED = "removed"
    #: A sequence repeats, an event links to an earlier event than the one before it,
    #: or an event lies beyond the recorded head.
    INSERTED = "inserted"


@dataclass(frozen=True)
class ChainBreak:
    """The first place the chain fails to verify."""

    kind: BreakKind
    sequence: int
    #: Id of the event at that place; None when it is missing.
    event_id: str | None
    detail: str


@dataclass(frozen=True)
class Verification:
    """What a verification found."""

    checked: int
    #: The last event that verified: a checkpoint for a later verification.
    last_sequence: int
    last_hash: str
    first_break: ChainBreak | None

    @property
    def ok(self) -> bool:
        """Return whether no break was found."""
        return self.first_break is None


class ChainVerifier:
    """Checks a team's events fed in order of sequence and stops at the first break.

    `previous` is what the first event (at `start`) must link to: the genesis hash for
    sequence 1, the stored hash of event start - 1 otherwise, or None when a checkpoint
    at `start` vouches for the first event instead. Memory is bounded: only the last
    `recent` hashes are remembered to tell an inserted event from a removed one.

    With `check_head`, the chain must end at `head`, the last event the platform
    appended (None: the team's head record is gone); the caller feeds every event up to
    the highest stored sequence, read in the same statement as the head.
    """

    def __init__(
        self,
        start: int,
        previous: Anchor | None,
        checkpoint: Anchor | None = None,
        *,
        head: Anchor | None = None,
        check_head: bool = False,
        recent: int = 100_000,
    ) -> None:
        self._start = start
        self._checkpoint = checkpoint
        self._checkpoint_seen = False
        self._head = head
        self._check_head = check_head
        self._next = start
        self._link = previous.hash if previous is not None else None
        self._last: ChainedEvent | None = None
        self._checked = 0
        self._break: ChainBreak | None = None
        self._recent: dict[str, int] = {GENESIS_HASH: 0}
        self._order: deque[str] = deque()
        self._limit = recent
        if previous is not None:
            self._remember(previous.hash, previous.sequence)

    @property
    def broken(self) -> bool:
        """Return whether a break has been found (feeding more changes nothing)."""
        return self._break is not None

    def _remember(self, value: str, sequence: int) -> None:
        if value in self._recent:
            return
        self._recent[value] = sequence
        self._order.append(value)
        if len(self._order) > self._limit:
            del self._recent[self._order.popleft()]

    def _fail(self, kind: BreakKind, sequence: int, event_id: str | None, detail: str) -> None:
        if self._break is None:
            self._break = ChainBreak(kind, sequence, event_id, detail)

    def predecessor_missing(self) -> None:
        """Record that event start - 1, which the first checked event links to, is gone."""
        missing = self._start - 1
        self._fail(
            BreakKind.REMOVED,
            missing,
            None,
            f"event {missing} is missing: event {self._start} has nothing to link to",
        )

    def observe_checkpoint(self, event: ChainedEvent | None) -> None:
        """Check the checkpoint event when it lies before the checked range."""
        checkpoint = self._checkpoint
        if checkpoint is None or self._break is not None:
            return
        self._checkpoint_seen = True
        if event is None:
            self._fail(
                BreakKind.REMOVED,
                checkpoint.sequence,
                None,
                f"the checkpoint event {checkpoint.sequence} is gone: the chain was truncated",
            )
        elif event_hash(event.content, event.sequence, event.previous_hash) != event.hash:
            self._fail(
                BreakKind.CHANGED,
                event.sequence,
                event.content.id,
                f"hash of event {event.sequence} (the checkpoint) does not match its content",
            )
        elif event.hash != checkpoint.hash:
            self._fail(
                BreakKind.CHANGED,
                event.sequence,
                event.content.id,
                f"event {event.sequence} no longer has the checkpoint's hash: the history up "
                "to it was rewritten",
            )

    def feed(self, event: ChainedEvent) -> None:
        """Check the next event (in order of sequence)."""
        if self._break is not None:
            return
        sequence, event_id = event.sequence, event.content.id
        if sequence < self._next:
            self._fail(
                BreakKind.INSERTED,
                sequence,
                event_id,
                f"sequence {sequence} appears more than once: event {event_id} was inserted",
            )
            return
        if sequence > self._next:
            gap = (
                f"event {self._next} is missing"
                if sequence == self._next + 1
                else f"events {self._next} to {sequence - 1} are missing"
            )
            self._fail(
                BreakKind.REMOVED,
                self._next,
                None,
                f"{gap}: the chain jumps from {self._next - 1} to {sequence}",
            )
            return
        head = self._head
        if self._check_head and head is not None and sequence > head.sequence:
            self._fail(
                BreakKind.INSERTED,
                sequence,
                event_id,
                f"event {sequence} lies beyond event {head.sequence}, the last one the "
                "platform appended: it was added outside the platform",
            )
            return
        if event_hash(event.content, sequence, event.previous_hash) != event.hash:
            self._fail(
                BreakKind.CHANGED,
                sequence,
                event_id,
                f"hash of event {sequence} does not match its content: it was edited",
            )
            return
        if self._link is not None and event.previous_hash != self._link:
            earlier = self._recent.get(event.previous_hash)
            if earlier is not None:
                self._fail(
                    BreakKind.INSERTED,
                    sequence,
                    event_id,
                    f"event {sequence} links to event {earlier}, not to event {sequence - 1}: "
                    "it was inserted",
                )
            else:
                self._fail(
                    BreakKind.REMOVED,
                    sequence,
                    event_id,
                    f"event {sequence} links to an event no longer in the chain: the event "
                    "before it was removed or replaced",
                )
            return
        checkpoint = self._checkpoint
        if checkpoint is not None and sequence == checkpoint.sequence:
            self._checkpoint_seen = True
            if event.hash != checkpoint.hash:
                self._fail(
                    BreakKind.CHANGED,
                    sequence,
                    event_id,
                    f"event {sequence} no longer has the checkpoint's hash: the history up to "
                    "it was rewritten",
                )
                return
        self._checked += 1
        self._next = sequence + 1
        self._link = event.hash
        self._last = event
        self._remember(event.hash, sequence)

    def finish(self) -> Verification:
        """Return the result, after checking the checkpoint was met and the chain's end."""
        if self._break is None:
            self._check_end()
        last = self._last
        if last is None:
            return Verification(self._checked, 0, "", self._break)
        return Verification(self._checked, last.sequence, last.hash, self._break)

    def _check_end(self) -> None:
        checkpoint = self._checkpoint
        if checkpoint is not None and not self._checkpoint_seen:
            self._fail(
                BreakKind.REMOVED,
                checkpoint.sequence,
                None,
                f"the checkpoint event {checkpoint.sequence} is gone: the chain was truncated",
            )
            return
        if not self._check_head:
            return
        head, last, last_sequence = self._head, self._last, self._next - 1
        if head is None:
            if last is not None:
                self._fail(
                    BreakKind.REMOVED,
                    last_sequence + 1,
                    None,
                    "the team's chain head record is gone, though events remain",
                )
            return
        if last_sequence < head.sequence:
            missing = (
                f"event {head.sequence} is missing"
                if last_sequence + 1 == head.sequence
                else f"events {last_sequence + 1} to {head.sequence} are missing"
            )
            self._fail(
                BreakKind.REMOVED, last_sequence + 1, None, f"{missing}: the chain was truncated"
            )
        elif last is not None and last.sequence == head.sequence and last.hash != head.hash:
            self._fail(
                BreakKind.CHANGED,
                last.sequence,
                last.content.id,
                f"event {last.sequence} is not the event the platform appended last: it was "
                "replaced",
            )
