"""Run `sft-platform` as a real subprocess, the way an operator would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.ports import free_port
from tests.support.processes import stop_process

__all__ = ["PLATFORM_BIN", "PlatformProcess", "run_platform", "tls_channel"]

PLATFORM_BIN = str(Path(sys.executable).parent / "sft-platform")


def run_platform(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run one `sft-platform` verb to completion and return its output."""
    return subprocess.run(
        [PLATFORM_BIN, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def tls_channel(port: int, ca_file: Path) -> grpc.Channel:
    """Return a TLS channel to 127.0.0.1:`port` trusting only `ca_file`."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


class PlatformProcess:
    """A started `sft-platform serve`; stopped (by PID) when the test ends."""

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.metrics_port = free_port()
        self.internal_port = free_port()
        self.log_path = data_dir.parent / f"platform-{self.port}.log"
        self.args = [
            PLATFORM_BIN,
            "serve",
            "--data-dir",
            str(data_dir),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
            "--internal-listen",
            f"127.0.0.1:{self.internal_port}",
            *extra,
        ]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def ca_file(self) -> Path:
        """Return the platform CA the server's certificate chains to."""
        return self.data_dir / "tls" / "ca.pem"

    def log(self) -> str:
        """Return everything the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def channel(self) -> grpc.Channel:
        """Return a TLS channel to the server."""
        return tls_channel(self.port, self.ca_file)

    def start(self, timeout: float = 30) -> PlatformProcess:
        """Start serving and wait until overall health is SERVING."""
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                self.args, stdout=log_file, stderr=subprocess.STDOUT, env=self.env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sft-platform exited {self.process.returncode}:\n{self.log()}")
            if self.ca_file.exists():
                try:
                    with self.channel() as channel:
                        reply = health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(service=""), timeout=1
                        )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"sft-platform did not become healthy:\n{self.log()}")

    def stop(self, timeout: float = 20) -> int:
        """Send SIGTERM and wait; kill if it does not exit in time. Return the exit code."""
        if self.process is None:
            return 0
        return stop_process(self.process, timeout)
