"""The Linux backend without root: what it reads from account files, and the commands it runs.

The real tools run in tests/e2e/test_agent_accounts.py (as root, in a private namespace).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.accounts.backend import AccountChange, BackendError, NewAccount
from agent.accounts.linux import SUDOERS_RULE, LinuxAccounts, run_command

USERS_FILE = """\
root:x:0:0:root:/root:/bin/bash
alice:x:60001:63001:Alice A:/home/alice:/bin/bash
bob:x:60002:63002:Bob:/home/bob:/bin/bash
carol:x:60003:63003::/home/carol:/bin/bash
dave:x:60004:63004::/home/dave:/bin/bash
+nis-compat::::::
broken:x:notanumber:1::/:/bin/sh
"""
GROUPS_FILE = """\
root:x:0:
sudo:x:27:carol
alice:x:63001:
dev:x:5000:alice,bob
sft-admin:x:998:alice
"""
SHADOW_FILE = """\
root:*:19000:0:99999:7:::
alice:*:19000:0:99999:7:::
bob:!*:19000:0:99999:7::1:
carol:$6$salt$hash:19000:0:99999:7:::
dave:*:19000:0:99999:7::2:
"""


class Commands:
    """A CommandRunner that records argv and stdin, and fails on request."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], bytes | None]] = []
        self.fail: dict[str, str] = {}

    async def __call__(self, argv: Sequence[str], stdin: bytes | None) -> None:
        self.calls.append((list(argv), stdin))
        if argv[0] in self.fail:
            raise BackendError(self.fail[argv[0]])


@pytest.fixture
def commands() -> Commands:
    return Commands()


@pytest.fixture
def linux(tmp_path: Path, commands: Commands) -> LinuxAccounts:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(USERS_FILE)
    (etc / "group").write_text(GROUPS_FILE)
    (etc / "shadow").write_text(SHADOW_FILE)
    return LinuxAccounts(
        etc_dir=etc,
        sudoers_file=etc / "sudoers.d" / "sft-admin",
        home_base=Path("/home"),
        run=commands,
    )


async def test_reads_accounts_groups_admin_and_lock_state_from_the_files(
    linux: LinuxAccounts,
) -> None:
    system = await linux.read()

    assert set(system.accounts) == {"root", "alice", "bob", "carol", "dave"}
    alice = system.accounts["alice"]
    assert (alice.uid, alice.gid, alice.gecos) == (60001, 63001, "Alice A")
    assert alice.groups == {"dev"} and alice.admin  # sft-admin is `admin`, not a group
    assert not alice.locked and not alice.has_password
    assert system.accounts["bob"].locked and not system.accounts["bob"].has_password
    assert system.accounts["carol"].has_password and not system.accounts["carol"].locked
    assert system.accounts["carol"].groups == {"sudo"}
    assert system.accounts["dave"].locked  # expired on day 2
    assert system.owner_of_uid(60002) == "bob" and system.group_of_gid(5000) == "dev"
    assert not system.admin_rights_ready  # no sudoers drop-in yet

    linux.sudoers_file.parent.mkdir()
    linux.sudoers_file.write_text(SUDOERS_RULE)
    assert (await linux.read()).admin_rights_ready


async def test_creates_a_certificate_only_account_with_one_useradd(
    linux: LinuxAccounts, commands: Commands
) -> None:
    await linux.create_account(
        NewAccount("erin", 60005, 63005, "erin", ("dev", "ops"), True, "Erin E", locked=False)
    )
    await linux.create_account(NewAccount("fred", 60006, 63006, "fred", (), False, "", locked=True))

    assert [argv for argv, _ in commands.calls] == [
        [
            "useradd", "--no-log-init", "--uid", "60005", "--gid", "63005",
            "--home-dir", "/home/erin", "--create-home", "--shell", "/bin/bash",
            "--comment", "Erin E", "--password", "*", "--groups", "dev,ops,sft-admin",
            "--", "erin",
        ],
        [
            "useradd", "--no-log-init", "--uid", "60006", "--gid", "63006",
            "--home-dir", "/home/fred", "--create-home", "--shell", "/bin/bash",
            "--comment", "", "--password", "!*", "--expiredate", "1970-01-02", "--", "fred",
        ],
    ]  # fmt: skip


async def test_every_change_to_an_account_is_one_usermod(
    linux: LinuxAccounts, commands: Commands
) -> None:
    await linux.change_account("alice", AccountChange(groups=("dev",), admin=False, gecos="A"))
    await linux.change_account("alice", AccountChange(locked=True))
    await linux.change_account("alice", AccountChange(locked=False))
    await linux.change_account("alice", AccountChange())
    await linux.create_group("dev2", None)
    await linux.create_group("alice2", 63009)

    assert [argv for argv, _ in commands.calls] == [
        ["usermod", "--groups", "dev", "--comment", "A", "--", "alice"],
        ["usermod", "--password", "!*", "--expiredate", "1970-01-02", "--", "alice"],
        ["usermod", "--unlock", "--expiredate", "", "--", "alice"],
        ["groupadd", "--", "dev2"],
        ["groupadd", "--gid", "63009", "--", "alice2"],
    ]


async def test_the_password_goes_to_chpasswd_on_stdin_never_on_the_command_line(
    linux: LinuxAccounts, commands: Commands
) -> None:
    await linux.set_password("carol", "S3cret-one-time-password-xyz")
    await linux.forget_password("carol")
    await linux.forget_password("bob")  # locked: stays locked

    (argv, stdin), forget, forget_locked = commands.calls
    assert argv == ["chpasswd", "--crypt-method", "SHA512"]
    assert stdin == b"carol:S3cret-one-time-password-xyz\n"
    assert forget[0] == ["usermod", "--password", "*", "--", "carol"]
    assert forget_locked[0] == ["usermod", "--password", "!*", "--", "bob"]
    with pytest.raises(BackendError, match="line break"):
        await linux.set_password("carol", "two\nlines")


async def test_a_sudoers_drop_in_visudo_refuses_leaves_the_old_one(
    linux: LinuxAccounts, commands: Commands
) -> None:
    await linux.prepare_admin_rights()
    assert linux.sudoers_file.read_text() == SUDOERS_RULE
    assert linux.sudoers_file.stat().st_mode & 0o777 == 0o440
    assert commands.calls[0][0][0] == "visudo"  # sft-admin exists: no groupadd

    commands.fail["visudo"] = "visudo exited with 1: syntax error near line 1"
    with pytest.raises(BackendError, match="unchanged: visudo exited with 1: syntax error"):
        await linux.install_sudoers("%sft-admin ALL=(ALL NOPASSWD\n")

    assert linux.sudoers_file.read_text() == SUDOERS_RULE
    assert sorted(p.name for p in linux.sudoers_file.parent.iterdir()) == ["sft-admin"]


async def test_a_failing_command_raises_with_its_exit_code_and_stderr() -> None:
    with pytest.raises(BackendError, match=r"sh exited with 3: no such group 'x'"):
        await run_command(["sh", "-c", "echo \"no such group 'x'\" >&2; exit 3"])
    with pytest.raises(BackendError, match="cannot run it"):
        await run_command(["/nonexistent/useradd"])
    await run_command(["true"])
