"""The RDP cache and client key: private files, reuse until the renewal margin, damage is a miss,
and what the platform's X509 answer must hold."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.errors import ClientError
from client.rdp_cache import RDPCache
from client.rdp_credentials import ensure_client_key, read_client_key, record_from_reply
from client.ssh_cache import Hop
from client.tests.test_rdp_broker import SERVER, ProjectCA, client_record
from sft.auth.v1 import access_pb2, access_service_pb2


@pytest.fixture
def cache(tmp_path: Path) -> RDPCache:
    rdp = RDPCache(tmp_path)
    rdp.ensure_directories()
    return rdp


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_client_key_is_ec_p256_private_and_reused(cache: RDPCache) -> None:
    assert read_client_key(cache) is None
    key = ensure_client_key(cache)
    assert _mode(cache.key_file) == 0o600 and _mode(cache.root) == 0o700
    loaded = serialization.load_pem_private_key(key.private_pem, password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey) and loaded.curve.name == "secp256r1"
    assert ensure_client_key(cache).public_pem == key.public_pem
    assert "PRIVATE" not in key.public_pem


def test_a_damaged_client_key_is_replaced(cache: RDPCache) -> None:
    Path(cache.key_file).write_text("not a key")
    assert read_client_key(cache) is None
    assert ensure_client_key(cache).public_pem.startswith("-----BEGIN PUBLIC KEY-----")


def test_a_fresh_record_is_found_by_the_name_typed_and_by_resource(cache: RDPCache) -> None:
    record = client_record(cache, ProjectCA())
    key = ensure_client_key(cache).public_pem
    assert cache.lookup("win-1", key) == record
    assert cache.lookup(SERVER, key) == record
    assert cache.lookup("win-2", key) is None
    for path in (cache.record_file(record.server_id), cache.certificate_file(record.server_id)):
        assert _mode(path) == 0o600


def test_a_certificate_inside_the_renewal_margin_or_for_another_key_is_a_miss(
    cache: RDPCache,
) -> None:
    record = client_record(cache, ProjectCA(), valid_for=30)
    key = ensure_client_key(cache).public_pem
    assert cache.lookup("win-1", key) is None  # 30 s < the 60 s margin
    assert cache.lookup("win-1", key, margin=5) == record  # still usable when the platform is down
    assert cache.lookup("win-1", key.replace("A", "B", 1), margin=5) is None


@pytest.mark.parametrize("damage", ["{", '{"server": 1}', "[]"])
def test_a_damaged_record_is_a_miss(cache: RDPCache, damage: str) -> None:
    record = client_record(cache, ProjectCA())
    Path(cache.record_file(record.server_id)).write_text(damage)
    assert cache.lookup("win-1", ensure_client_key(cache).public_pem) is None


def test_a_record_without_its_certificate_file_is_a_miss(cache: RDPCache) -> None:
    record = client_record(cache, ProjectCA())
    os.unlink(cache.certificate_file(record.server_id))
    assert cache.lookup("win-1", ensure_client_key(cache).public_pem) is None


def test_a_record_under_another_servers_file_is_not_trusted(cache: RDPCache) -> None:
    record = client_record(cache, ProjectCA())
    data = json.loads(Path(cache.record_file(record.server_id)).read_text())
    data["server"] = "teams/acme/projects/win/servers/other"
    Path(cache.record_file(record.server_id)).write_text(json.dumps(data))
    assert cache.lookup("win-1", ensure_client_key(cache).public_pem) is None


def test_the_default_rdp_file_is_per_name_inside_the_cache(cache: RDPCache) -> None:
    assert cache.rdp_file("win-1") == os.path.join(cache.root, "win-1.rdp")
    assert cache.rdp_file("../etc/passwd") == os.path.join(cache.root, "server.rdp")


def _reply(broker_port: int = 4421) -> access_service_pb2.IssueCredentialsResponse:
    reply = access_service_pb2.IssueCredentialsResponse(
        kind=access_pb2.CREDENTIAL_KIND_X509,
        certificate="-----BEGIN CERTIFICATE-----\n...",
        serial=9,
        account_name="bob",
        connection=access_pb2.ServerConnection(
            server=SERVER,
            project="teams/acme/projects/win",
            canonical_name="win-1",
            hostname="win-1",
            address="10.0.0.9",
            broker_port=broker_port,
            x509_ca_bundle_pem="-----BEGIN CERTIFICATE-----\nca",
            broker_uri="sft://acme/win/servers/srv1",
            bastions=[access_pb2.BastionHop(address="10.0.0.1", ssh_port=0)],
        ),
    )
    reply.valid_before.FromSeconds(int(time.time()) + 300)
    return reply


def test_the_platforms_answer_becomes_a_record() -> None:
    record = record_from_reply(_reply(), "PUBLIC")
    assert record.broker_address == "10.0.0.9:4421"
    assert record.bastions == (Hop(address="10.0.0.1", ssh_port=22, server=""),)
    assert record.account == "bob" and record.public_key_pem == "PUBLIC"
    assert record._replace(address="fd00::9").broker_address == "[fd00::9]:4421"


def test_a_server_without_a_broker_is_refused_in_one_line() -> None:
    with pytest.raises(ClientError, match=r"server win-1 runs no broker; RDP needs `Broker: true`"):
        record_from_reply(_reply(broker_port=0), "PUBLIC")


def test_forget_removes_certificates_names_and_rdp_files_but_keeps_the_key(cache: RDPCache) -> None:
    client_record(cache, ProjectCA())
    Path(cache.rdp_file("win-1")).write_text("full address:s:127.0.0.1:1")
    key = ensure_client_key(cache).public_pem
    removed = cache.forget()
    assert len(removed) == 3
    assert cache.lookup("win-1", key, margin=0) is None
    assert not os.path.exists(cache.rdp_file("win-1")) and not os.path.exists(cache.names_file)
    assert ensure_client_key(cache).public_pem == key
