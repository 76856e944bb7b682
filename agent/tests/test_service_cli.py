"""`sftd service install|uninstall` as the operator meets them: one line, exit 0/1/2.

Only where systemd is not running (so no test can start or stop a real service).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from agent.cli import main
from agent.service_systemd import MARKER, SYSTEMD_RUNNING

pytestmark = pytest.mark.skipif(
    SYSTEMD_RUNNING.is_dir(), reason="systemd runs here: these tests would change its services"
)

SFTD = Path(sys.executable).parent / "sftd"


@pytest.fixture(autouse=True)
def _this_sftd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as the venv's sftd would: sys.argv[0] names it."""
    monkeypatch.setattr(sys, "argv", [str(SFTD)])


def sftd(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _one_error(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sftd: error: "), lines
    assert result.stdout == ""
    return lines[0]


def _conf(tmp_path: Path, text: str = "LogLevel: INFO\n") -> Path:
    path = tmp_path / "sftd.yaml"
    path.write_text(text)
    return path


def test_install_then_uninstall(tmp_path: Path) -> None:
    conf = _conf(tmp_path)
    result = sftd("--conf", str(conf), "service", "install", "--unit-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    unit = tmp_path / "sftd.service"
    assert result.stdout.startswith(f"wrote {unit}; systemd is not running here")
    text = unit.read_text()
    assert text.startswith(MARKER + "\n")
    assert f"ExecStart={SFTD} --conf {conf}\n" in text
    result = sftd("service", "uninstall", "--unit-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"removed {unit} (systemd is not running here: nothing to stop)\n"
    assert not unit.exists()


@pytest.mark.parametrize("verb", ["install", "uninstall"])
def test_not_root_is_refused_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verb: str
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    conf = _conf(tmp_path)
    line = _one_error(sftd("--conf", str(conf), "service", verb, "--unit-dir", str(tmp_path)), 1)
    assert (
        line
        == f"sftd: error: sftd service {verb} must run as root (it changes the system's services)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sftd.yaml"]


def test_a_missing_config_is_refused_with_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    line = _one_error(
        sftd("--conf", str(missing), "service", "install", "--unit-dir", str(tmp_path)), 2
    )
    assert f"config file {missing} does not exist" in line
    assert list(tmp_path.iterdir()) == []


def test_a_bad_config_is_refused_with_exit_2(tmp_path: Path) -> None:
    conf = _conf(tmp_path, "SSHDPort: many\n")
    line = _one_error(
        sftd("--conf", str(conf), "service", "install", "--unit-dir", str(tmp_path)), 2
    )
    assert "SSHDPort: must be a whole number" in line
    assert not (tmp_path / "sftd.service").exists()


@pytest.mark.parametrize("verb", ["install", "uninstall"])
def test_a_foreign_unit_is_refused_with_exit_1(tmp_path: Path, verb: str) -> None:
    conf = _conf(tmp_path)
    unit = tmp_path / "sftd.service"
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    line = _one_error(sftd("--conf", str(conf), "service", verb, "--unit-dir", str(tmp_path)), 1)
    assert line == (
        f"sftd: error: {unit} was not written by sftd; leaving it alone (move it aside to let "
        "`sftd service` manage the unit)"
    )
    assert unit.read_text() == "[Service]\nExecStart=/bin/true\n"
