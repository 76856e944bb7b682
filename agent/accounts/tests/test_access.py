"""The broker's enable/disable against the recording backend."""

from __future__ import annotations

import string
from pathlib import Path

import pytest

from agent.accounts.access import AccountAccess
from agent.accounts.backend import RecordingBackend
from agent.accounts.managed import ManagedAccounts
from agent.accounts.passwords import MIN_LENGTH, one_time_password
from agent.accounts.reconcile import Reconciler
from agent.accounts.tests.desired import account, state
from runtime.errors import FailedPrecondition, NotFound, PermissionDenied


async def granted(
    tmp_path: Path, *, zero_standing_privilege: bool
) -> tuple[RecordingBackend, AccountAccess]:
    """Return a backend with alice (granted), bob (revoked) and carol (not sftd's)."""
    backend = RecordingBackend()
    backend.add_foreign_account("carol", 1001, 1001)
    managed = ManagedAccounts.load(tmp_path / "managed-accounts.json")
    reconciler = Reconciler(backend, managed, zero_standing_privilege=zero_standing_privilege)
    await reconciler.reconcile(state(account("alice", 1), account("bob", 2)))
    await reconciler.reconcile(state(account("alice", 1)))
    backend.calls.clear()
    return backend, AccountAccess(backend, managed, zero_standing_privilege=zero_standing_privilege)


async def test_enable_sets_a_fresh_one_time_password_and_unlocks(tmp_path: Path) -> None:
    backend, access = await granted(tmp_path, zero_standing_privilege=True)
    locked = backend.snapshot("alice")
    assert locked is not None and locked.locked

    password = await access.enable("alice")
    second = await access.enable("alice")

    assert len(password) >= MIN_LENGTH and password != second
    assert backend.passwords() == {"alice": second}
    alice = backend.snapshot("alice")
    assert alice is not None and not alice.locked
    assert backend.calls[:2] == [("set_password", "alice"), ("change_account", "alice")]


async def test_disable_under_zero_standing_privilege_locks_and_forgets(tmp_path: Path) -> None:
    backend, access = await granted(tmp_path, zero_standing_privilege=True)
    await access.enable("alice")

    await access.disable("alice")

    alice = backend.snapshot("alice")
    assert alice is not None and alice.locked and not alice.has_password


async def test_disable_on_linux_forgets_the_password_and_keeps_certificate_logins(
    tmp_path: Path,
) -> None:
    backend, access = await granted(tmp_path, zero_standing_privilege=False)
    await access.enable("alice")

    await access.disable("alice")

    alice = backend.snapshot("alice")
    assert alice is not None and not alice.locked and not alice.has_password


async def test_only_granted_accounts_sftd_created_are_enabled(tmp_path: Path) -> None:
    backend, access = await granted(tmp_path, zero_standing_privilege=True)

    with pytest.raises(NotFound, match="not managed by sftd"):
        await access.enable("carol")
    with pytest.raises(NotFound):
        await access.enable("nobody-here")
    with pytest.raises(PermissionDenied, match="no longer granted"):
        await access.enable("bob")
    with pytest.raises(NotFound):
        await access.disable("carol")
    assert backend.calls == []
    assert backend.passwords() == {}


async def test_a_failed_enable_leaves_the_account_disabled(tmp_path: Path) -> None:
    backend, access = await granted(tmp_path, zero_standing_privilege=True)
    backend.fail[("change_account", "alice")] = "usermod: cannot lock /etc/passwd"

    with pytest.raises(FailedPrecondition, match="cannot lock"):
        await access.enable("alice")

    assert backend.calls[-1] == ("change_account", "alice")  # the undo was attempted


async def test_agent_start_disables_every_account_without_a_live_grant(tmp_path: Path) -> None:
    backend, access = await granted(tmp_path, zero_standing_privilege=True)
    await access.enable("alice")
    backend.accounts["bob"].locked = False  # a revoked account someone unlocked

    assert await access.disable_all_without_grant(set()) == ["alice", "bob"]
    assert all(a.locked for n, a in backend.accounts.items() if n != "carol")
    assert not backend.accounts["carol"].locked  # never sftd's to touch

    await access.enable("alice")
    assert await access.disable_all_without_grant({"alice"}) == []
    alice = backend.snapshot("alice")
    assert alice is not None and not alice.locked


async def test_agent_start_on_linux_forgets_passwords_but_keeps_granted_accounts_usable(
    tmp_path: Path,
) -> None:
    backend, access = await granted(tmp_path, zero_standing_privilege=False)
    await access.enable("alice")
    backend.calls.clear()

    assert await access.disable_all_without_grant(set()) == ["alice"]
    assert backend.calls == [("forget_password", "alice")]
    alice = backend.snapshot("alice")
    assert alice is not None and not alice.locked and not alice.has_password


def test_one_time_passwords_are_long_random_and_have_every_class() -> None:
    passwords = {one_time_password() for _ in range(200)}

    assert len(passwords) == 200
    for password in passwords:
        assert len(password) == 32
        assert set(password) <= set(string.ascii_letters + string.digits + "-_.+=@#%")
        assert any(c.isupper() for c in password) and any(c.islower() for c in password)
        assert any(c.isdigit() for c in password)
        assert any(c in "-_.+=@#%" for c in password)
    with pytest.raises(ValueError, match="at least 24"):
        one_time_password(16)
