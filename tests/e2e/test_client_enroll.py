"""`sft enroll`, `login`, `device-info`, `unenroll` as a person runs them, against a real platform.

The real `sft` console script runs as a subprocess with its own SFT_HOME; the real
`sft-platform serve` answers on a loopback port with its self-made TLS.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.pinned_codes import CodeKind, PinnedCode
from runtime.tls import ca_sha256, ensure_dev_pki
from tests.support.platform_process import PlatformProcess, run_platform

pytestmark = pytest.mark.e2e

SFT_BIN = str(Path(sys.executable).parent / "sft")
USED_CODE = (
    "the enrollment code is unknown, used or expired; ask a team admin for a new one "
    "(`sft admin user invite`)"
)


@dataclass(frozen=True)
class Platform:
    """A serving platform, the URL clients use and a fresh code for ada in team acme."""

    process: PlatformProcess
    code: str

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.process.port}"


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    data_dir = tmp_path / "data"
    migrated = run_platform("migrate", "--data-dir", str(data_dir))
    assert migrated.returncode == 0, migrated.stderr
    init = run_platform(
        "init", "--team", "acme", "--admin", "ada", "--json", "--data-dir", str(data_dir)
    )
    assert init.returncode == 0, init.stderr
    process = PlatformProcess(data_dir).start()
    try:
        yield Platform(process, json.loads(init.stdout)["code"])
    finally:
        process.stop()


def sft(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real `sft` with `home` as SFT_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFT_")}
    return subprocess.run(
        [SFT_BIN, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "SFT_HOME": str(home)},
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """Assert a failed run printed one `sft: error:` line and nothing else; return its text."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sft: error: ")
    return lines[0].removeprefix("sft: error: ")


def enroll(
    home: Path, platform: Platform, code: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `sft enroll` for team acme."""
    return sft(
        home, "enroll", "--url", platform.url, "--team", "acme", "--code", code or platform.code
    )


def assert_no_state(home: Path) -> None:
    """Assert a home holds no team, no half-made enrollment and no current team."""
    teams = home / "teams"
    assert not teams.exists() or list(teams.iterdir()) == []
    assert not (home / "current_team").exists()


def test_enroll_logs_in_and_unenroll_revokes_the_device(platform: Platform, tmp_path: Path) -> None:
    home = tmp_path / "home"
    enrolled = enroll(home, platform)
    assert enrolled.returncode == 0, enrolled.stderr
    assert "Enrolled this device in team acme as ada" in enrolled.stdout
    assert "acme is now the current team." in enrolled.stdout

    team_dir = home / "teams" / "acme"
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE(team_dir.stat().st_mode) == 0o700
    for name in ("device_key", "token.json"):
        assert stat.S_IMODE((team_dir / name).stat().st_mode) == 0o600
    assert (team_dir / "device_key").read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY")
    # The pinned CA is the platform's own, byte for byte in meaning.
    assert ca_sha256((team_dir / "platform-ca.pem").read_bytes()) == ca_sha256(
        platform.process.ca_file.read_bytes()
    )

    info = sft(home, "device-info", "-o", "json")
    assert info.returncode == 0, info.stderr
    device = json.loads(info.stdout)
    assert device["team"] == "acme" and device["current"] is True
    assert device["url"] == platform.url
    assert device["user"] == "teams/acme/users/ada"
    assert device["device"].startswith("teams/acme/users/ada/devices/")
    assert device["fingerprint"].startswith("SHA256:")
    expires = dt.datetime.fromisoformat(device["token_expire_time"])
    assert expires > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=30)
    assert device["logged_in"] is True

    first_token = json.loads((team_dir / "token.json").read_text())["access_token"]
    login = sft(home, "login", "-o", "json")
    assert login.returncode == 0, login.stderr
    identity = json.loads(login.stdout)["identity"]
    assert identity["device"] == device["device"]
    assert identity["user"] == "teams/acme/users/ada"
    second_token = json.loads((team_dir / "token.json").read_text())["access_token"]
    assert second_token != first_token
    assert second_token not in login.stdout + login.stderr
    assert sft(home, "login").stdout.startswith("Logged in to team acme as ada;")

    listed = json.loads(sft(home, "list-teams", "-o", "json").stdout)
    assert listed == [
        {"team": "acme", "url": platform.url, "user": "teams/acme/users/ada", "current": True}
    ]

    kept = tmp_path / "kept-team-dir"
    shutil.copytree(team_dir, kept)
    unenrolled = sft(home, "unenroll", "-o", "json")
    assert unenrolled.returncode == 0, unenrolled.stderr
    assert json.loads(unenrolled.stdout) == {
        "team": "acme",
        "device": device["device"],
        "revoked": True,
        "local_state_removed": True,
    }
    assert_no_state(home)
    assert "not enrolled in any team" in one_error_line(sft(home, "login"))

    # With the old key put back, the platform itself refuses the revoked device.
    shutil.copytree(kept, team_dir)
    (team_dir / "token.json").unlink()
    refused = one_error_line(sft(home, "login", "--team", "acme"))
    assert refused.startswith("the platform refused this device's key (")
    assert "revoked" in refused
    assert "`sft unenroll --team acme --force`" in refused


def test_a_used_code_is_refused_and_leaves_nothing_behind(
    platform: Platform, tmp_path: Path
) -> None:
    first = enroll(tmp_path / "first", platform)
    assert first.returncode == 0, first.stderr
    second_home = tmp_path / "second"
    assert one_error_line(enroll(second_home, platform)) == USED_CODE
    assert_no_state(second_home)


def test_a_code_pinned_to_another_ca_is_refused_before_any_call(
    platform: Platform, tmp_path: Path
) -> None:
    other_ca = ensure_dev_pki(tmp_path / "other-tls", ["127.0.0.1"]).ca_file.read_bytes()
    genuine = PinnedCode.parse(platform.code, CodeKind.DEVICE_ENROLLMENT)
    forged = PinnedCode(genuine.kind, genuine.secret, ca_sha256(other_ca)).encode()
    home = tmp_path / "home"
    assert one_error_line(enroll(home, platform, forged)) == (
        f"the platform at {platform.url} did not present the CA pinned by the enrollment "
        "code — possible man-in-the-middle; check the URL and code"
    )
    assert_no_state(home)
    assert "EnrollDevice" not in platform.process.log()
    # The secret never left this machine, so the genuine code still works.
    enrolled = enroll(home, platform)
    assert enrolled.returncode == 0, enrolled.stderr


def test_an_unreachable_platform_is_one_line_and_force_still_unenrolls(
    platform: Platform, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    assert enroll(home, platform).returncode == 0
    platform.process.stop()
    (home / "teams" / "acme" / "token.json").unlink()
    refused = one_error_line(sft(home, "unenroll"))
    assert refused.startswith(f"cannot reach the platform at {platform.url}: ")
    assert "`sft unenroll --team acme --force`" in refused
    forced = sft(home, "unenroll", "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stderr.startswith("sft: warning: could not revoke the device on the platform")
    assert_no_state(home)
