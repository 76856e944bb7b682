"""`sftd service install|uninstall` run as the real program, as root and not.

systemd does not run on the test machines: these check the unit file (accepted by the
real `systemd-analyze verify`, its program the very sftd that wrote it), the
"not running" message, idempotence, and the refusals that need a real process: not
root (setpriv to nobody) and a unit dir on a read-only mount (a private mount
namespace, so the machine is unchanged). The systemctl calls are covered by argv in
agent/tests/test_service.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.service_systemd import MARKER, SYSTEMD_RUNNING
from tests.support.namespace import require_root
from tests.support.real_software import require, require_program

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        SYSTEMD_RUNNING.is_dir(), reason="systemd runs here: install would start a real service"
    ),
]

SFTD = str(Path(sys.executable).parent / "sftd")
TIMEOUT_SECONDS = 60


def _sftd(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, SFTD, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )


def _one_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sftd: error: "), lines
    return lines[0]


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "sftd.yaml"
    path.parent.mkdir()
    path.write_text("InitialURL: https://127.0.0.1:8443\nLogLevel: INFO\n")
    return path


def test_install_writes_a_unit_systemd_accepts_and_uninstall_removes_it(
    tmp_path: Path, conf: Path
) -> None:
    require_root("sftd service install")
    analyze = require_program("systemd-analyze", "systemd")
    units = tmp_path / "units"
    units.mkdir()
    installed = _sftd("--conf", str(conf), "service", "install", "--unit-dir", str(units))
    assert installed.returncode == 0, installed.stderr
    unit = units / "sftd.service"
    assert installed.stdout.splitlines() == [
        f"wrote {unit}; systemd is not running here, so nothing was started (start it with "
        "`systemctl daemon-reload && systemctl enable --now sftd.service` where systemd runs, "
        f"or run `{SFTD} --conf {conf}`)"
    ]
    text = unit.read_text()
    assert text.startswith(MARKER)
    assert f"\nExecStart={SFTD} --conf {conf}\n" in text
    assert unit.stat().st_mode & 0o777 == 0o644
    verified = subprocess.run(
        [analyze, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    assert str(unit) not in verified.stderr, verified.stderr

    before = unit.stat()
    again = _sftd("--conf", str(conf), "service", "install", "--unit-dir", str(units))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"{unit} is up to date;")
    assert (unit.stat().st_ino, unit.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    removed = _sftd("service", "uninstall", "--unit-dir", str(units))
    assert removed.returncode == 0, removed.stderr
    assert list(units.iterdir()) == []
    twice = _sftd("service", "uninstall", "--unit-dir", str(units))
    assert twice.returncode == 0, twice.stderr
    assert "nothing to uninstall" in twice.stdout


@pytest.mark.parametrize("verb", ["install", "uninstall"])
def test_not_root_is_one_line_and_exit_1(tmp_path: Path, conf: Path, verb: str) -> None:
    require_root("switching to another user")
    setpriv = require_program("setpriv", "util-linux")
    units = tmp_path / "units"
    units.mkdir(mode=0o777)
    units.chmod(0o777)  # writable by anyone: only the root check can stop it
    conf.parent.chmod(0o755)
    nobody = (setpriv, "--reuid=65534", "--regid=65534", "--clear-groups")
    result = _sftd("--conf", str(conf), "service", verb, "--unit-dir", str(units), prefix=nobody)
    line = _one_error(result, 1)
    assert (
        line
        == f"sftd: error: sftd service {verb} must run as root (it changes the system's services)"
    )
    assert list(units.iterdir()) == []


def test_a_read_only_unit_dir_is_one_line_and_changes_nothing(tmp_path: Path, conf: Path) -> None:
    require_root("a read-only mount")
    unshare = require("unshare", shutil.which("unshare"), "run `make deps` (apt util-linux)")
    units = tmp_path / "units"
    units.mkdir()
    # A private mount namespace: the read-only bind mount vanishes with the command.
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'
    prefix = (unshare, "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(units))
    result = _sftd(
        "--conf", str(conf), "service", "install", "--unit-dir", str(units), prefix=prefix
    )
    line = _one_error(result, 1)
    assert line == f"sftd: error: cannot write {units / 'sftd.service'}: Read-only file system"
    assert list(units.iterdir()) == []
    assert os.access(units, os.W_OK)  # the machine's view of it is unchanged
