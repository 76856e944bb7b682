"""Run `sft ssh` and `sft proxycommand` past the cache: fetch what is missing, then exec ssh.

No click here: with an empty cache client.entry comes straight here, and only gRPC and
the stubs load on top of the warm path's modules.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, NoReturn

from client.commands.calls import run_in_session
from client.errors import ClientError, PlatformUnreachable
from client.files import TEAM_ENV
from client.ssh_args import SSHInvocation
from client.ssh_cache import USABLE_FOR_SECONDS, Route, SSHCache
from client.ssh_command import SSH_PROGRAM_ENV, ssh_argv
from client.state import Home

if TYPE_CHECKING:
    from client.session import Session

__all__ = ["exec_ssh", "route_for", "run_ssh", "team_or_default"]


def team_or_default(explicit: str | None) -> str | None:
    """Return `explicit`, else `$SFT_TEAM`, else None (the current team)."""
    return explicit or os.environ.get(TEAM_ENV) or None


async def _fetch_or_fallback(session: Session, cache: SSHCache, call: SSHInvocation) -> Route:
    from client.ssh_credentials import CredentialFetcher

    try:
        return await CredentialFetcher(session, cache).route(call)
    except PlatformUnreachable as exc:
        stale = cache.route(call.name, call.via, call.account, margin=USABLE_FOR_SECONDS)
        if stale is None:
            raise exc.with_hint(
                f"no cached certificate for {call.name} is still valid; try again once the "
                "platform is reachable"
            ) from None
        until = time.strftime("%H:%M:%S", time.localtime(stale.expires()))
        sys.stderr.write(
            f"sft: warning: {exc.reason}; using the cached certificate (valid until {until})\n"
        )
        return stale


def route_for(call: SSHInvocation) -> tuple[SSHCache, Route]:
    """Return the cache and a usable route for `call`, asking the platform only when needed."""
    team_dir = Home().enrolled(team_or_default(call.team))
    cache = SSHCache(team_dir.path)
    route = cache.route(call.name, call.via, call.account)
    if route is None:
        route = run_in_session(
            team_dir.team, lambda session: _fetch_or_fallback(session, cache, call)
        )
    return cache, route


def exec_ssh(argv: list[str]) -> NoReturn:
    """Replace this process with ssh (its exit status and streams become sft's)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)  # noqa: S606 - an argv, never a shell line
    except FileNotFoundError:
        raise ClientError(
            f"the OpenSSH client {argv[0]!r} is not installed",
            hint=f"install it (Debian: openssh-client), or point ${SSH_PROGRAM_ENV} at ssh",
        ) from None


def run_ssh(call: SSHInvocation) -> NoReturn:
    """Get a route for `call` (from the cache or the platform) and become ssh."""
    cache, route = route_for(call)
    exec_ssh(ssh_argv(cache, route, call))
