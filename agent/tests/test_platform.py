"""The platform's address, the agent's key assertion, and the pin check on first contact."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from agent.platform import (
    ASSERTION_AUDIENCE,
    PinMismatch,
    PlatformURL,
    find_pinned_ca,
    make_agent_assertion,
    parse_platform_url,
)
from agent.state import AgentKey

SERVER = "teams/acme/projects/web/servers/7f3c0c8e-0000-4000-8000-000000000001"
NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "host", "port", "shown"),
    [
        ("https://sft.example.com", "sft.example.com", 443, "https://sft.example.com:443"),
        ("https://127.0.0.1:8443/", "127.0.0.1", 8443, "https://127.0.0.1:8443"),
        ("HTTPS://[::1]:8443", "::1", 8443, "https://[::1]:8443"),
        ("  https://sft.example.com.  ", "sft.example.com", 443, "https://sft.example.com:443"),
    ],
)
def test_platform_urls_are_parsed(text: str, host: str, port: int, shown: str) -> None:
    url = parse_platform_url(text)
    assert (url.host, url.port, str(url)) == (host, port, shown)


@pytest.mark.parametrize(
    "text",
    [
        "sft.example.com",
        "http://sft.example.com",
        "https://user:pw@sft.example.com",
        "https://sft.example.com/path",
        "https://sft.example.com:0",
        "https://sft.example.com:99999",
        "https://",
        "https://bad_host!",
    ],
)
def test_anything_but_an_https_endpoint_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"https://HOST\[:PORT\]"):
        parse_platform_url(text)


@given(st.text(max_size=60))
def test_parsing_never_fails_with_anything_but_value_error(text: str) -> None:
    try:
        parse_platform_url(text)
    except ValueError:
        pass


def test_the_assertion_names_the_server_and_is_signed_by_the_agent_key() -> None:
    key = AgentKey.generate()
    token = make_agent_assertion(key, SERVER, NOW)
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(
        token,
        key.private.public_key(),
        algorithms=["EdDSA"],
        audience=ASSERTION_AUDIENCE,
        options={"verify_exp": False},
    )
    assert ASSERTION_AUDIENCE == "/sft.auth.v1.TokenService/CreateAccessToken"
    assert claims["iss"] == claims["sub"] == SERVER
    assert claims["iat"] == int(NOW.timestamp())
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert len(claims["jti"]) >= 22
    assert make_agent_assertion(key, SERVER, NOW) != token, "each jti is fresh"
    blob = base64.b64decode(key.public_line.split()[1])
    expected = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert header["kid"] == f"SHA256:{expected}" == key.fingerprint
    assert header["alg"] == "EdDSA"


def _cert(name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_the_pinned_ca_is_found_in_the_chain_and_nothing_else_is_trusted() -> None:
    leaf, ca, other = _cert("leaf"), _cert("platform CA"), _cert("another CA")
    pin = hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).digest()
    url = PlatformURL("127.0.0.1", 8443)
    assert find_pinned_ca([leaf, ca], pin, url) == ca
    with pytest.raises(PinMismatch, match="nothing was sent"):
        find_pinned_ca([leaf, other], pin, url)
    with pytest.raises(PinMismatch):
        find_pinned_ca([], pin, url)
