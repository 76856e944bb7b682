"""`sft ssh`'s command line: sft's options, ssh's options, NAME and the remote command."""

from __future__ import annotations

import pytest

from client.ssh_args import SSHUsageError, parse_ssh_args


def test_options_before_and_after_the_name_and_the_command_after_dashes() -> None:
    call = parse_ssh_args(
        ["--via", "b1", "-tt", "--via=b2", "web-1", "-L", "8080:localhost:80", "-v", "--",
         "ls", "-la"]
    )  # fmt: skip
    assert call.name == "web-1"
    assert call.via == ["b1", "b2"]
    assert call.ssh_options == ["-t", "-t", "-L", "8080:localhost:80", "-v"]
    assert call.command == ["ls", "-la"]


def test_the_first_word_after_the_name_starts_the_command_like_ssh() -> None:
    call = parse_ssh_args(["web-1", "uptime", "-p"])
    assert call.command == ["uptime", "-p"]
    assert call.port is None


def test_port_account_team_and_project_are_sfts_own() -> None:
    call = parse_ssh_args(["-p2200", "-l", "root", "--team", "acme", "--project=web", "db"])
    assert (call.port, call.account, call.team, call.project) == (2200, "root", "acme", "web")
    assert call.ssh_options == []


def test_an_option_cluster_ending_in_an_option_with_a_value() -> None:
    call = parse_ssh_args(["-Ao", "ServerAliveInterval=5", "web-1"])
    assert call.ssh_options == ["-A", "-o", "ServerAliveInterval=5"]


def test_help_wins() -> None:
    assert parse_ssh_args(["web-1", "-h"]).help


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "name the server"),
        (["-v"], "name the server"),
        (["-J", "bastion", "web-1"], "--via"),
        (["-p", "0", "web-1"], "TCP port"),
        (["-p", "http", "web-1"], "TCP port"),
        (["-Z", "web-1"], "unknown option -Z"),
        (["--nope", "web-1"], "unknown option --nope"),
        (["web-1", "-o"], "needs a value"),
        (["--via", "web-1"], "name the server"),
        (["--via="], "needs a value"),
    ],
)
def test_bad_command_lines_say_what_to_write(args: list[str], message: str) -> None:
    with pytest.raises(SSHUsageError, match=message):
        parse_ssh_args(args)
