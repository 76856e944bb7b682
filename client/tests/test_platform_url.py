"""Platform URLs: https://HOST[:PORT] only, with a message saying how to write one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.errors import EXIT_USAGE, ClientError
from client.platform_url import PlatformURL, parse_platform_url


@pytest.mark.parametrize(
    ("url", "host", "port", "target"),
    [
        ("https://sft.example.com", "sft.example.com", 443, "sft.example.com:443"),
        ("https://SFT.Example.com:8443/", "sft.example.com", 8443, "sft.example.com:8443"),
        ("  https://127.0.0.1:8443\n", "127.0.0.1", 8443, "127.0.0.1:8443"),
        ("https://[::1]:8443", "::1", 8443, "[::1]:8443"),
        ("HTTPS://localhost", "localhost", 443, "localhost:443"),
    ],
)
def test_valid_urls_give_host_port_and_grpc_target(
    url: str, host: str, port: int, target: str
) -> None:
    parsed = parse_platform_url(url)
    assert parsed == PlatformURL(host, port)
    assert parsed.target == target
    assert parse_platform_url(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://sft.example.com", "uses http:// but sft only talks TLS"),
        ("grpc://sft.example.com:443", "uses grpc:// but sft only talks TLS"),
        ("sft.example.com:8443", "has no scheme"),
        ("https://sft.example.com/api", "must not have a path"),
        ("https://sft.example.com?x=1", "must not have a path, query or fragment"),
        ("https://ada:pw@sft.example.com", "must not carry a user name or password"),
        ("https://sft.example.com:99999", "has an invalid port"),
        ("https://sft.example.com:0", "has port 0"),
        ("https://", "has no host"),
        ("https://sft_example.com", "has an invalid host name"),
    ],
)
def test_bad_urls_are_usage_errors_that_show_the_format(url: str, why: str) -> None:
    with pytest.raises(ClientError) as caught:
        parse_platform_url(url)
    assert why in caught.value.message
    assert "https://HOST[:PORT]" in caught.value.message
    assert caught.value.exit_code == EXIT_USAGE


def test_ip_literals_are_told_apart_from_names() -> None:
    assert parse_platform_url("https://10.0.0.1").is_ip
    assert parse_platform_url("https://[2001:db8::1]").is_ip
    assert not parse_platform_url("https://sft.example.com").is_ip


@given(st.text(max_size=80))
def test_any_text_parses_or_is_refused_with_a_client_error(text: str) -> None:
    try:
        parsed = parse_platform_url(text)
    except ClientError:
        return
    assert 0 < parsed.port < 65536 and parsed.host
