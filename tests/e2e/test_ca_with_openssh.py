"""Certificates from the CA service, installed the way an operator would, work with real
OpenSSH: sshd trusts the project's user CA, ssh trusts its host CA, another project's
CA is refused, and a rotation keeps old certificates working until the key retires.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.timestamp_pb2 import Timestamp

from runtime.database import default_sqlite_url
from sft.ca.v1 import authority_pb2, ca_service_pb2
from tests.support.ca_server import CAServer, running_ca
from tests.support.sshd import SSHDServer, run_ssh, run_sshd, write_private_key

pytestmark = pytest.mark.e2e

WEB = "teams/acme/projects/web"
DB = "teams/acme/projects/db"
ACCOUNT = "alice"


@dataclass(frozen=True)
class UserKey:
    """A key pair on disk with its certificate beside it, as `sft` keeps them."""

    path: Path
    public_line: str

    def install(self, certificate: str) -> None:
        """Write `certificate` where ssh -i finds it."""
        self.path.with_name(self.path.name + "-cert.pub").write_text(certificate + "\n")


@pytest.fixture
async def ca(tmp_path: Path) -> AsyncIterator[CAServer]:
    async with running_ca(default_sqlite_url(tmp_path), tmp_path) as server:
        for project in (WEB, DB):
            await server.as_service("inventory").CreateProjectAuthorities(
                ca_service_pb2.CreateProjectAuthoritiesRequest(project=project)
            )
        yield server


def _user_key(directory: Path, name: str) -> UserKey:
    path = directory / name
    return UserKey(path, write_private_key(path, ed25519.Ed25519PrivateKey.generate()))


async def _user_certificate(ca: CAServer, project: str, key: UserKey) -> str:
    signed: ca_service_pb2.SignUserCertificateResponse = await ca.as_service(
        "auth"
    ).SignUserCertificate(
        ca_service_pb2.SignUserCertificateRequest(
            project=project,
            public_key=key.public_line,
            principal=ACCOUNT,
            ttl_seconds=600,
            user="teams/acme/users/alice",
            request_id="e2e",
        )
    )
    return signed.certificate


async def _anchors(ca: CAServer, project: str) -> ca_service_pb2.GetAuthoritiesResponse:
    anchors: ca_service_pb2.GetAuthoritiesResponse = await ca.public().GetAuthorities(
        ca_service_pb2.GetAuthoritiesRequest(project=project)
    )
    return anchors


async def _ssh(
    server: SSHDServer, key: UserKey, known_hosts: Path
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_ssh, server, ACCOUNT, key.path, known_hosts=known_hosts)


async def test_openssh_trusts_exactly_the_projects_certificates(
    ca: CAServer, tmp_path: Path
) -> None:
    host_key = _user_key(tmp_path, "ssh_host_ed25519_key")
    host = await ca.as_service("inventory").SignHostCertificate(
        ca_service_pb2.SignHostCertificateRequest(
            project=WEB,
            server=f"{WEB}/servers/srv-1",
            public_key=host_key.public_line,
            principals=["127.0.0.1", "web-1.example.com"],
            ttl_seconds=86400,
            request_id="e2e-host",
        )
    )
    web, db = await _anchors(ca, WEB), await _anchors(ca, DB)
    known_hosts, other_known_hosts = tmp_path / "known_hosts", tmp_path / "other_known_hosts"
    known_hosts.write_text(web.known_hosts)
    other_known_hosts.write_text(db.known_hosts)
    key = _user_key(tmp_path, "id_ed25519")
    with run_sshd(
        tmp_path,
        users=[ACCOUNT],
        trusted_user_ca_keys=web.trusted_user_ca_keys,
        host_key_path=host_key.path,
        host_certificate=host.certificate,
    ) as server:
        key.install(await _user_certificate(ca, WEB, key))
        accepted = await _ssh(server, key, known_hosts)
        assert accepted.returncode == 0, accepted.stderr
        assert accepted.stdout.strip() == ACCOUNT

        # The server's host certificate is from web's host CA: db's does not vouch for it.
        refused = await _ssh(server, key, other_known_hosts)
        assert refused.returncode == 255
        assert "Host key verification failed" in refused.stderr

        # A user certificate from another project's CA is worthless here.
        key.install(await _user_certificate(ca, DB, key))
        refused = await _ssh(server, key, known_hosts)
        assert refused.returncode == 255
        assert "Permission denied (publickey)" in refused.stderr

        # An expired certificate (issued with the CA's clock two hours back).
        ca.clock.offset = -dt.timedelta(hours=2)
        key.install(await _user_certificate(ca, WEB, key))
        ca.clock.offset = dt.timedelta()
        mark = server.log_mark()
        refused = await _ssh(server, key, known_hosts)
        assert refused.returncode == 255
        server.wait_for_log(r"Certificate invalid: expired", since=mark)


async def test_rotation_keeps_old_certificates_until_the_old_key_retires(
    ca: CAServer, tmp_path: Path
) -> None:
    old_key, new_key = _user_key(tmp_path, "id_old"), _user_key(tmp_path, "id_new")
    old_key.install(await _user_certificate(ca, WEB, old_key))
    known_hosts = tmp_path / "known_hosts"
    with run_sshd(
        tmp_path,
        users=[ACCOUNT],
        trusted_user_ca_keys=(await _anchors(ca, WEB)).trusted_user_ca_keys,
    ) as server:
        # Host trust is not under test here; pin this sshd's plain host key.
        known_hosts.write_text(f"[127.0.0.1]:{server.port} {server.host_public_key}\n")
        retire = Timestamp()
        retire.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        await ca.as_service("inventory").RotateAuthority(
            ca_service_pb2.RotateAuthorityRequest(
                project=WEB,
                kind=authority_pb2.AUTHORITY_KIND_SSH_USER,
                previous_retire_time=retire,
            )
        )
        # What sftd does after a rotation: rewrite TrustedUserCAKeys from the anchors.
        server.set_trusted_user_ca_keys((await _anchors(ca, WEB)).trusted_user_ca_keys)
        new_key.install(await _user_certificate(ca, WEB, new_key))
        for key in (old_key, new_key):
            during = await _ssh(server, key, known_hosts)
            assert during.returncode == 0, (key.path.name, during.stderr)

        ca.clock.offset = dt.timedelta(hours=2)  # past the retire time
        server.set_trusted_user_ca_keys((await _anchors(ca, WEB)).trusted_user_ca_keys)
        after_old = await _ssh(server, old_key, known_hosts)
        assert after_old.returncode == 255, "the retired key's certificate still works"
        after_new = await _ssh(server, new_key, known_hosts)
        assert after_new.returncode == 0, after_new.stderr
