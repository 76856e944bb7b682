"""Key-possession assertions: the EdDSA JWTs a device or agent signs to get a token.

Pure: checks signatures and claims against a key it is given; knows no database.
Never logs an assertion (it is a bearer secret until its jti is spent).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

from runtime.errors import Unauthenticated

__all__ = [
    "ASSERTION_AUDIENCE",
    "MAX_ASSERTION_CHARS",
    "MAX_ASSERTION_LIFETIME_SECONDS",
    "AssertionHeader",
    "VerifiedAssertion",
    "read_assertion_header",
    "verify_assertion",
]

ASSERTION_AUDIENCE = "/sft.auth.v1.TokenService/CreateAccessToken"
MAX_ASSERTION_CHARS = 4096
MAX_ASSERTION_LIFETIME_SECONDS = 300
#: How far in the future an `iat` may be (the holder's clock may run ahead).
CLOCK_SKEW_SECONDS = 60
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_JTI = re.compile(r"[A-Za-z0-9_-]{22,128}")
_HOW = "sign a fresh assertion (`sft login` does this for you)"


@dataclass(frozen=True)
class AssertionHeader:
    """What an assertion claims before its signature is checked: whose key to use."""

    key_fingerprint: str
    issuer: str


@dataclass(frozen=True)
class VerifiedAssertion:
    """An assertion whose signature and claims hold."""

    issuer: str
    jti: str
    expire_time: dt.datetime


def read_assertion_header(assertion: str) -> AssertionHeader:
    """Return the key fingerprint and issuer an assertion names, before trusting it."""
    if not assertion or len(assertion) > MAX_ASSERTION_CHARS:
        raise Unauthenticated(
            f"the assertion is empty or longer than {MAX_ASSERTION_CHARS} characters; {_HOW}"
        )
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise Unauthenticated(f"the assertion is not a well-formed JWT; {_HOW}") from None
    if header.get("alg") != "EdDSA":
        raise Unauthenticated(f"the assertion must be signed with EdDSA (Ed25519); {_HOW}")
    kid, issuer = header.get("kid"), claims.get("iss")
    if not isinstance(kid, str) or not _FINGERPRINT.fullmatch(kid):
        raise Unauthenticated(f"the assertion's kid must be the key fingerprint SHA256:…; {_HOW}")
    if not isinstance(issuer, str) or not issuer or claims.get("sub") != issuer:
        raise Unauthenticated(f"the assertion's iss and sub must both name the key holder; {_HOW}")
    return AssertionHeader(kid, issuer)


def verify_assertion(
    assertion: str, key: ed25519.Ed25519PublicKey, issuer: str, now: dt.datetime
) -> VerifiedAssertion:
    """Check the signature with `key` and every claim; raise Unauthenticated naming what failed."""
    try:
        claims = jwt.decode(
            assertion,
            key,
            algorithms=["EdDSA"],
            audience=ASSERTION_AUDIENCE,
            issuer=issuer,
            leeway=0,
            options={"require": ["iss", "sub", "aud", "iat", "exp", "jti"], "verify_iat": False},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthenticated(f"the assertion has expired; {_HOW}") from None
    except jwt.InvalidSignatureError:
        raise Unauthenticated(
            "the assertion's signature does not match the enrolled key; this device or server "
            "key is not the one the platform knows (enroll again)"
        ) from None
    except jwt.PyJWTError as exc:
        raise Unauthenticated(f"the assertion was refused ({exc}); {_HOW}") from None
    # PyJWT checks exp against its own clock; judge iat and the lifetime against ours.
    issued, expires = claims["iat"], claims["exp"]
    if not isinstance(issued, int | float) or not isinstance(expires, int | float):
        raise Unauthenticated(f"the assertion's iat and exp must be numbers; {_HOW}")
    if expires <= now.timestamp():
        raise Unauthenticated(f"the assertion has expired; {_HOW}")
    if issued > now.timestamp() + CLOCK_SKEW_SECONDS:
        raise Unauthenticated("the assertion was issued in the future; check this machine's clock")
    if expires - issued > MAX_ASSERTION_LIFETIME_SECONDS:
        raise Unauthenticated(
            f"the assertion lives longer than {MAX_ASSERTION_LIFETIME_SECONDS} seconds; {_HOW}"
        )
    jti = claims["jti"]
    if not isinstance(jti, str) or not _JTI.fullmatch(jti):
        raise Unauthenticated(
            f"the assertion's jti must be 22-128 base64url characters of randomness; {_HOW}"
        )
    return VerifiedAssertion(issuer, jti, dt.datetime.fromtimestamp(expires, dt.UTC))
