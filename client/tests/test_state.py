"""Local state: private modes, atomic replacement, and which team a verb acts on."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest

from client.errors import EXIT_USAGE, ClientError, NotEnrolled
from client.state import (
    DeviceRecord,
    Home,
    StoredToken,
    TeamDir,
    check_team_name,
    default_home,
    write_atomic,
)

NOW = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _record(team: str = "acme") -> DeviceRecord:
    return DeviceRecord(
        url="https://127.0.0.1:8443",
        team=team,
        device=f"teams/{team}/users/ada/devices/7f3c",
        user=f"teams/{team}/users/ada",
        ca_sha256="ab" * 32,
        enrolled_at=NOW,
    )


def _enrolled(home: Home, team: str) -> TeamDir:
    staging = home.new_staging_dir(team)
    write_atomic(staging.device_file, json.dumps(_record(team).as_json()).encode())
    return home.commit_staging(staging)


def test_home_comes_from_sft_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SFT_HOME", str(tmp_path / "elsewhere"))
    assert default_home() == tmp_path / "elsewhere"
    monkeypatch.delenv("SFT_HOME")
    assert default_home().name == "sft"


def test_home_and_team_directories_are_0700_and_files_0600(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        home = Home(tmp_path / "home")
        team_dir = _enrolled(home, "acme")
        team_dir.write_token(StoredToken("secret-token", NOW))
        home.set_current_team("acme")
    finally:
        os.umask(old_umask)
    for directory in (home.root, home.teams_dir, team_dir.path):
        assert _mode(directory) == 0o700, directory
    for path in (team_dir.device_file, team_dir.token_file, home.current_team_file):
        assert _mode(path) == 0o600, path


def test_atomic_write_replaces_content_and_keeps_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "token.json"
    write_atomic(target, b"first")
    target.chmod(0o644)
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["token.json"]


def test_interrupted_atomic_write_leaves_the_old_content_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "device.json"
    write_atomic(target, b"old")

    def fail_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["device.json"]


def test_device_record_and_token_round_trip(tmp_path: Path) -> None:
    home = Home(tmp_path)
    team_dir = _enrolled(home, "acme")
    assert team_dir.read_device() == _record()
    assert team_dir.read_token() is None
    token = StoredToken("t0k3n", NOW + dt.timedelta(hours=1))
    team_dir.write_token(token)
    assert team_dir.read_token() == token
    assert json.loads(team_dir.token_file.read_text()) == {
        "access_token": "t0k3n",
        "expire_time": "2030-01-02T04:04:05+00:00",
    }
    assert token.valid_for(NOW) == dt.timedelta(hours=1)


def test_damaged_device_json_says_how_to_recover(tmp_path: Path) -> None:
    home = Home(tmp_path)
    team_dir = _enrolled(home, "acme")
    team_dir.device_file.write_text('{"url": 1}')
    with pytest.raises(ClientError) as caught:
        team_dir.read_device()
    assert "device.json of team acme" in caught.value.message
    assert "`sft unenroll --team acme --force`" in caught.value.message


def test_damaged_token_cache_only_costs_a_login(tmp_path: Path) -> None:
    team_dir = _enrolled(Home(tmp_path), "acme")
    team_dir.token_file.write_text("{not json")
    assert team_dir.read_token() is None


def test_logout_hook_forgets_cached_credentials(tmp_path: Path) -> None:
    team_dir = _enrolled(Home(tmp_path), "acme")
    team_dir.write_token(StoredToken("t", NOW))
    assert team_dir.forget_credentials() == [team_dir.token_file]
    assert not team_dir.token_file.exists()
    assert team_dir.forget_credentials() == []
    assert team_dir.device_file.exists()


def test_logout_hook_also_forgets_the_rdp_cache(tmp_path: Path) -> None:
    from client.rdp_cache import RDPCache

    team_dir = _enrolled(Home(tmp_path), "acme")
    rdp_file = Path(RDPCache(team_dir.path).rdp_file("win-1"))
    rdp_file.parent.mkdir(parents=True)
    rdp_file.write_text("full address:s:127.0.0.1:3390\n")
    assert rdp_file in team_dir.forget_credentials()
    assert not rdp_file.exists()


@pytest.mark.parametrize("name", ["../etc", "Acme", "", "-acme", "a" * 64, "acme/x", ".hidden"])
def test_team_names_that_could_escape_the_teams_directory_are_refused(name: str) -> None:
    with pytest.raises(ClientError) as caught:
        check_team_name(name)
    assert caught.value.exit_code == EXIT_USAGE


def test_team_resolution_prefers_the_flag_then_the_current_team(tmp_path: Path) -> None:
    home = Home(tmp_path)
    with pytest.raises(NotEnrolled, match="not enrolled in any team; run `sft enroll --url"):
        home.resolve_team(None)
    _enrolled(home, "acme")
    _enrolled(home, "beta")
    with pytest.raises(ClientError, match=r"no current team \(enrolled here: acme, beta\)"):
        home.resolve_team(None)
    home.set_current_team("beta")
    assert home.resolve_team(None) == "beta"
    assert home.resolve_team("acme") == "acme"
    assert home.enrolled(None).team == "beta"
    with pytest.raises(NotEnrolled) as caught:
        home.enrolled("gamma")
    assert caught.value.message == (
        "this machine is not enrolled in team gamma (enrolled here: acme, beta); run "
        "`sft enroll --url URL --team gamma --code CODE`"
    )


def test_staging_directories_are_not_teams_and_commit_refuses_a_second_device(
    tmp_path: Path,
) -> None:
    home = Home(tmp_path)
    staging = home.new_staging_dir("acme")
    assert _mode(staging.path) == 0o700
    assert home.enrolled_teams() == []
    write_atomic(staging.device_file, b"{}")
    home.commit_staging(staging)
    assert home.enrolled_teams() == ["acme"]
    second = home.new_staging_dir("acme")
    write_atomic(second.device_file, b"{}")
    with pytest.raises(ClientError, match="already enrolled in team acme; run `sft unenroll"):
        home.commit_staging(second)


def test_removing_the_current_team_clears_it(tmp_path: Path) -> None:
    home = Home(tmp_path)
    acme, beta = _enrolled(home, "acme"), _enrolled(home, "beta")
    home.set_current_team("acme")
    home.remove_team_dir(beta)
    assert home.current_team() == "acme"
    home.remove_team_dir(acme)
    assert home.current_team() is None
    assert home.enrolled_teams() == []
