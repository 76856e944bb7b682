"""Directory name rules: what becomes an account, group, project or bastion name on
servers, and the resource names that point at them. Pure; no database, no gRPC."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from runtime.errors import InvalidInput
from services.inventory.names import (
    check_account_name,
    check_email,
    check_group_name,
    check_host_address,
    check_project_name,
    check_user_name,
    check_windows_account_name,
    split_bastion_name,
    split_grant_name,
    split_group_name,
)

ANY_TEXT = st.text(max_size=80)


def _accepted(check: object, value: str) -> bool:
    try:
        assert callable(check)
        check(value)
    except InvalidInput as refusal:
        assert refusal.message and "\n" not in refusal.message
        return False
    return True


@given(ANY_TEXT)
@example("_\n")  # `$` also matches before a final newline: names use fullmatch
@example("web\n")
def test_accepted_user_and_group_names_are_portable_unix_names(value: str) -> None:
    for check in (check_user_name, check_group_name):
        if _accepted(check, value):
            assert 1 <= len(value) <= 32 and value.isascii()
            assert set(value) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-")
            assert not value[0].isdigit() and value[0] != "-"


@given(ANY_TEXT)
def test_accepted_windows_names_fit_windows(value: str) -> None:
    if _accepted(check_windows_account_name, value):
        assert 1 <= len(value) <= 20 and value.isascii()
        assert not set(value) & set('"/\\[]:;|=,+*?<>@ ')
        assert not value.endswith(".")


@given(ANY_TEXT)
def test_accepted_addresses_carry_no_port_scheme_or_space(value: str) -> None:
    if not _accepted(check_host_address, value):
        return
    if ":" in value:
        ipaddress.IPv6Address(value)  # the only accepted form with a colon
    else:
        assert value and "/" not in value and " " not in value


@pytest.mark.parametrize("name", ["sudo", "sft-admin", "wheel", "root", "docker"])
def test_users_cannot_be_named_like_a_privileged_group(name: str) -> None:
    # The user's primary group is named like the user on every server.
    with pytest.raises(InvalidInput, match="reserved"):
        check_user_name(name)


def test_shared_admin_accounts_may_be_linux_or_windows_names() -> None:
    assert check_account_name("root") == "root"
    assert check_account_name("Administrator") == "Administrator"
    for bad in ("bad name", "", "x" * 33, "-dash"):
        with pytest.raises(InvalidInput):
            check_account_name(bad)


def test_project_ids_start_with_a_letter_and_end_with_a_letter_or_digit() -> None:
    assert check_project_name("web-1") == "web-1"
    for bad in ("1web", "web-", "Web", "", "w" * 64):
        with pytest.raises(InvalidInput):
            check_project_name(bad)


def test_emails_are_one_address_or_nothing() -> None:
    assert check_email("") == ""
    assert check_email("ada@example.com") == "ada@example.com"
    for bad in ("ada", "a@b", "a b@example.com", "a@b@example.com"):
        with pytest.raises(InvalidInput):
            check_email(bad)


def test_resource_names_split_into_their_ids() -> None:
    assert split_group_name("teams/acme/groups/ops_1") == ("acme", "ops_1")
    assert split_grant_name("teams/acme/projects/web/grants/ops") == ("acme", "web", "ops")
    assert split_bastion_name("teams/acme/bastions/jump") == ("acme", "jump")
    assert split_bastion_name("teams/acme/projects/web/bastions/jump") == ("acme", "jump")
    for bad in ("teams/acme/groups/", "teams/acme/groups/ops/x", "ops", "teams//groups/ops"):
        with pytest.raises(InvalidInput, match="teams/TEAM/groups/GROUP"):
            split_group_name(bad)
