"""The audit hash chain without a database: encoding, hashing, and the first break the
verifier reports for each way a stored chain can be tampered with.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import InvalidInput
from services.auth.audit_chain import (
    GENESIS_HASH,
    Anchor,
    BreakKind,
    ChainedEvent,
    ChainVerifier,
    EventContent,
    Verification,
    canonical_encoding,
    chain_event,
    event_hash,
)

T0 = dt.datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=dt.UTC)


def _content(n: int, **changes: object) -> EventContent:
    content = EventContent(
        id=f"00000000-0000-4000-8000-{n:012d}",
        time=T0 + dt.timedelta(seconds=n),
        actor="teams/acme/users/alice",
        actor_kind="user",
        action="project.create",
        resource=f"teams/acme/projects/p{n}",
        outcome="success",
        source_address="127.0.0.1",
        request_id=f"req{n}",
        details={"n": str(n)},
    )
    return dataclasses.replace(content, **changes)  # type: ignore[arg-type]


def _chain(count: int) -> list[ChainedEvent]:
    events: list[ChainedEvent] = []
    previous = GENESIS_HASH
    for n in range(1, count + 1):
        event = chain_event(_content(n), n, previous)
        events.append(event)
        previous = event.hash
    return events


def _verify(
    events: list[ChainedEvent],
    *,
    start: int = 1,
    checkpoint: Anchor | None = None,
    head: Anchor | None = None,
    check_head: bool = False,
) -> Verification:
    previous = Anchor(0, GENESIS_HASH) if start == 1 else None
    if start > 1 and checkpoint is None:
        before = next(e for e in events if e.sequence == start - 1)
        previous = Anchor(before.sequence, before.hash)
    verifier = ChainVerifier(start, previous, checkpoint, head=head, check_head=check_head)
    for event in events:
        if event.sequence >= start:
            verifier.feed(event)
    return verifier.finish()


def _head(events: list[ChainedEvent]) -> Anchor:
    return Anchor(events[-1].sequence, events[-1].hash)


def test_an_untouched_chain_verifies_to_its_last_event() -> None:
    events = _chain(5)
    result = _verify(events, head=_head(events), check_head=True)
    assert result.ok
    assert (result.checked, result.last_sequence, result.last_hash) == (5, 5, events[-1].hash)
    assert events[0].previous_hash == GENESIS_HASH
    assert all(b.previous_hash == a.hash for a, b in itertools.pairwise(events))


def test_the_encoding_is_canonical_json_over_every_field() -> None:
    content = _content(1, details={"b": "2", "a": "ü"})
    encoded = canonical_encoding(content, 7, GENESIS_HASH)
    document = json.loads(encoded)
    assert list(document) == sorted(document)
    assert document["details"] == {"a": "ü", "b": "2"}
    assert document["sequence"] == 7
    assert document["previous_hash"] == GENESIS_HASH
    assert document["time"] == "2026-11-24T12:00:01.123456Z"
    assert encoded.isascii() and b" " not in encoded
    # Same instant in another zone: same bytes.
    shifted = dataclasses.replace(
        content, time=content.time.astimezone(dt.timezone(dt.timedelta(hours=5)))
    )
    assert canonical_encoding(shifted, 7, GENESIS_HASH) == encoded


@pytest.mark.parametrize(
    "field",
    [
        "id",
        "time",
        "actor",
        "actor_kind",
        "action",
        "resource",
        "outcome",
        "source_address",
        "request_id",
        "details",
    ],
)
def test_every_field_is_covered_by_the_hash(field: str) -> None:
    content = _content(1)
    changed = {
        "id": "other",
        "time": T0,
        "actor": "teams/acme/users/eve",
        "actor_kind": "server",
        "action": "project.delete",
        "resource": "teams/acme",
        "outcome": "denied",
        "source_address": "10.0.0.1",
        "request_id": "other",
        "details": {"n": "2"},
    }[field]
    other = dataclasses.replace(content, **{field: changed})  # type: ignore[arg-type]
    assert event_hash(other, 1, GENESIS_HASH) != event_hash(content, 1, GENESIS_HASH)
    assert event_hash(content, 2, GENESIS_HASH) != event_hash(content, 1, GENESIS_HASH)
    assert event_hash(content, 1, "1" * 64) != event_hash(content, 1, GENESIS_HASH)


_text = st.text(max_size=20)


@given(st.dictionaries(_text, _text, max_size=5), st.dictionaries(_text, _text, max_size=5))
def test_different_details_never_encode_alike(
    first: dict[str, str], second: dict[str, str]
) -> None:
    one = canonical_encoding(_content(1, details=first), 1, GENESIS_HASH)
    two = canonical_encoding(_content(1, details=second), 1, GENESIS_HASH)
    assert (one == two) == (first == second)


def test_an_edited_event_is_changed() -> None:
    events = _chain(5)
    events[2] = dataclasses.replace(events[2], content=_content(3, outcome="denied"))
    result = _verify(events)
    assert result.first_break is not None
    assert result.first_break.kind is BreakKind.CHANGED
    assert (result.first_break.sequence, result.first_break.event_id) == (3, events[2].content.id)
    assert (result.checked, result.last_sequence) == (2, 2)


def test_a_removed_event_is_a_gap() -> None:
    events = _chain(5)
    del events[1]
    result = _verify(events)
    assert result.first_break is not None
    assert result.first_break.kind is BreakKind.REMOVED
    assert (result.first_break.sequence, result.first_break.event_id) == (2, None)
    assert "event 2 is missing" in result.first_break.detail


def test_removing_and_renumbering_shows_as_a_link_to_nothing() -> None:
    events = _chain(5)
    # Event 3 removed; 4 and 5 renumbered and rehashed, keeping their links.
    renumbered = [
        ChainedEvent(
            e.content,
            e.sequence - 1,
            e.previous_hash,
            event_hash(e.content, e.sequence - 1, e.previous_hash),
        )
        for e in events[3:]
    ]
    result = _verify(events[:2] + renumbered)
    assert result.first_break is not None
    assert result.first_break.kind is BreakKind.REMOVED
    assert result.first_break.sequence == 3
    assert result.first_break.event_id == events[3].content.id


def test_an_appended_event_linking_to_an_earlier_one_is_inserted() -> None:
    events = _chain(5)
    forged = chain_event(_content(99), 6, events[2].hash)
    result = _verify([*events, forged])
    assert result.first_break is not None
    assert result.first_break.kind is BreakKind.INSERTED
    assert (result.first_break.sequence, result.first_break.event_id) == (6, forged.content.id)
    assert "links to event 3" in result.first_break.detail


def test_a_repeated_sequence_is_inserted() -> None:
    events = _chain(3)
    twin = chain_event(_content(50), 2, events[0].hash)
    result = _verify([events[0], events[1], twin, events[2]])
    assert result.first_break is not None
    assert result.first_break.kind is BreakKind.INSERTED
    assert (result.first_break.sequence, result.first_break.event_id) == (2, twin.content.id)


def test_a_well_formed_event_beyond_the_head_is_inserted() -> None:
    events = _chain(4)
    head = _head(events)
    forged = chain_event(_content(99), 5, events[-1].hash)
    result = _verify([*events, forged], head=head, check_head=True)
    assert result.first_break is not None
    assert result.first_break.kind is BreakKind.INSERTED
    assert result.first_break.event_id == forged.content.id


def test_a_truncated_tail_is_removed() -> None:
    events = _chain(5)
    result = _verify(events[:3], head=_head(events), check_head=True)
    assert result.first_break is not None
    assert result.first_break.kind is BreakKind.REMOVED
    assert result.first_break.sequence == 4
    assert "events 4 to 5 are missing" in result.first_break.detail


def test_a_rewritten_history_is_caught_by_the_checkpoint() -> None:
    events = _chain(5)
    checkpoint = Anchor(4, events[3].hash)
    # Rewrite every event with new content and a fully consistent chain.
    previous, rewritten = GENESIS_HASH, []
    for event in events:
        forged = chain_event(
            dataclasses.replace(event.content, actor="teams/acme/users/eve"),
            event.sequence,
            previous,
        )
        rewritten.append(forged)
        previous = forged.hash
    assert _verify(rewritten).ok  # without a checkpoint, a wholesale rewrite is invisible
    result = _verify(rewritten, checkpoint=checkpoint)
    assert result.first_break is not None
    assert result.first_break.kind is BreakKind.CHANGED
    assert result.first_break.sequence == 4
    assert "checkpoint" in result.first_break.detail


def test_a_checkpoint_anchors_a_range_and_a_lost_checkpoint_is_removed() -> None:
    events = _chain(6)
    checkpoint = Anchor(3, events[2].hash)
    anchored = _verify(events, start=3, checkpoint=checkpoint)
    assert anchored.ok and anchored.checked == 4
    gone = _verify(events[:2], start=3, checkpoint=checkpoint)
    assert gone.first_break is not None
    assert gone.first_break.kind is BreakKind.REMOVED
    assert gone.first_break.sequence == 3


def test_a_checkpoint_before_the_range_is_checked_on_its_own() -> None:
    events = _chain(6)
    verifier = ChainVerifier(5, Anchor(4, events[3].hash), Anchor(2, "f" * 64))
    verifier.observe_checkpoint(events[1])
    for event in events[4:]:
        verifier.feed(event)
    result = verifier.finish()
    assert result.first_break is not None
    assert (result.first_break.kind, result.first_break.sequence) == (BreakKind.CHANGED, 2)


def test_a_missing_predecessor_of_the_range_is_removed() -> None:
    verifier = ChainVerifier(4, None)
    verifier.predecessor_missing()
    result = verifier.finish()
    assert result.first_break is not None
    assert (result.first_break.kind, result.first_break.sequence) == (BreakKind.REMOVED, 3)


def test_an_empty_chain_verifies() -> None:
    result = _verify([], head=None, check_head=True)
    assert result.ok and (result.checked, result.last_sequence, result.last_hash) == (0, 0, "")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"details": {"token": "sfta1_abcdef"}}, "secret"),
        ({"details": {"key": "-----BEGIN OPENSSH PRIVATE KEY-----"}}, "secret"),
        ({"resource": "sftc1_abc_def"}, "secret"),
        ({"details": {"api": "sftk1_xyz"}}, "secret"),
        ({"action": "Create"}, "action"),
        ({"outcome": "maybe"}, "outcome"),
        ({"actor_kind": "robot"}, "actor_kind"),
        ({"details": {str(n): "" for n in range(33)}}, "at most 32"),
        ({"details": {"k": "v" * 1025}}, "longer than 1024"),
        ({"actor": "a\nb"}, "one line"),
        ({"time": dt.datetime(2026, 1, 1)}, "time zone"),
    ],
)
def test_malformed_or_secret_content_is_refused(changes: dict[str, object], expected: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        _content(1, **changes).check()
    assert expected in refused.value.message
