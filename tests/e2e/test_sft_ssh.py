"""`sft ssh`, `sft ssh-config` + plain ssh/scp, and `sft proxycommand` against real sshds.

A platform (in-process, SQLite) with project `web` (server web-1) and project `edge`
(bastion-1, bastion-2); bob is granted both, carol nothing. Each server is a real sshd
in its own namespace that trusts its project's user CA and serves the host
certificate the platform issued at enrollment. bob enrolls with the real `sft` and
reaches web-1 directly, through two bastions, and with plain ssh and scp through the
block `sft ssh-config` prints. The cache is checked from the outside: one certificate
per project even when ten `sft ssh` start at once, renewal before expiry, and a server
answering with another project's host certificate is refused.
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.cli import SFT_BIN
from tests.support.ports import free_port
from tests.support.ssh_world import World, ssh_world

pytestmark = pytest.mark.e2e


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with ssh_world(tmp_path) as started:
        yield started


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_sft_ssh_runs_a_command_as_the_platform_account_and_caches_the_certificate(
    world: World,
) -> None:
    bob = world.bob
    ran = await bob.sft("ssh", "web-1", "--", "id", "-un")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "bob"
    ssh_dir = world.ssh_dir(bob)
    for private in (ssh_dir / "id_ed25519", ssh_dir / "credentials" / "web-cert.pub"):
        assert _mode(private) == 0o600, private
    assert _mode(ssh_dir) == 0o700
    assert await world.issuances() == 1

    # Warm: no new certificate; stdin, stdout and the exit status are ssh's own.
    echoed = await bob.sft("ssh", "web-1", "--", "cat", stdin=b"hello through sft\n")
    assert echoed.stdout == "hello through sft\n"
    status = await bob.sft("ssh", "web-1", "--", "echo oops >&2; exit 7")
    assert status.returncode == 7
    assert "oops" in status.stderr
    assert await world.issuances() == 1

    # A certificate about to expire is replaced before ssh ever sees it.
    record_file = ssh_dir / "credentials" / "web.json"
    record = json.loads(record_file.read_text())
    old_serial = record["serial"]
    record["valid_before"] = time.time() + 10
    record_file.write_text(json.dumps(record))
    renewed = await bob.sft("ssh", "web-1", "--", "id", "-un")
    assert renewed.returncode == 0, renewed.stderr
    assert renewed.stdout.strip() == "bob"
    assert json.loads(record_file.read_text())["serial"] != old_serial
    assert await world.issuances() == 2

    # `sft logout` forgets the certificates (the key pair stays).
    assert (await bob.sft("logout")).returncode == 0
    assert not (ssh_dir / "credentials").exists()
    assert (ssh_dir / "id_ed25519").exists()


async def test_ten_concurrent_cold_sft_ssh_sign_one_certificate(world: World) -> None:
    runs = await asyncio.gather(*(world.bob.sft("ssh", "web-1", "--", "true") for _ in range(10)))
    assert [ran.returncode for ran in runs] == [0] * 10, [ran.stderr for ran in runs]
    assert await world.issuances() == 1


async def test_through_two_bastions_each_with_its_own_certificate(world: World) -> None:
    first = await world.enroll_server("bastion-1", "edge")
    second = await world.enroll_server("bastion-2", "edge")
    marks = {server.name: server.sshd.log_mark() for server in (first, second)}
    ran = await world.bob.sft(
        "ssh", "--via", "bastion-1", "--via", "bastion-2", "web-1", "--", "id", "-un"
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "bob"
    for server in (first, second):
        server.sshd.wait_for_log(
            r"Accepted publickey for bob .*ED25519-CERT", since=marks[server.name]
        )
    ssh_dir = world.ssh_dir(world.bob)
    assert (ssh_dir / "credentials" / "edge-cert.pub").exists()
    assert (ssh_dir / "credentials" / "web-cert.pub").exists()


async def test_plain_ssh_and_scp_through_the_ssh_config_block(world: World) -> None:
    bob = world.bob
    block = await bob.sft("ssh-config")
    assert block.returncode == 0, block.stderr
    assert 'Match exec "' in block.stdout and "proxycommand" in block.stdout
    config = world.tmp_path / "bob_ssh_config"
    config.write_text(block.stdout)
    ran = await bob.run("ssh", "-F", str(config), "web-1", "id", "-un")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "bob"
    copied = world.tmp_path / "copied-hostname"
    scp = await bob.run("scp", "-F", str(config), "web-1:/etc/hostname", str(copied))
    assert scp.returncode == 0, scp.stderr
    assert copied.read_text().strip()
    # A name sft does not know is left to ssh's own configuration.
    unknown = await bob.run(
        "ssh", "-F", str(config), "-o", "ConnectTimeout=3", "-o", "BatchMode=yes",
        "no-such-server.invalid", "true",
    )  # fmt: skip
    assert unknown.returncode == 255
    assert "proxycommand" not in unknown.stderr


async def test_a_server_with_another_projects_host_certificate_is_refused(world: World) -> None:
    impostor = await world.enroll_server("web-1-impostor", "edge", hostname="web-1")
    bob = world.bob
    assert (await bob.sft("ssh", "web-1", "--", "true")).returncode == 0
    # web-1's address now leads to a server whose host certificate another project signed.
    ssh_dir = world.ssh_dir(bob)
    (record_file,) = (ssh_dir / "servers").glob("*.json")
    record = json.loads(record_file.read_text())
    record["ssh_port"] = impostor.sshd.port
    record_file.write_text(json.dumps(record))
    ran = await bob.sft("ssh", "web-1", "--", "true")
    assert ran.returncode == 255
    assert "Host key verification failed" in ran.stderr


async def test_no_grant_gets_one_line_and_no_certificate(world: World) -> None:
    carol = world.carol
    refused = await carol.sft("ssh", "web-1", "--", "true")
    message = refused.one_error_line()
    assert "web-1" in message
    by_resource = await carol.sft("ssh", world.servers["web-1"].resource, "--", "true")
    assert "no grant on project 'web'" in by_resource.one_error_line()
    credentials = world.ssh_dir(carol) / "credentials"
    assert not credentials.exists() or not any(credentials.iterdir())
    assert await world.issuances() == 0


async def test_bad_command_lines_are_usage_errors(world: World) -> None:
    for args, words in (
        (("ssh",), "name the server"),
        (("ssh", "-J", "b1", "web-1"), "--via"),
        (("ssh", "-p", "http", "web-1"), "TCP port"),
        (("ssh", "--bogus", "web-1"), "unknown option"),
    ):
        ran = await world.bob.sft(*args)
        assert ran.returncode == 2, (args, ran.stderr)
        assert words in ran.stderr and "Traceback" not in ran.stderr
    assert not (world.ssh_dir(world.bob) / "credentials").exists()


async def test_platform_down_uses_a_cached_certificate_that_still_works(world: World) -> None:
    bob = world.bob
    assert (await bob.sft("ssh", "web-1", "--", "true")).returncode == 0
    # The certificate is inside the renewal margin, and the platform is gone.
    record_file = world.ssh_dir(bob) / "credentials" / "web.json"
    record = json.loads(record_file.read_text())
    record["valid_before"] = time.time() + 40
    record_file.write_text(json.dumps(record))
    device_file = bob.home / "teams" / "acme" / "device.json"
    device = json.loads(device_file.read_text())
    device["url"] = f"https://127.0.0.1:{free_port()}"
    device_file.write_text(json.dumps(device))
    ran = await bob.sft("ssh", "web-1", "--", "id", "-un")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "bob"
    assert "sft: warning: cannot reach the platform" in ran.stderr
    assert "using the cached certificate" in ran.stderr
    # Once nothing cached still works, one line says so.
    record["valid_before"] = time.time() + 2
    record_file.write_text(json.dumps(record))
    line = (await bob.sft("ssh", "web-1", "--", "true")).one_error_line()
    assert line.startswith("cannot reach the platform")
    assert "no cached certificate for web-1 is still valid" in line


async def test_proxycommand_and_ssh_refusals_are_one_line(world: World) -> None:
    bob = world.bob
    server_id = world.servers["web-1"].resource.rsplit("/", 1)[-1]
    # ssh would check the host certificate against the id, which it does not name.
    by_id = (await bob.sft("proxycommand", server_id)).one_error_line()
    assert "not a name in web-1's host certificate" in by_id and "`ssh web-1`" in by_id
    assert not (world.ssh_dir(bob) / "hosts").exists()
    # --fdpass only works under ssh's ProxyUseFdpass (stdout a socket), not a pipe.
    piped = (await bob.sft("proxycommand", "--fdpass", "web-1")).one_error_line()
    assert "ProxyUseFdpass" in piped
    # A missing ssh client is named, warm cache or not.
    ran = await bob.run(
        "env", "SFT_SSH_PROGRAM=/nonexistent/ssh", SFT_BIN, "ssh", "web-1", "--", "true"
    )
    line = ran.one_error_line()
    assert "'/nonexistent/ssh' is not installed" in line and "SFT_SSH_PROGRAM" in line
