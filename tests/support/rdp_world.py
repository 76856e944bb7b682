"""A platform with RDP servers behind real `sft-broker`s, for `sft rdp` tests and benchmarks.

`rdp_world(tmp_path)` is tests/support/ssh_world.py's world plus project `win` granted to
bob, a stand-in agent control channel (tests/support/broker.py) that enables bob, a TCP
echo server standing in for the RDP service, and server win-1 enrolled the way sftd does
(with a broker CSR, so the platform's CA signs the broker's certificate) whose real
`sft-broker` serves that certificate. `holding(person, ...)` runs `sft rdp` and keeps it
running until it is interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from services.ca.ssh_signer import ssh_fingerprint
from sft.auth.v1 import token_service_pb2, token_service_pb2_grpc
from sft.inventory.v1 import (
    agent_pb2,
    agent_service_pb2,
    agent_service_pb2_grpc,
    server_pb2,
)
from tests.support.broker import (
    AgentControlStub,
    BrokerProcess,
    serve_agent_control_stub,
    start_broker,
)
from tests.support.cli import SFT_BIN, Person
from tests.support.platform import key_assertion, public_key_line
from tests.support.ssh_world import TEAM, World, ssh_world

__all__ = ["OUT_OF_TIME", "BrokerServer", "Holding", "RDPWorld", "echo", "holding", "rdp_world"]

#: How long a test waits for `sft rdp` to print or to exit.
OUT_OF_TIME = 30.0


@dataclass
class BrokerServer:
    """An enrolled server whose broker is a real sft-broker."""

    name: str
    resource: str
    broker: BrokerProcess
    agent_key: ed25519.Ed25519PrivateKey
    facts: agent_pb2.ServerFacts

    @property
    def server_id(self) -> str:
        return self.resource.rsplit("/", 1)[-1]


class RDPWorld:
    """ssh_world plus project `win`, a stand-in agent, an echo target, and broker servers."""

    def __init__(self, world: World, agent: AgentControlStub, target: int) -> None:
        self.world = world
        self.agent = agent
        self.target = target
        self.servers: dict[str, BrokerServer] = {}

    @property
    def bob(self) -> Person:
        return self.world.bob

    async def enroll(
        self, name: str, *, broker: bool = True, broker_args: tuple[str, ...] = ()
    ) -> BrokerServer | None:
        """Enroll `name` in project win the way sftd does; start its sft-broker if `broker`
        (with `broker_args`)."""
        platform = self.world.platform
        token, _ = await platform.enrollment_token(
            self.world.admin_token, f"teams/{TEAM}/projects/win", name
        )
        agent_key = ed25519.Ed25519PrivateKey.generate()
        broker_key = ec.generate_private_key(ec.SECP256R1())
        facts = agent_pb2.ServerFacts(
            hostname=name,
            canonical_name=name,
            os=server_pb2.OPERATING_SYSTEM_LINUX,
            addresses=["127.0.0.1"],
            access_address="127.0.0.1",
            ssh_port=22,
            broker_port=4421 if broker else 0,
            agent_version="test",
        )
        request = agent_service_pb2.EnrollServerRequest(
            enrollment_token=token,
            agent_public_key=public_key_line(agent_key),
            host_public_keys=[public_key_line(ed25519.Ed25519PrivateKey.generate())],
            facts=facts,
        )
        if broker:
            request.broker_csr_pem = _csr(broker_key, name)
        reply = await platform.stub(agent_service_pb2_grpc.AgentServiceStub).EnrollServer(request)
        if not broker:
            return None
        tls_dir = self.world.tmp_path / f"{name}-broker-tls"
        tls_dir.mkdir(mode=0o700)
        key_pem = broker_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for file, data in (
            ("broker.key", key_pem),
            ("broker.crt", reply.broker_certificate_pem.encode()),
            ("ca.pem", reply.trust_anchors.x509_ca_bundle_pem.encode()),
        ):
            (tls_dir / file).write_bytes(data)
        process = self.world.stack.enter_context(
            start_broker(
                tls_dir,
                self.agent.socket_path,
                f"127.0.0.1:{self.target}",
                extra_args=broker_args,
            )
        )
        server = BrokerServer(name, str(reply.credential.subject), process, agent_key, facts)
        await self.report_broker_port(server, process.port)
        self.servers[name] = server
        return server

    async def report_broker_port(self, server: BrokerServer, port: int) -> None:
        """Heartbeat as `server`'s agent, reporting its broker on `port`."""
        platform = self.world.platform
        minted = await platform.stub(token_service_pb2_grpc.TokenServiceStub).CreateAccessToken(
            token_service_pb2.CreateAccessTokenRequest(
                assertion=key_assertion(
                    server.agent_key, server.resource, ssh_fingerprint(server.agent_key)
                )
            )
        )
        server.facts.broker_port = port
        await platform.stub(agent_service_pb2_grpc.AgentServiceStub, minted.access_token).Heartbeat(
            agent_service_pb2.HeartbeatRequest(facts=server.facts)
        )

    def rdp_dir(self, person: Person) -> Path:
        return person.home / "teams" / TEAM / "rdp"


def _csr(key: ec.EllipticCurvePrivateKey, name: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A TCP echo server's connection handler, standing in for the RDP service."""
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    writer.close()


@contextlib.contextmanager
def _agent(tmp_path: Path) -> Iterator[AgentControlStub]:
    with serve_agent_control_stub(tmp_path / "control.sock", ["bob"]) as stub:
        yield stub


@contextlib.asynccontextmanager
async def rdp_world(tmp_path: Path) -> AsyncIterator[RDPWorld]:
    """ssh_world plus project win granted to bob, the stand-in agent, an echo target and
    win-1 enrolled with a real sft-broker; all stopped afterwards."""
    target = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = int(target.sockets[0].getsockname()[1])
    try:
        async with ssh_world(tmp_path) as world:
            await world.platform.grant_project(
                world.admin_token, TEAM, "win", "win-ops", members=["bob"]
            )
            with _agent(tmp_path) as agent:
                built = RDPWorld(world, agent, port)
                await built.enroll("win-1")
                yield built
    finally:
        target.close()
        await target.wait_closed()


class Holding:
    """A running `sft rdp --no-launch`: its first stdout line, then Ctrl-C."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def first_line(self) -> str:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), OUT_OF_TIME)
        if not line:
            _, err = await self.interrupt()
            raise AssertionError(f"sft rdp printed nothing: {err}")
        return line.decode()

    async def interrupt(self) -> tuple[str, str]:
        """Send SIGINT (Ctrl-C); return (rest of stdout, stderr) once it exits."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(self.process.communicate(), OUT_OF_TIME)
        return out.decode(), err.decode()


@contextlib.asynccontextmanager
async def holding(
    person: Person, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[Holding]:
    process = await asyncio.create_subprocess_exec(
        SFT_BIN, "rdp", *args,
        env=person.environment(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield Holding(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
