"""`sft rdp` end to end without xrdp: the real platform, a real `sft-broker`, real sshd bastions.

A platform (in-process, SQLite) from tests/support/ssh_world.py plus project `win`
granted to bob. Server win-1 is enrolled the way sftd does it, with a broker CSR: the
platform's CA signs the broker's certificate, and a real `sft-broker` serves it with
the project's CA bundle, answering to a stand-in agent (tests/support/broker.py) and
tunnelling to a TCP echo server standing in for the RDP service. bob runs the real
`sft rdp`: `--no-launch -o json` prints one line, bytes flow through the printed port
both ways, Ctrl-C releases the grant (the agent is told to disable the account); the
launcher path runs a stand-in client (SFT_RDP_PROGRAM) that reads the one-time
password from its stdin; `--via` goes through a real sshd bastion. Refusals: a broker
whose certificate names another server (nothing is sent to it), a server with no
broker, no grant, the platform down, and usage errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.rdp_world import OUT_OF_TIME, RDPWorld, holding, rdp_world
from tests.support.ssh_world import TEAM

pytestmark = pytest.mark.e2e


@pytest.fixture
async def rdp(tmp_path: Path) -> AsyncIterator[RDPWorld]:
    async with rdp_world(tmp_path) as world:
        yield world


async def _through(address: str, payload: bytes) -> bytes:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    received = await asyncio.wait_for(reader.read(), OUT_OF_TIME)
    writer.close()
    await writer.wait_closed()
    return received


def _text(path: Path) -> str:
    return path.read_text()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_no_launch_json_prints_one_line_carries_bytes_and_ctrl_c_releases(
    rdp: RDPWorld,
) -> None:
    async with holding(rdp.bob, "--no-launch", "-o", "json", "win-1") as running:
        line = await running.first_line()
        connection = json.loads(line)
        assert set(connection) == {"address", "username", "password", "rdp_file"}
        assert connection["address"].startswith("127.0.0.1:")
        assert connection["username"] == "bob"
        assert connection["password"] == rdp.agent.passwords["bob"]
        rdp_file = Path(connection["rdp_file"])
        assert _mode(rdp_file) == 0o600
        assert f"full address:s:{connection['address']}" in _text(rdp_file)
        # Several connections, both directions, each its own tunnel under one grant.
        payloads = [os.urandom(300_000), b"x" * 10, os.urandom(70_000)]
        echoed = await asyncio.gather(*(_through(connection["address"], p) for p in payloads))
        assert echoed == payloads
        (enabled,) = [call for call in rdp.agent.calls if call.method == "EnableAccount"]
        rest, err = await running.interrupt()
    assert running.process.returncode == 0, err
    assert rest == "" and "Traceback" not in err
    assert await rdp.agent.wait_disabled(enabled.grant_id)
    # The key and the certificate stay private, and the port is closed.
    rdp_dir = rdp.rdp_dir(rdp.bob)
    assert _mode(rdp_dir / "client_key.pem") == 0o600 and _mode(rdp_dir) == 0o700
    with pytest.raises(OSError):
        await _through(connection["address"], b"late")


async def test_a_second_run_reuses_the_cached_certificate(rdp: RDPWorld) -> None:
    for _ in range(2):
        async with holding(rdp.bob, "--no-launch", "-o", "json", "win-1") as running:
            json.loads(await running.first_line())
            await running.interrupt()
    assert await rdp.world.issuances() == 1


STAND_IN_CLIENT = """
import socket, sys
args = dict(arg[1:].split(":", 1) for arg in sys.argv[1:] if arg.startswith("/") and ":" in arg)
host, port = args["v"].rsplit(":", 1)
password = sys.stdin.readline().rstrip("\\n")
with socket.create_connection((host, int(port))) as conn:
    conn.sendall(b"rdp hello")
    conn.shutdown(socket.SHUT_WR)
    echoed = b""
    while chunk := conn.recv(65536):
        echoed += chunk
with open(sys.argv[0] + ".seen", "w") as seen:
    seen.write(args["u"] + "|" + password + "|" + echoed.decode() + "|" + " ".join(sys.argv))
sys.exit(3)
"""


async def test_the_launched_client_gets_the_password_on_stdin_and_its_status_is_sfts(
    rdp: RDPWorld, tmp_path: Path
) -> None:
    client = tmp_path / "stand-in-xfreerdp"
    client.write_text(f"#!{sys.executable}\n{STAND_IN_CLIENT}")
    client.chmod(0o755)
    env = {"SFT_RDP_PROGRAM": str(client)}
    rdp_file = tmp_path / "files" / "win-1.rdp"
    async with holding(rdp.bob, "--rdp-file", str(rdp_file), "win-1", env=env) as running:
        out, err = await asyncio.wait_for(running.process.communicate(), OUT_OF_TIME)
    assert running.process.returncode == 3, err.decode()
    account, password, echoed, argv = _text(Path(f"{client}.seen")).split("|")
    assert (account, echoed) == ("bob", "rdp hello")
    assert password == rdp.agent.passwords["bob"] and password not in argv
    assert "/from-stdin:force" in argv and "/cert:ignore" in argv
    assert _mode(rdp_file) == 0o600 and "username:s:bob" in _text(rdp_file)
    (enabled,) = [call for call in rdp.agent.calls if call.method == "EnableAccount"]
    assert await rdp.agent.wait_disabled(enabled.grant_id)
    assert out == b"" and err == b""


async def test_a_tunnel_after_the_grant_ended_is_refused_with_one_line(rdp: RDPWorld) -> None:
    # A broker whose grants end one second after their last tunnel (or their start).
    await rdp.enroll("win-3", broker_args=("--grant-seconds", "1", "--grace-seconds", "0"))
    async with holding(rdp.bob, "--no-launch", "-o", "json", "win-3") as running:
        connection = json.loads(await running.first_line())
        (enabled,) = [call for call in rdp.agent.calls if call.method == "EnableAccount"]
        await rdp.agent.wait_disabled(enabled.grant_id)
        host, _, port = connection["address"].rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), OUT_OF_TIME) == b""
        writer.close()
        _, err = await running.interrupt()
    assert running.process.returncode == 0, err
    (line,) = err.splitlines()
    assert line.startswith("sft: warning: the broker refused a new connection: ")
    assert line.endswith("run `sft rdp win-3` for a new grant")


async def test_through_a_bastion_over_ssh(rdp: RDPWorld) -> None:
    bastion = await rdp.world.enroll_server("bastion-1", "edge")
    mark = bastion.sshd.log_mark()
    args = ("--via", "bastion-1", "--no-launch", "-o", "json", "-v", "win-1")
    async with holding(rdp.bob, *args) as running:
        connection = json.loads(await running.first_line())
        assert await _through(connection["address"], b"via the bastion") == b"via the bastion"
        _, err = await running.interrupt()
    assert running.process.returncode == 0, err
    assert "sft rdp: bastion 1 (bastion-1): connecting to 127.0.0.1:" in err
    assert "(through bastions)" in err
    bastion.sshd.wait_for_log(r"Accepted publickey for bob .*ED25519-CERT", since=mark)
    assert (rdp.world.ssh_dir(rdp.bob) / "credentials" / "edge-cert.pub").exists()


async def test_a_broker_naming_another_server_is_refused_and_gets_nothing(rdp: RDPWorld) -> None:
    other = await rdp.enroll("win-2")
    assert other is not None
    # win-1's broker port now leads to win-2's broker (right CA, wrong server).
    await rdp.report_broker_port(rdp.servers["win-1"], other.broker.port)
    refused = await rdp.bob.sft("rdp", "--no-launch", "-o", "json", "win-1")
    line = refused.one_error_line()
    assert (
        f"the broker at 127.0.0.1:{other.broker.port} presented a certificate for "
        f"sft://{TEAM}/win/servers/{other.server_id}, not win-1" in line
    )
    assert line.endswith("possible man-in-the-middle; nothing was sent")
    assert rdp.agent.calls == []


async def test_a_server_without_a_broker_is_one_line(rdp: RDPWorld) -> None:
    await rdp.enroll("linux-1", broker=False)
    line = (await rdp.bob.sft("rdp", "--no-launch", "linux-1")).one_error_line()
    assert "runs no broker" in line
    assert not (rdp.rdp_dir(rdp.bob) / "servers").exists() or not any(
        (rdp.rdp_dir(rdp.bob) / "servers").iterdir()
    )


async def test_no_grant_gets_the_platforms_reason(rdp: RDPWorld) -> None:
    line = (
        await rdp.world.carol.sft("rdp", "--no-launch", rdp.servers["win-1"].resource)
    ).one_error_line()
    assert "no grant on project 'win'" in line
    assert await rdp.world.issuances() == 0


async def test_platform_down_uses_a_cached_certificate_that_still_works(rdp: RDPWorld) -> None:
    bob = rdp.bob
    async with holding(bob, "--no-launch", "-o", "json", "win-1") as running:
        await running.first_line()
        await running.interrupt()
    (record_file,) = (rdp.rdp_dir(bob) / "servers").glob("*.json")
    record = json.loads(record_file.read_text())
    record["valid_before"] = time.time() + 40  # inside the renewal margin
    record_file.write_text(json.dumps(record))
    device_file = bob.home / "teams" / TEAM / "device.json"
    device = json.loads(device_file.read_text())
    device["url"] = f"https://127.0.0.1:{free_port()}"
    device_file.write_text(json.dumps(device))
    async with holding(bob, "--no-launch", "-o", "json", "win-1") as running:
        connection = json.loads(await running.first_line())
        assert await _through(connection["address"], b"offline") == b"offline"
        _, err = await running.interrupt()
    assert "sft: warning: cannot reach the platform" in err
    assert "using the cached certificate" in err
    record["valid_before"] = time.time() + 2
    record_file.write_text(json.dumps(record))
    line = (await bob.sft("rdp", "--no-launch", "win-1")).one_error_line()
    assert line.startswith("cannot reach the platform")
    assert "no cached certificate for win-1 is still valid" in line


async def test_bad_command_lines_are_usage_errors(rdp: RDPWorld) -> None:
    for args, words in (
        (("rdp",), "Missing argument 'NAME'"),
        (("rdp", "-o", "json", "win-1"), "use it with --no-launch"),
        (("rdp", "--bogus", "win-1"), "No such option"),
        (("rdp", "-o", "yaml", "win-1"), "'yaml' is not one of"),
    ):
        ran = await rdp.bob.sft(*args)
        assert ran.returncode == 2, (args, ran.stderr)
        assert words in ran.stderr and "Traceback" not in ran.stderr
        assert len(ran.stderr.splitlines()) == 1
    assert not (rdp.rdp_dir(rdp.bob) / "servers").exists()
