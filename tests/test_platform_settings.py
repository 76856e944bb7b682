"""Settings: precedence, and one clear line for every kind of bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import ConfigError, load_config
from runtime.server import Endpoint
from services.platform.settings import ENV_PREFIX, PlatformSettings


def load(
    file: Path | None = None, env: dict[str, str] | None = None, **flags: object
) -> PlatformSettings:
    return load_config(
        PlatformSettings, file=file, env_prefix=ENV_PREFIX, overrides=flags, environ=env or {}
    )


def test_flags_override_environment_which_overrides_the_file(tmp_path: Path) -> None:
    config = tmp_path / "platform.yaml"
    config.write_text("listen: 127.0.0.1:1000\nlog_level: debug\nservices: [ca]\n")
    settings = load(config, {"SFT_PLATFORM_LISTEN": "127.0.0.1:2000"}, services="auth,ca")
    assert settings.listen == Endpoint("127.0.0.1", 2000)
    assert settings.log_level == "debug"
    assert settings.services == ("auth", "ca")


def test_unknown_key_in_file_names_the_key_and_file(tmp_path: Path) -> None:
    config = tmp_path / "platform.yaml"
    config.write_text("listen: 127.0.0.1:1000\nlisten_adress: oops\n")
    with pytest.raises(
        ConfigError, match=r"unknown setting 'listen_adress' \(from .*platform.yaml\)"
    ):
        load(config)


def test_unknown_environment_variable_is_refused() -> None:
    with pytest.raises(ConfigError, match="SFT_PLATFORM_DATABSE_URL names no setting"):
        load(env={"SFT_PLATFORM_DATABSE_URL": "sqlite:///x"})


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db/sft", "database 'mysql' is not supported"),
        ("not a url", "is not a database URL"),
        ("postgresql:///sft", "needs a host"),
        ("sqlite://", "needs a file path"),
    ],
)
def test_bad_database_url_says_what_to_use(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(database_url=url)


def test_database_urls_get_the_async_driver() -> None:
    assert load(database_url="postgres://u:p@db/sft").database_url == (
        "postgresql+asyncpg://u:p@db/sft"
    )
    assert load(database_url="sqlite:////tmp/x.db").database_url == "sqlite+aiosqlite:////tmp/x.db"


@pytest.mark.parametrize("listen", ["8443", "localhost:", "127.0.0.1:99999", ":80x"])
def test_bad_listen_address_is_one_line(listen: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(listen=listen)
    assert "'listen'" in str(caught.value) and "\n" not in str(caught.value)


def test_unknown_service_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown service 'broker'"):
        load(services="ca,broker")


def test_tls_files_must_come_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="together"):
        load(tls_cert_file=tmp_path / "c.pem")


def test_missing_and_malformed_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load(scalar)


@pytest.mark.parametrize("grace", ["-1", "301"])
def test_shutdown_grace_out_of_range_is_refused(grace: str) -> None:
    with pytest.raises(ConfigError, match="between 0 and 300 seconds"):
        load(env={"SFT_PLATFORM_SHUTDOWN_GRACE_SECONDS": grace})


def test_internal_listener_must_differ_from_the_public_one() -> None:
    with pytest.raises(ConfigError, match="internal_listen must differ from listen"):
        load(listen="127.0.0.1:9000", internal_listen="127.0.0.1:9000")
    assert load(internal_listen="off").internal_listen is None


def test_the_kek_comes_from_one_source_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ca_kek_file or ca_kek, not both"):
        load(ca_kek_file=tmp_path / "kek", env={"SFT_PLATFORM_CA_KEK": "AAAA"})


def test_peer_addresses_are_checked_and_only_the_given_ones_listed() -> None:
    settings = load(ca_address="ca.internal:8444", inventory_address=" ")
    assert settings.peer_addresses == {"ca": "ca.internal:8444"}
    with pytest.raises(ConfigError, match="auth_address"):
        load(auth_address="no-port-here")
