"""The SSH tunnel chain `sft rdp --via` dials the broker through (asyncssh).

Each hop is an SSH connection made through the one before it. An enrolled hop logs
in with its project's short-lived certificate from the SSH cache (the same one `sft
ssh --via` uses) and must show a host certificate signed by its project's host CA
(the cache's `@cert-authority` known_hosts; anything else is a hard failure). A hop
the platform does not manage is dialed the way plain ssh would (the user's own keys,
config and known_hosts). The last hop forwards a local port on 127.0.0.1 to the broker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import asyncssh

from client.errors import ClientError
from client.rdp_broker import os_reason
from client.ssh_cache import Hop, ServerRecord, SSHCache

__all__ = ["HOP_TIMEOUT_SECONDS", "BastionChain", "hop_label"]

HOP_TIMEOUT_SECONDS = 15.0


def hop_label(index: int, hop: ServerRecord | Hop) -> str:
    """Return how a person knows hop `index` (from 1): `bastion 1 (bastion-1)`."""
    name = hop.canonical_name or hop.hostname if isinstance(hop, ServerRecord) else hop.address
    return f"bastion {index} ({name})"


def _hop_options(cache: SSHCache, hop: ServerRecord | Hop) -> dict[str, Any]:
    if not isinstance(hop, ServerRecord):
        return {"connect_timeout": HOP_TIMEOUT_SECONDS}
    key = asyncssh.read_private_key(cache.key_file)
    certificate = asyncssh.read_certificate(
        cache.certificate_file(hop.project_id, hop.requested_account)
    )
    return {
        "username": hop.account,
        "client_keys": [(key, certificate)],
        "known_hosts": cache.known_hosts_file,
        "host_key_alias": hop.canonical_name or hop.hostname,
        "config": None,  # only what the platform says applies to an enrolled hop
        "agent_path": None,
        "preferred_auth": "publickey",
        "gss_kex": False,
        "connect_timeout": HOP_TIMEOUT_SECONDS,
        "login_timeout": HOP_TIMEOUT_SECONDS,
    }


def _hop_failure(label: str, hop: ServerRecord | Hop, exc: BaseException) -> ClientError:
    where = f"{hop.address}:{hop.ssh_port}"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return ClientError(
            f"{label} at {where} presented a host key its project's host CA did not sign "
            "(possible man-in-the-middle); nothing was sent"
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        account = hop.account if isinstance(hop, ServerRecord) else "your user"
        return ClientError(
            f"{label} refused the login as {account}: {exc.reason}",
            hint="check your grant on its project (`sft ssh` to it says more)",
        )
    if isinstance(exc, asyncssh.ChannelOpenError):
        return ClientError(f"cannot reach {label} at {where} through the hop before: {exc.reason}")
    if isinstance(exc, asyncssh.Error):
        return ClientError(f"{label} at {where} ended the SSH connection: {exc.reason}")
    if isinstance(exc, TimeoutError):
        return ClientError(f"{label} at {where} did not answer in time")
    return ClientError(f"cannot reach {label} at {where}: {os_reason(exc)}")


class BastionChain:
    """SSH connections through each hop and a local forward to the broker. Close when done."""

    def __init__(self, cache: SSHCache) -> None:
        self._cache = cache
        self._connections: list[asyncssh.SSHClientConnection] = []
        self._listener: asyncssh.SSHListener | None = None

    async def open(
        self,
        hops: tuple[ServerRecord | Hop, ...],
        host: str,
        port: int,
        progress: Callable[[str], None],
    ) -> int:
        """Connect through `hops` in order; return a 127.0.0.1 port forwarded to host:port."""
        # asyncssh logs each connection at INFO; sft reports failures as one line instead.
        logging.getLogger("asyncssh").setLevel(logging.CRITICAL)
        tunnel: asyncssh.SSHClientConnection | None = None
        for index, hop in enumerate(hops, start=1):
            label = hop_label(index, hop)
            progress(f"{label}: connecting to {hop.address}:{hop.ssh_port}")
            try:
                options = _hop_options(self._cache, hop)
            except (OSError, ValueError) as exc:  # KeyImportError is a ValueError
                raise ClientError(
                    f"cannot read the SSH key or certificate for {label}: {exc}",
                    hint="run `sft logout` and try again to fetch fresh ones",
                ) from None
            try:
                connection = await asyncssh.connect(
                    hop.address, hop.ssh_port, tunnel=tunnel or (), **options
                )
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                raise _hop_failure(label, hop, exc) from None
            self._connections.append(connection)
            tunnel = connection
        assert tunnel is not None, "a chain needs at least one hop"
        try:
            self._listener = await tunnel.forward_local_port("127.0.0.1", 0, host, port)
        except (OSError, asyncssh.Error) as exc:
            raise _hop_failure(hop_label(len(hops), hops[-1]), hops[-1], exc) from None
        return self._listener.get_port()

    async def close(self) -> None:
        """Stop the forward and close every connection, last hop first."""
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
            self._listener = None
        while self._connections:
            connection = self._connections.pop()
            connection.close()
            await connection.wait_closed()
