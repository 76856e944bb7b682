"""A real OpenSSH sshd on a loopback port for tests, and the real ssh client to reach it.

sshd runs as root in private mount and PID namespaces: it sees its own /etc, /home,
/run and /var/log, so test accounts and login records never reach the machine's own
files, and nothing it starts outlives it.

Use it from a fixture (module-scoped where tests can share one server)::

    @pytest.fixture(scope="module")
    def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHDServer]:
        with run_sshd(tmp_path_factory.mktemp("sshd"), users=["alice"],
                      trusted_user_ca_keys=ca_public_key_line) as server:
            yield server

then `run_ssh(server, "alice", key_path, known_hosts=...)`. Servers get free ports,
so tests using them can run in parallel (pytest -n) without an xdist group.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.support.ports import free_port
from tests.support.processes import wait_for_line
from tests.support.real_software import require

__all__ = [
    "SSHD",
    "SSHDServer",
    "run_ssh",
    "run_sshd",
    "write_private_key",
]

#: sshd re-executes itself for every connection, so it must be started by absolute path.
SSHD = "/usr/sbin/sshd"
LOOPBACK = "127.0.0.1"
_START_TIMEOUT_SECONDS = 10.0
_STOP_TIMEOUT_SECONDS = 5.0
_START_ATTEMPTS = 3  # a free port can be taken by someone else before sshd binds it
_ACCOUNT = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")

# Runs as root, as init of new mount and PID namespaces: everything mounted here is
# private to the namespace and vanishes with its last process. A copy of the whole /etc, not of
# single files: useradd replaces /etc/passwd by rename, which a bind-mounted file
# refuses. The copy lives on a tmpfs so no copy of /etc/shadow or the machine's host
# keys is left on disk. Password field '*', not useradd's '!': with UsePAM no, sshd
# refuses a '!'-locked account even with a valid certificate. /run/sshd is sshd's
# privilege-separation directory; /run and /var/log hold utmp/wtmp/lastlog records.
_LAUNCHER = r"""
set -eu
sshd=$1 scratch=$2 config=$3
shift 3
mount -t tmpfs -o mode=0755 sft-sshd "$scratch"
cp -a /etc "$scratch/etc"
mkdir -m 0755 "$scratch/home"
mount --bind "$scratch/etc" /etc
mount --bind "$scratch/home" /home
mount -t tmpfs -o mode=0755 sft-sshd-run /run
mkdir -m 0755 /run/sshd
mount -t tmpfs -o mode=0755 sft-sshd-log /var/log
if [ -d /var/mail ]; then mount -t tmpfs -o mode=2775 sft-sshd-mail /var/mail; fi
for account in "$@"; do
  useradd --no-log-init --create-home --home-dir "/home/$account" --shell /bin/sh \
    --password '*' "$account"
done
exec "$sshd" -D -e -f "$config"
"""


@dataclass(frozen=True)
class SSHDServer:
    """A running sshd: where it listens, its files, and its log."""

    port: int
    pid: int  # as this process sees it (inside its PID namespace sshd is pid 1)
    users: tuple[str, ...]
    config_path: Path
    host_key_path: Path
    host_public_key: str  # OpenSSH one-line format, for a plain known_hosts line
    host_certificate_path: Path | None
    trusted_user_ca_keys: Path
    log_path: Path
    host: str = LOOPBACK

    def log_mark(self) -> int:
        """Return the log's current length, to read only what comes after it."""
        return self.log_path.stat().st_size

    def log_text(self, since: int = 0) -> str:
        """Return sshd's log (its stderr; LogLevel VERBOSE by default) from offset `since`."""
        with self.log_path.open("rb") as log:
            log.seek(since)
            return log.read().decode("utf-8", errors="replace")

    def wait_for_log(self, pattern: str, *, since: int = 0, timeout_seconds: float = 5.0) -> str:
        """Return the first log line after `since` matching regex `pattern`; fail on timeout.

        sshd writes some lines (the disconnect, a session's end) after the client has
        already exited, so a test waits for the line rather than reading once.
        """
        return wait_for_line(
            lambda: self.log_text(since), pattern, what="sshd", timeout_seconds=timeout_seconds
        )

    def set_trusted_user_ca_keys(self, text: str) -> None:
        """Replace the TrustedUserCAKeys file; sshd rereads it on every authentication."""
        # Written beside it and renamed, so sshd never reads a half-written file.
        _write_atomically(self.trusted_user_ca_keys, text)


def write_private_key(path: Path, key: ed25519.Ed25519PrivateKey) -> str:
    """Write `key` in OpenSSH format, mode 0600 (ssh refuses others); return its public line."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    path.with_name(path.name + ".pub").write_bytes(public + b"\n")
    return public.decode("ascii")


@contextmanager
def run_sshd(
    tmp_path: Path,
    *,
    users: Sequence[str],
    trusted_user_ca_keys: str,
    host_key_path: Path | None = None,
    host_certificate: str | None = None,
    extra_config: Sequence[str] = (),
) -> Iterator[SSHDServer]:
    """Start sshd on a free loopback port with `users` (cert-only accounts); always stop it.

    `trusted_user_ca_keys` is the TrustedUserCAKeys file's text (one CA public key a
    line). `host_key_path` is an existing OpenSSH private key (0600); without it a fresh
    Ed25519 host key is made. `host_certificate` (one OpenSSH line) is written beside
    the host key as `<key>-cert.pub` and served. `extra_config` lines come first in
    sshd_config, so they override the defaults here (sshd keeps the first value it
    reads for a keyword); they must not open a Match block.
    """
    _require_root()
    require("OpenSSH server (sshd)", _executable(SSHD), "run `make deps` (apt openssh-server)")
    unshare = require("unshare", shutil.which("unshare"), "run `make deps` (apt util-linux)")
    for account in users:
        if not _ACCOUNT.fullmatch(account):
            raise ValueError(f"test account {account!r} is not a portable unix account name")

    state = Path(tempfile.mkdtemp(prefix="sshd-", dir=tmp_path))
    if host_key_path is None:
        host_key_path = state / "ssh_host_ed25519_key"
        host_public_key = write_private_key(host_key_path, ed25519.Ed25519PrivateKey.generate())
    else:
        host_public_key = _public_line(host_key_path)
    certificate_path: Path | None = None
    if host_certificate is not None:
        certificate_path = host_key_path.with_name(host_key_path.name + "-cert.pub")
        certificate_path.write_text(host_certificate.strip() + "\n")
    ca_keys_path = state / "trusted_user_ca_keys"
    _write_atomically(ca_keys_path, trusted_user_ca_keys)

    for attempt in range(1, _START_ATTEMPTS + 1):
        server = SSHDServer(
            port=free_port(),
            pid=0,
            users=tuple(users),
            config_path=state / f"sshd_config.{attempt}",
            host_key_path=host_key_path,
            host_public_key=host_public_key,
            host_certificate_path=certificate_path,
            trusted_user_ca_keys=ca_keys_path,
            log_path=state / f"sshd.{attempt}.log",
        )
        server.config_path.write_text(_config(server, extra_config))
        scratch = state / f"namespace.{attempt}"
        scratch.mkdir()
        with server.log_path.open("wb") as log:
            launcher = subprocess.Popen(
                [
                    unshare,
                    "--mount",
                    "--propagation",
                    "private",
                    # A PID namespace with sshd as its init: sshd reaps the orphans its
                    # sessions leave, and when it exits the kernel kills whatever is
                    # left in there, so nothing outlives the server.
                    "--pid",
                    "--mount-proc",
                    "--fork",
                    "--kill-child=SIGTERM",
                    "--",
                    "/bin/sh",
                    "-c",
                    _LAUNCHER,
                    "sft-sshd-launcher",
                    SSHD,
                    str(scratch),
                    str(server.config_path),
                    *users,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Our own session: a Ctrl-C aimed at pytest's process group is not sshd's.
                start_new_session=True,
            )
        try:
            sshd_pid = _wait_until_listening(server, launcher)
        except _PortTaken:
            _stop(launcher, 0)
            continue
        except BaseException:
            _stop(launcher, 0)
            raise
        try:
            yield dataclasses.replace(server, pid=sshd_pid)
        finally:
            _stop(launcher, sshd_pid)
        return
    pytest.fail(f"sshd could not bind a free port in {_START_ATTEMPTS} attempts", pytrace=False)


def run_ssh(
    server: SSHDServer,
    user: str,
    identity_file: Path,
    *,
    known_hosts: Path | None,
    command: Sequence[str] = ("id", "-un"),
    certificate_file: Path | None = None,
    strict_host_key_checking: bool = True,
    extra_options: Sequence[str] = (),
    timeout_seconds: float = 20.0,
) -> subprocess.CompletedProcess[str]:
    """Run the real ssh client against `server` as `user`; return its exit code and output.

    ssh with `-i key` also offers `key-cert.pub` beside it; `certificate_file` names
    another one. `known_hosts` None means no known host keys (then only
    strict_host_key_checking=False connects). `extra_options` are `Key=value` strings,
    each passed as `-o`. Exit code 255 means ssh itself failed (connect, host key, auth).
    """
    ssh = require(
        "OpenSSH client (ssh)", shutil.which("ssh"), "run `make deps` (apt openssh-client)"
    )
    options = [
        "BatchMode=yes",
        "IdentitiesOnly=yes",
        "IdentityAgent=none",
        f"UserKnownHostsFile={known_hosts if known_hosts is not None else '/dev/null'}",
        "GlobalKnownHostsFile=/dev/null",
        f"StrictHostKeyChecking={'yes' if strict_host_key_checking else 'no'}",
        "UpdateHostKeys=no",
        "ConnectTimeout=5",
        "RequestTTY=no",
    ]
    if certificate_file is not None:
        options.append(f"CertificateFile={certificate_file}")
    options.extend(extra_options)
    # -F /dev/null: neither ~/.ssh/config nor /etc/ssh/ssh_config changes what we test.
    args = [ssh, "-F", "/dev/null", "-i", str(identity_file)]
    for option in options:
        args += ["-o", option]
    args += ["-p", str(server.port), "-l", user, server.host, *command]
    return subprocess.run(
        args,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_seconds,
        check=False,
    )


class _PortTaken(Exception):
    """sshd could not bind its port: someone took it between free_port() and bind()."""


def _config(server: SSHDServer, extra_config: Sequence[str]) -> str:
    """Return sshd_config text: caller lines first, then a cert-only loopback server."""
    lines = [
        "# Written by tests/support/sshd.py. sshd keeps the first value it reads,",
        "# so the caller's lines come first.",
        *extra_config,
        f"ListenAddress {LOOPBACK}",
        f"Port {server.port}",
        f"HostKey {server.host_key_path}",
    ]
    if server.host_certificate_path is not None:
        lines.append(f"HostCertificate {server.host_certificate_path}")
    lines += [
        f"TrustedUserCAKeys {server.trusted_user_ca_keys}",
        # Certificates only: no authorized_keys, no passwords. StrictModes stays on
        # (the default): it only judges files in users' homes, and with no
        # AuthorizedKeysFile there are none to judge; the homes are on the
        # namespace's own 0755 /home.
        "AuthorizedKeysFile none",
        "AuthorizedPrincipalsFile none",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "UsePAM no",
        "PermitRootLogin no",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "X11Forwarding no",
        "Subsystem sftp internal-sftp",
        # Inside its PID namespace sshd's pid is 1; SSHDServer.pid is the one to use.
        "PidFile none",
        "LogLevel VERBOSE",
        # Tests connect in bursts from one address; never drop their connections.
        "MaxStartups 200",
        "LoginGraceTime 30",
    ]
    if _sshd_knows("PerSourcePenalties", "no"):
        # OpenSSH >= 9.8 blocks an address after failed logins; tests fail on purpose.
        lines.append("PerSourcePenalties no")
    return "\n".join(lines) + "\n"


def _wait_until_listening(server: SSHDServer, launcher: subprocess.Popen[bytes]) -> int:
    """Wait until sshd answers with an SSH banner; return its pid. Fail with its log."""
    listening = f"Server listening on {LOOPBACK} port {server.port}."
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        code = launcher.poll()
        log = server.log_text()
        if code is not None:
            if "Address already in use" in log:
                raise _PortTaken
            pytest.fail(
                f"sshd exited with code {code} before listening on port {server.port}; "
                f"its log:\n{log}",
                pytrace=False,
            )
        if listening in log:
            sshd_pid = _only_child(launcher.pid)
            if os.readlink(f"/proc/{sshd_pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
                pytest.fail("sshd is not in a private mount namespace", pytrace=False)
            with socket.create_connection((LOOPBACK, server.port), timeout=2) as probe:
                banner = probe.makefile("rb").readline()
            if not banner.startswith(b"SSH-2.0-"):
                pytest.fail(f"port {server.port} answered {banner!r}, not sshd", pytrace=False)
            return sshd_pid
        time.sleep(0.02)
    pytest.fail(
        f"sshd did not listen on port {server.port} within {_START_TIMEOUT_SECONDS}s; "
        f"its log:\n{server.log_text()}",
        pytrace=False,
    )


def _stop(launcher: subprocess.Popen[bytes], sshd_pid: int) -> None:
    """Stop sshd by its pid (the kernel then ends its namespace), then reap the launcher."""
    # Signal sshd only while unshare, its parent, lives: until then its pid is not reused.
    if launcher.poll() is None:
        if sshd_pid:
            _signal(sshd_pid, signal.SIGTERM)
        else:
            # sshd never listened: what the launcher started dies with it (--kill-child).
            launcher.terminate()
    try:
        launcher.wait(timeout=_STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        if sshd_pid and _alive(sshd_pid):
            _signal(sshd_pid, signal.SIGKILL)
        launcher.kill()
        launcher.wait()


def _only_child(pid: int) -> int:
    """Return the one child of `pid` (unshare --fork's child: the namespace's init)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if len(children) != 1:
        pytest.fail(f"unshare (pid {pid}) has children {children}, expected sshd", pytrace=False)
    return int(children[0])


def _alive(pid: int) -> bool:
    """Return whether `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _signal(pid: int, signum: signal.Signals) -> None:
    """Send `signum` to `pid` unless it is gone already."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


@functools.cache
def _sshd_knows(keyword: str, value: str) -> bool:
    """Return whether the installed sshd accepts `keyword value` (options vary by version)."""
    result = subprocess.run(
        [SSHD, "-T", "-f", "/dev/null", "-o", f"{keyword}={value}"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return "Bad configuration option" not in result.stderr + result.stdout


def _require_root() -> None:
    """Skip (fail when CI=true) unless root: the namespace and sshd's setuid need it."""
    if os.geteuid() == 0:
        return
    message = "sshd tests need root (a private mount namespace, then sshd's setuid)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs {message}", pytrace=False)
    pytest.skip(message)


def _executable(path: str) -> str | None:
    """Return `path` if it is an executable file, else None."""
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def _public_line(private_key_path: Path) -> str:
    """Return the OpenSSH public line of an unencrypted OpenSSH private key file."""
    key = serialization.load_ssh_private_key(private_key_path.read_bytes(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode("ascii")
    )


def _write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` by rename, so a reader sees the old or the new file whole."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text if text.endswith("\n") or not text else text + "\n")
    partial.chmod(0o644)
    partial.replace(path)
