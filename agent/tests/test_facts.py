"""What sftd reports about its server: facts from the OS and sftd.yaml, and sshd's host keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent import paths
from agent.config import AgentConfig
from agent.facts import facts_message, gather_facts, local_addresses
from agent.host_keys import host_key_paths, read_host_keys
from sft.inventory.v1 import server_pb2


def _config(**values: object) -> AgentConfig:
    return AgentConfig.model_validate(values)


def _facts(config: AgentConfig, interface: str | None = None) -> object:
    return gather_facts(
        config,
        hostname=lambda: "web-1.internal",
        addresses=lambda: ("10.0.0.7", "2001:db8::7"),
        interface=lambda name: interface,
        os_family=lambda: "linux",
    )


def test_facts_come_from_the_os_and_the_config() -> None:
    config = _config(
        CanonicalName="web-1",
        AltNames=["www"],
        Labels={"env": "prod"},
        AccessAddress="203.0.113.7",
        Bastion="bastion-1",
        SSHDPort=2222,
        Broker=False,
    )
    facts = gather_facts(
        config,
        hostname=lambda: "web-1.internal",
        addresses=lambda: ("10.0.0.7",),
        os_family=lambda: "linux",
    )
    message = facts_message(facts)
    assert message.hostname == "web-1.internal"
    assert message.canonical_name == "web-1"
    assert list(message.alt_names) == ["www"]
    assert dict(message.labels) == {"env": "prod"}
    assert message.os == server_pb2.OPERATING_SYSTEM_LINUX
    assert list(message.addresses) == ["10.0.0.7"]
    assert message.access_address == "203.0.113.7"
    assert message.bastion == "bastion-1"
    assert message.ssh_port == 2222
    assert message.broker_port == 0, "no broker, no broker port"
    assert message.agent_version


def test_the_broker_port_is_reported_when_the_broker_runs() -> None:
    facts = gather_facts(
        _config(Broker=True, BrokerPort=14421),
        hostname=lambda: "win-1",
        addresses=lambda: (),
        os_family=lambda: "windows",
    )
    message = facts_message(facts)
    assert message.broker_port == 14421
    assert message.os == server_pb2.OPERATING_SYSTEM_WINDOWS


def test_access_interface_gives_its_address_or_none() -> None:
    config = _config(AccessInterface="eth1")
    found = gather_facts(
        config, hostname=lambda: "h", addresses=lambda: (), interface=lambda name: "10.1.2.3"
    )
    assert found.access_address == "10.1.2.3"
    missing = gather_facts(
        config, hostname=lambda: "h", addresses=lambda: (), interface=lambda name: None
    )
    assert missing.access_address == ""


def test_local_addresses_leave_out_loopback_and_link_local() -> None:
    for address in local_addresses():
        assert not address.startswith(("127.", "::1", "fe80:", "169.254."))
        assert "%" not in address


def _write_key(path: Path, kind: str = "ed25519") -> str:
    key = (
        ed25519.Ed25519PrivateKey.generate()
        if kind == "ed25519"
        else ec.generate_private_key(ec.SECP256R1())
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    path.write_bytes(b"private")
    path.with_name(path.name + ".pub").write_bytes(public + b" root@host\n")
    return public.decode()


def test_host_key_lines_of_sshd_config_are_followed(tmp_path: Path) -> None:
    config = tmp_path / "sshd_config"
    config.write_text(
        "# HostKey /commented/out\n"
        "Port 22\n"
        "HostKey /etc/ssh/a_key\n"
        "hostkey=/etc/ssh/b_key\n"
        'HostKey "/etc/ssh/c key"\n'
        "Match User backup\n"
        "    HostKey /not/allowed/here\n"
    )
    assert host_key_paths(config, ()) == (
        Path("/etc/ssh/a_key"),
        Path("/etc/ssh/b_key"),
        Path("/etc/ssh/c key"),
    )


def test_without_host_key_lines_sshds_defaults_are_used(tmp_path: Path) -> None:
    defaults = (Path("/etc/ssh/ssh_host_ed25519_key"),)
    (tmp_path / "sshd_config").write_text("Port 22\n")
    assert host_key_paths(tmp_path / "sshd_config", defaults) == defaults
    assert host_key_paths(tmp_path / "absent", defaults) == defaults


def test_linux_defaults_are_sshds_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "current_os", lambda: "linux")
    assert [str(p) for p in paths.default_paths().host_key_files] == [
        "/etc/ssh/ssh_host_rsa_key",
        "/etc/ssh/ssh_host_ecdsa_key",
        "/etc/ssh/ssh_host_ed25519_key",
    ]


def test_host_keys_are_read_from_existing_pub_files_only(tmp_path: Path) -> None:
    ed = tmp_path / "ssh_host_ed25519_key"
    ecdsa = tmp_path / "ssh_host_ecdsa_key"
    damaged = tmp_path / "ssh_host_damaged_key"
    ed_line, ecdsa_line = _write_key(ed), _write_key(ecdsa, "ecdsa")
    damaged.with_name(damaged.name + ".pub").write_text("ssh-ed25519 !!!notbase64\n")
    sshd_config = tmp_path / "sshd_config"
    sshd_config.write_text(
        f"HostKey {ed}\nHostKey {ecdsa}\nHostKey {tmp_path / 'absent_key'}\n"
        f"HostKey {damaged}\nHostKey {ed}\n"
    )
    keys = read_host_keys(_config(SSHDConfigFile=str(sshd_config)))
    assert [key.public_line for key in keys] == [ed_line, ecdsa_line]
    assert [key.path for key in keys] == [ed, ecdsa]
    assert all(key.fingerprint.startswith("SHA256:") for key in keys)
