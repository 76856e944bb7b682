"""The OpenSSH command lines `sft ssh` and `sft proxycommand` run, built from the cache.

sft runs the system `ssh` (or `$SFT_SSH_PROGRAM`) with the cached certificate and key,
a known_hosts file that trusts only the project's host CAs (`StrictHostKeyChecking
yes`: a host certificate from anyone else is a hard failure, never a prompt), the
account the platform named, and no password fallback. Bastions are hops in a small
ssh config file of their own (`-J` would not carry the hops' certificates):
`ProxyCommand ssh -F <route> -W [%h]:%p sft-hop-N`, each hop `ProxyJump`ing the one
before.

sft's options come first on the command line, so ssh keeps them over any the user
adds (ssh keeps the first value it reads). Standard library only.
"""

from __future__ import annotations

import os
import shlex

from client.ssh_args import SSHInvocation
from client.ssh_cache import Hop, Route, ServerRecord, SSHCache

__all__ = [
    "SSH_PROGRAM_ENV",
    "hop_alias",
    "hops_config",
    "ssh_argv",
    "ssh_program",
    "stdio_forward_argv",
]

SSH_PROGRAM_ENV = "SFT_SSH_PROGRAM"


def ssh_program() -> str:
    """Return the OpenSSH client to run: `$SFT_SSH_PROGRAM`, else `ssh` from PATH."""
    return os.environ.get(SSH_PROGRAM_ENV, "").strip() or "ssh"


def hop_alias(index: int) -> str:
    """Return the Host name of the `index`-th hop (from 1) in a route's config."""
    return f"sft-hop-{index}"


def _config_value(value: str) -> str:
    if any(char in value for char in '"\n\r') or not value:
        raise ValueError(f"{value!r} cannot be written to an ssh config file")
    return f'"{value}"'


def _host_key_alias(record: ServerRecord) -> str:
    return record.canonical_name or record.hostname


def _identity_settings(cache: SSHCache, record: ServerRecord) -> list[tuple[str, str]]:
    """Return the settings that log in to an enrolled server with its project's certificate."""
    return [
        ("HostName", record.address),
        ("User", record.account),
        ("IdentityFile", str(cache.key_file)),
        (
            "CertificateFile",
            str(cache.certificate_file(record.project_id, record.requested_account)),
        ),
        ("IdentitiesOnly", "yes"),
        ("UserKnownHostsFile", str(cache.known_hosts_file)),
        ("GlobalKnownHostsFile", "none"),
        ("StrictHostKeyChecking", "yes"),
        ("HostKeyAlias", _host_key_alias(record)),
        ("CheckHostIP", "no"),
        ("UpdateHostKeys", "no"),
        ("PasswordAuthentication", "no"),
        ("KbdInteractiveAuthentication", "no"),
    ]


def hops_config(cache: SSHCache, hops: tuple[ServerRecord | Hop, ...]) -> str:
    """Return the ssh config text with one `Host sft-hop-N` block per hop, chained in order."""
    blocks = []
    for index, hop in enumerate(hops, start=1):
        if isinstance(hop, ServerRecord):
            settings = [("Port", str(hop.ssh_port)), *_identity_settings(cache, hop)]
            settings.append(("BatchMode", "yes"))
        else:
            settings = [("HostName", hop.address), ("Port", str(hop.ssh_port))]
        if index > 1:
            settings.append(("ProxyJump", hop_alias(index - 1)))
        lines = [f"Host {hop_alias(index)}"]
        lines += [f"    {key} {_config_value(value)}" for key, value in settings]
        blocks.append("\n".join(lines) + "\n")
    return "# Written by sft for one route; rewritten as needed.\n" + "".join(blocks)


def _route_config(cache: SSHCache, route: Route) -> str:
    """Write the route's hop config (if it changed) and return its path."""
    text = hops_config(cache, route.hops)
    path = cache.route_file(text)
    cache.write_if_changed(path, text)
    return str(path)


def stdio_forward_argv(cache: SSHCache, route: Route, address: str, port: int) -> list[str]:
    """Return `ssh -W` through the route's hops to `address:port` (for proxycommand)."""
    config = _route_config(cache, route)
    return [
        ssh_program(),
        "-F",
        config,
        "-W",
        f"[{address}]:{port}",
        hop_alias(len(route.hops)),
    ]


def ssh_argv(cache: SSHCache, route: Route, call: SSHInvocation) -> list[str]:
    """Return the full ssh command line for `call` along `route`."""
    target = route.target
    argv = [ssh_program()]
    if "-F" not in call.ssh_options:
        argv += ["-F", "none"]  # only what sft and the command line say; see the README
    port = call.port or target.ssh_port
    for key, value in [("Port", str(port)), *_identity_settings(cache, target)]:
        argv += ["-o", f"{key}={value}"]
    if route.hops:
        config = _route_config(cache, route)
        proxy = (
            f"{shlex.quote(ssh_program())} -F {shlex.quote(config)} "
            f"-W '[%h]:%p' {hop_alias(len(route.hops))}"
        )
        argv += ["-o", f"ProxyCommand={proxy}"]
    argv += call.ssh_options
    argv.append(_host_key_alias(target))
    if call.command:
        argv += ["--", *call.command]
    return argv
