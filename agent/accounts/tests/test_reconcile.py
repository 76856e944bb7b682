"""The reconciler against the recording backend: what it changes, refuses and reports."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.accounts.backend import RecordingBackend
from agent.accounts.managed import ManagedAccount, ManagedAccounts
from agent.accounts.reconcile import (
    AccountConflict,
    ConflictKind,
    ReconcileOutcome,
    Reconciler,
)
from agent.accounts.tests.desired import TEAM, account, state


@pytest.fixture
def backend() -> RecordingBackend:
    return RecordingBackend()


@pytest.fixture
def managed(tmp_path: Path) -> ManagedAccounts:
    return ManagedAccounts.load(tmp_path / "managed-accounts.json")


@pytest.fixture
def reconciler(backend: RecordingBackend, managed: ManagedAccounts) -> Reconciler:
    return Reconciler(backend, managed)


def kinds(outcome: ReconcileOutcome) -> dict[str, ConflictKind]:
    return {c.name: c.kind for c in outcome.conflicts}


async def test_creates_groups_before_accounts_with_the_platforms_ids(
    backend: RecordingBackend, reconciler: Reconciler, managed: ManagedAccounts
) -> None:
    alice = account("alice", 1, groups=("dev",), admin=True, full_name="Alice: A, Admin")
    bob = account("bob", 2, groups=("dev", "ops"))

    outcome = await reconciler.reconcile(state(alice, bob))

    assert backend.calls == [
        ("prepare_admin_rights", ""),
        ("create_group", "alice"),
        ("create_group", "bob"),
        ("create_group", "dev"),
        ("create_group", "ops"),
        ("create_account", "alice"),
        ("create_account", "bob"),
    ]
    assert not outcome.conflicts and not outcome.failures
    assert backend.groups["alice"] == 63001 and backend.groups["bob"] == 63002
    made = backend.snapshot("alice")
    assert made is not None
    assert (made.uid, made.gid, made.admin, made.locked) == (60001, 63001, True, False)
    assert made.groups == {"dev"}
    assert made.gecos == "Alice A Admin"  # ':' and ',' would break /etc/passwd
    assert backend.snapshot("bob") is not None
    assert {n: (r.uid, r.granted, r.pending) for n, r in managed.accounts.items()} == {
        "alice": (60001, True, False),
        "bob": (60002, True, False),
    }
    reread = ManagedAccounts.load(managed.path)
    assert reread.accounts == managed.accounts
    assert managed.path.stat().st_mode & 0o777 == 0o600


async def test_each_change_is_logged_with_the_platform_user_and_why(
    reconciler: Reconciler,
) -> None:
    with capture_logs() as logs:
        await reconciler.reconcile(state(account("alice", 1)))
        await reconciler.reconcile(state(revision=2))

    changes = [line for line in logs if line["event"] in ("account created", "account changed")]
    assert [(c["event"], c["user"], c["reason"], c["revision"]) for c in changes] == [
        ("account created", TEAM + "alice", "granted on this server's project", 1),
        ("account changed", TEAM + "alice", "no longer granted", 2),
    ]


async def test_existing_groups_are_reused_not_created(
    backend: RecordingBackend, reconciler: Reconciler
) -> None:
    backend.add_group("dev", 5000)
    backend.add_group("alice", 63001)  # the primary group already there, same gid

    await reconciler.reconcile(state(account("alice", 1, groups=("dev",))))

    assert backend.calls == [("create_account", "alice")]


async def test_an_unchanged_state_costs_nothing(
    backend: RecordingBackend, reconciler: Reconciler
) -> None:
    desired = state(account("alice", 1, groups=("dev",), admin=True), account("bob", 2))
    await reconciler.reconcile(desired)
    backend.calls.clear()

    outcome = await reconciler.reconcile(desired)

    assert backend.calls == [] and outcome.applied == ()


async def test_group_and_admin_changes_apply_to_existing_accounts(
    backend: RecordingBackend, reconciler: Reconciler
) -> None:
    await reconciler.reconcile(state(account("alice", 1, groups=("dev",)), account("bob", 2)))
    backend.calls.clear()

    await reconciler.reconcile(
        state(account("alice", 1, groups=("ops",), admin=True), account("bob", 2))
    )

    assert backend.calls == [
        ("prepare_admin_rights", ""),
        ("create_group", "ops"),
        ("change_account", "alice"),
    ]
    alice = backend.snapshot("alice")
    assert alice is not None and alice.groups == {"ops"} and alice.admin


async def test_an_account_no_longer_granted_is_locked_and_loses_admin(
    backend: RecordingBackend, reconciler: Reconciler, managed: ManagedAccounts
) -> None:
    await reconciler.reconcile(state(account("alice", 1), account("bob", 2, admin=True)))
    backend.calls.clear()

    outcome = await reconciler.reconcile(state(account("alice", 1), revision=2))

    assert backend.calls == [("change_account", "bob")]
    bob = backend.snapshot("bob")
    assert bob is not None and bob.locked and not bob.admin  # locked, never deleted
    assert managed.accounts["bob"].granted is False
    assert [a.reason for a in outcome.applied] == ["no longer granted"]  # type: ignore[union-attr]


async def test_an_account_granted_again_is_unlocked(
    backend: RecordingBackend, reconciler: Reconciler, managed: ManagedAccounts
) -> None:
    await reconciler.reconcile(state(account("alice", 1), account("bob", 2)))
    await reconciler.reconcile(state(account("alice", 1)))
    backend.calls.clear()

    await reconciler.reconcile(state(account("alice", 1), account("bob", 2)))

    assert backend.calls == [("change_account", "bob")]
    bob = backend.snapshot("bob")
    assert bob is not None and not bob.locked
    assert managed.accounts["bob"].granted


async def test_an_account_locked_outside_sftd_is_unlocked_again(
    backend: RecordingBackend, reconciler: Reconciler
) -> None:
    await reconciler.reconcile(state(account("alice", 1)))
    backend.accounts["alice"].locked = True  # drift: someone ran usermod -L
    backend.calls.clear()

    await reconciler.reconcile(state(account("alice", 1)))

    assert backend.calls == [("change_account", "alice")]


async def test_reserved_names_system_ids_and_invalid_names_are_refused(
    backend: RecordingBackend, reconciler: Reconciler
) -> None:
    outcome = await reconciler.reconcile(
        state(
            account("root", 1),
            account("daemon", 2),
            account("zero", 3, uid=0),
            account("system", 4, uid=999),
            account("nobody2", 5, uid=65534),
            account("lowgid", 6, gid=100),
            account("Bad-Name", 7),
            account("x" * 33, 8),
            account("ok", 9),
        )
    )

    assert kinds(outcome) == {
        "root": ConflictKind.NAME_INVALID,
        "daemon": ConflictKind.NAME_INVALID,
        "zero": ConflictKind.UID_IN_USE,
        "system": ConflictKind.UID_IN_USE,
        "nobody2": ConflictKind.UID_IN_USE,
        "lowgid": ConflictKind.GID_IN_USE,
        "Bad-Name": ConflictKind.NAME_INVALID,
        "x" * 33: ConflictKind.NAME_INVALID,
    }
    assert backend.calls == [("create_group", "ok"), ("create_account", "ok")]


async def test_an_account_sftd_did_not_create_is_never_taken_over(
    backend: RecordingBackend, reconciler: Reconciler, managed: ManagedAccounts
) -> None:
    backend.add_foreign_account("carol", 1001, 1001)
    backend.add_foreign_account("backup2", 60002, 1002)
    backend.add_group("taken", 63003)
    reported: list[AccountConflict] = []

    async def report(conflict: AccountConflict) -> None:
        reported.append(conflict)

    reconciler.on_conflict = report
    desired = state(
        account("carol", 1, admin=True), account("dave", 2), account("erin", 3), account("ok", 4)
    )

    outcome = await reconciler.reconcile(desired)

    assert kinds(outcome) == {
        "carol": ConflictKind.NAME_IN_USE,
        "dave": ConflictKind.UID_IN_USE,
        "erin": ConflictKind.GID_IN_USE,
    }
    assert "did not create" in outcome.conflicts[0].detail
    assert "backup2" in outcome.conflicts[1].detail
    assert all(name == "ok" for _, name in backend.calls)
    carol = backend.snapshot("carol")
    assert carol is not None and not carol.admin and not carol.locked
    assert set(managed.accounts) == {"ok"}
    assert [c.name for c in reported] == ["carol", "dave", "erin"]

    await reconciler.reconcile(desired)  # the same conflicts are reported once
    assert len(reported) == 3


async def test_an_account_replaced_outside_sftd_is_left_alone(
    backend: RecordingBackend, reconciler: Reconciler
) -> None:
    await reconciler.reconcile(state(account("alice", 1)))
    del backend.accounts["alice"]
    backend.add_foreign_account("alice", 2000, 2000)
    backend.calls.clear()

    outcome = await reconciler.reconcile(state(account("alice", 1, admin=True)))
    assert kinds(outcome) == {"alice": ConflictKind.NAME_IN_USE}
    await reconciler.reconcile(state())  # and not locked when it is no longer granted

    assert backend.calls == []


async def test_create_missing_false_creates_nothing_but_updates_existing(
    backend: RecordingBackend, reconciler: Reconciler
) -> None:
    await reconciler.reconcile(state(account("alice", 1)))
    backend.calls.clear()

    await reconciler.reconcile(
        state(account("alice", 1, groups=("dev",)), account("bob", 2), create_missing=False)
    )

    assert backend.calls == [("create_group", "dev"), ("change_account", "alice")]
    assert backend.snapshot("bob") is None


async def test_a_system_group_is_never_granted(
    backend: RecordingBackend, reconciler: Reconciler
) -> None:
    backend.add_group("audio", 29)

    outcome = await reconciler.reconcile(
        state(account("alice", 1, groups=("audio",)), account("bob", 2, groups=("sudo",)))
    )

    assert {f.name for f in outcome.failures} == {"alice", "bob"}
    assert "system group" in outcome.failures[0].error
    assert backend.calls == []


async def test_a_failing_action_is_reported_and_the_others_proceed(
    backend: RecordingBackend, reconciler: Reconciler, managed: ManagedAccounts
) -> None:
    backend.fail[("create_account", "alice")] = "useradd: cannot lock /etc/passwd"
    backend.fail[("create_group", "bad")] = "groupadd: no"

    outcome = await reconciler.reconcile(
        state(account("alice", 1), account("bob", 2), account("carl", 3, groups=("bad",)))
    )

    assert [(f.name, f.action) for f in outcome.failures] == [
        ("carl", "create group bad"),
        ("alice", "create account"),
        ("carl", "create account"),
    ]
    assert "cannot lock /etc/passwd" in outcome.failures[1].error
    assert "skipped" in outcome.failures[2].error
    assert ("create_account", "carl") not in backend.calls  # its group is missing
    assert backend.snapshot("bob") is not None
    assert managed.accounts["alice"].pending  # resolved against the OS next time

    backend.fail.clear()
    again = await reconciler.reconcile(
        state(account("alice", 1), account("bob", 2), account("carl", 3, groups=("bad",)))
    )
    assert not again.failures
    assert backend.snapshot("alice") is not None and backend.snapshot("carl") is not None
    assert not managed.accounts["alice"].pending


async def test_a_creation_a_crash_left_pending_is_adopted_when_the_os_has_it(
    backend: RecordingBackend, managed: ManagedAccounts
) -> None:
    managed.put(ManagedAccount("alice", "alice", TEAM + "alice", 60001, 63001, True, True))
    backend.add_foreign_account("alice", 60001, 63001)  # useradd ran, the record did not

    outcome = await Reconciler(backend, managed).reconcile(state(account("alice", 1)))

    assert not outcome.conflicts
    assert not managed.accounts["alice"].pending
    assert ("create_account", "alice") not in backend.calls


async def test_a_changed_uid_is_reported_not_renumbered(
    backend: RecordingBackend, reconciler: Reconciler
) -> None:
    await reconciler.reconcile(state(account("alice", 1)))
    backend.calls.clear()

    outcome = await reconciler.reconcile(state(account("alice", 1, uid=61000)))

    assert [f.action for f in outcome.failures] == ["renumber"]
    assert backend.calls == []


async def test_an_invalid_entry_for_a_managed_account_locks_it(
    backend: RecordingBackend, reconciler: Reconciler
) -> None:
    await reconciler.reconcile(state(account("alice", 1)))

    outcome = await reconciler.reconcile(state(account("alice", 1, uid=0)))

    assert kinds(outcome) == {"alice": ConflictKind.UID_IN_USE}
    alice = backend.snapshot("alice")
    assert alice is not None and alice.locked  # fail closed


async def test_one_changed_user_among_10000_costs_one_command(
    backend: RecordingBackend, reconciler: Reconciler
) -> None:
    accounts = [
        account(f"user{i}", i, groups=("staff1",), uid=100_000 + i, gid=200_000 + i)
        for i in range(1, 10_001)
    ]
    with capture_logs() as logs:  # 20,000 log lines: keep them off the console renderer
        await reconciler.reconcile(state(*accounts))
    assert len(backend.calls) == 1 + 2 * 10_000  # staff1, then a group and a user each
    assert sum(line["event"] == "account created" for line in logs) == 10_000

    backend.admin_ready = True
    changed = [*accounts]
    for index, change in ((4321, {"admin": True}), (17, {"supplementary_groups": ()})):
        backend.calls.clear()
        changed[index] = dataclasses.replace(changed[index], **change)
        started = time.monotonic()
        await reconciler.reconcile(state(*changed))
        assert backend.calls == [("change_account", f"user{index + 1}")]
        assert time.monotonic() - started < 5.0

    backend.calls.clear()
    await reconciler.reconcile(state(*changed[:-1]))
    assert backend.calls == [("change_account", "user10000")]


async def test_zero_standing_privilege_creates_locked_and_never_unlocks(
    managed: ManagedAccounts,
) -> None:
    backend = RecordingBackend(windows=True)
    reconciler = Reconciler(backend, managed, zero_standing_privilege=True)
    alice = dataclasses.replace(account("alice", 1, admin=True), windows_name="Alice")
    long_name = dataclasses.replace(account("bob", 2), windows_name="b" * 21)

    outcome = await reconciler.reconcile(state(alice, long_name))

    assert kinds(outcome) == {"bob": ConflictKind.NAME_INVALID}
    assert backend.calls == [("prepare_admin_rights", ""), ("create_account", "Alice")]
    created = backend.snapshot("Alice")
    assert created is not None and created.locked and created.admin
    assert managed.accounts["alice"].local_name == "Alice"

    await reconciler.reconcile(state())
    backend.calls.clear()
    await reconciler.reconcile(state(alice))
    assert backend.calls == [("change_account", "Alice")]  # admin back, still locked
    again = backend.snapshot("Alice")
    assert again is not None and again.locked and again.admin
    assert managed.accounts["alice"].granted
