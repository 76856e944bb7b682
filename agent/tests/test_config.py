"""sftd.yaml: every key, the defaults per OS, and one clear line for every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import paths
from agent.config import AgentConfig, ConfigError, load_config

EVERY_KEY = """\
InitialURL: https://sft.example.com:8443/
CanonicalName: web-1.prod
AltNames: [web-1, web-1.example.com]
Labels:
  env: prod
  role: web
AccessAddress: 203.0.113.7
Bastion: bastion-1
AutoEnroll: false
EnrollmentTokenFile: /srv/sftd/token
LogLevel: WARN
SSHDConfigFile: /srv/ssh/sshd_config
TrustedUserCAKeysFile: /srv/ssh/ca.pub
SSHDPort: 2222
StateDir: /srv/sftd/state
LogDir: /srv/sftd/log
ManageSSHD: false
ManageAccounts: true
Broker: true
BrokerPort: 14421
BrokerListenAddress: '::'
BrokerUser: rdp-broker
RDPTarget: 10.0.0.5:3390
SessionGracePeriod: 300
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sftd.yaml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, text))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_every_key_is_read(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, EVERY_KEY))
    assert config.initial_url == "https://sft.example.com:8443"
    assert config.platform_url is not None and config.platform_url.port == 8443
    assert config.canonical_name == "web-1.prod"
    assert config.alt_names == ("web-1", "web-1.example.com")
    assert config.labels == {"env": "prod", "role": "web"}
    assert config.access_address == "203.0.113.7"
    assert config.access_interface is None
    assert config.bastion == "bastion-1"
    assert config.auto_enroll is False
    assert config.enrollment_token_file == Path("/srv/sftd/token")
    assert config.log_level == "warning"
    assert config.sshd_config_file == Path("/srv/ssh/sshd_config")
    assert config.trusted_user_ca_keys_file == Path("/srv/ssh/ca.pub")
    assert config.sshd_port == 2222
    assert config.state_dir == Path("/srv/sftd/state")
    assert config.log_dir == Path("/srv/sftd/log")
    assert config.manage_sshd is False
    assert config.manage_accounts is True
    assert config.broker is True
    assert config.broker_port == 14421
    assert config.broker_listen_address == "::"
    assert config.broker_user == "rdp-broker"
    assert config.rdp_target == "10.0.0.5:3390"
    assert config.session_grace_period_seconds == 300
    assert len(config.key_names) == 23


def test_access_interface_is_read(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "AccessInterface: eth0\n")).access_interface == "eth0"


def test_linux_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "current_os", lambda: "linux")
    config = AgentConfig()
    assert config.initial_url is None
    assert config.state_dir == Path("/var/lib/sftd")
    assert config.log_dir == Path("/var/log/sftd")
    assert config.enrollment_token_file == Path("/var/lib/sftd/enrollment.token")
    assert config.sshd_config_file == Path("/etc/ssh/sshd_config")
    assert config.trusted_user_ca_keys_file == Path("/var/lib/sftd/ssh_ca.pub")
    assert config.sshd_port == 22
    assert config.auto_enroll is True
    assert config.log_level == "info"
    assert config.manage_sshd is True
    assert config.manage_accounts is True
    assert config.broker is False
    assert config.broker_port == 4421
    assert config.broker_listen_address == "0.0.0.0"
    assert config.broker_user == "sft-broker"
    assert config.rdp_target == "127.0.0.1:3389"
    assert config.session_grace_period_seconds == 60
    assert paths.default_paths().config_file == Path("/etc/sft/sftd.yaml")


def test_windows_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "current_os", lambda: "windows")
    home = r"C:\Windows\System32\config\systemprofile\AppData\Local\sft"
    config = AgentConfig()
    assert str(config.state_dir) == home + r"\state"
    assert str(config.log_dir) == home + r"\logs"
    assert str(config.enrollment_token_file) == home + r"\enrollment.token"
    assert str(config.sshd_config_file) == r"C:\ProgramData\ssh\sshd_config"
    assert config.broker is True
    assert config.manage_sshd is False
    assert str(paths.default_paths().config_file) == home + r"\sftd.yaml"
    assert [str(p) for p in paths.default_paths().host_key_files] == [
        rf"C:\ProgramData\ssh\ssh_host_{kind}_key" for kind in ("rsa", "ecdsa", "ed25519")
    ]


def test_a_missing_file_at_the_default_path_means_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    absent = paths.DefaultPaths(
        **{**paths.default_paths().__dict__, "config_file": tmp_path / "absent.yaml"}
    )
    monkeypatch.setattr(paths, "default_paths", lambda os_family=None: absent)
    assert load_config(None).sshd_port == 22


def test_an_explicit_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.yaml does not exist \(given with --conf\)"):
        load_config(tmp_path / "absent.yaml")


def test_an_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "# nothing set\n")).broker_port == 4421


def test_an_unknown_key_is_named_with_the_known_ones(tmp_path: Path) -> None:
    message = _error(tmp_path, "SSHDPort: 22\nSshdPort: 22\n")
    assert "unknown key 'SshdPort'" in message
    assert "SSHDPort" in message and "InitialURL" in message


def test_management_can_be_turned_off(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "ManageAccounts: false\nManageSSHD: false\n"))
    assert config.manage_accounts is False and config.manage_sshd is False


def test_a_broker_listen_address_is_normalised(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "BrokerListenAddress: '[::1]'\n"))
    assert config.broker_listen_address == "::1"


def test_snake_case_names_are_not_keys(tmp_path: Path) -> None:
    assert "unknown key 'sshd_port'" in _error(tmp_path, "sshd_port: 22\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SSHDPort: ssh\n", "SSHDPort: must be a whole number, not 'ssh'"),
        ("SSHDPort: 0\n", "SSHDPort: must be at least 1, not 0"),
        ("BrokerPort: 70000\n", "BrokerPort: must be at most 65535, not 70000"),
        ("Broker: 'yes'\n", "Broker: must be true or false, not 'yes'"),
        ("AutoEnroll: 1\n", "AutoEnroll: must be true or false, not 1"),
        ("LogLevel: LOUD\n", "LogLevel: must be DEBUG, INFO, WARN or ERROR, not 'LOUD'"),
        (
            "InitialURL: http://sft.example.com\n",
            "InitialURL: the platform URL 'http://sft.example.com' uses http://",
        ),
        ("InitialURL: https://sft.example.com/api\n", "must not have a path, query or fragment"),
        ("AccessAddress: 'no such host!'\n", "AccessAddress: must be an IP address or a DNS"),
        ("AccessInterface: 'eth0; rm'\n", "AccessInterface: must be a network interface name"),
        ("AltNames: web-1\n", "AltNames: must be a list"),
        ("Labels: {env: 1}\n", "Labels.env: must be text (quote it"),
        ("Labels: {'bad key': x}\n", "label key 'bad key' must be"),
        ("Labels: {env: 'a,b'}\n", "label env: value 'a,b' must be"),
        ("RDPTarget: localhost\n", "RDPTarget: must be HOST:PORT"),
        ("BrokerListenAddress: broker.example.com\n", "BrokerListenAddress: must be an IP"),
        ("BrokerListenAddress: 0.0.0.0:4421\n", "BrokerListenAddress: must be an IP"),
        ("BrokerListenAddress: 4421\n", "BrokerListenAddress: must be text"),
        ("BrokerUser: root\n", "BrokerUser: must not be 'root': the broker listens"),
        ("BrokerUser: 'Bad User'\n", "BrokerUser: must be a user name of 1 to 32"),
        ("BrokerUser: '-x'\n", "BrokerUser: must be a user name"),
        ("BrokerUser: " + "b" * 33 + "\n", "BrokerUser: must be a user name"),
        (
            "Broker: true\nManageAccounts: false\n",
            "Broker is true but ManageAccounts is false",
        ),
        ("SessionGracePeriod: -1\n", "SessionGracePeriod: must be at least 0"),
        ("StateDir: relative/dir\n", "StateDir: must be an absolute path"),
        ("CanonicalName: ''\n", "CanonicalName: must be 1 to 253 characters"),
        (
            "AccessAddress: 10.0.0.1\nAccessInterface: eth0\n",
            "AccessAddress and AccessInterface are both set",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(tmp_path: Path, text: str, expected: str) -> None:
    message = _error(tmp_path, text)
    assert message.startswith(str(tmp_path / "sftd.yaml"))
    assert expected in message


def test_every_mistake_is_reported_at_once(tmp_path: Path) -> None:
    message = _error(tmp_path, "SSHDPort: x\nBroker: maybe\nNope: 1\n")
    assert "SSHDPort" in message and "Broker" in message and "'Nope'" in message


def test_not_yaml_or_not_a_mapping_is_refused(tmp_path: Path) -> None:
    assert "not valid YAML at line 2" in _error(tmp_path, "SSHDPort: [22\n")
    assert "must be a mapping" in _error(tmp_path, "- SSHDPort\n")
