"""Device assertions carry exactly the header and claims CreateAccessToken asks for."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from client.assertions import ASSERTION_AUDIENCE, make_device_assertion
from client.device_key import (
    generate_device_key,
    load_private_key,
    private_key_openssh,
    public_key_fingerprint,
    public_key_line,
)

DEVICE = "teams/acme/users/ada/devices/7f3c"
NOW = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def test_assertion_verifies_with_the_public_key_and_names_the_device() -> None:
    key = generate_device_key()
    token = make_device_assertion(key, DEVICE, NOW)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "typ": "JWT", "kid": public_key_fingerprint(key)}
    claims = jwt.decode(
        token,
        key.public_key(),
        algorithms=["EdDSA"],
        audience="/sft.auth.v1.TokenService/CreateAccessToken",
        issuer=DEVICE,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["sub"] == DEVICE
    assert claims["aud"] == ASSERTION_AUDIENCE
    assert claims["iat"] == int(NOW.timestamp())
    assert claims["exp"] == claims["iat"] + 60
    assert re.fullmatch(r"[A-Za-z0-9_-]{22,128}", claims["jti"])
    assert set(claims) == {"iss", "sub", "aud", "iat", "exp", "jti"}


def test_another_key_cannot_verify_the_assertion() -> None:
    token = make_device_assertion(generate_device_key(), DEVICE, NOW)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            token,
            generate_device_key().public_key(),
            algorithms=["EdDSA"],
            options={"verify_aud": False, "verify_exp": False},
        )


def test_every_assertion_has_a_fresh_jti() -> None:
    key = generate_device_key()
    jtis = {
        jwt.decode(make_device_assertion(key, DEVICE, NOW), options={"verify_signature": False})[
            "jti"
        ]
        for _ in range(50)
    }
    assert len(jtis) == 50


def test_kid_is_the_ssh_keygen_fingerprint_of_the_public_key_blob() -> None:
    key = generate_device_key()
    blob = base64.b64decode(public_key_line(key).split()[1])
    expected = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert public_key_fingerprint(key) == f"SHA256:{expected}"
    assert public_key_fingerprint(key.public_key()) == public_key_fingerprint(key)


def test_private_key_round_trips_in_openssh_format() -> None:
    key = generate_device_key()
    data = private_key_openssh(key)
    assert data.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert public_key_line(load_private_key(data)) == public_key_line(key)
    assert public_key_line(key).startswith("ssh-ed25519 AAAA")


def test_a_non_ed25519_key_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="not an Ed25519 key"):
        load_private_key(other)
