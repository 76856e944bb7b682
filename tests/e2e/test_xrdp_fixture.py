"""The xrdp fixture tells a real RDP login from a refused one (tests/support/xrdp.py).

Real xrdp, xrdp-sesman, Xvnc, PAM and FreeRDP, as root in a private namespace whose
accounts are a tmpfs copy of the machine's. A fixture that always said yes would let
issue 6's tests pass with a broken broker, so every refusal is proven here too.
Each xdist worker gets its own namespace and server on free ports, so these tests run
in parallel (pytest -n) without an xdist group.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.freerdp import rdp_client
from tests.support.namespace import PrivateSystem, private_system
from tests.support.ports import free_port
from tests.support.xrdp import SESSION_MARKER, XRDPServer, running_xrdp

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

PASSWORD = "correct horse 7"  # noqa: S105 (a test account's password in a throwaway namespace)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateSystem]:
    """One private namespace (own /etc, /home, /run, /var/log) for this module's tests."""
    with private_system(tmp_path_factory.mktemp("namespace"), private_run=True) as namespace:
        yield namespace


@pytest.fixture(scope="module")
def xrdp(system: PrivateSystem, tmp_path_factory: pytest.TempPathFactory) -> Iterator[XRDPServer]:
    """xrdp and sesman in that namespace, shared by the module's tests (one user each)."""
    with running_xrdp(system, tmp_path_factory.mktemp("xrdp")) as server:
        yield server


def add_user(system: PrivateSystem, name: str, password: str = PASSWORD) -> None:
    """Create `name` with a home and `password`, as an administrator would."""
    system.run(["useradd", "--create-home", "--shell", "/bin/sh", name])
    system.run(["chpasswd"], input=f"{name}:{password}\n")


def processes_of(system: PrivateSystem, user: str) -> str:
    """Return `ps` lines for `user`'s processes in the namespace ("" when none)."""
    return system.run(["ps", "-o", "pid=,args=", "-u", user], check=False).stdout


def test_the_right_password_logs_in_and_the_session_ends(
    system: PrivateSystem, xrdp: XRDPServer
) -> None:
    add_user(system, "rdp-alice")

    result = xrdp.rdp_login("rdp-alice", PASSWORD)

    assert result.authenticated, result
    assert "++ created session (access granted): username rdp-alice," in result.evidence
    # A real session ran as the user (PAM session, Xvnc, the window manager)...
    assert system.read(f"/home/rdp-alice/{SESSION_MARKER}") == "rdp-alice\n"
    # ...and ended with the login: nothing of the user's keeps running.
    assert processes_of(system, "rdp-alice") == ""
    assert result.seconds < 10
    # TLS, not the unencrypted standard RDP security xrdp falls back to by default.
    assert "TLS connection established from 127.0.0.1" in xrdp.xrdp_log()


@pytest.mark.parametrize(
    ("user", "disable", "password"),
    [
        ("rdp-bob", [], PASSWORD + "x"),
        ("rdp-carol", ["--lock"], PASSWORD),
        # The field sftd gives accounts that log in with certificates only.
        ("rdp-dave", ["--password", "*"], PASSWORD),
        ("rdp-erin", ["--expiredate", "1"], PASSWORD),
    ],
    ids=["wrong-password", "locked", "star-password-field", "expired"],
)
def test_a_login_is_refused(
    system: PrivateSystem, xrdp: XRDPServer, user: str, disable: list[str], password: str
) -> None:
    add_user(system, user)
    if disable:
        system.run(["usermod", *disable, user])

    result = xrdp.rdp_login(user, password)

    assert not result.authenticated, result
    # pam_authenticate (wrong, locked, '*') or pam_acct_mgmt (expired) said no.
    assert f"AUTHFAIL: user={user} " in result.evidence
    assert processes_of(system, user) == ""


def test_a_login_through_another_port_is_judged_the_same(
    system: PrivateSystem, xrdp: XRDPServer
) -> None:
    add_user(system, "rdp-frank")

    with tcp_relay(xrdp.port) as relay_port:
        granted = xrdp.rdp_login("rdp-frank", PASSWORD, address=f"127.0.0.1:{relay_port}")
        refused = xrdp.rdp_login("rdp-frank", "nope", address=f"127.0.0.1:{relay_port}")

    assert granted.authenticated, granted
    assert not refused.authenticated, refused


@pytest.mark.parametrize("password", [PASSWORD, "nope"], ids=["right", "wrong"])
def test_freerdp_auth_only_exits_zero_whatever_the_password(
    system: PrivateSystem, xrdp: XRDPServer, tmp_path: Path, password: str
) -> None:
    # Why the verdict comes from sesman's log: xrdp 0.9 has no NLA, so FreeRDP's
    # +auth-only succeeds as soon as the TLS handshake does.
    add_user(system, f"rdp-grace-{len(password)}")

    with rdp_client(
        xrdp.address, f"rdp-grace-{len(password)}", password, workdir=tmp_path, auth_only=True
    ) as client:
        exit_code = client.process.wait(timeout=15)

    assert exit_code == 0, client.output()
    assert "Authentication only, exit status 0" in client.output()


def test_a_login_that_never_reaches_xrdp_fails_the_test_instead_of_counting_as_refused(
    system: PrivateSystem, xrdp: XRDPServer
) -> None:
    add_user(system, "rdp-heidi")
    nothing_listens = f"127.0.0.1:{free_port()}"

    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="decided nothing about rdp-heidi's login"):
        xrdp.rdp_login("rdp-heidi", PASSWORD, address=nothing_listens)
    assert time.monotonic() - started < 10


def test_the_server_stops_every_process_it_started(tmp_path: Path) -> None:
    with private_system(tmp_path, private_run=True) as system:
        add_user(system, "rdp-ivan")
        with running_xrdp(system, tmp_path) as server:
            assert server.rdp_login("rdp-ivan", PASSWORD).authenticated
            assert "xrdp-sesman" in system.run(["ps", "-e", "-o", "comm="]).stdout

        left = system.run(["ps", "-e", "-o", "pid=,comm="]).stdout.split("\n")
        # Only the namespace's init (sleep) and this ps itself.
        assert sorted(line.split()[1] for line in left if line.strip()) == ["ps", "sleep"]


def test_a_namespace_sharing_the_machines_run_is_refused(tmp_path: Path) -> None:
    with private_system(tmp_path) as system:
        with pytest.raises(pytest.fail.Exception, match="its own /run"):
            with running_xrdp(system, tmp_path):
                pass  # pragma: no cover - never reached


@contextlib.contextmanager
def tcp_relay(target_port: int) -> Iterator[int]:
    """Relay every connection to a free loopback port on to `target_port`; yield that port.

    A stand-in for `sft rdp`'s local listener, so the client dials something that is
    not xrdp.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    stopping = threading.Event()
    threads: list[threading.Thread] = []

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def relay(client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", target_port)) as upstream:
            back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
            back.start()
            pump(client, upstream)
            back.join()

    def accept() -> None:
        while not stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=relay, args=(client,), daemon=True)
            thread.start()
            threads.append(thread)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopping.set()
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        acceptor.join(timeout=5)
        for thread in threads:
            thread.join(timeout=5)
