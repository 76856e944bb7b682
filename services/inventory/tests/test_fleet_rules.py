"""The fleet's rules for untrusted input (agent facts, keys, selectors, token settings),
without a database or gRPC: what is accepted comes out normalized, and everything else
is refused with InvalidInput, never another exception.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import InvalidInput
from services.inventory import fleet_rules, server_keys

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def openssh(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> str:
    """Return `key`'s public half as an OpenSSH line with a comment."""
    line = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return f"{line} root@web-1"


def test_facts_are_normalized_and_defaulted() -> None:
    facts = fleet_rules.ServerFacts(
        hostname="Web-1.Example.COM.",
        os="linux",
        alt_names=("WWW.example.com", "www.example.com"),
        labels={"role": "web", "env": "prod"},
        addresses=("2001:DB8::0:7", "10.0.0.7"),
        access_address=" 203.0.113.7 ",
        ssh_port=0,
    ).checked()
    assert facts.hostname == "web-1.example.com"
    assert facts.canonical_name == "web-1.example.com"
    assert facts.alt_names == ("www.example.com",)
    assert list(facts.labels) == ["env", "role"]
    assert facts.addresses == ("2001:db8::7", "10.0.0.7")
    assert facts.access_address == "203.0.113.7"
    assert facts.ssh_port == 22 and facts.broker_port == 0


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"hostname": " "}, "facts.hostname is required"),
        ({"os": ""}, "facts.os is required"),
        ({"hostname": "web_1"}, "not a valid name"),
        ({"alt_names": ("a",) * 33}, "at most 32"),
        ({"labels": {"env": "a=b"}}, "label env="),
        ({"labels": {"": "x"}}, "label key"),
        ({"addresses": ("fe80::1%eth0",)}, "not an IP address"),
        ({"ssh_port": 70000}, "out of range"),
        ({"agent_version": "1.0; rm -rf"}, "agent_version"),
    ],
)
def test_bad_facts_say_what_is_wrong(change: dict[str, object], says: str) -> None:
    fields: dict[str, object] = {"hostname": "web-1", "os": "linux"}
    fields.update(change)
    with pytest.raises(InvalidInput, match=says):
        fleet_rules.ServerFacts(**fields).checked()  # type: ignore[arg-type]


@given(
    hostname=st.text(max_size=300),
    names=st.lists(st.text(max_size=40), max_size=4),
    labels=st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=4),
    addresses=st.lists(st.text(max_size=40), max_size=3),
    access=st.text(max_size=60),
)
def test_any_facts_are_normalized_or_refused(
    hostname: str, names: list[str], labels: dict[str, str], addresses: list[str], access: str
) -> None:
    facts = fleet_rules.ServerFacts(
        hostname=hostname,
        os="windows",
        alt_names=tuple(names),
        labels=labels,
        addresses=tuple(addresses),
        access_address=access,
    )
    try:
        checked = facts.checked()
    except InvalidInput:
        return
    for name in (checked.hostname, checked.canonical_name, *checked.alt_names):
        assert fleet_rules._DNS_NAME.fullmatch(name)


@given(st.text(max_size=200))
def test_any_selector_parses_or_is_refused(text: str) -> None:
    try:
        pairs = fleet_rules.parse_selector(text)
    except InvalidInput:
        return
    for key, value in pairs.items():
        assert "," not in key + value and "=" not in key + value


def test_selector_pairs() -> None:
    assert fleet_rules.parse_selector("") == {}
    assert fleet_rules.parse_selector(" env = prod , role=web") == {"env": "prod", "role": "web"}
    with pytest.raises(InvalidInput, match="key=value"):
        fleet_rules.parse_selector("env=prod,")
    with pytest.raises(InvalidInput, match="twice"):
        fleet_rules.parse_selector("env=prod,env=dev")


def test_keys_are_canonical_with_ssh_keygen_fingerprints() -> None:
    agent = server_keys.parse_agent_key(openssh(ed25519.Ed25519PrivateKey.generate()))
    assert agent.line.startswith("ssh-ed25519 ") and " root@" not in agent.line
    assert agent.fingerprint.startswith("SHA256:") and not agent.fingerprint.endswith("=")
    host = server_keys.parse_host_key(openssh(ec.generate_private_key(ec.SECP384R1())), 0)
    assert host.line.startswith("ecdsa-sha2-nistp384 ")
    with pytest.raises(InvalidInput, match="Ed25519"):
        server_keys.parse_agent_key(host.line)
    with pytest.raises(InvalidInput, match=r"host_public_keys\[2\]"):
        server_keys.parse_host_key("ssh-dss AAAA", 2)


@given(st.text(max_size=300))
def test_any_key_text_parses_or_is_refused(text: str) -> None:
    for parse in (server_keys.parse_agent_key, lambda t: server_keys.parse_host_key(t, 0)):
        try:
            parse(text)
        except InvalidInput:
            pass


def test_token_settings_defaults_and_limits() -> None:
    settings = fleet_rules.TokenSettings().checked(NOW)
    assert settings.expire_time == NOW + dt.timedelta(hours=24)
    with pytest.raises(InvalidInput, match="past"):
        fleet_rules.TokenSettings(expire_time=NOW).checked(NOW)
    with pytest.raises(InvalidInput, match="30 days"):
        fleet_rules.TokenSettings(expire_time=NOW + dt.timedelta(days=31)).checked(NOW)
    with pytest.raises(InvalidInput, match="description"):
        fleet_rules.TokenSettings(description="x" * 501).checked(NOW)


def test_token_names() -> None:
    name = fleet_rules.token_resource("acme", "web", "0f3c")
    assert name == "teams/acme/projects/web/enrollmentTokens/0f3c"
    assert fleet_rules.split_token_name(name) == ("acme", "web", "0f3c")
    with pytest.raises(InvalidInput, match="enrollmentTokens"):
        fleet_rules.split_token_name("teams/acme/projects/web/tokens/0f3c")
