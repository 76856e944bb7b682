"""Caller identity from client certificates: every refusal, and the happy path."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from runtime.errors import InvalidInput, PermissionDenied, ResourceExhausted, Unauthenticated
from services.broker.identity import BrokerIdentity, PeerIdentities, broker_identity
from services.broker.limits import TunnelLimits
from tests.support.broker import TestPKI

ME = BrokerIdentity("acme", "win", "srv-1")


def _now() -> dt.datetime:
    """The time now: per test, since a module-level one goes stale in a long run."""
    return dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI()


def test_a_client_certificate_names_its_user_and_account(pki: TestPKI) -> None:
    caller = PeerIdentities(ME).identify(pki.client_cert("alice", "adm1", "srv-1").cert_pem, _now())
    assert (caller.team, caller.project, caller.user, caller.account) == (
        "acme",
        "win",
        "alice",
        "adm1",
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"usages": [ExtendedKeyUsageOID.SERVER_AUTH]}, Unauthenticated, "clientAuth"),
        ({"usages": []}, Unauthenticated, "clientAuth"),
        ({"uris": []}, Unauthenticated, "subjectAltName"),
        ({"uris": ["sft://acme/win/users/alice"]}, Unauthenticated, "one user and one account"),
        (
            {
                "uris": [
                    "sft://acme/win/users/a",
                    "sft://acme/win/users/b",
                    "sft://acme/win/accounts/a",
                ]
            },
            Unauthenticated,
            "one user and one account",
        ),
        (
            {"uris": ["sft://acme/win/users/al%20ce", "sft://acme/win/nodes/x"]},
            Unauthenticated,
            "garbled",
        ),
        ({"server": "srv-2"}, PermissionDenied, "not this one"),
        (
            {"uris": ["sft://acme/web/users/alice", "sft://acme/web/accounts/alice"]},
            PermissionDenied,
            "project acme/web",
        ),
        (
            {"uris": ["sft://acme/win/users/alice", "sft://other/win/accounts/alice"]},
            PermissionDenied,
            "project other/win",
        ),
        # Times as offsets from the test's own now.
        ({"not_after": dt.timedelta(seconds=-1)}, Unauthenticated, "expired"),
        ({"not_before": dt.timedelta(minutes=5)}, Unauthenticated, "not valid until"),
    ],
    ids=[
        "server-auth-only",
        "no-eku",
        "no-san",
        "no-account",
        "two-users",
        "garbled",
        "other-server",
        "other-project",
        "mixed-projects",
        "expired",
        "not-yet-valid",
    ],
)
def test_refusals(
    pki: TestPKI, kwargs: dict[str, object], error: type[Exception], words: str
) -> None:
    now = _now()
    given = {k: now + v if isinstance(v, dt.timedelta) else v for k, v in kwargs.items()}
    cert = pki.client_cert(**given)  # type: ignore[arg-type]
    with pytest.raises(error, match=words):
        PeerIdentities(ME).identify(cert.cert_pem, now)


def test_no_or_unparsable_certificate_is_unauthenticated() -> None:
    identities = PeerIdentities(ME)
    with pytest.raises(Unauthenticated, match="no client certificate"):
        identities.identify(None, _now())
    with pytest.raises(Unauthenticated, match="cannot be parsed"):
        garbled = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        identities.identify(garbled, _now())


def test_a_cached_certificate_is_still_checked_against_the_time(pki: TestPKI) -> None:
    identities = PeerIdentities(ME)
    now = _now()
    cert = pki.client_cert(not_after=now + dt.timedelta(minutes=1)).cert_pem
    identities.identify(cert, now)
    with pytest.raises(Unauthenticated, match="expired"):
        identities.identify(cert, now + dt.timedelta(minutes=2))


def test_the_broker_learns_its_server_from_its_certificate(pki: TestPKI) -> None:
    assert broker_identity(pki.server_cert("srv-9").cert_pem) == BrokerIdentity(
        "acme", "win", "srv-9"
    )
    with pytest.raises(InvalidInput, match="exactly one"):
        broker_identity(pki.client_cert().cert_pem)


def test_tunnel_limits_count_per_user_and_in_total() -> None:
    limits = TunnelLimits(total=3, per_user=2)
    alice, bob = ("acme", "win", "alice"), ("acme", "win", "bob")
    limits.admit(alice)
    limits.admit(alice)
    with pytest.raises(ResourceExhausted, match="2 tunnels open"):
        limits.admit(alice)
    limits.admit(bob)
    with pytest.raises(ResourceExhausted, match="at most 3"):
        limits.admit(bob)
    limits.leave(alice)
    limits.admit(bob)
    assert limits.open == 3
