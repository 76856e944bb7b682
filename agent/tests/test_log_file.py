"""LogDir: sftd's lines (its own, the broker's, third-party ones) also land in sftd.log as
JSON, rotated, 0640; a LogDir that cannot be used is one stderr line, never a stop."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner

from agent.broker_supervisor import relay_line
from agent.cli import main
from agent.config import AgentConfig
from agent.daemon import Daemon
from agent.log_file import LOG_FILE_NAME, log_to_file
from agent.tests.test_daemon import FAST, FlakySink
from runtime.logging import configure_logging

log = structlog.get_logger("sftd")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Put structlog and the root logger back, closing the file handlers a test added."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lines_go_to_stdout_and_as_json_to_the_log_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_dir = tmp_path / "var" / "log" / "sftd"
    configure_logging("info", fmt="console")  # stdout for people; the file stays JSON
    assert log_to_file(log_dir) is None
    log.info("account created", account="alice")
    log.debug("not at INFO")
    relay_line(json.dumps({"event": "tunnel opened", "level": "info", "grant": "g1"}))
    logging.getLogger("grpc.aio").warning("a library speaks")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("it failed")

    assert log_dir.stat().st_mode & 0o777 == 0o750
    path = log_dir / LOG_FILE_NAME
    assert path.stat().st_mode & 0o777 == 0o640
    assert path.stat().st_uid == os.geteuid()
    lines = _lines(path)
    assert [line["event"] for line in lines] == [
        "account created",
        "tunnel opened",
        "a library speaks",
        "it failed",
    ]
    assert lines[0]["account"] == "alice" and lines[0]["level"] == "info"
    assert "timestamp" in lines[0]
    assert lines[1]["source"] == "broker" and lines[1]["grant"] == "g1"
    assert lines[2]["level"] == "warning"
    assert "RuntimeError: boom" in str(lines[3]["exception"])
    stdout = capsys.readouterr().out
    assert "account created" in stdout and "tunnel opened" in stdout
    assert not stdout.lstrip().startswith("{")  # the console renderer, not JSON


def test_the_log_file_rotates_keeping_the_newest_files(tmp_path: Path) -> None:
    configure_logging("info", fmt="json")
    assert log_to_file(tmp_path, max_bytes=2_000, backup_count=3) is None
    for number in range(300):
        log.info("line", number=number)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        LOG_FILE_NAME,
        f"{LOG_FILE_NAME}.1",
        f"{LOG_FILE_NAME}.2",
        f"{LOG_FILE_NAME}.3",
    ]
    kept: list[int] = []
    for name in reversed(names[1:]):
        path = tmp_path / name
        assert path.stat().st_mode & 0o777 == 0o640
        assert path.stat().st_size <= 2_000
        kept += [int(str(line["number"])) for line in _lines(path)]
    kept += [int(str(line["number"])) for line in _lines(tmp_path / LOG_FILE_NAME)]
    assert kept == list(range(kept[0], 300))  # in order, nothing lost within what is kept
    assert kept[0] > 0  # the oldest lines were rotated away


def test_an_existing_wider_log_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / LOG_FILE_NAME
    path.write_text('{"event": "old"}\n')
    path.chmod(0o666)
    configure_logging("info", fmt="json")
    assert log_to_file(tmp_path) is None
    log.info("new")
    assert path.stat().st_mode & 0o777 == 0o640
    assert [line["event"] for line in _lines(path)] == ["old", "new"]


def test_an_existing_log_dir_keeps_its_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    configure_logging("info", fmt="json")
    assert log_to_file(tmp_path) is None
    assert tmp_path.stat().st_mode & 0o777 == 0o755  # e.g. LogDir: /var/log is left alone


@pytest.mark.parametrize("kind", ["parent is a file", "log file is a symlink"])
def test_an_unusable_log_dir_is_one_stderr_line_and_logging_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    if kind == "parent is a file":
        (tmp_path / "file").write_text("")
        log_dir = tmp_path / "file" / "sftd"
    else:
        log_dir = tmp_path / "logs"
        log_dir.mkdir()
        target = tmp_path / "elsewhere"
        (log_dir / LOG_FILE_NAME).symlink_to(target)
    configure_logging("info", fmt="json")
    before = structlog.get_config()["processors"]
    problem = log_to_file(log_dir)
    assert problem is not None
    assert problem.startswith(f"cannot write the log file in LogDir {log_dir} (")
    assert problem.endswith("); logging to standard output only")
    captured = capsys.readouterr()
    assert captured.err == f"sftd: warning: {problem}\n"
    assert structlog.get_config()["processors"] == before
    log.info("still logging")
    assert "still logging" in capsys.readouterr().out
    if kind == "log file is a symlink":
        assert not (tmp_path / "elsewhere").exists()


def test_a_log_problem_is_a_problem_of_the_daemon(tmp_path: Path) -> None:
    config = AgentConfig.model_validate({"StateDir": str(tmp_path / "state")})
    problem = "cannot write the log file in LogDir /x (Read-only file system)"
    daemon = Daemon(config, accounts=FlakySink(failures=0), timings=FAST, problems={"log": problem})
    daemon.state.ensure_directory()
    daemon._update_report(applied_revision=0)
    report = daemon.state.read_status()
    assert report is not None and report.problems == (problem,)
    assert list(daemon._agent_status().problems) == [problem]


def test_sftd_run_logs_to_log_dir_and_an_unusable_one_does_not_stop_it(tmp_path: Path) -> None:
    """Not enrolled with AutoEnroll off: sftd starts, logs, and stops with exit 2."""
    log_dir = tmp_path / "log"
    conf = tmp_path / "sftd.yaml"
    base = f"StateDir: {tmp_path / 'state'}\nAutoEnroll: false\n"
    conf.write_text(f"{base}LogDir: {log_dir}\n")
    result = CliRunner().invoke(main, ["--conf", str(conf), "run"])
    assert result.exit_code == 2, result.output
    (starting, *_) = _lines(log_dir / LOG_FILE_NAME)
    assert starting["event"] == "starting" and starting["log_dir"] == str(log_dir)

    (tmp_path / "file").write_text("")
    conf.write_text(f"{base}LogDir: {tmp_path / 'file' / 'log'}\n")
    result = CliRunner().invoke(main, ["--conf", str(conf), "run"])
    assert result.exit_code == 2, result.output  # the same end as with a good LogDir
    warning, error = result.stderr.splitlines()
    assert warning.startswith("sftd: warning: cannot write the log file in LogDir")
    assert error.startswith("sftd: error: this server is not enrolled and AutoEnroll is false")
