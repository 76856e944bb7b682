"""The CA service through its real gRPC server, on SQLite and PostgreSQL: who may call
it, what it signs, what it logs, how it rotates, and that no key is stored in clear.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text

from runtime.service_identity import service_channel
from runtime.tls import TLSFiles
from services.ca.authorities import AuthorityKind, load_signing_key
from sft.ca.v1 import authority_pb2, ca_service_pb2, ca_service_pb2_grpc, issuance_pb2
from tests.support.ca_server import CAServer, running_ca
from tests.support.real_software import require_program

PROJECT = "teams/acme/projects/web"
OTHER_PROJECT = "teams/acme/projects/db"
USER = "teams/acme/users/alice"
SERVER = f"{PROJECT}/servers/srv-1"


@pytest.fixture
async def ca(database_url: str, tmp_path: Path) -> AsyncIterator[CAServer]:
    async with running_ca(database_url, tmp_path) as server:
        await server.as_service("inventory").CreateProjectAuthorities(
            ca_service_pb2.CreateProjectAuthoritiesRequest(project=PROJECT)
        )
        yield server


def _ssh_public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def _csr(common_name: str = "ignored") -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _user_request(**overrides: object) -> ca_service_pb2.SignUserCertificateRequest:
    fields: dict[str, object] = {
        "project": PROJECT,
        "public_key": _ssh_public_key(),
        "principal": "alice",
        "ttl_seconds": 600,
        "user": USER,
        "device": f"{USER}/devices/laptop-1",
        "request_id": "req-1",
        "extensions": ca_service_pb2.UserCertificateExtensions(permit_pty=True),
    }
    fields.update(overrides)
    return ca_service_pb2.SignUserCertificateRequest(**fields)  # type: ignore[arg-type]


def _client_request(**overrides: object) -> ca_service_pb2.SignClientCertificateRequest:
    fields: dict[str, object] = {
        "project": PROJECT,
        "user": USER,
        "account_name": "alice",
        "server": SERVER,
        "csr_pem": _csr(),
        "ttl_seconds": 600,
        "request_id": "req-2",
    }
    fields.update(overrides)
    return ca_service_pb2.SignClientCertificateRequest(**fields)  # type: ignore[arg-type]


def _server_request(**overrides: object) -> ca_service_pb2.SignServerCertificateRequest:
    fields: dict[str, object] = {
        "project": PROJECT,
        "server": SERVER,
        "csr_pem": _csr(),
        "dns_names": ["web-1.example.com"],
        "ip_addresses": ["127.0.0.1"],
        "ttl_seconds": 7 * 86400,
        "request_id": "req-3",
    }
    fields.update(overrides)
    return ca_service_pb2.SignServerCertificateRequest(**fields)  # type: ignore[arg-type]


async def _run(*args: str, cwd: Path | None = None) -> tuple[int, str]:
    """Run a real program without blocking the loop; return (exit status, stdout + stderr)."""
    process = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    return process.returncode or 0, output.decode()


async def _refusal(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


# --- who may call what -------------------------------------------------------------


async def test_trust_anchors_are_readable_by_anyone(ca: CAServer) -> None:
    anchors = await ca.public().GetAuthorities(
        ca_service_pb2.GetAuthoritiesRequest(project=PROJECT)
    )
    kinds = {a.kind for a in anchors.authorities}
    assert kinds == {
        authority_pb2.AUTHORITY_KIND_SSH_USER,
        authority_pb2.AUTHORITY_KIND_SSH_HOST,
        authority_pb2.AUTHORITY_KIND_X509,
    }
    user_ca = next(
        a for a in anchors.authorities if a.kind == authority_pb2.AUTHORITY_KIND_SSH_USER
    )
    host_ca = next(
        a for a in anchors.authorities if a.kind == authority_pb2.AUTHORITY_KIND_SSH_HOST
    )
    assert anchors.trusted_user_ca_keys == f"{user_ca.public_key} {PROJECT}\n"
    assert anchors.known_hosts == f"@cert-authority * {host_ca.public_key} {PROJECT}\n"
    bundle = x509.load_pem_x509_certificates(anchors.x509_ca_bundle_pem.encode())
    assert len(bundle) == 1
    assert bundle[0].extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize(
    ("rpc", "request_factory"),
    [
        ("SignUserCertificate", _user_request),
        ("SignClientCertificate", _client_request),
        ("SignHostCertificate", lambda: ca_service_pb2.SignHostCertificateRequest()),
        ("SignServerCertificate", _server_request),
        ("RotateAuthority", lambda: ca_service_pb2.RotateAuthorityRequest(project=PROJECT)),
        ("CreateProjectAuthorities", lambda: ca_service_pb2.CreateProjectAuthoritiesRequest()),
        ("ListIssuances", lambda: ca_service_pb2.ListIssuancesRequest(parent=PROJECT)),
    ],
)
async def test_internal_rpcs_are_refused_on_the_public_listener(
    ca: CAServer, rpc: str, request_factory: object
) -> None:
    error = await _refusal(getattr(ca.public(), rpc)(request_factory()))  # type: ignore[operator]
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "only platform services may call it" in (error.details() or "")


@pytest.mark.parametrize(
    ("service", "rpc", "request_factory"),
    [
        ("inventory", "SignUserCertificate", _user_request),
        ("inventory", "SignClientCertificate", _client_request),
        ("auth", "SignServerCertificate", _server_request),
        (
            "auth",
            "CreateProjectAuthorities",
            lambda: ca_service_pb2.CreateProjectAuthoritiesRequest(),
        ),
        ("ca", "ListIssuances", lambda: ca_service_pb2.ListIssuancesRequest(parent=PROJECT)),
    ],
)
async def test_each_rpc_admits_only_the_services_that_need_it(
    ca: CAServer, service: str, rpc: str, request_factory: object
) -> None:
    stub = ca.as_service(service)
    error = await _refusal(getattr(stub, rpc)(request_factory()))  # type: ignore[operator]
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert f"service {service!r} may not call this RPC" in (error.details() or "")


async def test_internal_listener_refuses_a_caller_without_a_service_certificate(
    ca: CAServer,
) -> None:
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{ca.server.internal_port}",
        grpc.ssl_channel_credentials(ca.tls.ca_file.read_bytes()),
    )
    try:
        stub = ca_service_pb2_grpc.CertificateAuthorityServiceStub(channel)
        error = await _refusal(
            stub.GetAuthorities(ca_service_pb2.GetAuthoritiesRequest(project=PROJECT), timeout=5)
        )
    finally:
        await channel.close()
    assert error.code() is grpc.StatusCode.UNAVAILABLE


async def _call_internal_as(ca: CAServer, cert_pem: bytes, key_pem: bytes) -> grpc.aio.AioRpcError:
    (ca.tls_dir / "impostor.pem").write_bytes(cert_pem)
    (ca.tls_dir / "impostor.key").write_bytes(key_pem)
    impostor = TLSFiles(ca.tls_dir / "impostor.pem", ca.tls_dir / "impostor.key", ca.tls.ca_file)
    channel = service_channel(f"127.0.0.1:{ca.server.internal_port}", impostor)
    try:
        stub = ca_service_pb2_grpc.CertificateAuthorityServiceStub(channel)
        return await _refusal(stub.SignUserCertificate(_user_request(), timeout=5))
    finally:
        await channel.close()


async def test_platform_ca_certificates_that_are_not_service_certificates_are_refused(
    ca: CAServer,
) -> None:
    # The platform's server certificate chains to the right CA but is for serverAuth:
    # the handshake itself refuses it.
    error = await _call_internal_as(ca, ca.tls.cert_file.read_bytes(), ca.tls.key_file.read_bytes())
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    # A clientAuth certificate from the platform CA that names no service.
    ca_cert = x509.load_pem_x509_certificate(ca.tls.ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key((ca.tls_dir / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nobody")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("sft://acme/web/users/x")]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    error = await _call_internal_as(
        ca,
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "names no single platform service" in (error.details() or "")


# --- signing -----------------------------------------------------------------------


async def test_user_certificate_carries_what_sshd_needs_and_is_logged(
    ca: CAServer, tmp_path: Path
) -> None:
    require_program("ssh-keygen", "openssh-client")
    signed = await ca.as_service("auth").SignUserCertificate(
        _user_request(source_addresses=["203.0.113.7/32"])
    )
    cert_file = tmp_path / "id-cert.pub"
    cert_file.write_text(signed.certificate + "\n")
    status, shown = await _run("ssh-keygen", "-L", "-f", str(cert_file))
    assert status == 0, shown
    assert "user certificate" in shown
    assert f"Serial: {signed.serial}" in shown
    assert 'Key ID: "user=alice@acme project=web device=laptop-1 request=req-1"' in shown
    assert "Principals: \n                alice" in shown
    assert "source-address 203.0.113.7/32" in shown
    assert "permit-pty" in shown and "permit-port-forwarding" not in shown
    lifetime = signed.valid_before.ToDatetime() - signed.valid_after.ToDatetime()
    assert lifetime == dt.timedelta(seconds=660)

    log = await ca.as_service("auth").ListIssuances(
        ca_service_pb2.ListIssuancesRequest(parent=PROJECT, request_id="req-1")
    )
    (entry,) = log.issuances
    assert entry.serial == signed.serial
    assert entry.kind == issuance_pb2.CERTIFICATE_KIND_SSH_USER
    assert entry.subject == USER and list(entry.principals) == ["alice"]
    assert entry.caller == "platform_service:auth"
    assert entry.authority_fingerprint == signed.authority_fingerprint
    assert entry.key_fingerprint.startswith("SHA256:")
    assert entry.name == f"{PROJECT}/issuances/{signed.serial}"


async def test_client_and_server_certificates_chain_to_the_project_ca(
    ca: CAServer, tmp_path: Path
) -> None:
    require_program("openssl", "openssl")
    client = await ca.as_service("auth").SignClientCertificate(_client_request())
    server = await ca.as_service("inventory").SignServerCertificate(_server_request())
    anchors = await ca.public().GetAuthorities(
        ca_service_pb2.GetAuthoritiesRequest(project=PROJECT)
    )
    (tmp_path / "ca.pem").write_text(anchors.x509_ca_bundle_pem)
    (tmp_path / "client.pem").write_text(client.certificate_pem)
    (tmp_path / "server.pem").write_text(server.certificate_pem)
    for name, purpose in (("client.pem", "sslclient"), ("server.pem", "sslserver")):
        status, output = await _run(
            "openssl", "verify", "-CAfile", "ca.pem", "-purpose", purpose, name, cwd=tmp_path
        )
        assert status == 0, output
    assert list(client.uris) == [
        "sft://acme/web/users/alice",
        "sft://acme/web/accounts/alice",
        "sft://acme/web/servers/srv-1",
    ]
    assert server.uri == "sft://acme/web/servers/srv-1"
    leaf = x509.load_pem_x509_certificate(client.certificate_pem.encode())
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


async def test_host_certificate_names_the_server(ca: CAServer, tmp_path: Path) -> None:
    require_program("ssh-keygen", "openssh-client")
    signed = await ca.as_service("inventory").SignHostCertificate(
        ca_service_pb2.SignHostCertificateRequest(
            project=PROJECT,
            server=SERVER,
            public_key=_ssh_public_key(),
            principals=["web-1.example.com", "127.0.0.1"],
            ttl_seconds=7 * 86400,
            request_id="req-4",
        )
    )
    cert_file = tmp_path / "host-cert.pub"
    cert_file.write_text(signed.certificate + "\n")
    status, shown = await _run("ssh-keygen", "-L", "-f", str(cert_file))
    assert status == 0, shown
    assert "host certificate" in shown
    assert 'Key ID: "host=web-1.example.com server=srv-1"' in shown
    assert "127.0.0.1" in shown


def _rsa_1024() -> str:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (under test)
    key = weak.public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


@pytest.mark.parametrize(
    ("case", "overrides", "expected"),
    [
        ("weak-rsa", {"public_key": "RSA1024"}, "2048"),
        ("garbage-key", {"public_key": "ssh-ed25519 not-base64"}, "public key"),
        ("no-principal", {"principal": ""}, "principal is required"),
        ("bad-principal", {"principal": "Alice Smith"}, "not valid"),
        ("root", {"principal": "root"}, "privileged"),
        ("ttl-zero", {"ttl_seconds": 0}, "ttl_seconds"),
        ("ttl-over-cap", {"ttl_seconds": 86401}, "ttl_seconds"),
        ("other-team-user", {"user": "teams/other/users/bob"}, "not in team 'acme'"),
        ("foreign-device", {"device": "teams/acme/users/bob/devices/x"}, "not a device of"),
        ("no-request-id", {"request_id": ""}, "request_id is required"),
        ("bad-request-id", {"request_id": "a b"}, "request_id"),
        ("bad-project", {"project": "acme/web"}, "teams/"),
        ("bad-cidr", {"source_addresses": ["10.0.0.1/8"]}, "10.0.0.1/8"),
    ],
)
async def test_bad_user_certificate_requests_are_refused_and_change_nothing(
    ca: CAServer, case: str, overrides: dict[str, object], expected: str
) -> None:
    if overrides.get("public_key") == "RSA1024":
        overrides = {**overrides, "public_key": _rsa_1024()}
    stub = ca.as_service("auth")
    error = await _refusal(stub.SignUserCertificate(_user_request(**overrides)))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert expected in (error.details() or "")
    assert "\n" not in (error.details() or "")
    log = await stub.ListIssuances(ca_service_pb2.ListIssuancesRequest(parent=PROJECT))
    assert list(log.issuances) == []


async def test_privileged_account_is_signed_only_when_the_project_allows_it(
    ca: CAServer,
) -> None:
    signed = await ca.as_service("auth").SignUserCertificate(
        _user_request(principal="root", allow_privileged_account=True)
    )
    assert signed.serial > 0


async def test_unknown_project_is_not_found(ca: CAServer) -> None:
    error = await _refusal(
        ca.as_service("auth").SignUserCertificate(_user_request(project=OTHER_PROJECT))
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert OTHER_PROJECT in (error.details() or "")
    error = await _refusal(
        ca.public().GetAuthorities(ca_service_pb2.GetAuthoritiesRequest(project=OTHER_PROJECT))
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("case", "overrides", "expected"),
    [
        ("no-key", {"csr_pem": ""}, "no key to certify"),
        ("weak-key", {"csr_pem": "WEAK"}, "2048"),
        ("server-elsewhere", {"server": f"{OTHER_PROJECT}/servers/x"}, "not in"),
        ("administrator", {"account_name": "Administrator"}, "privileged"),
        ("ttl-over-cap", {"ttl_seconds": 86401}, "ttl"),
    ],
)
async def test_bad_client_certificate_requests_are_refused(
    ca: CAServer, case: str, overrides: dict[str, object], expected: str
) -> None:
    if overrides.get("csr_pem") == "WEAK":
        weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (the weak key under test)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
            .sign(weak, hashes.SHA256())
        )
        overrides = {"csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode()}
    error = await _refusal(
        ca.as_service("auth").SignClientCertificate(_client_request(**overrides))
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert expected in (error.details() or "")


async def test_client_certificate_for_a_bare_public_key(ca: CAServer) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    signed = await ca.as_service("auth").SignClientCertificate(
        _client_request(public_key_pem=pem, server="")
    )
    leaf = x509.load_pem_x509_certificate(signed.certificate_pem.encode())
    assert leaf.public_key() == key
    assert list(signed.uris) == ["sft://acme/web/users/alice", "sft://acme/web/accounts/alice"]


async def test_csr_whose_signature_does_not_match_is_refused(ca: CAServer) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF  # inside the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    error = await _refusal(
        ca.as_service("inventory").SignServerCertificate(_server_request(csr_pem=tampered.decode()))
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "signature" in (error.details() or "")


# --- rotation ----------------------------------------------------------------------


async def test_rotation_keeps_the_old_key_trusted_until_it_retires(ca: CAServer) -> None:
    admin, public = ca.as_service("inventory"), ca.public()
    before = await ca.as_service("auth").SignUserCertificate(_user_request())
    retire = Timestamp()
    retire.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    rotated = await admin.RotateAuthority(
        ca_service_pb2.RotateAuthorityRequest(
            project=PROJECT, kind=authority_pb2.AUTHORITY_KIND_SSH_USER, previous_retire_time=retire
        )
    )
    assert rotated.previous_authority.state == authority_pb2.AUTHORITY_STATE_PUBLISHED
    assert rotated.previous_authority.fingerprint == before.authority_fingerprint
    after = await ca.as_service("auth").SignUserCertificate(_user_request())
    assert (
        after.authority_fingerprint == rotated.authority.fingerprint != before.authority_fingerprint
    )

    anchors = await public.GetAuthorities(ca_service_pb2.GetAuthoritiesRequest(project=PROJECT))
    lines = anchors.trusted_user_ca_keys.splitlines()
    assert lines == [
        f"{rotated.authority.public_key} {PROJECT}",
        f"{rotated.previous_authority.public_key} {PROJECT}",
    ]
    ca.clock.offset = dt.timedelta(hours=2)
    anchors = await public.GetAuthorities(ca_service_pb2.GetAuthoritiesRequest(project=PROJECT))
    assert anchors.trusted_user_ca_keys == f"{rotated.authority.public_key} {PROJECT}\n"
    assert all(a.fingerprint != before.authority_fingerprint for a in anchors.authorities)


@pytest.mark.parametrize(
    ("case", "kind", "retire_in_seconds", "expected"),
    [
        ("no-kind", authority_pb2.AUTHORITY_KIND_UNSPECIFIED, None, "kind is required"),
        ("past", authority_pb2.AUTHORITY_KIND_X509, -60, "in the past"),
    ],
)
async def test_bad_rotation_requests_are_refused(
    ca: CAServer, case: str, kind: int, retire_in_seconds: int | None, expected: str
) -> None:
    request = ca_service_pb2.RotateAuthorityRequest(project=PROJECT, kind=kind)  # type: ignore[arg-type]
    if retire_in_seconds is not None:
        request.previous_retire_time.FromDatetime(
            dt.datetime.now(dt.UTC) + dt.timedelta(seconds=retire_in_seconds)
        )
    error = await _refusal(ca.as_service("inventory").RotateAuthority(request))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (error.details() or "")


async def test_concurrent_project_creation_yields_one_set_of_authorities(ca: CAServer) -> None:
    stub = ca.as_service("inventory")
    results = await asyncio.gather(
        *(
            stub.CreateProjectAuthorities(
                ca_service_pb2.CreateProjectAuthoritiesRequest(project=OTHER_PROJECT)
            )
            for _ in range(4)
        ),
        return_exceptions=True,
    )
    fingerprints = {
        tuple(sorted(a.fingerprint for a in r.authorities))
        for r in results
        if not isinstance(r, BaseException)
    }
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert all(r.code() is grpc.StatusCode.ALREADY_EXISTS for r in refused)
    assert len(fingerprints) == 1
    again = await stub.CreateProjectAuthorities(
        ca_service_pb2.CreateProjectAuthoritiesRequest(project=OTHER_PROJECT)
    )
    assert tuple(sorted(a.fingerprint for a in again.authorities)) in fingerprints


# --- the issuance log --------------------------------------------------------------


async def test_issuance_log_pages_newest_first_and_filters(ca: CAServer) -> None:
    auth = ca.as_service("auth")
    serials = []
    for index in range(5):
        signed = await auth.SignUserCertificate(_user_request(request_id=f"page-{index}"))
        serials.append(signed.serial)
    await ca.as_service("inventory").SignServerCertificate(_server_request())
    seen: list[int] = []
    token = ""
    while True:
        page = await auth.ListIssuances(
            ca_service_pb2.ListIssuancesRequest(
                parent=PROJECT,
                kind=issuance_pb2.CERTIFICATE_KIND_SSH_USER,
                page_size=2,
                page_token=token,
            )
        )
        assert len(page.issuances) <= 2
        seen += [i.serial for i in page.issuances]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(serials))
    team_wide = await auth.ListIssuances(
        ca_service_pb2.ListIssuancesRequest(parent="teams/acme/projects/-", subject=SERVER)
    )
    assert [i.kind for i in team_wide.issuances] == [issuance_pb2.CERTIFICATE_KIND_X509_SERVER]


@pytest.mark.parametrize(
    ("case", "request_fields", "expected"),
    [
        ("negative-page-size", {"page_size": -1}, "page_size must not be negative"),
        ("unknown-kind", {"kind": 99}, "not a known certificate kind"),
        ("no-parent", {"parent": ""}, "parent is required"),
        ("bad-team-wildcard", {"parent": "teams/Bad_Team/projects/-"}, "not a team resource name"),
    ],
)
async def test_bad_issuance_listings_are_refused(
    ca: CAServer, case: str, request_fields: dict[str, object], expected: str
) -> None:
    fields: dict[str, object] = {"parent": PROJECT, **request_fields}
    error = await _refusal(
        ca.as_service("auth").ListIssuances(
            ca_service_pb2.ListIssuancesRequest(**fields)  # type: ignore[arg-type]
        )
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (error.details() or "")


@pytest.mark.parametrize(
    ("case", "token", "expected"),
    [("garbage", "not-a-token", "page_token is not valid"), ("other-filter", "OTHER", "different")],
)
async def test_bad_page_tokens_are_refused(
    ca: CAServer, case: str, token: str, expected: str
) -> None:
    auth = ca.as_service("auth")
    for index in range(3):
        await auth.SignUserCertificate(_user_request(request_id=f"t-{index}"))
    if token == "OTHER":  # noqa: S105 (a marker, not a secret)
        first = await auth.ListIssuances(
            ca_service_pb2.ListIssuancesRequest(parent=PROJECT, page_size=1)
        )
        token = first.next_page_token
    error = await _refusal(
        auth.ListIssuances(
            ca_service_pb2.ListIssuancesRequest(parent=PROJECT, subject=USER, page_token=token)
        )
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (error.details() or "")


# --- storage -----------------------------------------------------------------------


async def test_the_database_holds_no_private_key_in_clear(ca: CAServer) -> None:
    async with ca.database.sessions() as session:
        rows = (
            await session.execute(text("SELECT id, kind, sealed_private_key FROM ca_authorities"))
        ).all()
        values = [
            value
            for table in ("ca_authorities", "ca_issuances")
            for row in (await session.execute(text(f"SELECT * FROM {table}"))).all()  # noqa: S608
            for value in row
        ]
    dump = b"\0".join(
        bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
        for value in values
    )
    assert len(rows) == 3
    for row_id, kind, sealed in rows:
        der = ca.kek.open(bytes(sealed), row_id.encode())
        key = load_signing_key(AuthorityKind(kind), der)
        secrets = [
            der,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        ]
        if isinstance(key, ed25519.Ed25519PrivateKey):
            secrets.append(
                key.private_bytes(
                    serialization.Encoding.Raw,
                    serialization.PrivateFormat.Raw,
                    serialization.NoEncryption(),
                )
            )
        else:
            secrets.append(key.private_numbers().private_value.to_bytes(32, "big"))
        for secret in secrets:
            assert secret not in dump
            assert secret not in bytes(sealed)
    if ca.database.is_sqlite:
        # The file itself (and its write-ahead log), not just what SQL returns.
        raw = await asyncio.to_thread(_sqlite_bytes, ca.database.url.partition(":///")[2])
        for row_id, _, sealed in rows:
            assert ca.kek.open(bytes(sealed), row_id.encode()) not in raw


def _sqlite_bytes(path: str) -> bytes:
    files = [Path(path), Path(path + "-wal")]
    return b"".join(file.read_bytes() for file in files if file.exists())
