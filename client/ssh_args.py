"""The command line of `sft ssh`: sft's own options, ssh's options, the server and the command.

`sft ssh [--team T] [--project P] [--via B]... [ssh options] NAME [ssh options] [--] [command]`

Parsed the way ssh(1) parses its own: options may come before and after NAME; the
first word after NAME that is not an option starts the remote command, and `--` ends
the options. ssh's `-p PORT` and `-l ACCOUNT` are sft's business (the platform says
which port and which account; `-l` asks for one of the project's admin accounts);
`-J` is refused in favour of `--via`, whose hops get certificates. Everything else
goes to ssh unchanged.

Standard library only: the warm-cache path of `sft ssh` reads this before anything
heavier loads.
"""

from __future__ import annotations

__all__ = ["SSHInvocation", "SSHUsageError", "parse_ssh_args"]

# ssh(1) options that take an argument (OpenSSH 9), and those that do not.
_WITH_ARGUMENT = frozenset("BbcDEeFIiJLlmOopQRSWw")
_FLAGS = frozenset("46AaCfGgKkMNnqsTtVvXxYy")
_SFT_WITH_VALUE = ("--team", "--project", "--via")


class SSHUsageError(ValueError):
    """The command line cannot be understood; the message says what to write instead."""


class SSHInvocation:
    """What `sft ssh` was asked to do. (A plain class: dataclasses cost start-up time.)"""

    def __init__(self, name: str = "", team: str | None = None) -> None:
        self.name = name
        self.team = team
        self.project: str | None = None
        self.via: list[str] = []
        #: Options passed to ssh as given (never -p, -l, -J).
        self.ssh_options: list[str] = []
        #: `-p PORT`: dial this port instead of the one the platform reports.
        self.port: int | None = None
        #: `-l NAME`: log in as this admin account instead of the caller's own.
        self.account = ""
        self.command: list[str] = []
        self.help = False


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise SSHUsageError(f"-p {text!r} is not a TCP port (1 to 65535)")
    return int(text)


def _take_value(args: list[str], index: int, option: str) -> tuple[str, int]:
    if index + 1 >= len(args):
        raise SSHUsageError(f"option {option} needs a value")
    return args[index + 1], index + 2


def _sft_option(word: str, args: list[str], index: int, call: SSHInvocation) -> int:
    option, equals, inline = word.partition("=")
    if equals:
        value, after = inline, index + 1
    else:
        value, after = _take_value(args, index, option)
    if not value:
        raise SSHUsageError(f"option {option} needs a value")
    if option == "--team":
        call.team = value
    elif option == "--project":
        call.project = value
    else:
        call.via.append(value)
    return after


def _ssh_cluster(word: str, args: list[str], index: int, call: SSHInvocation) -> int:
    """Consume one `-xyz` cluster (and the next word when its last option takes one)."""
    position = 1
    while position < len(word):
        letter = word[position]
        if letter in _FLAGS:
            call.ssh_options.append(f"-{letter}")
            position += 1
            continue
        if letter not in _WITH_ARGUMENT:
            raise SSHUsageError(f"unknown option -{letter} (see `sft ssh --help` and ssh(1))")
        rest = word[position + 1 :]
        if rest:
            value, after = rest, index + 1
        else:
            value, after = _take_value(args, index, f"-{letter}")
        if letter == "p":
            call.port = _port(value)
        elif letter == "l":
            call.account = value
        elif letter == "J":
            raise SSHUsageError(
                "use --via BASTION instead of -J: sft fetches each bastion's certificate"
            )
        else:
            call.ssh_options += [f"-{letter}", value]
        return after
    return index + 1


def parse_ssh_args(args: list[str]) -> SSHInvocation:
    """Return what `args` (the words after `sft ssh`) ask for, or raise SSHUsageError."""
    call = SSHInvocation()
    index = 0
    while index < len(args):
        word = args[index]
        if word == "--":
            call.command = args[index + 1 :]
            break
        if word in ("-h", "--help"):
            call.help = True
            return call
        if word.split("=", 1)[0] in _SFT_WITH_VALUE:
            index = _sft_option(word, args, index, call)
        elif word.startswith("--"):
            raise SSHUsageError(f"unknown option {word} (see `sft ssh --help`)")
        elif word.startswith("-") and len(word) > 1:
            index = _ssh_cluster(word, args, index, call)
        elif not call.name:
            call.name = word
            index += 1
        else:
            call.command = args[index:]
            break
    if not call.name:
        raise SSHUsageError("name the server to reach, e.g. `sft ssh web-1`")
    return call
