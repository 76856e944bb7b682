"""sftd's record of the accounts it created: round trip, and refusal of a corrupt file."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.accounts.managed import CorruptRecord, ManagedAccount, ManagedAccounts


def test_the_record_survives_a_restart_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "managed-accounts.json"
    record = ManagedAccounts.load(path)
    record.put(ManagedAccount("alice", "alice", "teams/a/users/alice", 60001, 63001, True))
    record.put(ManagedAccount("bob", "Bob", "teams/a/users/bob", 60002, 63002, False, True))
    record.save()

    again = ManagedAccounts.load(path)

    assert again.accounts == record.accounts
    assert again.by_local_name("Bob") == record.accounts["bob"]
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"version": 2, "accounts": []}',
        '{"version": 1, "accounts": {}}',
        '{"version": 1, "accounts": [{"name": "alice"}]}',
        '{"version": 1, "accounts": [{"name": "a", "local_name": "a", "user": "u", '
        '"uid": true, "gid": 1, "granted": true, "pending": false}]}',
        '{"version": 1, "accounts": [{"name": "a", "local_name": "a", "user": "u", '
        '"uid": "60001", "gid": 1, "granted": true, "pending": false}]}',
    ],
)
def test_a_corrupt_record_is_refused_not_guessed(tmp_path: Path, text: str) -> None:
    path = tmp_path / "managed-accounts.json"
    path.write_text(text)

    with pytest.raises(CorruptRecord, match="will not change any account"):
        ManagedAccounts.load(path)


def test_a_missing_record_means_no_account_is_sftds(tmp_path: Path) -> None:
    assert ManagedAccounts.load(tmp_path / "managed-accounts.json").accounts == {}
