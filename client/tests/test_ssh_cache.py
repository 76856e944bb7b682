"""The SSH cache decides from its files alone: fresh, renewing, damaged, or someone else's key."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from client.files import write_atomic
from client.ssh_args import parse_ssh_args
from client.ssh_cache import Credential, Hop, ServerRecord, SSHCache
from client.ssh_command import hops_config, ssh_argv

NOW = 1_800_000_000.0
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake sft-acme"
CA_LINE = "@cert-authority web-1,ip-10-0-0-5,10.0.0.5 ssh-ed25519 AAAAhostca\n"


def _record(server_id: str, project: str = "web", **changes: Any) -> ServerRecord:
    record = ServerRecord(
        server=f"teams/acme/projects/{project}/servers/{server_id}",
        project=f"teams/acme/projects/{project}",
        canonical_name=server_id,
        hostname=f"ip-{server_id}",
        address="10.0.0.5",
        ssh_port=2222,
        known_hosts=CA_LINE,
        account="bob",
        requested_account="",
        expires=NOW + 600,
    )
    return record._replace(**changes)


def _credential(project: str = "web", **changes: Any) -> Credential:
    credential = Credential(
        project=f"teams/acme/projects/{project}",
        requested_account="",
        account="bob",
        certificate="ssh-ed25519-cert-v01@openssh.com AAAAcert",
        serial=7,
        valid_after=NOW - 60,
        valid_before=NOW + 600,
        public_key=KEY,
    )
    return credential._replace(**changes)


@pytest.fixture
def cache(tmp_path: Path) -> SSHCache:
    cache = SSHCache(tmp_path)
    cache.ensure_directories()
    write_atomic(cache.public_key_file, (KEY + "\n").encode())
    cache.store_credential(_credential())
    cache.store_server(_record("web-1"), ["web-1", "w1"])
    return cache


def test_a_fresh_route_comes_from_the_files_and_every_file_is_private(cache: SSHCache) -> None:
    route = cache.route("w1", [], now=NOW)
    assert route is not None and route.target.canonical_name == "web-1"
    for root, dirs, files in os.walk(cache.root):
        for name in dirs + files:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) & 0o077 == 0, name


def test_a_certificate_inside_the_renewal_margin_is_a_miss(cache: SSHCache) -> None:
    assert cache.route("web-1", [], now=NOW + 600 - 59) is None
    assert cache.route("web-1", [], now=NOW + 600 - 61) is not None


def test_another_key_an_admin_account_or_an_unknown_name_is_a_miss(cache: SSHCache) -> None:
    assert cache.route("web-2", [], now=NOW) is None
    assert cache.route("web-1", [], "root", now=NOW) is None
    Path(cache.public_key_file).write_text("ssh-ed25519 AAAAother\n")
    assert cache.route("web-1", [], now=NOW) is None


@pytest.mark.parametrize("damage", ["{", "[]", '{"server": 1}', ""])
def test_a_damaged_record_is_a_miss_not_a_failure(cache: SSHCache, damage: str) -> None:
    Path(cache.server_file("web-1")).write_text(damage)
    assert cache.route("web-1", [], now=NOW) is None
    Path(cache.names_file).write_text(damage)
    assert cache.names() == {}


def test_a_record_under_another_servers_file_is_not_trusted(cache: SSHCache) -> None:
    other = _record("web-1")._replace(server="teams/acme/projects/web/servers/evil")
    Path(cache.server_file("web-1")).write_text(json.dumps(other.as_json()))
    assert cache.route("web-1", [], now=NOW) is None


def test_known_hosts_names_every_typed_name(cache: SSHCache) -> None:
    cache.rebuild_known_hosts()
    (line,) = Path(cache.known_hosts_file).read_text().splitlines()
    marker, patterns, key = line.split(" ", 2)
    assert marker == "@cert-authority" and key == "ssh-ed25519 AAAAhostca"
    assert patterns.split(",") == ["web-1", "ip-10-0-0-5", "10.0.0.5", "w1"]


def test_ssh_argv_trusts_only_the_host_ca_and_puts_sfts_options_first(cache: SSHCache) -> None:
    route = cache.route("web-1", [], now=NOW)
    assert route is not None
    argv = ssh_argv(cache, route, parse_ssh_args(["-o", "StrictHostKeyChecking=no", "web-1",
                                                  "--", "id"]))  # fmt: skip
    options = [argv[i + 1] for i, word in enumerate(argv) if word == "-o"]
    assert options.index("StrictHostKeyChecking=yes") < options.index("StrictHostKeyChecking=no")
    assert "HostKeyAlias=web-1" in options and "Port=2222" in options and "User=bob" in options
    assert "PasswordAuthentication=no" in options
    assert argv[argv.index("-F") + 1] == "none"
    assert argv[-3:] == ["web-1", "--", "id"]


def test_hops_chain_with_proxyjump_and_only_managed_hops_get_certificates(
    cache: SSHCache,
) -> None:
    cache.store_credential(_credential("edge"))
    bastion = _record("bastion-1", "edge")
    text = hops_config(cache, (bastion, Hop(address="192.0.2.1", ssh_port=22)))
    first, second = text.split("Host ")[1:]
    assert first.startswith("sft-hop-1") and "edge-cert.pub" in first and "BatchMode" in first
    assert second.startswith("sft-hop-2") and 'ProxyJump "sft-hop-1"' in second
    assert "CertificateFile" not in second


def test_a_config_value_that_could_inject_lines_is_refused(cache: SSHCache) -> None:
    with pytest.raises(ValueError, match="ssh config"):
        hops_config(cache, (Hop(address='evil"\nProxyCommand sh', ssh_port=22),))


def test_forget_keeps_the_key_pair(cache: SSHCache) -> None:
    removed = cache.forget()
    assert removed and Path(cache.key_file).parent.is_dir()
    assert Path(cache.public_key_file).exists()
    assert cache.route("web-1", [], now=NOW) is None
    assert cache.forget() == []
