"""sftd's sshd wiring against the real `sshd -t` and `sshd -T`, in a temporary directory.

The sshd_config under test is Debian-shaped (it Includes `sshd_config.d/*.conf` first);
host keys and certificates are made by the real ssh-keygen. No sshd is started here
(tests/e2e/test_agent_sshd.py runs one); the reload is seen by a process named sshd.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agent.config import AgentConfig
from agent.sshd import SSHDTrust, SSHDTrustError
from agent.sshd_config import (
    MARKER,
    SSHDConfigError,
    certificate_line,
    config_argument,
    drop_in_path,
    with_include,
)
from agent.sshd_process import SSHD
from agent.state import HostCertificate, TrustAnchors
from tests.support.real_software import require, require_program

NOW = dt.datetime.now(dt.UTC)
# sshd -t as root insists on its privilege separation directory, /run/sshd, which exists
# only while the machine's own sshd runs. Rather than create it on the machine, the
# real sshd runs in a private mount namespace whose /run holds one.
_PRIVATE_RUN = """#!/bin/sh
exec unshare --mount --propagation private -- /bin/sh -c \
  'mount -t tmpfs -o mode=0755 sft-test-run /run && mkdir -m 0755 /run/sshd && exec "$0" "$@"' \
  {sshd} "$@"
"""


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real sshd, by a path sftd can run `sshd -t` and `sshd -T` with on this machine."""
    require("OpenSSH server (sshd)", str(SSHD) if SSHD.is_file() else None, "run `make deps`")
    require_program("ssh-keygen", "openssh-client")
    if os.geteuid() != 0 or Path("/run/sshd").is_dir():
        return SSHD
    require_program("unshare", "util-linux")
    wrapper = tmp_path_factory.mktemp("bin") / "sshd"
    wrapper.write_text(_PRIVATE_RUN.format(sshd=SSHD))
    wrapper.chmod(0o755)
    return wrapper


@dataclass
class Machine:
    """A fake /etc/ssh and state dir under tmp_path, and the sink wired to them."""

    root: Path
    config: AgentConfig
    sshd_config: Path
    host_keys: list[Path]
    pid_file: Path
    ca: Path

    @property
    def ca_keys_file(self) -> Path:
        """Return TrustedUserCAKeysFile."""
        return self.config.trusted_user_ca_keys_file

    @property
    def drop_in(self) -> Path:
        """Return the drop-in sftd writes."""
        return drop_in_path(self.sshd_config)

    def certificate(self, host_key: Path, principal: str = "web-1") -> HostCertificate:
        """Return a real host certificate for `host_key`, signed by a test host CA."""
        work = self.root / "signing"
        work.mkdir(exist_ok=True)
        public = work / f"{host_key.name}.pub"
        shutil.copy(host_key.with_name(host_key.name + ".pub"), public)
        _keygen("-s", str(self.ca), "-I", "test", "-h", "-n", principal, str(public))
        line = public.with_name(f"{host_key.name}-cert.pub").read_text().strip()
        return HostCertificate(
            host_key_file=str(host_key),
            host_key_fingerprint=_fingerprint(host_key),
            certificate=line,
            principals=(principal,),
            valid_after=NOW,
            valid_before=NOW + dt.timedelta(days=30),
        )


def _keygen(*args: str) -> None:
    subprocess.run(["ssh-keygen", "-q", *args], check=True, capture_output=True, timeout=30)


def _fingerprint(key: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(key)], check=True, capture_output=True, text=True
    ).stdout
    return out.split()[1]


def _user_ca(root: Path, name: str) -> str:
    """Return the public line of a fresh user CA key (made under `root`/signing)."""
    work = root / "signing"
    work.mkdir(exist_ok=True)
    _keygen("-t", "ed25519", "-N", "", "-C", name, "-f", str(work / name))
    return (work / f"{name}.pub").read_text().strip()


@pytest.fixture
def machine(tmp_path: Path, sshd: Path) -> Machine:
    """A Debian-shaped sshd_config (0600) with two host keys and a drop-in of its own."""
    etc = tmp_path / "etc" / "ssh"
    (etc / "sshd_config.d").mkdir(parents=True)
    keys = []
    for kind in ("ed25519", "ecdsa"):
        key = etc / f"ssh_host_{kind}_key"
        _keygen("-t", kind, "-N", "", "-f", str(key))
        keys.append(key)
    # A local drop-in that sorts before sftd's and names another CA file: sftd's must win.
    (etc / "sshd_config.d" / "10-local.conf").write_text(f"TrustedUserCAKeys {etc}/local_ca\n")
    pid_file = tmp_path / "sshd.pid"
    sshd_config = etc / "sshd_config"
    sshd_config.write_text(
        "# Debian's sshd_config, shortened\n"
        f"Include {etc}/sshd_config.d/*.conf\n"
        "Port 2222\n"
        "ListenAddress 127.0.0.1\n"
        + "".join(f"HostKey {key}\n" for key in keys)
        + f"PidFile {pid_file}\n"
        "UsePAM no\n"
        "PasswordAuthentication no\n"
    )
    sshd_config.chmod(0o600)
    ca = tmp_path / "signing" / "host_ca"
    ca.parent.mkdir()
    _keygen("-t", "ed25519", "-N", "", "-f", str(ca))
    config = AgentConfig.model_validate(
        {
            "StateDir": str(tmp_path / "var" / "lib" / "sftd" / "state"),
            "SSHDConfigFile": str(sshd_config),
            # A directory that does not exist yet: sftd makes it 0755.
            "TrustedUserCAKeysFile": str(tmp_path / "var" / "lib" / "sftd" / "ssh_ca.pub"),
        }
    )
    return Machine(tmp_path, config, sshd_config, keys, pid_file, ca)


def _sink(machine: Machine, sshd: Path) -> SSHDTrust:
    return SSHDTrust(machine.config, sshd=sshd)


def _anchors(*keys: str) -> TrustAnchors:
    return TrustAnchors("\n".join(keys) + "\n", "")


Snapshot = dict[str, tuple[bytes | None, int, int, int]]


def _snapshot(root: Path) -> Snapshot:
    """Return every path under `root` with its bytes (None for a directory), mode and owner."""
    found: Snapshot = {}
    for path in sorted(root.rglob("*")):
        if "signing" in path.parts:
            continue
        info = path.lstat()
        data = path.read_bytes() if path.is_file() else None
        found[str(path.relative_to(root))] = (data, info.st_mode, info.st_uid, info.st_gid)
    return found


def _effective(sshd: Path, sshd_config: Path) -> dict[str, list[str]]:
    """Return `sshd -T`'s view of `sshd_config`: keyword → values."""
    out = subprocess.run(
        [str(sshd), "-T", "-f", str(sshd_config)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    values: dict[str, list[str]] = {}
    for line in out.splitlines():
        keyword, _, value = line.partition(" ")
        values.setdefault(keyword, []).append(value)
    return values


def _started(binary: Path) -> subprocess.Popen[bytes]:
    """Start `binary 60` (a copy of sleep): a process named after the copy."""
    return subprocess.Popen([str(binary), "60"], stdin=subprocess.DEVNULL)


@pytest.fixture
def named_sshd(tmp_path: Path) -> Iterator[tuple[Path, list[subprocess.Popen[bytes]]]]:
    """A copy of sleep named sshd, and the processes started from it (stopped afterwards)."""
    sleep = require_program("sleep", "coreutils")
    binary = tmp_path / "fake-bin" / "sshd"
    binary.parent.mkdir()
    shutil.copy(sleep, binary)
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield binary, started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait()


# --- installing ---------------------------------------------------------------------------


async def test_first_install_writes_every_file_and_includes_the_drop_in_once(
    machine: Machine, sshd: Path
) -> None:
    user_ca = _user_ca(machine.root, "user_ca")
    certificates = tuple(machine.certificate(key) for key in machine.host_keys)
    before = machine.sshd_config.read_text()

    installed = await _sink(machine, sshd).install(_anchors(user_ca), certificates)

    cert_files = [key.with_name(key.name + "-cert.pub") for key in machine.host_keys]
    assert installed.changed == (
        machine.ca_keys_file, *cert_files, machine.drop_in, machine.sshd_config
    )  # fmt: skip
    assert installed.reload == "sshd is not running"
    assert machine.ca_keys_file.read_text() == user_ca + "\n"
    for path, certificate in zip(cert_files, certificates, strict=True):
        assert path.read_text() == certificate.certificate + "\n"
    for path in (machine.ca_keys_file, *cert_files, machine.drop_in):
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o644, 0, 0)
    assert stat.S_IMODE(machine.ca_keys_file.parent.stat().st_mode) == 0o755
    # sshd_config: two lines on top, the rest as it was, its mode kept.
    text = machine.sshd_config.read_text()
    assert text == f"{MARKER}\nInclude {machine.drop_in}\n{before}"
    assert text.count("Include") == 2
    assert stat.S_IMODE(machine.sshd_config.stat().st_mode) == 0o600
    # What sshd makes of it: sftd's CA file wins over the local drop-in's; both certificates.
    effective = _effective(sshd, machine.sshd_config)
    assert effective["trustedusercakeys"] == [str(machine.ca_keys_file)]
    assert set(effective["hostcertificate"]) == {str(path) for path in cert_files}


async def test_a_second_identical_install_writes_nothing_and_reloads_nothing(
    machine: Machine, sshd: Path, named_sshd: tuple[Path, list[subprocess.Popen[bytes]]]
) -> None:
    anchors = _anchors(_user_ca(machine.root, "user_ca"))
    certificates = (machine.certificate(machine.host_keys[0]),)
    sink = _sink(machine, sshd)
    await sink.install(anchors, certificates)
    files = [machine.ca_keys_file, machine.drop_in, machine.sshd_config]
    stamps = {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in files}
    binary, started = named_sshd
    started.append(_started(binary))
    machine.pid_file.write_text(f"{started[0].pid}\n")

    again = await sink.install(anchors, certificates)
    restarted = await _sink(machine, sshd).install(anchors, certificates)  # as after a restart

    assert again.changed == () and again.reload == ""
    assert restarted.changed == () and restarted.reload == ""
    assert {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in files} == stamps
    assert started[0].poll() is None, "sshd was signalled though nothing changed"


async def test_a_new_certificate_and_a_new_ca_key_are_written_and_sshd_gets_a_sighup(
    machine: Machine, sshd: Path, named_sshd: tuple[Path, list[subprocess.Popen[bytes]]]
) -> None:
    old_ca = _user_ca(machine.root, "old_ca")
    sink = _sink(machine, sshd)
    await sink.install(_anchors(old_ca), (machine.certificate(machine.host_keys[0]),))
    binary, started = named_sshd
    started.append(_started(binary))
    machine.pid_file.write_text(f"{started[0].pid}\n")

    renewed = machine.certificate(machine.host_keys[0], principal="web-1.example.com")
    installed = await sink.install(_anchors(old_ca), (renewed,))

    cert_file = machine.host_keys[0].with_name(machine.host_keys[0].name + "-cert.pub")
    assert installed.changed == (cert_file,)
    assert cert_file.read_text() == renewed.certificate + "\n"
    assert installed.reload == f"SIGHUP to pid {started[0].pid}"
    assert started[0].wait(timeout=5) == -signal.SIGHUP

    started.append(_started(binary))
    machine.pid_file.write_text(f"{started[1].pid}\n")
    new_ca = _user_ca(machine.root, "new_ca")
    rotated = await sink.install(_anchors(old_ca, new_ca), (renewed,))

    assert rotated.changed == (machine.ca_keys_file,)
    assert machine.ca_keys_file.read_text() == f"{old_ca}\n{new_ca}\n"
    assert started[1].wait(timeout=5) == -signal.SIGHUP


async def test_a_pid_file_naming_another_process_gets_no_signal(
    machine: Machine, sshd: Path, named_sshd: tuple[Path, list[subprocess.Popen[bytes]]]
) -> None:
    sleep = Path(require_program("sleep", "coreutils"))
    _, started = named_sshd
    started.append(_started(sleep))  # a stale PidFile: that pid is now something else
    machine.pid_file.write_text(f"{started[0].pid}\n")

    with capture_logs() as logs:
        installed = await _sink(machine, sshd).install(_anchors(_user_ca(machine.root, "ca")), ())

    assert installed.reload == "sshd is not running"
    assert started[0].poll() is None
    assert any(
        entry["event"] == "sshd's PidFile names a process that is not sshd" for entry in logs
    )


# --- sshd -t refuses: everything is put back -----------------------------------------------


async def test_a_configuration_sshd_refuses_is_rolled_back_byte_for_byte(
    machine: Machine, sshd: Path
) -> None:
    # The glob Include sits in a Match block, so sshd reads sftd's drop-in there too, where
    # HostCertificate is not allowed: only sshd -t can tell. Earlier files are in place.
    etc = machine.sshd_config.parent
    machine.sshd_config.write_text(
        "".join(f"HostKey {key}\n" for key in machine.host_keys)
        + f"Match User nobody\n  Include {etc}/sshd_config.d/*.conf\n"
    )
    machine.ca_keys_file.parent.mkdir(parents=True)
    machine.ca_keys_file.write_text("ssh-ed25519 AAAA previous\n")
    machine.drop_in.write_text("# an older drop-in\n")
    cert_file = machine.host_keys[0].with_name(machine.host_keys[0].name + "-cert.pub")
    cert_file.write_text("previous certificate\n")
    cert_file.chmod(0o640)
    certificates = tuple(machine.certificate(key) for key in machine.host_keys)
    before = _snapshot(machine.root)

    with capture_logs() as logs, pytest.raises(SSHDTrustError) as refused:
        await _sink(machine, sshd).install(_anchors(_user_ca(machine.root, "ca")), certificates)

    assert _snapshot(machine.root) == before
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"sshd -t refused {machine.sshd_config} with sftd's changes (")
    assert "HostCertificate' is not allowed within a Match block" in message
    assert "restored 5 files, sshd not reloaded" in message
    assert "without them too" not in message
    assert [entry["log_level"] for entry in logs] == ["error"]


async def test_a_configuration_refused_already_is_said_to_be_refused_without_sftd_too(
    machine: Machine, sshd: Path
) -> None:
    with machine.sshd_config.open("a") as config:
        config.write("NoSuchKeyword yes\n")
    before = _snapshot(machine.root)

    with pytest.raises(SSHDTrustError) as refused:
        await _sink(machine, sshd).install(_anchors(_user_ca(machine.root, "ca")), ())

    assert _snapshot(machine.root) == before
    assert "Bad configuration option: NoSuchKeyword" in str(refused.value)
    assert "without them too" in str(refused.value)


# --- refusals before or while writing -------------------------------------------------------


async def test_no_user_ca_keys_are_refused_and_the_installed_ones_kept(
    machine: Machine, sshd: Path
) -> None:
    before = _snapshot(machine.root)
    with capture_logs() as logs, pytest.raises(SSHDTrustError) as refused:
        await _sink(machine, sshd).install(TrustAnchors(" \n", ""), ())
    assert "no user CA keys" in str(refused.value)
    assert _snapshot(machine.root) == before
    assert len(logs) == 1


async def test_a_missing_sshd_config_is_refused(machine: Machine, sshd: Path) -> None:
    machine.sshd_config.unlink()
    before = _snapshot(machine.root)
    with pytest.raises(SSHDTrustError) as refused:
        await _sink(machine, sshd).install(_anchors(_user_ca(machine.root, "ca")), ())
    assert f"SSHDConfigFile {machine.sshd_config} does not exist" in str(refused.value)
    assert _snapshot(machine.root) == before


async def test_a_damaged_certificate_is_refused_before_anything_is_written(
    machine: Machine, sshd: Path
) -> None:
    good = machine.certificate(machine.host_keys[0])
    damaged = dataclasses.replace(good, certificate="ssh-ed25519-cert-v01@openssh.com not-b64!")
    before = _snapshot(machine.root)
    with pytest.raises(SSHDTrustError) as refused:
        await _sink(machine, sshd).install(_anchors(_user_ca(machine.root, "ca")), (damaged,))
    assert str(refused.value) == "a host certificate is not valid base64; nothing was changed"
    assert _snapshot(machine.root) == before


async def test_a_certificate_whose_host_key_is_gone_is_left_out(
    machine: Machine, sshd: Path
) -> None:
    certificates = tuple(machine.certificate(key) for key in machine.host_keys)
    machine.host_keys[1].unlink()
    machine.sshd_config.write_text(f"HostKey {machine.host_keys[0]}\n")

    installed = await _sink(machine, sshd).install(
        _anchors(_user_ca(machine.root, "ca")), certificates
    )

    assert machine.host_keys[1].with_name(machine.host_keys[1].name + "-cert.pub") not in (
        installed.changed
    )
    assert f"{machine.host_keys[1].name}-cert.pub" not in machine.drop_in.read_text()


@pytest.fixture
def immutable_drop_in_directory(machine: Machine) -> Iterator[Path]:
    """The drop-in directory made immutable (chattr +i): not even root can write there."""
    chattr = require_program("chattr", "e2fsprogs")
    if os.geteuid() != 0:
        pytest.skip("chattr +i needs root")
    directory = machine.drop_in.parent
    if subprocess.run([chattr, "+i", str(directory)], capture_output=True).returncode != 0:
        pytest.skip(f"the file system of {directory} has no immutable flag")
    try:
        yield directory
    finally:
        subprocess.run([chattr, "-i", str(directory)], check=True)


async def test_an_unwritable_directory_is_refused_and_what_was_written_put_back(
    machine: Machine, sshd: Path, immutable_drop_in_directory: Path
) -> None:
    certificate = machine.certificate(machine.host_keys[0])
    anchors = _anchors(_user_ca(machine.root, "ca"))
    before = _snapshot(machine.root)

    with pytest.raises(SSHDTrustError) as refused:
        await _sink(machine, sshd).install(anchors, (certificate,))

    assert _snapshot(machine.root) == before
    message = str(refused.value)
    assert message.startswith(f"cannot write {machine.drop_in}: Operation not permitted; ")
    # The CA keys file and the certificate were written, then removed again.
    assert message.endswith("restored 2 files, sshd not reloaded")


async def test_a_ca_keys_path_under_a_file_is_refused(machine: Machine, sshd: Path) -> None:
    blocker = machine.root / "not-a-directory"
    blocker.write_text("")
    config = machine.config.model_copy(update={"trusted_user_ca_keys_file": blocker / "ssh_ca.pub"})
    with pytest.raises(SSHDTrustError) as refused:
        await SSHDTrust(config, sshd=sshd).install(_anchors(_user_ca(machine.root, "ca")), ())
    assert str(refused.value).startswith(f"cannot write {blocker}/ssh_ca.pub: Not a directory;")
    assert not machine.drop_in.exists()
    assert MARKER not in machine.sshd_config.read_text()


async def test_an_sshd_that_cannot_run_is_refused_and_everything_put_back(
    machine: Machine,
) -> None:
    before = _snapshot(machine.root)
    with pytest.raises(SSHDTrustError) as refused:
        await SSHDTrust(machine.config, sshd=machine.root / "no-sshd").install(
            _anchors(_user_ca(machine.root, "ca")), ()
        )
    assert _snapshot(machine.root) == before
    assert f"could not run {machine.root / 'no-sshd'}" in str(refused.value)


async def test_a_path_sshd_config_cannot_hold_is_refused(machine: Machine, sshd: Path) -> None:
    config = machine.config.model_copy(
        update={"trusted_user_ca_keys_file": machine.root / 'say "hi"' / "ssh_ca.pub"}
    )
    with pytest.raises(SSHDTrustError) as refused:
        await SSHDTrust(config, sshd=sshd).install(_anchors(_user_ca(machine.root, "ca")), ())
    assert "cannot hold; nothing was changed" in str(refused.value)
    assert not (machine.root / 'say "hi"').exists()


# --- the text ------------------------------------------------------------------------------


def test_the_include_is_added_once_on_top_and_moved_back_there() -> None:
    drop_in = Path("/etc/ssh/sshd_config.d/50-sft.conf")
    text = "# sshd_config\nInclude /etc/ssh/sshd_config.d/*.conf\nPort 22"
    wired = with_include(text, drop_in)
    assert wired == f"{MARKER}\nInclude {drop_in}\n{text}\n"
    assert with_include(wired, drop_in) == wired
    moved = "Port 22\n" + wired
    assert with_include(moved, drop_in) == f"{MARKER}\nInclude {drop_in}\nPort 22\n{text}\n"
    elsewhere = with_include(wired, Path("/srv/ssh/sshd_config.d/50-sft.conf"))
    assert elsewhere.count("Include") == 2 and str(drop_in) not in elsewhere


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_adding_the_include_twice_is_adding_it_once(text: str) -> None:
    drop_in = Path("/etc/ssh/sshd_config.d/50-sft.conf")
    once = with_include(text, drop_in)
    assert with_include(once, drop_in) == once
    assert once.startswith(f"{MARKER}\nInclude {drop_in}\n")


def test_paths_are_quoted_when_they_must_be_and_refused_when_they_cannot_be() -> None:
    assert config_argument(Path("/etc/ssh/ca.pub")) == "/etc/ssh/ca.pub"
    assert config_argument(Path("/srv/my keys/ca.pub")) == '"/srv/my keys/ca.pub"'
    assert config_argument(Path("/srv/#1/ca.pub")) == '"/srv/#1/ca.pub"'
    for bad in ('/srv/"x"/ca.pub', "/srv/a\\b", "/srv/a\nTrustedUserCAKeys /tmp/x"):
        with pytest.raises(SSHDConfigError):
            config_argument(Path(bad))
    with pytest.raises(SSHDConfigError, match="not an absolute path"):
        config_argument(Path("ssh/ca.pub"))


def test_certificate_lines_that_are_not_certificates_are_refused() -> None:
    for bad, why in (
        ("", "not one OpenSSH certificate line"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", "not an SSH certificate"),
        ("ssh-ed25519-cert-v01@openssh.com AAAA\nHostKey /x", "not one OpenSSH"),
        ("ssh-ed25519-cert-v01@openssh.com AAAAC3NzaC1lZDI1NTE5", "does not match its type"),
    ):
        with pytest.raises(SSHDConfigError, match=why):
            certificate_line(bad)
