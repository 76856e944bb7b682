"""The bastion chain of `sft rdp --via`: certificates both ways, one-line refusals.

Against real SSH servers (asyncssh's, on loopback) that trust a user CA made here
and present host certificates from a host CA made here; the SSH cache holds what
the platform would have issued. Two hops forward a local port to a TCP echo server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from client.errors import ClientError
from client.files import write_atomic
from client.rdp_hops import BastionChain
from client.ssh_cache import Hop, ServerRecord, SSHCache

USER_CA = asyncssh.generate_private_key("ssh-ed25519")
HOST_CA = asyncssh.generate_private_key("ssh-ed25519")


def _public(key: asyncssh.SSHKey) -> str:
    return key.export_public_key().decode().strip()


class Bastion(asyncssh.SSHServer):
    """An SSH server that forwards connections anywhere, like a bastion's sshd."""

    def begin_auth(self, username: str) -> bool:
        return True

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        return True


async def _bastion(name: str, host_ca: asyncssh.SSHKey = HOST_CA) -> asyncssh.SSHAcceptor:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    certificate = host_ca.generate_host_certificate(host_key, name, principals=[name, "127.0.0.1"])
    return await asyncssh.create_server(
        Bastion,
        "127.0.0.1",
        0,
        server_host_keys=[(host_key, certificate)],
        authorized_client_keys=asyncssh.import_authorized_keys(
            f'cert-authority,principals="bob" {_public(USER_CA)}\n'
        ),
        allow_pty=False,
    )


def _port(acceptor: asyncssh.SSHAcceptor) -> int:
    return int(acceptor.sockets[0].getsockname()[1])


def _record(name: str, port: int) -> ServerRecord:
    return ServerRecord(
        server=f"teams/acme/projects/edge/servers/{name}",
        project="teams/acme/projects/edge",
        canonical_name=name,
        hostname=name,
        address="127.0.0.1",
        ssh_port=port,
        known_hosts=f"@cert-authority {name},127.0.0.1 {_public(HOST_CA)}\n",
        account="bob",
        requested_account="",
        expires=time.time() + 600,
    )


def _fill(
    cache: SSHCache, records: list[ServerRecord], *, signer: asyncssh.SSHKey = USER_CA
) -> None:
    """Write the key, the project's certificate and known_hosts as CredentialFetcher would."""
    cache.ensure_directories()
    key = asyncssh.generate_private_key("ssh-ed25519")
    write_atomic(cache.key_file, key.export_private_key())
    certificate = signer.generate_user_certificate(key, "bob", principals=["bob"])
    write_atomic(cache.certificate_file("edge"), certificate.export_certificate())
    text = "".join(record.known_hosts for record in records)
    write_atomic(cache.known_hosts_file, text.encode())


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


@contextlib.asynccontextmanager
async def _bastions(*names: str, host_ca: asyncssh.SSHKey = HOST_CA) -> AsyncIterator[list[int]]:
    acceptors = [await _bastion(name, host_ca) for name in names]
    try:
        yield [_port(acceptor) for acceptor in acceptors]
    finally:
        for acceptor in acceptors:
            acceptor.close()
            await acceptor.wait_closed()


async def _open(
    cache: SSHCache, hops: tuple[ServerRecord | Hop, ...], port: int
) -> tuple[BastionChain, int]:
    """Open a chain through `hops` to 127.0.0.1:`port`; return it and its local port."""
    chain = BastionChain(cache)
    steps: list[str] = []
    try:
        local = await chain.open(hops, "127.0.0.1", port, steps.append)
    except BaseException:
        await chain.close()
        raise
    assert [step.split(":")[0] for step in steps] == [
        f"bastion {n} ({hop.canonical_name if isinstance(hop, ServerRecord) else hop.address})"
        for n, hop in enumerate(hops, start=1)
    ]
    return chain, local


async def test_two_hops_forward_a_local_port_to_the_target(tmp_path: Path, echo_port: int) -> None:
    async with _bastions("bastion-1", "bastion-2") as ports:
        records = [_record("bastion-1", ports[0]), _record("bastion-2", ports[1])]
        cache = SSHCache(tmp_path)
        _fill(cache, records)
        chain, local = await _open(cache, tuple(records), echo_port)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", local)
            writer.write(b"through two bastions")
            assert await asyncio.wait_for(reader.readexactly(20), 10) == b"through two bastions"
            writer.close()
        finally:
            await chain.close()


async def test_a_host_certificate_from_another_ca_is_refused(
    tmp_path: Path, echo_port: int
) -> None:
    impostor_ca = asyncssh.generate_private_key("ssh-ed25519")
    async with _bastions("bastion-1", host_ca=impostor_ca) as ports:
        record = _record("bastion-1", ports[0])
        cache = SSHCache(tmp_path)
        _fill(cache, [record])
        with pytest.raises(ClientError) as refused:
            await _open(cache, (record,), echo_port)
    message = refused.value.message
    assert message.startswith(f"bastion 1 (bastion-1) at 127.0.0.1:{ports[0]} presented a host key")
    assert "possible man-in-the-middle" in message


async def test_a_certificate_the_bastion_does_not_trust_is_one_line(
    tmp_path: Path, echo_port: int
) -> None:
    async with _bastions("bastion-1") as ports:
        record = _record("bastion-1", ports[0])
        cache = SSHCache(tmp_path)
        _fill(cache, [record], signer=asyncssh.generate_private_key("ssh-ed25519"))
        with pytest.raises(ClientError, match=r"^bastion 1 \(bastion-1\) refused the login as bob"):
            await _open(cache, (record,), echo_port)


async def test_an_unreachable_bastion_is_one_line(
    tmp_path: Path, echo_port: int, unused_tcp_port: int
) -> None:
    record = _record("bastion-1", unused_tcp_port)
    cache = SSHCache(tmp_path)
    _fill(cache, [record])
    with pytest.raises(ClientError) as refused:
        await _open(cache, (record,), echo_port)
    assert refused.value.message.startswith(
        f"cannot reach bastion 1 (bastion-1) at 127.0.0.1:{unused_tcp_port}: connection refused"
    )


async def test_missing_certificate_files_say_how_to_get_fresh_ones(
    tmp_path: Path, echo_port: int
) -> None:
    record = _record("bastion-1", 22)
    cache = SSHCache(tmp_path)
    cache.ensure_directories()
    with pytest.raises(ClientError, match="cannot read the SSH key or certificate for bastion 1"):
        await _open(cache, (record,), echo_port)
