"""What the broker tunnel costs: bulk throughput and 64-byte ping-pong latency through
`carry_connection` → a real `sft-broker` over mTLS → a target, against a direct TCP
connection and an OpenSSH local forward (`ssh -L` through a real sshd), all on 127.0.0.1
in the same run; plus the broker's memory with 200 tunnels open.

Processes, so no two parts share an interpreter: the targets (an echo server and a source
that sends BULK bytes and closes), the forwarder (this module run with `--forward`: a
local listener whose connections each become one Tunnel call, as `sft rdp` does), the
broker, sshd/ssh, and the measuring client (blocking sockets in this process).

Bulk runs target → client (RDP's heavy direction). Needs root (sshd runs in namespaces).
Targets: tunnel throughput >= 1.0 times the ssh forward's; tunnel p50 <= 2 times the ssh forward's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.harness import Result, case

CASE = "rdp_tunnel"
TARGET_THROUGHPUT_RATIO = 1.0
TARGET_P50_RATIO = 2.0
PING_BYTES = 64
CONCURRENT_TUNNELS = 200
_START_TIMEOUT_SECONDS = 20.0


# --- the helper processes (run as `python -m bench.cases.rdp_tunnel --targets|--forward`) ---


async def _serve_targets(bulk_bytes: int) -> None:
    """Serve an echo and a bulk source on free ports; print both ports; run until killed."""
    chunk = b"\x5a" * 262144

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(262144):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async def source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        left = bulk_bytes
        try:
            while left > 0:
                writer.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
                await writer.drain()
            writer.write_eof()
            await reader.read()
        except ConnectionError:
            pass
        writer.close()

    echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
    source_server = await asyncio.start_server(source, "127.0.0.1", 0)
    ports = [s.sockets[0].getsockname()[1] for s in (echo_server, source_server)]
    print(*ports, flush=True)
    await asyncio.Event().wait()


async def _serve_forwarder(broker_port: int, tls_dir: Path) -> None:
    """Request access once, then carry every local connection over its own Tunnel call."""
    import grpc

    from runtime.tunnels import carry_connection
    from sft.broker.v1 import broker_service_pb2, broker_service_pb2_grpc

    credentials = grpc.ssl_channel_credentials(
        root_certificates=(tls_dir / "ca.pem").read_bytes(),
        private_key=(tls_dir / "client.key").read_bytes(),
        certificate_chain=(tls_dir / "client.crt").read_bytes(),
    )
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{broker_port}",
        credentials,
        options=[("grpc.ssl_target_name_override", "localhost")],
    )
    stub = broker_service_pb2_grpc.BrokerServiceStub(channel)
    reply = await stub.RequestAccess(broker_service_pb2.RequestAccessRequest())
    grant_id = reply.grant.grant_id

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await carry_connection(stub, grant_id, reader, writer)
        except Exception as error:  # a bench helper: say it and carry on
            print(f"tunnel failed: {error}", file=sys.stderr, flush=True)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=262144)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


# --- measuring (blocking sockets: the least overhead on the client's side) ---


def _bulk_mb_per_second(port: int, expected: int) -> float:
    """Read the source's BULK bytes through `port`; return MB/s."""
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.perf_counter()
        got = 0
        while True:
            n = sock.recv_into(view)
            if not n:
                break
            got += n
        elapsed = time.perf_counter() - started
    if got != expected:
        raise RuntimeError(f"bulk transfer through port {port} got {got} of {expected} bytes")
    return got / elapsed / 1e6


def _ping_pong_us(port: int, rounds: int) -> tuple[float, float]:
    """Send 64 bytes and wait for their echo `rounds` times; return (p50, p99) in µs."""
    payload = b"p" * PING_BYTES
    samples = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for index in range(rounds + 50):
            started = time.perf_counter()
            sock.sendall(payload)
            got = 0
            while got < PING_BYTES:
                chunk = sock.recv(PING_BYTES - got)
                if not chunk:
                    raise RuntimeError(f"echo through port {port} closed early")
                got += len(chunk)
            if index >= 50:  # warm-up rounds are not counted
                samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def _rss_kib(pid: int) -> int:
    """Return the resident set size of `pid` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _hold_tunnels(port: int, count: int) -> list[socket.socket]:
    """Open `count` connections through `port`, each echoing 4 KiB to prove it carries bytes."""
    payload = os.urandom(4096)
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sockets.append(sock)
        sock.sendall(payload)
    for sock in sockets:
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(len(payload) - len(got))
            if not chunk:
                raise RuntimeError("a held tunnel closed early")
            got += chunk
        if got != payload:
            raise RuntimeError("a held tunnel garbled its bytes")
    return sockets


# --- starting the parts ---


def _wait_listening(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    from tests.support.ports import listening

    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        if listening(port):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on {port} in time")
        time.sleep(0.05)


@contextmanager
def _helper(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], list[int]]]:
    """Run this module as a helper process; yield it and the ports it printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.cases.rdp_tunnel", *args],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        if not line:
            raise RuntimeError(f"bench helper {args[0]} exited with {process.wait()}")
        yield process, [int(port) for port in line.split()]
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def _ssh_forward(scratch: Path, target_port: int) -> Iterator[int]:
    """Start sshd and `ssh -N -L`; yield the forward's local port."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from tests.support.ports import free_port
    from tests.support.sshd import run_sshd, write_private_key

    scratch.mkdir(exist_ok=True)
    ca_key, user_key = scratch / "user_ca", scratch / "id_bench"
    write_private_key(ca_key, ed25519.Ed25519PrivateKey.generate())
    write_private_key(user_key, ed25519.Ed25519PrivateKey.generate())
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-s",
            str(ca_key),
            "-I",
            "bench",
            "-n",
            "bench",
            "-V",
            "+1h",
            f"{user_key}.pub",
        ],
        check=True,
        capture_output=True,
    )
    with run_sshd(
        scratch, users=["bench"], trusted_user_ca_keys=(scratch / "user_ca.pub").read_text()
    ) as sshd:
        local_port = free_port()
        forward = subprocess.Popen(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-N",
                "-i",
                str(user_key),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ExitOnForwardFailure=yes",
                "-L",
                f"127.0.0.1:{local_port}:127.0.0.1:{target_port}",
                "-p",
                str(sshd.port),
                "bench@127.0.0.1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_listening(local_port, forward, "ssh -L")
            yield local_port
        finally:
            forward.terminate()
            forward.wait(10)


def _measure(quick: bool) -> dict[str, dict[str, float]]:
    from tests.support.broker import TestPKI, serve_agent_control_stub, start_broker

    bulk = (32 if quick else 256) * 1024 * 1024
    rounds = 300 if quick else 3000
    runs = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="sft-bench-rdp-") as scratch_text, ExitStack() as stack:
        scratch = Path(scratch_text)
        pki = TestPKI()
        tls_dir = pki.write_tls_dir(scratch / "tls")
        pki.client_cert("bench", "bench").write(tls_dir, "client")
        _, (echo_port, source_port) = stack.enter_context(_helper("--targets", str(bulk)))
        agent = stack.enter_context(serve_agent_control_stub(scratch / "control.sock", ["bench"]))
        del agent
        # The bulk source is the broker's target for throughput; ping-pong needs the echo,
        # so a second broker and forwarder pair targets it.
        results: dict[str, dict[str, float]] = {}
        paths: dict[str, tuple[int, int]] = {"direct": (source_port, echo_port)}
        ssh_source = stack.enter_context(_ssh_forward(scratch, source_port))
        ssh_echo = stack.enter_context(_ssh_forward(scratch / "echo", echo_port))
        paths["ssh"] = (ssh_source, ssh_echo)
        brokers = []
        for name, target in (("source", source_port), ("echo", echo_port)):
            broker = stack.enter_context(
                start_broker(
                    tls_dir,
                    scratch / "control.sock",
                    f"127.0.0.1:{target}",
                    log_dir=scratch,
                    extra_args=["--log-level", "warning", "--max-tunnels-per-user", "500"],
                )
            )
            forwarder, (port,) = stack.enter_context(
                _helper("--forward", str(broker.port), str(tls_dir))
            )
            brokers.append((name, broker, forwarder, port))
        paths["tunnel"] = (brokers[0][3], brokers[1][3])
        for name, (bulk_port, echo_port_of_path) in paths.items():
            measured = {"mb_s": max(_bulk_mb_per_second(bulk_port, bulk) for _ in range(runs))}
            measured["p50_us"], measured["p99_us"] = _ping_pong_us(echo_port_of_path, rounds)
            results[name] = measured
        echo_broker = brokers[1][1]
        rss_idle = _rss_kib(echo_broker.pid)
        held = _hold_tunnels(brokers[1][3], CONCURRENT_TUNNELS)
        time.sleep(0.5)
        rss_held = _rss_kib(echo_broker.pid)
        for sock in held:
            sock.close()
        results["memory"] = {"rss_idle_kib": rss_idle, "rss_200_kib": rss_held}
    return results


@case(CASE, "RDP tunnel (carry_connection → sft-broker mTLS) vs ssh -L and direct TCP")
async def rdp_tunnel(quick: bool) -> list[Result]:
    """Compare the tunnel's throughput and ping-pong latency with ssh -L and direct TCP."""
    if os.geteuid() != 0 or shutil.which("ssh") is None:
        raise RuntimeError("the rdp_tunnel bench needs root and OpenSSH (sshd runs in namespaces)")
    measured = await asyncio.to_thread(_measure, quick)
    tunnel, ssh, direct = measured["tunnel"], measured["ssh"], measured["direct"]
    memory = measured["memory"]
    notes: dict[str, float | str] = {
        "direct_mb_s": round(direct["mb_s"], 1),
        "direct_p50_us": round(direct["p50_us"], 1),
        "ssh_p99_us": round(ssh["p99_us"], 1),
        "broker_rss_idle_mib": round(memory["rss_idle_kib"] / 1024, 1),
        "broker_rss_200_tunnels_mib": round(memory["rss_200_kib"] / 1024, 1),
    }
    return [
        Result(
            CASE,
            "bulk throughput, target to client",
            "MB/s",
            tunnel["mb_s"],
            ssh["mb_s"],
            "ssh -L forward",
            target_ratio=TARGET_THROUGHPUT_RATIO,
            notes=notes,
        ),
        Result(
            CASE,
            "64-byte ping-pong p50",
            "µs",
            tunnel["p50_us"],
            ssh["p50_us"],
            "ssh -L forward",
            better="lower",
            target_ratio=TARGET_P50_RATIO,
        ),
        Result(
            CASE,
            "64-byte ping-pong p99",
            "µs",
            tunnel["p99_us"],
            ssh["p99_us"],
            "ssh -L forward",
            better="lower",
        ),
        Result(
            CASE,
            "bulk throughput, target to client",
            "MB/s",
            tunnel["mb_s"],
            direct["mb_s"],
            "direct TCP",
        ),
        Result(
            CASE,
            "64-byte ping-pong p50",
            "µs",
            tunnel["p50_us"],
            direct["p50_us"],
            "direct TCP",
            better="lower",
        ),
        Result(
            CASE,
            f"broker RSS with {CONCURRENT_TUNNELS} tunnels open",
            "MiB",
            memory["rss_200_kib"] / 1024,
            memory["rss_idle_kib"] / 1024,
            "same broker, idle",
            better="lower",
        ),
    ]


def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cases.rdp_tunnel")
    parser.add_argument("--targets", type=int, metavar="BULK_BYTES")
    parser.add_argument("--forward", nargs=2, metavar=("BROKER_PORT", "TLS_DIR"))
    args = parser.parse_args()
    if args.targets is not None:
        asyncio.run(_serve_targets(args.targets))
    elif args.forward:
        asyncio.run(_serve_forwarder(int(args.forward[0]), Path(args.forward[1])))
    else:
        parser.error("this module is a bench case; run it with `python -m bench rdp_tunnel`")


if __name__ == "__main__":
    _main()
