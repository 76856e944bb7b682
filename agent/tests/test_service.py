"""`sftd service`: the systemd unit it writes, and every systemctl / sc.exe call, by argv.

systemd cannot run here: the systemctl calls go to a recording runner, and "systemd
is running" is a directory the test makes. The unit text is checked by the real
`systemd-analyze verify` where it is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.service import CommandResult, ServiceError, ServiceSpec, sftd_executable
from agent.service_systemd import MARKER, UNIT_NAME, SystemdService, exec_argument, unit_text
from agent.service_windows import DESCRIPTION, WindowsService
from tests.support.real_software import require_program

SYSTEMCTL = "/usr/bin/systemctl"


class RecordingRunner:
    """Records each argv; answers from `answers` (by argv prefix), else exit 0."""

    def __init__(self, answers: dict[tuple[str, ...], CommandResult] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        self.calls.append(list(argv))
        for prefix, result in self.answers.items():
            if tuple(argv[: len(prefix)]) == prefix:
                return result
        return CommandResult(0, "")


@pytest.fixture
def spec(tmp_path: Path) -> ServiceSpec:
    executable = tmp_path / "bin" / "sftd"
    executable.parent.mkdir()
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    config = tmp_path / "sftd.yaml"
    config.write_text("LogLevel: INFO\n")
    return ServiceSpec(executable, config)


def _systemd(tmp_path: Path, runner: RecordingRunner, *, running: bool = True) -> SystemdService:
    unit_dir = tmp_path / "units"
    unit_dir.mkdir(exist_ok=True)
    marker = tmp_path / "run-systemd-system"
    if running:
        marker.mkdir(exist_ok=True)
    return SystemdService(unit_dir, runner=runner, systemd_running=marker, systemctl=SYSTEMCTL)


def _installed(spec: ServiceSpec, tmp_path: Path, runner: RecordingRunner) -> SystemdService:
    """Return a service whose unit `spec` installed, with the runner's record emptied."""
    service = _systemd(tmp_path, runner)
    service.install(spec)
    runner.calls.clear()
    return service


def test_the_unit_runs_this_sftd_with_its_config_and_restarts_on_failure(
    spec: ServiceSpec,
) -> None:
    text = unit_text(spec)
    lines = text.splitlines()
    assert lines[0] == MARKER
    assert f"ExecStart={spec.executable} --conf {spec.config_file}" in lines
    assert "Restart=on-failure" in lines
    assert "RestartPreventExitStatus=2" in lines
    assert "WantedBy=multi-user.target" in lines
    # Options that would stop sftd managing accounts, sudoers, sshd or the broker.
    for forbidden in ("ProtectSystem", "ProtectHome", "NoNewPrivileges", "SystemCallFilter"):
        assert not any(line.startswith(f"{forbidden}=") for line in lines), forbidden
    bounding = next(line for line in lines if line.startswith("CapabilityBoundingSet=~"))
    for needed in ("CAP_CHOWN", "CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_DAC_OVERRIDE"):
        assert needed not in bounding


def test_systemd_accepts_the_unit(spec: ServiceSpec, tmp_path: Path) -> None:
    analyze = require_program("systemd-analyze", "systemd")
    # systemd-analyze checks that ExecStart's program exists: a path to quote, for real.
    odd = tmp_path / "opt dir %i" / "sftd"
    odd.parent.mkdir()
    shutil.copy(spec.executable, odd)
    unit = tmp_path / UNIT_NAME
    unit.write_text(unit_text(ServiceSpec(odd, spec.config_file)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert str(unit) not in result.stderr, result.stderr  # no warning about our file
    dump = unit.read_text()
    assert 'ExecStart="' in dump and "%%i/sftd" in dump


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/usr/bin/sftd", "/usr/bin/sftd"),
        ("/opt/my sft/sftd", '"/opt/my sft/sftd"'),
        ("/opt/100%/sftd", "/opt/100%%/sftd"),
        ("/opt/100% sure/sftd", '"/opt/100%% sure/sftd"'),
    ],
)
def test_exec_arguments_are_quoted_for_systemd(value: str, expected: str) -> None:
    assert exec_argument(value) == expected


@pytest.mark.parametrize(
    "value", ["/opt/a\nExecStartPre=/x", "/opt/$HOME", "/opt/it's", '/a"b', "/a\\b"]
)
def test_a_path_systemd_would_refuse_or_expand_is_refused(value: str) -> None:
    with pytest.raises(ServiceError, match=r"cannot put .* in a systemd unit: it holds"):
        exec_argument(value)


def test_install_writes_the_unit_then_reloads_enables_and_starts(
    spec: ServiceSpec, tmp_path: Path
) -> None:
    runner = RecordingRunner()
    service = _systemd(tmp_path, runner)
    line = service.install(spec)
    assert line == f"wrote {service.unit_file}; sftd.service is enabled and started"
    assert service.unit_file.read_text() == unit_text(spec)
    assert service.unit_file.stat().st_mode & 0o777 == 0o644
    assert runner.calls == [
        [SYSTEMCTL, "daemon-reload"],
        [SYSTEMCTL, "enable", "--now", "sftd.service"],
    ]
    assert sorted(p.name for p in service.unit_dir.iterdir()) == ["sftd.service"]


def test_install_again_with_the_same_content_changes_nothing(
    spec: ServiceSpec, tmp_path: Path
) -> None:
    runner = RecordingRunner()
    service = _installed(spec, tmp_path, runner)
    before = service.unit_file.stat()
    line = service.install(spec)
    after = service.unit_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert line.startswith(f"{service.unit_file} is up to date")
    # No daemon-reload, no restart: only making sure it is enabled and running.
    assert runner.calls == [[SYSTEMCTL, "enable", "--now", "sftd.service"]]


def test_install_with_another_config_replaces_the_unit_and_restarts_sftd(
    spec: ServiceSpec, tmp_path: Path
) -> None:
    runner = RecordingRunner()
    service = _installed(spec, tmp_path, runner)
    before = service.unit_file.stat()
    other = ServiceSpec(spec.executable, tmp_path / "other.yaml")
    service.install(other)
    assert service.unit_file.read_text() == unit_text(other)
    assert service.unit_file.stat().st_ino != before.st_ino  # replaced by rename
    assert runner.calls == [
        [SYSTEMCTL, "daemon-reload"],
        [SYSTEMCTL, "enable", "--now", "sftd.service"],
        [SYSTEMCTL, "try-restart", "sftd.service"],
    ]


def test_without_systemd_install_writes_the_unit_and_says_how_to_start_it(
    spec: ServiceSpec, tmp_path: Path
) -> None:
    runner = RecordingRunner()
    service = _systemd(tmp_path, runner, running=False)
    line = service.install(spec)
    assert service.unit_file.read_text() == unit_text(spec)
    assert runner.calls == []
    assert "\n" not in line
    assert f"wrote {service.unit_file}; systemd is not running here" in line
    assert "systemctl daemon-reload && systemctl enable --now sftd.service" in line


def test_a_failing_systemctl_is_one_line_naming_the_call(spec: ServiceSpec, tmp_path: Path) -> None:
    failing = CommandResult(1, "\nFailed to enable unit: Access denied\nmore\n")
    runner = RecordingRunner({(SYSTEMCTL, "enable"): failing})
    service = _systemd(tmp_path, runner)
    with pytest.raises(ServiceError) as raised:
        service.install(spec)
    assert str(raised.value) == (
        "`systemctl enable --now sftd.service` failed: Failed to enable unit: Access denied"
    )


@pytest.mark.parametrize("verb", ["install", "uninstall"])
def test_a_unit_file_sftd_did_not_write_is_left_alone(
    spec: ServiceSpec, tmp_path: Path, verb: str
) -> None:
    runner = RecordingRunner()
    service = _systemd(tmp_path, runner)
    foreign = "[Service]\nExecStart=/usr/local/bin/other-sftd\n"
    service.unit_file.write_text(foreign)
    with pytest.raises(ServiceError, match="was not written by sftd; leaving it alone"):
        service.install(spec) if verb == "install" else service.uninstall()
    assert service.unit_file.read_text() == foreign
    assert runner.calls == []


def test_a_masked_unit_is_refused_with_the_way_out(spec: ServiceSpec, tmp_path: Path) -> None:
    runner = RecordingRunner()
    service = _systemd(tmp_path, runner)
    service.unit_file.symlink_to(os.devnull)
    with pytest.raises(ServiceError, match=r"`systemctl unmask sftd\.service` first"):
        service.install(spec)
    with pytest.raises(ServiceError, match="is a link to /dev/null"):
        service.uninstall()
    assert os.readlink(service.unit_file) == os.devnull
    assert runner.calls == []


def test_a_missing_unit_dir_is_refused(spec: ServiceSpec, tmp_path: Path) -> None:
    runner = RecordingRunner()
    service = SystemdService(
        tmp_path / "no" / "units", runner=runner, systemd_running=tmp_path, systemctl=SYSTEMCTL
    )
    with pytest.raises(ServiceError, match="is not a directory; is systemd installed here"):
        service.install(spec)
    assert not (tmp_path / "no").exists()
    assert runner.calls == []


def test_uninstall_stops_disables_and_removes_and_is_idempotent(
    spec: ServiceSpec, tmp_path: Path
) -> None:
    runner = RecordingRunner()
    service = _installed(spec, tmp_path, runner)
    line = service.uninstall()
    assert line == f"stopped and disabled sftd.service; removed {service.unit_file}"
    assert not service.unit_file.exists()
    assert runner.calls == [
        [SYSTEMCTL, "disable", "--now", "sftd.service"],
        [SYSTEMCTL, "daemon-reload"],
    ]
    runner.calls.clear()
    assert service.uninstall() == f"{service.unit_file} does not exist; nothing to uninstall"
    assert runner.calls == []


def test_uninstall_keeps_the_unit_when_systemctl_cannot_disable_it(
    spec: ServiceSpec, tmp_path: Path
) -> None:
    runner = RecordingRunner({(SYSTEMCTL, "disable"): CommandResult(1, "Access denied")})
    service = _systemd(tmp_path, runner)
    service.install(spec)
    with pytest.raises(ServiceError, match=r"`systemctl disable --now sftd\.service` failed"):
        service.uninstall()
    assert service.unit_file.read_text() == unit_text(spec)


def test_uninstall_without_systemd_removes_the_unit_only(spec: ServiceSpec, tmp_path: Path) -> None:
    runner = RecordingRunner()
    service = _systemd(tmp_path, runner, running=False)
    service.install(spec)
    assert "nothing to stop" in service.uninstall()
    assert not service.unit_file.exists()
    assert runner.calls == []


# --- Windows (sc.exe argv only: untested on Windows itself) ---------------------------

NOT_REGISTERED = CommandResult(1060, "[SC] OpenService FAILED 1060:\n\nThe service does not exist")
OURS = CommandResult(0, f"[SC] QueryServiceConfig2 SUCCESS\n\nDESCRIPTION:  {DESCRIPTION}\n")


def test_windows_install_creates_the_service_with_restart_actions(spec: ServiceSpec) -> None:
    runner = RecordingRunner({("sc.exe", "qdescription"): NOT_REGISTERED})
    assert "registered" in WindowsService(runner=runner).install(spec)
    bin_path = f"{spec.executable} --conf {spec.config_file}"
    assert runner.calls == [
        ["sc.exe", "qdescription", "sftd"],
        [
            "sc.exe",
            "create",
            "sftd",
            "binPath=",
            bin_path,
            "start=",
            "auto",
            "DisplayName=",
            "sft server agent (sftd)",
        ],
        ["sc.exe", "description", "sftd", DESCRIPTION],
        [
            "sc.exe",
            "failure",
            "sftd",
            "reset=",
            "86400",
            "actions=",
            "restart/5000/restart/5000/restart/60000",
        ],
        ["sc.exe", "start", "sftd"],
    ]


def test_windows_install_again_reconfigures_and_tolerates_a_running_service(
    spec: ServiceSpec,
) -> None:
    runner = RecordingRunner(
        {
            ("sc.exe", "qdescription"): OURS,
            ("sc.exe", "start"): CommandResult(1056, "An instance of the service is running"),
        }
    )
    assert "updated" in WindowsService(runner=runner).install(spec)
    assert runner.calls[1][:3] == ["sc.exe", "config", "sftd"]


def test_windows_uninstall_stops_and_deletes_and_is_idempotent() -> None:
    runner = RecordingRunner(
        {("sc.exe", "qdescription"): OURS, ("sc.exe", "stop"): CommandResult(1062, "not started")}
    )
    WindowsService(runner=runner).uninstall()
    assert runner.calls == [
        ["sc.exe", "qdescription", "sftd"],
        ["sc.exe", "stop", "sftd"],
        ["sc.exe", "delete", "sftd"],
    ]
    absent = RecordingRunner({("sc.exe", "qdescription"): NOT_REGISTERED})
    assert "not registered" in WindowsService(runner=absent).uninstall()
    assert absent.calls == [["sc.exe", "qdescription", "sftd"]]


def test_windows_refuses_a_service_named_sftd_it_did_not_register(spec: ServiceSpec) -> None:
    other = CommandResult(0, "DESCRIPTION:  Some other agent\n")
    runner = RecordingRunner({("sc.exe", "qdescription"): other})
    with pytest.raises(ServiceError, match="sftd did not register; leaving it alone"):
        WindowsService(runner=runner).uninstall()
    with pytest.raises(ServiceError, match="sftd did not register"):
        WindowsService(runner=runner).install(spec)
    assert [call[1] for call in runner.calls] == ["qdescription", "qdescription"]


# --- which sftd ------------------------------------------------------------------------


def test_the_executable_is_the_sftd_being_run(
    spec: ServiceSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sftd_executable(str(spec.executable)) == spec.executable
    link = tmp_path / "sftd"
    link.symlink_to(spec.executable)
    assert sftd_executable(str(link)) == link  # the link kept: upgrades move its target
    monkeypatch.setenv("PATH", str(spec.executable.parent))
    assert sftd_executable("/usr/bin/python3") == spec.executable
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ServiceError, match="cannot tell where the sftd executable is"):
        sftd_executable("/usr/bin/python3")
