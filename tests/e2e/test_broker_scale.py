"""200 tunnels at once through one real `sft-broker`: every byte arrives, memory stays bounded.

The broker process runs as `sft rdp` meets it (mTLS with a test project CA, the
stand-in agent from tests/support/broker.py); the client side is the product's own
`carry_connection` behind a local listener, as `sft rdp` runs it; the target is an echo
server. Each connection sends its own random bytes and checks the echo byte for byte.
The broker's resident memory is sampled all along; its peak may grow with the number
of tunnels, not with the bytes they carry.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from runtime.tunnels import carry_connection
from sft.broker.v1 import broker_service_pb2, broker_service_pb2_grpc
from tests.support.broker import TestPKI, broker_channel, serve_agent_control_stub, start_broker
from tests.support.rdp_world import echo

pytestmark = pytest.mark.e2e

TUNNELS = 200
#: Each tunnel's payload: 400 MiB through the broker each way in all.
PAYLOAD_BYTES = 2 * 1024 * 1024
#: What the broker may add to its idle RSS while all of them run. Measured here: 70-80
#: MiB, and about 55 MiB for 50 tunnels of 24 MiB each, so it follows the number of
#: tunnels (buffers and grpc state, ~0.4 MiB each), not the bytes carried. (That a
#: reader which stops reading stalls the writer is services/broker/tests/test_tunnel_flow.py.)
MAX_GROWTH_MIB = 160


def _rss_mib(pid: int) -> float:
    """Return process `pid`'s resident set size in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


async def test_200_concurrent_tunnels_carry_their_bytes_with_bounded_broker_memory(
    tmp_path: Path,
) -> None:
    pki = TestPKI()
    tls_dir = pki.write_tls_dir(tmp_path / "tls")
    target = await asyncio.start_server(echo, "127.0.0.1", 0)
    target_port = target.sockets[0].getsockname()[1]
    limits = ("--max-tunnels-per-user", str(TUNNELS), "--max-tunnels", str(TUNNELS))
    with (
        serve_agent_control_stub(tmp_path / "control.sock", ["alice"]) as agent,
        start_broker(
            tls_dir, agent.socket_path, f"127.0.0.1:{target_port}", extra_args=limits
        ) as broker,
    ):
        channel = broker_channel(broker.port, pki, pki.client_cert())
        stub = broker_service_pb2_grpc.BrokerServiceStub(channel)
        grant = (await stub.RequestAccess(broker_service_pb2.RequestAccessRequest())).grant

        async def carry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await carry_connection(stub, grant.grant_id, reader, writer)

        listener = await asyncio.start_server(carry, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        idle = _rss_mib(broker.pid)
        peak = idle

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, _rss_mib(broker.pid))
                await asyncio.sleep(0.05)

        async def one_connection() -> bool:
            payload = os.urandom(PAYLOAD_BYTES)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)

            async def send() -> None:
                for start in range(0, PAYLOAD_BYTES, 16384):  # as a client writes: in pieces
                    writer.write(payload[start : start + 16384])
                    await writer.drain()
                writer.write_eof()

            sending = asyncio.create_task(send())
            echoed = await reader.read()
            await sending
            writer.close()
            return hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()

        sampler = asyncio.create_task(sample())
        try:
            async with asyncio.timeout(240):
                results = await asyncio.gather(*(one_connection() for _ in range(TUNNELS)))
        finally:
            sampler.cancel()
            listener.close()
            await channel.close()
        assert results.count(True) == TUNNELS, f"{results.count(False)} tunnels lost bytes"
        assert peak - idle < MAX_GROWTH_MIB, f"broker RSS grew from {idle:.0f} to {peak:.0f} MiB"
        opened = broker.log().count('"tunnel opened"')
        assert opened == TUNNELS, f"the broker logged {opened} tunnels, not {TUNNELS}"
    target.close()
