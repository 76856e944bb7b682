"""sftd's account reconciliation with the real tools, as root, in a private namespace.

useradd, usermod, groupadd, chpasswd, visudo, passwd, su and sudo all run for real,
against a tmpfs copy of /etc (tests/support/namespace.py); the machine's own account
files are compared before and after every test.

The agent's code runs inside the namespace too: this module doubles as the driver
(`python -m tests.e2e.test_agent_accounts` reads one JSON request on stdin and prints
one JSON answer), so each step is a fresh process, as after an agent restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pty
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from agent.accounts.model import DesiredAccount
from tests.support.namespace import PrivateSystem, private_system, require_root
from tests.support.real_software import require_program

pytestmark = pytest.mark.e2e

REPOSITORY = Path(__file__).resolve().parents[2]
HOST_FILES = ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow", "/etc/sudoers")
TOOLS = {
    "useradd": "passwd",
    "usermod": "passwd",
    "groupadd": "passwd",
    "chpasswd": "passwd",
    "passwd": "passwd",
    "visudo": "sudo",
    "sudo": "sudo",
    "su": "util-linux",
    "runuser": "util-linux",
}
USER = "teams/acme/users/"


def desired(
    name: str, index: int, *, groups: tuple[str, ...] = (), admin: bool = False
) -> dict[str, Any]:
    """Return the platform's account `name` as the driver's JSON."""
    account = DesiredAccount(
        name=name,
        user=USER + name,
        uid=60000 + index,
        gid=63000 + index,
        primary_group=name,
        supplementary_groups=groups,
        admin=admin,
        windows_name=name,
        full_name=f"{name.title()} Example",
    )
    return asdict(account)


class Agent:
    """Runs the agent's account code inside the private namespace, one process a call."""

    def __init__(
        self, system: PrivateSystem, state_dir: Path, *, zero_standing_privilege: bool
    ) -> None:
        self.system = system
        self.record = state_dir / "managed-accounts.json"
        self.zero_standing_privilege = zero_standing_privilege

    def call(self, op: str, **arguments: Any) -> dict[str, Any]:
        """Run `op` in the namespace; return its JSON answer."""
        request = {
            "op": op,
            "record": str(self.record),
            "zero_standing_privilege": self.zero_standing_privilege,
            **arguments,
        }
        result = self.system.run(
            [sys.executable, "-m", "tests.e2e.test_agent_accounts"], input=json.dumps(request)
        )
        answer: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
        answer["log"] = result.stderr
        return answer

    def reconcile(self, *accounts: dict[str, Any], create_missing: bool = True) -> dict[str, Any]:
        """Apply a desired state listing `accounts`."""
        return self.call("reconcile", accounts=list(accounts), create_missing=create_missing)


def _host_fingerprint() -> dict[str, str]:
    """Hash the machine's account files, sudoers.d and /home listing (never their content)."""
    prints = {}
    for name in HOST_FILES:
        path = Path(name)
        if path.exists():
            prints[name] = hashlib.sha256(path.read_bytes()).hexdigest() + str(path.stat().st_mtime)
    for directory in ("/etc/sudoers.d", "/home"):
        if Path(directory).is_dir():
            prints[directory] = repr(sorted(os.listdir(directory)))
    return prints


@pytest.fixture
def system(tmp_path: Path) -> Iterator[PrivateSystem]:
    """A private namespace; afterwards the machine's own account files must be unchanged."""
    require_root("account reconciliation tests")
    for tool, package in TOOLS.items():
        require_program(tool, package)
    before = _host_fingerprint()
    with private_system(tmp_path, cwd=REPOSITORY) as private:
        yield private
    assert _host_fingerprint() == before, "the machine's own account files changed"


@pytest.fixture
def agent(system: PrivateSystem, tmp_path: Path) -> Agent:
    """The agent on Linux with standing certificate access (the default)."""
    return Agent(system, tmp_path / "state", zero_standing_privilege=False)


def shadow(system: PrivateSystem, name: str) -> list[str]:
    """Return the shadow fields of `name` in the namespace."""
    for line in system.read("/etc/shadow").splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    raise AssertionError(f"{name} has no /etc/shadow entry")


def status(system: PrivateSystem, name: str) -> str:
    """Return `passwd -S`'s status letter (P usable, L locked, NP none)."""
    return str(system.run(["passwd", "-S", name]).stdout.split()[1])


def test_real_tools_create_certificate_only_accounts_with_the_platforms_ids(
    system: PrivateSystem, agent: Agent
) -> None:
    system.run(["groupadd", "--gid", "5000", "dev"])  # exists already: reused

    answer = agent.reconcile(
        desired("alice", 1, groups=("dev", "ops"), admin=True), desired("bob", 2, groups=("dev",))
    )

    assert answer["conflicts"] == [] and answer["failures"] == []
    entry = system.run(["getent", "passwd", "alice"]).stdout.strip()
    assert entry == "alice:x:60001:63001:Alice Example:/home/alice:/bin/bash"
    assert system.run(["getent", "group", "alice"]).stdout.startswith("alice:x:63001:")
    assert system.run(["getent", "group", "dev"]).stdout.strip() == "dev:x:5000:alice,bob"
    assert sorted(system.run(["id", "-nG", "alice"]).stdout.split()) == [
        "alice", "dev", "ops", "sft-admin",
    ]  # fmt: skip
    assert sorted(system.run(["id", "-nG", "bob"]).stdout.split()) == ["bob", "dev"]
    # '*', not '!': with UsePAM no, sshd refuses '!' accounts even with a certificate.
    assert shadow(system, "alice")[1] == "*" and shadow(system, "alice")[7] == ""
    assert system.run(["stat", "-c", "%u:%g", "/home/alice"]).stdout.strip() == "60001:63001"
    assert system.run(["stat", "-c", "%a %U", "/etc/sudoers.d/sft-admin"]).stdout.split() == [
        "440", "root",
    ]  # fmt: skip
    system.run(["visudo", "--check", "--quiet"])  # the whole sudoers configuration
    rights = system.run(["sudo", "--list", "--other-user", "alice"]).stdout
    assert "(ALL : ALL) NOPASSWD: ALL" in rights
    refused = system.run(["sudo", "--list", "--other-user", "bob"], check=False)
    assert "not allowed to run sudo" in refused.stdout + refused.stderr
    assert '"user": "teams/acme/users/alice"' in answer["log"]  # who, in each change's log

    again = agent.reconcile(
        desired("alice", 1, groups=("dev", "ops"), admin=True), desired("bob", 2, groups=("dev",))
    )
    assert again["applied"] == []  # nothing differs: no command at all


def test_a_sudoers_drop_in_visudo_refuses_is_not_installed(
    system: PrivateSystem, agent: Agent
) -> None:
    agent.reconcile(desired("alice", 1, admin=True))
    good = system.read("/etc/sudoers.d/sft-admin")

    answer = agent.call("install_sudoers", content="%sft-admin ALL=(ALL NOPASSWD ALL\n")

    assert "unchanged" in answer["error"] and "visudo" in answer["error"]
    assert system.read("/etc/sudoers.d/sft-admin") == good
    assert system.run(["ls", "-A", "/etc/sudoers.d"]).stdout.split().count("sft-admin") == 1
    assert not [n for n in system.run(["ls", "-A", "/etc/sudoers.d"]).stdout.split() if "sftd" in n]
    system.run(["visudo", "--check", "--quiet"])


def test_a_user_no_longer_granted_is_locked_and_keeps_their_home(
    system: PrivateSystem, agent: Agent
) -> None:
    agent.reconcile(desired("alice", 1, admin=True), desired("bob", 2))
    system.run(["runuser", "-u", "alice", "--", "sh", "-c", "echo mine > /home/alice/notes"])

    answer = agent.reconcile(desired("bob", 2))

    assert [a["name"] for a in answer["applied"]] == ["alice"]
    fields = shadow(system, "alice")
    assert fields[1] == "!*" and fields[7] == "1"  # locked, and expired since 1970-01-02
    assert status(system, "alice") == "L"
    assert "sft-admin" not in system.run(["id", "-nG", "alice"]).stdout.split()
    assert system.read("/home/alice/notes") == "mine\n"
    assert shadow(system, "bob")[1] == "*"

    agent.reconcile(desired("alice", 1), desired("bob", 2))  # granted again
    fields = shadow(system, "alice")
    assert fields[1] == "*" and fields[7] == ""


def test_enable_sets_a_password_that_works_and_disable_makes_it_fail(
    system: PrivateSystem, tmp_path: Path
) -> None:
    broker = Agent(system, tmp_path / "state", zero_standing_privilege=True)
    broker.reconcile(desired("alice", 1))
    assert shadow(system, "alice")[1] == "!*"  # created disabled: zero standing privilege

    password = broker.call("enable", name="alice")["password"]

    assert len(password) >= 24 and password not in system.read("/etc/shadow")
    assert status(system, "alice") == "P" and shadow(system, "alice")[7] == ""
    assert broker.call("su", name="alice", password=password)["ok"]
    assert not broker.call("su", name="alice", password=password + "x")["ok"]

    broker.call("disable", name="alice")

    assert status(system, "alice") == "L" and shadow(system, "alice")[1] == "!*"
    assert not broker.call("su", name="alice", password=password)["ok"]
    assert broker.call("disable_all", live=[])["disabled"] == []


def test_an_account_sftd_did_not_create_is_left_untouched_and_reported(
    system: PrivateSystem, agent: Agent
) -> None:
    system.run(["useradd", "--uid", "60002", "--create-home", "carol"])
    lines = {
        path: [line for line in system.read(path).splitlines() if line.startswith("carol:")]
        for path in ("/etc/passwd", "/etc/shadow", "/etc/group")
    }

    answer = agent.reconcile(desired("carol", 1, admin=True), desired("dave", 2))

    assert answer["conflicts"] == [
        ["carol", "name_in_use", answer["conflicts"][0][2]],
        ["dave", "uid_in_use", "uid 60002 belongs to local user 'carol'"],
    ]
    assert "did not create" in answer["conflicts"][0][2]
    assert "refused" in answer["log"] and "carol" in answer["log"]
    for path, before in lines.items():
        assert [ln for ln in system.read(path).splitlines() if ln.startswith("carol:")] == before
    assert "sft-admin" not in system.run(["id", "-nG", "carol"]).stdout
    assert agent.call("enable", name="carol")["error"].startswith("account 'carol' is not managed")


# The driver: runs inside the namespace (python -m tests.e2e.test_agent_accounts).


async def _drive(request: dict[str, Any]) -> dict[str, Any]:
    from agent.accounts.access import AccountAccess
    from agent.accounts.backend import BackendError
    from agent.accounts.linux import LinuxAccounts
    from agent.accounts.managed import ManagedAccounts
    from agent.accounts.model import DesiredState
    from agent.accounts.reconcile import Reconciler
    from runtime.errors import SftError

    backend = LinuxAccounts()
    managed = ManagedAccounts.load(Path(request["record"]))
    zsp = bool(request["zero_standing_privilege"])
    access = AccountAccess(backend, managed, zero_standing_privilege=zsp)
    op = request["op"]
    if op == "reconcile":
        state = DesiredState(
            revision=1,
            accounts=tuple(
                DesiredAccount(**{**a, "supplementary_groups": tuple(a["supplementary_groups"])})
                for a in request["accounts"]
            ),
            create_missing=request["create_missing"],
        )
        outcome = await Reconciler(backend, managed, zero_standing_privilege=zsp).reconcile(state)
        return {
            "applied": [
                {"kind": type(a).__name__, "name": getattr(a, "name", "")} for a in outcome.applied
            ],
            "conflicts": [[c.name, c.kind.value, c.detail] for c in outcome.conflicts],
            "failures": [[f.name, f.action, f.error] for f in outcome.failures],
        }
    try:
        if op == "enable":
            return {"password": await access.enable(request["name"])}
        if op == "disable":
            await access.disable(request["name"])
            return {}
        if op == "disable_all":
            return {"disabled": await access.disable_all_without_grant(set(request["live"]))}
        if op == "install_sudoers":
            await backend.install_sudoers(request["content"])
            return {"error": None}
    except (SftError, BackendError) as error:
        return {"error": str(error)}
    if op == "su":
        return {"ok": _su_works(request["name"], request["password"])}
    raise ValueError(f"unknown op {op!r}")


def _su_works(name: str, password: str) -> bool:
    """Return whether `su NAME` run by nobody accepts `password` (PAM, via a pty)."""
    runuser = shutil.which("runuser") or "runuser"
    pid, terminal = pty.fork()
    if pid == 0:  # the child: su reads the password from its terminal, never stdin
        # An argument list, no shell: S606 warns about the absence of one.
        os.execv(runuser, [runuser, "-u", "nobody", "--", "su", "-c", "true", name])  # noqa: S606
    output = b""
    deadline = time.monotonic() + 10
    while b"assword" not in output and time.monotonic() < deadline:
        try:
            output += os.read(terminal, 1024)
        except OSError:
            break
    os.write(terminal, password.encode() + b"\n")
    while True:
        try:
            if not os.read(terminal, 1024):
                break
        except OSError:  # EIO: su exited and closed the terminal
            break
    _, wait_status = os.waitpid(pid, 0)
    os.close(terminal)
    return os.waitstatus_to_exitcode(wait_status) == 0


def main() -> None:
    """Read one request on stdin, run it, print the JSON answer (logs go to stderr)."""
    import structlog

    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    answer = asyncio.run(_drive(json.loads(sys.stdin.read())))
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
