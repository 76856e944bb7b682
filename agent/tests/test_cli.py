"""`sftd` as an operator meets it: one line for a bad config, `status` from the state dir."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner, Result

from agent.cli import EXIT_NOT_ENROLLED, main
from agent.state import AgentState, ServerIdentity, StatusReport, TrustAnchors

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`sftd run` configures logging for the process; put it back after each test."""
    saved = structlog.get_config()
    handlers = logging.getLogger().handlers[:]
    yield
    structlog.configure(**saved)
    logging.getLogger().handlers[:] = handlers


def sftd(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _one_error(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("sftd: error: ")
    return lines[0]


def _conf(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sftd.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("verb", [[], ["run"], ["status"]])
def test_a_bad_config_is_one_line_and_exit_2(tmp_path: Path, verb: list[str]) -> None:
    conf = _conf(tmp_path, "SSHDPort: many\n")
    line = _one_error(sftd("--conf", str(conf), *verb), 2)
    assert "SSHDPort: must be a whole number" in line


def test_an_explicit_missing_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    line = _one_error(sftd("--conf", str(tmp_path / "nope.yaml")), 2)
    assert "nope.yaml does not exist" in line


def test_enrolling_without_initial_url_is_one_line_and_exit_2(tmp_path: Path) -> None:
    conf = _conf(tmp_path, f"StateDir: {tmp_path / 'state'}\nLogLevel: ERROR\n")
    line = _one_error(sftd("--conf", str(conf), "run"), 2)
    assert "InitialURL is not set" in line


def test_a_corrupt_state_is_one_line_and_exit_1(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "server.json").write_text("{")
    conf = _conf(tmp_path, f"StateDir: {state}\nLogLevel: ERROR\n")
    for verb in ("run", "status"):
        line = _one_error(sftd("--conf", str(conf), verb), 1)
        assert "server.json is unusable (not valid JSON)" in line
    assert (state / "server.json").read_text() == "{"


def test_help_is_shown_on_request() -> None:
    result = sftd("--help")
    assert result.exit_code == 0
    assert "run" in result.output and "status" in result.output and "--conf" in result.output


def test_status_of_a_server_not_enrolled(tmp_path: Path) -> None:
    conf = _conf(
        tmp_path,
        f"StateDir: {tmp_path / 'state'}\nEnrollmentTokenFile: {tmp_path / 'token'}\n",
    )
    (tmp_path / "token").write_text("sftt1_x_y")
    result = sftd("--conf", str(conf), "status", "-o", "json")
    assert result.exit_code == EXIT_NOT_ENROLLED
    document = json.loads(result.stdout)
    assert document["enrolled"] is False
    assert document["enrollment_token_present"] is True
    text = sftd("--conf", str(conf), "status")
    assert "enrolled: no" in text.stdout and "(present)" in text.stdout


def test_status_of_an_enrolled_server_comes_from_the_state_dir(tmp_path: Path) -> None:
    from agent.tests.test_state import _ca_pem, _sha256

    state = AgentState(tmp_path / "state")
    state.ensure_directory()
    key = state.key()
    ca = _ca_pem()
    server = "teams/acme/projects/web/servers/7f3c0c8e-0000-4000-8000-000000000001"
    identity = ServerIdentity(
        server, "https://sft.example.com:443", _sha256(ca), key.fingerprint, NOW
    )
    state.write_enrollment(identity, ca, (), TrustAnchors("", ""))
    state.write_applied_revision(12)
    state.write_status(
        StatusReport(
            pid=2**22 + 12345,  # above any pid_max: not running
            updated_at=NOW,
            platform_reachable=True,
            last_heartbeat_time=NOW,
            last_sync_time=NOW,
            applied_revision=12,
            managed_accounts=3,
            problems=("sshd -t failed",),
            broker_state="failed",
        )
    )
    conf = _conf(tmp_path, f"StateDir: {state.directory}\nBroker: true\n")
    result = sftd("--conf", str(conf), "status", "-o", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["server"]["name"] == server
    assert document["server"]["id"] == "7f3c0c8e-0000-4000-8000-000000000001"
    assert document["server"]["platform_url"] == "https://sft.example.com:443"
    assert document["server"]["applied_revision"] == 12
    daemon = document["daemon"]
    assert daemon["running"] is False
    assert daemon["last_heartbeat_time"] == NOW.isoformat()
    assert daemon["managed_accounts"] == 3
    assert daemon["problems"] == ["sshd -t failed"]
    assert daemon["broker"] == "failed"
    text = sftd("--conf", str(conf), "status").stdout
    assert f"server: {server}" in text
    assert "platform reachable: yes" in text
    assert "problem: sshd -t failed" in text
    assert "broker: failed" in text
    off = _conf(tmp_path, f"StateDir: {state.directory}\nBroker: false\n")
    assert "broker: disabled" in sftd("--conf", str(off), "status").stdout


def test_not_enrolled_with_auto_enroll_off_is_one_line_and_exit_2(tmp_path: Path) -> None:
    conf = _conf(
        tmp_path,
        f"StateDir: {tmp_path / 'state'}\nAutoEnroll: false\nInitialURL: https://127.0.0.1:1\n",
    )
    line = _one_error(sftd("--conf", str(conf)), 2)
    assert "not enrolled and AutoEnroll is false" in line


def _config_file(tmp_path: Path, **keys: object) -> Path:
    conf = tmp_path / "sftd.yaml"
    lines = {
        "StateDir": str(tmp_path / "state"),
        "EnrollmentTokenFile": str(tmp_path / "token"),
        "InitialURL": "https://127.0.0.1:1",
        **keys,
    }
    conf.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in lines.items()))
    return conf


def test_account_sink_is_the_reconciler_unless_accounts_are_unmanaged(tmp_path: Path) -> None:
    from agent.accounts.linux import LinuxAccounts
    from agent.accounts.reconcile import Reconciler
    from agent.cli import account_sink
    from agent.config import load_config
    from agent.daemon import LoggingAccountSink

    managed = account_sink(load_config(_config_file(tmp_path)))
    assert isinstance(managed, Reconciler)
    assert isinstance(managed.backend, LinuxAccounts)
    off = account_sink(load_config(_config_file(tmp_path, ManageAccounts=False)))
    assert isinstance(off, LoggingAccountSink)


def test_a_corrupt_managed_accounts_record_stops_sftd_with_one_line(tmp_path: Path) -> None:
    from agent.accounts.managed import RECORD_FILE

    conf = _config_file(tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / RECORD_FILE).write_text("{not json")
    message = _one_error(sftd("--conf", str(conf), "run"), 1)
    assert RECORD_FILE in message
    assert (state / RECORD_FILE).read_text() == "{not json"
