"""The signed assertion that proves this device holds its key (CreateAccessToken).

Pure: signs with a key it is given. An assertion is a bearer secret until the
platform spends its jti, so it is never printed or logged.
"""

from __future__ import annotations

import datetime as dt
import secrets

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

from client.device_key import public_key_fingerprint

__all__ = ["ASSERTION_AUDIENCE", "ASSERTION_LIFETIME_SECONDS", "make_device_assertion"]

ASSERTION_AUDIENCE = "/sft.auth.v1.TokenService/CreateAccessToken"
ASSERTION_LIFETIME_SECONDS = 60
# 16 random bytes are 128 bits: 22 base64url characters, as the contract asks.
JTI_BYTES = 16


def make_device_assertion(key: ed25519.Ed25519PrivateKey, device: str, now: dt.datetime) -> str:
    """Return a compact EdDSA JWT naming `device` (iss = sub), valid for one minute."""
    issued = int(now.timestamp())
    claims = {
        "iss": device,
        "sub": device,
        "aud": ASSERTION_AUDIENCE,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME_SECONDS,
        "jti": secrets.token_urlsafe(JTI_BYTES),
    }
    headers = {"typ": "JWT", "kid": public_key_fingerprint(key)}
    return jwt.encode(claims, key, algorithm="EdDSA", headers=headers)
