"""Real xrdp and xrdp-sesman on a loopback port inside a private namespace, and the verdict
on an RDP login as xrdp-sesman logs it. Writes only to the namespace's own /etc, /run,
/var/log and /tmp; stops the daemons it started by pid (anything a session leaves ends
with the namespace).

xrdp 0.9 has no NLA, so FreeRDP's exit status (even with `+auth-only`) says nothing
about the password: the verdict is sesman's `++ created session … username U` or
`AUTHFAIL: user=U` line. The session is real (Xvnc from tigervnc-standalone-server, the
user's PAM session and a window manager), and the "window manager" exits by itself after
a second, so no session outlives the login (xrdp keeps sessions after the client
leaves). Use it from a fixture::

    with private_system(tmp_path, private_run=True) as system, \\
            running_xrdp(system, tmp_path) as server:
        system.run(["useradd", "--create-home", "alice"])
        system.run(["chpasswd"], input="alice:secret\\n")
        assert server.rdp_login("alice", "secret").authenticated

One server per namespace (its files are the namespace's /etc/xrdp). Ports and display
numbers are picked free, so tests using their own servers run in parallel (pytest -n).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.freerdp import rdp_client
from tests.support.namespace import PrivateSystem
from tests.support.ports import free_port
from tests.support.processes import wait_for_line
from tests.support.real_software import require, require_program

__all__ = ["SESSION_MARKER", "LoginResult", "XRDPServer", "running_xrdp"]

LOOPBACK = "127.0.0.1"
#: The test session's window manager writes the user's name here, in the user's home.
SESSION_MARKER = ".sft-xrdp-session"
_XRDP = "/usr/sbin/xrdp"
_SESMAN = "/usr/sbin/xrdp-sesman"
_WINDOW_MANAGER = "/etc/xrdp/sft-test-session.sh"
_SESMAN_LOG = "/var/log/xrdp-sesman.log"
_XRDP_LOG = "/var/log/xrdp.log"
_START_TIMEOUT_SECONDS = 10.0
_START_ATTEMPTS = 3  # a free port can be taken by someone else before xrdp binds it
_STOP_TIMEOUT_SECONDS = 5.0
# pam_unix waits about 2 s after a wrong password before sesman logs AUTHFAIL, so a
# client that has exited may still get its verdict that much later.
_VERDICT_GRACE_SECONDS = 4.0
_SESSION_END_TIMEOUT_SECONDS = 10.0  # the session's window manager exits after 1 s
_VNC_BASE_PORT = 5900  # Xvnc on display N listens on 127.0.0.1:5900+N

# Runs xrdp and sesman (and so every session: Xvnc, the window manager, chansrv) in a
# mount namespace of their own inside the private system, with an empty /tmp: X servers
# put their sockets and lock files there, which must neither reach the machine's /tmp
# (nor be left there when the namespace is killed) nor meet another test's displays.
_PRIVATE_TMP = r"""
set -eu
mount -t tmpfs -o mode=1777 sft-xrdp-tmp /tmp
mkdir -m 1777 /tmp/.X11-unix /tmp/.ICE-unix
exec "$@"
"""

_SESSION = f"""#!/bin/sh
# The whole desktop of an sft test session: it says who ran it, then ends the session.
id -un > "$HOME/{SESSION_MARKER}"
sleep 1
"""


@dataclass(frozen=True)
class LoginResult:
    """What xrdp-sesman decided about one RDP login, and how the client fared."""

    user: str
    authenticated: bool
    #: sesman's log line that decided (its session line, or its refusal).
    evidence: str
    #: From starting xfreerdp to sesman's verdict.
    seconds: float
    client_exit_code: int
    client_output: str


@dataclass(frozen=True)
class XRDPServer:
    """xrdp and xrdp-sesman running in `system`: where they listen, their logs, the login."""

    system: PrivateSystem
    port: int
    sesman_port: int
    #: sesman's first X display for sessions (Xvnc then listens on 127.0.0.1:5900+N).
    display_offset: int
    workdir: Path

    @property
    def address(self) -> str:
        """Return where xrdp listens: "127.0.0.1:PORT"."""
        return f"{LOOPBACK}:{self.port}"

    def log_mark(self) -> int:
        """Return the sesman log's current length, to read only what comes after it."""
        return _size(self._path(_SESMAN_LOG))

    def sesman_log(self, since: int = 0) -> str:
        """Return xrdp-sesman's log from offset `since`."""
        return _read(self._path(_SESMAN_LOG), since)

    def xrdp_log(self) -> str:
        """Return xrdp's log."""
        return _read(self._path(_XRDP_LOG), 0)

    def rdp_login(
        self,
        user: str,
        password: str,
        *,
        address: str | None = None,
        timeout_seconds: float = 15.0,
    ) -> LoginResult:
        """Log in as `user` with xfreerdp through `address` (default: xrdp's own port).

        `address` may be anything that carries the bytes to this xrdp, such as a tunnel's
        local port. Returns sesman's verdict; when it granted a session, waits until that
        session has ended. xfreerdp and its Xvfb are always stopped. Fails the test when
        sesman decides nothing within `timeout_seconds` (a login that never reached xrdp
        is not a refusal).

        A full session, not FreeRDP's `+auth-only`: that client hangs up as soon as it
        has sent the credentials, and xrdp, finding it gone, often never asks sesman.
        """
        mark = self.log_mark()
        started = time.monotonic()
        deadline = started + timeout_seconds
        with rdp_client(address or self.address, user, password, workdir=self.workdir) as client:
            granted, evidence = self._wait_for_verdict(user, mark, client.process, deadline)
            seconds = time.monotonic() - started
            if granted:
                # xrdp keeps a session after its client leaves; this one ends by itself.
                self.wait_for_log(
                    rf"\+\+ terminated session: +username {re.escape(user)},",
                    since=mark,
                    timeout_seconds=_SESSION_END_TIMEOUT_SECONDS,
                )
            exit_code = client.stop()
            output = client.output()
        return LoginResult(
            user=user,
            authenticated=granted,
            evidence=evidence,
            seconds=seconds,
            client_exit_code=exit_code,
            client_output=output,
        )

    def _wait_for_verdict(
        self, user: str, mark: int, client: subprocess.Popen[bytes], deadline: float
    ) -> tuple[bool, str]:
        """Return (granted, sesman's line) for `user`'s login after `mark`; fail if none."""
        name = re.escape(user)
        granted = re.compile(
            rf"\+\+ (?:created session \(access granted\)|reconnected session): "
            rf"username {name}(?:,|$)"
        )
        refused = re.compile(
            rf"AUTHFAIL: user={name} |Username or password error for user: {name}$"
            rf"|login denied for user {name}$|User {name} not allowed on TS"
            rf"|login for user {name} denied"
        )
        exited_at: float | None = None
        while True:
            for line in self.sesman_log(mark).splitlines():
                if granted.search(line):
                    return True, line
                if refused.search(line):
                    return False, line
            now = time.monotonic()
            if exited_at is None and client.poll() is not None:
                exited_at = now
            if now > deadline or (exited_at and now - exited_at > _VERDICT_GRACE_SECONDS):
                pytest.fail(
                    f"xrdp-sesman decided nothing about {user}'s login "
                    f"(xfreerdp exit status {client.poll()}); sesman's log since the "
                    f"login:\n{self.sesman_log(mark)}\nxrdp's log:\n{self.xrdp_log()}",
                    pytrace=False,
                )
            time.sleep(0.05)

    def wait_for_log(self, pattern: str, *, since: int = 0, timeout_seconds: float = 5.0) -> str:
        """Return the first sesman log line after `since` matching regex `pattern`; fail on timeout.

        sesman logs a session's end (`++ terminated session:  username U, …`) after the
        window manager exits, so a test waits for the line rather than reading once.
        """
        return wait_for_line(
            lambda: self.sesman_log(since),
            pattern,
            what="xrdp-sesman",
            timeout_seconds=timeout_seconds,
            poll_seconds=0.05,
        )

    def _path(self, path: str) -> Path:
        """Return `path` inside the namespace, as this process reaches it."""
        return _inside(self.system, path)


@contextmanager
def running_xrdp(system: PrivateSystem, tmp_path: Path) -> Iterator[XRDPServer]:
    """Start xrdp-sesman and xrdp in `system` on free loopback ports; always stop them.

    `system` must have its own /run (`private_system(..., private_run=True)`): xrdp keeps
    its sockets and pid files there. Its /etc/xrdp gets this server's xrdp.ini and
    sesman.ini: xrdp reads sesman's port from /etc/xrdp/sesman.ini even when started
    with -c, so the namespace's own copy is the one place to configure both.
    """
    require_program("xrdp", "xrdp")
    require_program("xrdp-sesman", "xrdp")
    require_program("Xvnc", "tigervnc-standalone-server")
    unshare = require("unshare", shutil.which("unshare"), "run `make deps` (apt util-linux)")
    _require_private(system)
    workdir = Path(tempfile.mkdtemp(prefix="xrdp-", dir=tmp_path))
    _install_runtime_directories(system)
    failures: list[str] = []
    for attempt in range(1, _START_ATTEMPTS + 1):
        server = XRDPServer(
            system=system,
            port=free_port(),
            sesman_port=free_port(),
            display_offset=_free_display(),
            workdir=workdir,
        )
        _write_configuration(server)
        processes: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for name, program in (("xrdp-sesman", _SESMAN), ("xrdp", _XRDP)):
                processes[name] = system.start(
                    [
                        unshare,
                        "--mount",
                        "--propagation",
                        "private",
                        "--",
                        "/bin/sh",
                        "-c",
                        _PRIVATE_TMP,
                        "sft-xrdp",
                        program,
                        "--nodaemon",
                    ],
                    log=workdir / f"{name}.{attempt}.out",
                )
            failure = _wait_until_listening(server, processes)
            if failure is None:
                yield server
                return
            failures.append(failure)
        finally:
            # Whatever a session left behind ends with the namespace, killed by the kernel.
            for process in reversed(processes.values()):
                system.stop(process)
    pytest.fail(
        f"xrdp did not start in {_START_ATTEMPTS} attempts:\n" + "\n".join(failures),
        pytrace=False,
    )


def _require_private(system: PrivateSystem) -> None:
    """Fail unless the namespace's /etc, /run and /var/log are its own, not the machine's."""
    for directory in ("/etc", "/run", "/var/log"):
        if os.stat(_inside(system, directory)).st_dev == os.stat(directory).st_dev:
            pytest.fail(
                f"running_xrdp needs a namespace with its own {directory} "
                "(private_system(tmp_path, private_run=True))",
                pytrace=False,
            )


def _install_runtime_directories(system: PrivateSystem) -> None:
    """Make the directories xrdp's systemd unit would (/run/xrdp/sockdir), in `system`."""
    sockets = _inside(system, "/run/xrdp/sockdir")
    sockets.mkdir(parents=True, exist_ok=True)
    # Sticky and world-writable: each session's chansrv, running as its user, adds a socket.
    sockets.chmod(0o3777)


def _write_configuration(server: XRDPServer) -> None:
    """Write xrdp.ini, sesman.ini and the test window manager into the namespace's /etc/xrdp."""
    directory = _inside(server.system, "/etc/xrdp")
    # Only what differs from xrdp's defaults. Syslog off everywhere: the machine's
    # /dev/log is not the namespace's. MaxSessions bounds the displays sesman tries.
    (directory / "sesman.ini").write_text(
        f"""[Globals]
ListenAddress={LOOPBACK}
ListenPort={server.sesman_port}
EnableUserWindowManager=false
DefaultWindowManager={_WINDOW_MANAGER}
[Security]
AllowRootLogin=false
[Sessions]
X11DisplayOffset={server.display_offset}
MaxSessions=10
[Logging]
LogFile={_SESMAN_LOG}
LogLevel=INFO
EnableSyslog=false
EnableConsole=false
[ChansrvLogging]
EnableSyslog=false
EnableConsole=false
[Xvnc]
param=Xvnc
param=-bs
param=-nolisten
param=tcp
param=-localhost
param=-dpi
param=96
"""
    )
    # xrdp's built-in defaults are not its shipped xrdp.ini's, so each line counts:
    # - a bare `port=N` binds every interface; the tcp:// form binds the one address;
    # - without security_layer xrdp speaks unencrypted standard RDP security;
    # - a missing `certificate=` means no certificate, so no TLS (an empty one means
    #   /etc/xrdp/cert.pem): here the namespace's copies of ssl-cert's self-signed pair;
    # - without allow_channels xrdp grants none of the virtual channels FreeRDP asks
    #   for, and FreeRDP gives up before it logs in;
    # - autorun logs in to Xvnc with the client's credentials, with no login screen.
    (directory / "xrdp.ini").write_text(
        f"""[Globals]
fork=true
port=tcp://{LOOPBACK}:{server.port}
security_layer=tls
certificate=/etc/xrdp/cert.pem
key_file=/etc/xrdp/key.pem
ssl_protocols=TLSv1.2, TLSv1.3
allow_channels=true
autorun=Xvnc
[Logging]
LogFile={_XRDP_LOG}
LogLevel=INFO
EnableSyslog=false
EnableConsole=false
[Xvnc]
name=Xvnc
lib=libvnc.so
username=ask
password=ask
ip={LOOPBACK}
port=-1
"""
    )
    window_manager = _inside(server.system, _WINDOW_MANAGER)
    window_manager.write_text(_SESSION)
    window_manager.chmod(0o755)


def _wait_until_listening(
    server: XRDPServer, processes: dict[str, subprocess.Popen[bytes]]
) -> str | None:
    """Wait until xrdp and sesman listen; None, or why not. Fail unless both are loopback-only."""
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                return (
                    f"{name} exited with {process.returncode}; "
                    f"sesman's log:\n{server.sesman_log()}\nxrdp's log:\n{server.xrdp_log()}"
                )
        xrdp_addresses = _listening(server.port)
        sesman_addresses = _listening(server.sesman_port)
        if xrdp_addresses and sesman_addresses:
            # sesman, told 127.0.0.1, listens on ::1 (and xrdp, told 127.0.0.1, dials ::1).
            if xrdp_addresses != {LOOPBACK} or not sesman_addresses <= {LOOPBACK, "::1"}:
                pytest.fail(
                    f"xrdp listens on {sorted(xrdp_addresses)} and sesman on "
                    f"{sorted(sesman_addresses)}: not loopback only",
                    pytrace=False,
                )
            return None
        time.sleep(0.02)
    return (
        f"xrdp or sesman did not listen within {_START_TIMEOUT_SECONDS}s; "
        f"sesman's log:\n{server.sesman_log()}\nxrdp's log:\n{server.xrdp_log()}"
    )


def _listening(port: int) -> set[str]:
    """Return the local addresses with a TCP socket listening on `port` (any namespace's
    view of this machine's network: tests share one)."""
    addresses: set[str] = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state = fields[1], fields[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word of the address in host (little) order.
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                addresses.add(socket.inet_ntop(family, words))
    return addresses


def _free_display() -> int:
    """Return a display number for sesman's first session whose Xvnc port is free.

    Below 1000: sesman probes ports "59NN", "60NN" and "62NN" as strings, which are no
    ports for four-digit displays, so it would take every such display for busy.
    """
    for _ in range(100):
        display = 100 + secrets.randbelow(890)
        if all(_port_free(_VNC_BASE_PORT + display + n) for n in range(2)):
            return display
    pytest.fail("no free X display between 100 and 999 for xrdp's sessions", pytrace=False)


def _port_free(port: int) -> bool:
    """Return whether nothing is bound to 127.0.0.1:`port` right now."""
    with socket.socket() as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _inside(system: PrivateSystem, path: str) -> Path:
    """Return `path` as the namespace sees it, reached through its init's root."""
    return Path(f"/proc/{system.pid}/root") / path.lstrip("/")


def _size(path: Path) -> int:
    """Return the size of `path`, 0 if it does not exist yet."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read(path: Path, since: int) -> str:
    """Return the text of `path` from offset `since` ("" if it does not exist yet)."""
    try:
        with path.open("rb") as file:
            file.seek(since)
            return file.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
