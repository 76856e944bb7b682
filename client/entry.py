"""The `sft` program: answer the hot verbs from the cache, else start the full CLI.

`sft ssh`, `sft proxycommand` and `sft resolve -q` run on every connection, so when
the SSH cache already holds a fresh certificate and route they are served here with
the standard library alone (no click, gRPC or cryptography to import): ssh starts
about as fast as it would by itself. Anything else, any doubt, and any failure go to
client.cli, which does the full job and reports errors its usual way.
"""

from __future__ import annotations

import os
import sys

from client.files import TEAM_ENV, home_directory, is_team_name
from client.ssh_args import SSHUsageError, parse_ssh_args
from client.ssh_cache import SSHCache

__all__ = ["main"]


def _team_path(explicit: str | None) -> str | None:
    """Return the enrolled team's directory the verb acts on, or None when unsure."""
    home = home_directory()
    team = explicit or os.environ.get(TEAM_ENV) or ""
    if not team:
        try:
            with open(os.path.join(home, "current_team"), encoding="utf-8") as handle:
                team = handle.read().strip()
        except OSError:
            return None
    if not is_team_name(team):
        return None
    path = os.path.join(home, "teams", team)
    return path if os.path.isfile(os.path.join(path, "device.json")) else None


def _ssh(args: list[str]) -> None:
    """Exec ssh for `sft ssh ARGS`, fetching what the cache lacks without loading the CLI.

    Returns (for the full CLI to handle) on help, a usage error, or no enrolled team.
    """
    try:
        call = parse_ssh_args(args)
    except SSHUsageError:
        return
    if call.help or call.project:
        return
    team_path = _team_path(call.team)
    if team_path is None:
        return
    cache = SSHCache(team_path)
    route = cache.route(call.name, call.via, call.account)
    if route is not None:
        from client.ssh_command import ssh_argv

        argv = ssh_argv(cache, route, call)
        try:
            os.execvp(argv[0], argv)  # noqa: S606 - an argv, never a shell line
        except OSError:
            return  # the full CLI says what is wrong
    try:
        from client.ssh_run import run_ssh

        run_ssh(call)
    except (Exception, KeyboardInterrupt) as exc:
        from client.failures import report_failure

        report_failure(exc)


def _split_options(args: list[str], flags: set[str]) -> tuple[dict[str, str], list[str]] | None:
    """Return (`--team` value and flags seen, positional words), or None for anything else."""
    seen: dict[str, str] = {}
    words: list[str] = []
    index = 0
    while index < len(args):
        word = args[index]
        if word == "--team" and index + 1 < len(args):
            seen["team"] = args[index + 1]
            index += 2
            continue
        if word.startswith("--team="):
            seen["team"] = word.partition("=")[2]
        elif word in flags:
            seen[word] = "yes"
        elif word.startswith("-"):
            return None
        else:
            words.append(word)
        index += 1
    return seen, words


def _warm_resolve_quiet(args: list[str]) -> None:
    """Exit 0 when `sft resolve -q NAME` names a cached server; return otherwise."""
    parsed = _split_options(args, {"-q", "--quiet"})
    if parsed is None:
        return
    seen, words = parsed
    if len(words) != 1 or not ({"-q", "--quiet"} & seen.keys()):
        return
    team_path = _team_path(seen.get("team"))
    if team_path is None:
        return
    if SSHCache(team_path).route(words[0], []) is not None:
        sys.exit(0)


def _warm_proxycommand(args: list[str]) -> None:
    """Serve `sft proxycommand NAME [PORT]` from a warm cache; return when it cannot."""
    parsed = _split_options(args, {"--fdpass"})
    if parsed is None:
        return
    seen, words = parsed
    if not 1 <= len(words) <= 2 or (len(words) == 2 and not words[1].isdigit()):
        return
    port = int(words[1]) if len(words) == 2 else None
    if port is not None and not 0 < port < 65536:
        return
    team_path = _team_path(seen.get("team"))
    if team_path is None:
        return
    cache = SSHCache(team_path)
    route = cache.route(words[0], [])
    if route is None:
        return
    from client.ssh_proxy import ProxyError, hand_over, install_certificate

    try:
        install_certificate(cache, route, words[0])
        hand_over(cache, route, port=port, fdpass="--fdpass" in seen)
    except (ProxyError, OSError):
        return  # the full CLI tries again and reports what is wrong
    sys.exit(0)


def main() -> None:
    """Run `sft`: a warm hot verb here, everything else in client.cli."""
    args = sys.argv[1:]
    verb = args[0] if args else ""
    if verb == "ssh":
        _ssh(args[1:])
    elif verb == "proxycommand":
        _warm_proxycommand(args[1:])
    elif verb == "resolve":
        _warm_resolve_quiet(args[1:])
    from client.cli import main as cli_main

    cli_main()
