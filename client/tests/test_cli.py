"""The `sft` command line without a platform: help, usage errors, and the local verbs."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from client.cli import main
from client.device_key import generate_device_key, private_key_openssh, public_key_fingerprint
from client.state import DeviceRecord, Home, StoredToken, write_atomic
from client.tests.pki import make_pki

VERBS = ["enroll", "login", "logout", "unenroll", "use", "list-teams", "device-info"]


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "home")


def _sft(home: Home, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(
        main, list(args), prog_name="sft", env={"SFT_HOME": str(home.root), **(env or {})}
    )


def _error_line(result: Result, exit_code: int = 1) -> str:
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sft: error: ")
    return lines[0].removeprefix("sft: error: ")


def _fake_enrollment(home: Home, team: str, *, token_ttl: dt.timedelta | None = None) -> str:
    """Write the state `sft enroll` leaves; return the key fingerprint."""
    staging = home.new_staging_dir(team)
    key = generate_device_key()
    write_atomic(staging.device_key_file, private_key_openssh(key))
    write_atomic(staging.ca_file, make_pki().ca_pem)
    record = DeviceRecord(
        url=f"https://{team}.example.com:443",
        team=team,
        device=f"teams/{team}/users/ada/devices/d1",
        user=f"teams/{team}/users/ada",
        ca_sha256="cd" * 32,
        enrolled_at=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
    )
    write_atomic(staging.device_file, json.dumps(record.as_json()).encode())
    team_dir = home.commit_staging(staging)
    if token_ttl is not None:
        team_dir.write_token(StoredToken("secret-token", dt.datetime.now(dt.UTC) + token_ttl))
    return public_key_fingerprint(key)


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_explains_itself_with_examples(home: Home, verb: str) -> None:
    result = _sft(home, verb, "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout


def test_bare_sft_lists_the_verbs(home: Home) -> None:
    result = _sft(home)
    assert result.exit_code == 0
    for verb in VERBS:
        assert verb in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["enroll", "--url", "https://x"], "Missing option '--team'. (see `sft enroll --help`)"),
        (["fly"], "No such command 'fly'. (see `sft --help`)"),
        (["list-teams", "-o", "yaml"], "Invalid value for '-o' / '--output'"),
        (
            ["enroll", "--url", "http://x", "--team", "acme", "--code", "c"],
            "the platform URL 'http://x' uses http:// but sft only talks TLS",
        ),
        (
            ["enroll", "--url", "https://x", "--team", "acme", "--code", "sftt1_aa_bb"],
            "this is not an enrollment code (it starts with sftt1_, expected sftc1_)",
        ),
        (["device-info", "--team", "../../etc"], "'../../etc' is not a team name"),
    ],
)
def test_usage_errors_are_one_line_with_status_2(
    home: Home, args: list[str], expected: str
) -> None:
    assert expected in _error_line(_sft(home, *args), exit_code=2)


@pytest.mark.parametrize("verb", ["login", "logout", "unenroll", "device-info"])
def test_verbs_needing_a_device_say_how_to_enroll(home: Home, verb: str) -> None:
    assert _error_line(_sft(home, verb)) == (
        "this machine is not enrolled in any team; run "
        "`sft enroll --url URL --team TEAM --code CODE`"
    )


def test_enrolling_a_team_twice_is_refused_before_contacting_anyone(home: Home) -> None:
    _fake_enrollment(home, "acme")
    result = _sft(
        home, "enroll", "--url", "https://127.0.0.1:1", "--team", "acme", "--code",
        "sftc1_" + "a" * 32 + "_" + "b" * 52,
    )  # fmt: skip
    assert _error_line(result) == (
        "this machine is already enrolled in team acme; run `sft unenroll --team acme` first"
    )


def test_list_teams_marks_the_current_team(home: Home) -> None:
    assert _sft(home, "list-teams", "-o", "json").stdout.strip() == "[]"
    assert "Not enrolled in any team" in _sft(home, "list-teams").stdout
    _fake_enrollment(home, "acme")
    _fake_enrollment(home, "beta")
    home.set_current_team("beta")
    result = _sft(home, "list-teams", "--output", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == [
        {
            "team": "acme",
            "url": "https://acme.example.com:443",
            "user": "teams/acme/users/ada",
            "current": False,
        },
        {
            "team": "beta",
            "url": "https://beta.example.com:443",
            "user": "teams/beta/users/ada",
            "current": True,
        },
    ]
    lines = _sft(home, "list-teams").stdout.splitlines()
    assert lines[0].split() == ["TEAM", "URL", "USER"]
    assert lines[2].split() == ["*", "beta", "https://beta.example.com:443", "teams/beta/users/ada"]


def test_use_changes_the_team_verbs_act_on_and_sft_team_overrides_it(home: Home) -> None:
    _fake_enrollment(home, "acme")
    _fake_enrollment(home, "beta")
    assert "no current team (enrolled here: acme, beta)" in _error_line(_sft(home, "device-info"))
    result = _sft(home, "use", "beta")
    assert result.exit_code == 0 and result.stdout == "Current team: beta.\n"
    assert json.loads(_sft(home, "device-info", "-o", "json").stdout)["team"] == "beta"
    overridden = _sft(home, "device-info", "-o", "json", env={"SFT_TEAM": "acme"})
    assert json.loads(overridden.stdout)["team"] == "acme"
    flagged = _sft(home, "device-info", "-o", "json", "--team", "beta", env={"SFT_TEAM": "acme"})
    assert json.loads(flagged.stdout)["team"] == "beta"
    assert "not enrolled in team gamma" in _error_line(_sft(home, "use", "gamma"))


def test_device_info_shows_the_device_and_token_expiry_but_never_the_token(home: Home) -> None:
    fingerprint = _fake_enrollment(home, "acme", token_ttl=dt.timedelta(minutes=30))
    result = _sft(home, "device-info", "--team", "acme", "-o", "json")
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    expire = dt.datetime.fromisoformat(info.pop("token_expire_time"))
    assert dt.timedelta(minutes=29) < expire - dt.datetime.now(dt.UTC) <= dt.timedelta(minutes=30)
    assert info == {
        "team": "acme",
        "current": False,
        "url": "https://acme.example.com:443",
        "user": "teams/acme/users/ada",
        "device": "teams/acme/users/ada/devices/d1",
        "fingerprint": fingerprint,
        "ca_sha256": "cd" * 32,
        "enrolled_at": "2030-01-01T00:00:00+00:00",
        "logged_in": True,
    }
    text = _sft(home, "device-info", "--team", "acme").stdout
    assert fingerprint in text and "valid until" in text and "(in 2" in text
    assert "secret-token" not in result.stdout + text


def test_logout_forgets_the_token_and_device_info_then_shows_none(home: Home) -> None:
    _fake_enrollment(home, "acme", token_ttl=dt.timedelta(hours=1))
    home.set_current_team("acme")
    assert _sft(home, "logout").stdout == "Logged out of team acme.\n"
    assert not home.team_dir("acme").token_file.exists()
    assert _sft(home, "logout").stdout == "Not logged in to team acme; nothing to remove.\n"
    info = json.loads(_sft(home, "device-info", "-o", "json").stdout)
    assert info["token_expire_time"] is None and info["logged_in"] is False
    assert "access token: none" in _sft(home, "device-info").stdout


def test_damaged_state_is_one_line_and_force_unenroll_clears_it(home: Home) -> None:
    _fake_enrollment(home, "acme")
    home.team_dir("acme").device_file.write_text("{")
    line = _error_line(_sft(home, "device-info", "--team", "acme"))
    assert "device.json of team acme" in line and "--force" in line
    result = _sft(home, "unenroll", "--team", "acme", "--force")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith("sft: warning: could not revoke the device on the platform")
    assert home.enrolled_teams() == []


def test_an_unexpected_failure_is_one_line_not_a_traceback(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(self: Home) -> list[str]:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Home, "enrolled_teams", explode)
    line = _error_line(_sft(home, "list-teams"))
    assert line.startswith("unexpected failure (RuntimeError: disk on fire)")
    assert "SFT_DEBUG=1" in line
