"""Credential lifetimes, source addresses and known_hosts scoping without a network."""

from __future__ import annotations

import pytest

from runtime.errors import InvalidInput
from services.auth.credentials import (
    certificate_ttl,
    check_source_addresses,
    host_patterns,
    known_hosts_for,
)

P = "teams/acme/projects/web"


def test_the_lifetime_is_the_request_or_the_project_default_within_its_maximum() -> None:
    assert certificate_ttl(0, P, 600, 3600) == 600
    assert certificate_ttl(120, P, 600, 3600) == 120
    assert certificate_ttl(3600, P, 600, 3600) == 3600
    assert certificate_ttl(0, P, 0, 0) == 600  # a project's 0 means the documented defaults
    assert certificate_ttl(0, P, 900, 300) == 300
    with pytest.raises(InvalidInput) as refused:
        certificate_ttl(3601, P, 600, 3600)
    assert "maximum of 3600" in refused.value.message and P in refused.value.message
    with pytest.raises(InvalidInput):
        certificate_ttl(-1, P, 600, 3600)
    with pytest.raises(InvalidInput):
        certificate_ttl(90000, P, 600, 10**9)  # the CA's hard cap


def test_source_addresses_must_be_cidr_blocks() -> None:
    assert check_source_addresses(["203.0.113.7/32", "2001:db8::/48", "10.0.0.1"]) == [
        "203.0.113.7/32",
        "2001:db8::/48",
        "10.0.0.1",
    ]
    with pytest.raises(InvalidInput, match="not an IP"):
        check_source_addresses(["example.com"])
    with pytest.raises(InvalidInput, match="at most 32"):
        check_source_addresses(["10.0.0.1"] * 33)


def test_known_hosts_name_the_server_not_every_host() -> None:
    patterns = host_patterns(["Web-1", "web-1", "web-1.example.com", "", "*", "a,b", "10.0.0.5"])
    assert patterns == [
        "web-1",
        "web-1.example.com",
        "10.0.0.5",
        "[web-1]:*",
        "[web-1.example.com]:*",
        "[10.0.0.5]:*",
    ]
    ca = (
        "@cert-authority * ssh-ed25519 AAAAC3Nza1 teams/acme/projects/web\n"
        "@cert-authority * ssh-ed25519 AAAAC3Nza2 teams/acme/projects/web\n"
    )
    lines = known_hosts_for(ca, patterns).splitlines()
    assert lines == [
        f"@cert-authority {','.join(patterns)} ssh-ed25519 AAAAC3Nza1 teams/acme/projects/web",
        f"@cert-authority {','.join(patterns)} ssh-ed25519 AAAAC3Nza2 teams/acme/projects/web",
    ]
    assert known_hosts_for(ca, []) == ""
