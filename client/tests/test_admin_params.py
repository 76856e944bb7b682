"""What admin verbs accept on the command line: durations, times, checkpoints, confirmations."""

from __future__ import annotations

import datetime as dt

import pytest

from client.commands.admin_params import (
    Checkpoint,
    format_duration,
    parse_checkpoint,
    parse_duration,
    parse_point_in_time,
)
from client.commands.admin_projects import CREATE_DEFAULTS, project_changes

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)
HASH = "ab" * 32


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("10m", 600),
        ("1h", 3600),
        ("24h", 86400),
        ("7d", 604800),
        ("2w", 1209600),
        ("1h30m", 5400),
        (" 10M ", 600),
    ],
)
def test_durations_take_a_number_and_a_unit(text: str, seconds: int) -> None:
    assert parse_duration(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["10", "m", "10x", "1.5h", "-1h", "", "1h 30m", "ten minutes"])
def test_other_durations_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration; write a number and a unit \(e\.g\."):
        parse_duration(text)


def test_a_zero_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than 0"):
        parse_duration("0m")


@pytest.mark.parametrize("seconds", [1, 59, 600, 3600, 5400, 86400, 90061])
def test_formatted_durations_read_back(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)).total_seconds() == seconds


def test_format_duration_is_short() -> None:
    assert [format_duration(s) for s in (0, 600, 3600, 5400, 86400)] == [
        "0s",
        "10m",
        "1h",
        "1h30m",
        "1d",
    ]


def test_points_in_time_are_a_duration_ago_or_iso() -> None:
    assert parse_point_in_time("1h", NOW) == NOW - dt.timedelta(hours=1)
    assert parse_point_in_time("2030-05-31T10:00:00Z", NOW) == dt.datetime(
        2030, 5, 31, 10, tzinfo=dt.UTC
    )
    # No offset: UTC, the way sft prints times.
    assert parse_point_in_time("2030-05-31T10:00", NOW) == dt.datetime(
        2030, 5, 31, 10, tzinfo=dt.UTC
    )
    assert parse_point_in_time("2030-05-31T12:00+02:00", NOW) == dt.datetime(
        2030, 5, 31, 10, tzinfo=dt.UTC
    )
    with pytest.raises(ValueError, match="neither a duration ago"):
        parse_point_in_time("yesterday", NOW)


def test_checkpoints_are_sequence_colon_hash() -> None:
    assert parse_checkpoint(f"42:{HASH.upper()}") == Checkpoint(42, HASH)
    assert str(Checkpoint(42, HASH)) == f"42:{HASH}"
    for bad in ("42", f"0:{HASH}", f"x:{HASH}", "42:abc", f"42:{HASH}0", f":{HASH}"):
        with pytest.raises(ValueError, match="is not a checkpoint; use SEQUENCE:HASH"):
            parse_checkpoint(bad)


def test_project_changes_name_only_what_was_given() -> None:
    assert project_changes({}) == {}
    assert project_changes(
        {
            "ttl": dt.timedelta(minutes=5),
            "max_ttl": None,
            "rdp": False,
            "port_forwarding": True,
            "agent_forwarding": None,
            "create_server_users": None,
            "description": None,
            "admin_account_names": ("root", "ubuntu"),
        }
    ) == {
        "certificate_ttl_seconds": 300,
        "rdp_enabled": False,
        "permit_port_forwarding": True,
        "allowed_admin_account_names": ["root", "ubuntu"],
    }
    assert project_changes({"no_required_bastion": True, "no_admin_account_names": True}) == {
        "required_bastion": "",
        "allowed_admin_account_names": [],
    }
    # What `create` sends when nothing is said: accounts and RDP on, forwarding off.
    assert {**CREATE_DEFAULTS, **project_changes({"rdp": False})} == {
        "create_server_users": True,
        "permit_port_forwarding": False,
        "permit_agent_forwarding": False,
        "rdp_enabled": False,
    }
