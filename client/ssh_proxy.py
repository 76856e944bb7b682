"""`sft proxycommand`: connect plain ssh's stdin/stdout to a server, through its bastions.

With `ProxyUseFdpass yes` (what `sft ssh-config` writes), ssh waits until this command
hands it a connected socket and exits, and only then reads its CertificateFile: so the
certificate put at `hosts/<name>-cert.pub` here is the one ssh uses. Without it, the
bytes are relayed between stdin/stdout and the connection.

Standard library only, so a warm `ssh web-1` pays no gRPC import.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading

from client.ssh_cache import Route, SSHCache, known_hosts_patterns
from client.ssh_command import stdio_forward_argv

__all__ = ["CONNECT_TIMEOUT_SECONDS", "ProxyError", "hand_over", "install_certificate"]

CONNECT_TIMEOUT_SECONDS = 15.0
_CHUNK = 64 * 1024


class ProxyError(Exception):
    """The connection cannot be made; the message says why, in one line."""


def install_certificate(cache: SSHCache, route: Route, name: str) -> None:
    """Put the target's certificate where plain ssh looks for `name`; refuse names it would fail.

    ssh checks the host certificate against the name it was given, so that name must be
    one the server's certificate carries (not, say, its id).
    """
    target = route.target
    if name.lower() not in known_hosts_patterns(target.known_hosts):
        canonical = target.canonical_name or target.hostname
        raise ProxyError(
            f"{name!r} is not a name in {canonical}'s host certificate, so ssh would refuse "
            f"the server; connect with `ssh {canonical}` or `sft ssh {name}`"
        )
    source = cache.certificate_file(target.project_id, target.requested_account)
    try:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
        destination = cache.host_certificate_file(name)
    except (OSError, ValueError) as exc:
        raise ProxyError(f"cannot read the cached certificate for {name!r}: {exc}") from None
    cache.write_if_changed(destination, text)


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def _pass_fd(fd: int) -> None:
    """Hand `fd` to ssh over stdout (a Unix socket under ProxyUseFdpass)."""
    if not _is_socket(1):
        raise ProxyError(
            "--fdpass needs ssh's `ProxyUseFdpass yes` (stdout is not a socket); "
            "regenerate the block with `sft ssh-config`"
        )
    with socket.socket(fileno=os.dup(1)) as channel:
        socket.send_fds(channel, [b"\0"], [fd])


def _relay(connection: socket.socket) -> None:
    """Copy stdin to `connection` and `connection` to stdout until either side ends."""

    def upstream() -> None:
        try:
            while data := os.read(0, _CHUNK):
                connection.sendall(data)
        except OSError:
            pass
        try:
            connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=upstream, daemon=True).start()
    try:
        while data := connection.recv(_CHUNK):
            os.write(1, data)
    except OSError:
        pass


def _connect(address: str, port: int) -> socket.socket:
    try:
        return socket.create_connection((address, port), timeout=CONNECT_TIMEOUT_SECONDS)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ProxyError(f"cannot connect to {address} port {port}: {reason}") from None


def hand_over(cache: SSHCache, route: Route, *, port: int | None, fdpass: bool) -> None:
    """Connect to the route's server (through its hops) and give ssh the connection."""
    target = route.target
    dial_port = port or target.ssh_port
    if not route.hops:
        connection = _connect(target.address, dial_port)
        connection.settimeout(None)
        if fdpass:
            _pass_fd(connection.fileno())
            return
        _relay(connection)
        return
    argv = stdio_forward_argv(cache, route, target.address, dial_port)
    if not fdpass:
        sys.stdout.flush()
        os.execvp(argv[0], argv)  # noqa: S606 - an argv, never a shell line
    ours, theirs = socket.socketpair()
    with ours, theirs:
        # The hop ssh outlives this process: it carries the connection for the real ssh.
        subprocess.Popen(
            argv, stdin=theirs.fileno(), stdout=theirs.fileno(), start_new_session=True
        )
        _pass_fd(ours.fileno())
