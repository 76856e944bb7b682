"""sshd_config text for sftd's sshd wiring: the drop-in it writes and the Include it keeps
at the top of SSHDConfigFile.

Pure: builds and edits text, never touches the disk or runs sshd (agent/sshd.py does).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "DROP_IN_DIRECTORY",
    "DROP_IN_NAME",
    "MARKER",
    "SSHDConfigError",
    "certificate_line",
    "certificate_path",
    "config_argument",
    "drop_in_path",
    "drop_in_text",
    "pid_file_setting",
    "with_include",
]

#: Beside SSHDConfigFile, where distributions keep drop-ins (Debian includes `*.conf` here).
DROP_IN_DIRECTORY = "sshd_config.d"
DROP_IN_NAME = "50-sft.conf"
#: The comment line sftd puts right above its Include; it marks the two lines as sftd's.
MARKER = "# Added by sftd (ManageSSHD); keep it first: sshd keeps the first value it reads."

_CERTIFICATE_TYPE = re.compile(r"[a-z0-9.@-]+-cert-v01@openssh\.com")
# Characters that would end or change a value in sshd_config even inside quotes.
_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')
_NEEDS_QUOTES = re.compile(r"[\s#']")
_INCLUDE = re.compile(r"\s*include(\s*=\s*|\s+)", re.IGNORECASE)
_PID_FILE = re.compile(r"^pidfile\s+(.+)$", re.IGNORECASE | re.MULTILINE)


class SSHDConfigError(ValueError):
    """A value cannot be written into sshd_config safely; the message names it."""


def drop_in_path(sshd_config_file: Path) -> Path:
    """Return the drop-in sftd writes: `<dir of sshd_config_file>/sshd_config.d/50-sft.conf`."""
    return sshd_config_file.parent / DROP_IN_DIRECTORY / DROP_IN_NAME


def certificate_path(host_key_file: Path) -> Path:
    """Return where `host_key_file`'s certificate goes: `<host key>-cert.pub`, ssh-keygen's name."""
    return host_key_file.with_name(host_key_file.name + "-cert.pub")


def config_argument(path: Path) -> str:
    """Return `path` as one sshd_config argument: quoted when it has spaces, refused when unsafe."""
    text = str(path)
    if not path.is_absolute():
        # sshd resolves a relative Include against /etc/ssh, not the including file.
        raise SSHDConfigError(f"{text!r} is not an absolute path; sshd_config needs one here")
    if _UNSAFE.search(text):
        raise SSHDConfigError(
            f"{text!r} has a quote, backslash or control character that sshd_config cannot hold"
        )
    return f'"{text}"' if _NEEDS_QUOTES.search(text) else text


def certificate_line(certificate: str) -> str:
    """Return `certificate` as one OpenSSH certificate line, or raise SSHDConfigError.

    `sshd -t` only logs a certificate it cannot load and still succeeds, so a damaged
    one is refused here rather than installed.
    """
    parts = certificate.strip().split()
    if "\n" in certificate.strip() or len(parts) < 2:
        raise SSHDConfigError("a host certificate is not one OpenSSH certificate line")
    if not _CERTIFICATE_TYPE.fullmatch(parts[0]):
        raise SSHDConfigError(
            f"a host certificate has type {parts[0][:64]!r}, not an SSH certificate"
        )
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise SSHDConfigError("a host certificate is not valid base64") from None
    if blob[4 : 4 + len(parts[0])] != parts[0].encode():
        raise SSHDConfigError("a host certificate's blob does not match its type")
    return " ".join(parts) + "\n"


def drop_in_text(
    sshd_config_file: Path, trusted_user_ca_keys_file: Path, certificates: Iterable[Path]
) -> str:
    """Return the drop-in: the TrustedUserCAKeys file and one HostCertificate per certificate."""
    lines = [
        "# Written by sftd (ManageSSHD) and replaced whenever the project's CA keys or this",
        "# server's host certificates change; edits here are lost. Included from the top of",
        f"# {sshd_config_file}.",
        f"TrustedUserCAKeys {config_argument(trusted_user_ca_keys_file)}",
        *(f"HostCertificate {config_argument(path)}" for path in certificates),
    ]
    return "\n".join(lines) + "\n"


def with_include(text: str, drop_in: Path) -> str:
    """Return sshd_config `text` with sftd's marker and `Include <drop_in>` as its first lines.

    An earlier copy of the two lines (wherever it is, whatever drop-in it named) is
    removed first, so the edit is made once and repeating it changes nothing.

    Always an Include of the drop-in itself, even when the file already includes
    `sshd_config.d/*.conf` at the top (Debian, Ubuntu): that glob reads the files in
    name order, so any drop-in sorting before ours (e.g. 10-local.conf) could set
    TrustedUserCAKeys first, and a glob further down the file comes after the file's own
    lines. Being read a second time by the glob is harmless: sshd keeps the first
    TrustedUserCAKeys it reads, and a repeated HostCertificate for the same key loads
    the same certificate again.
    """
    lines = text.splitlines(keepends=True)
    kept: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.rstrip("\r\n") == MARKER:
            following = lines[index + 1] if index + 1 < len(lines) else ""
            index += 2 if _INCLUDE.match(following) else 1
            continue
        kept.append(line)
        index += 1
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    return f"{MARKER}\nInclude {config_argument(drop_in)}\n" + "".join(kept)


def pid_file_setting(effective_config: str, default: Path) -> Path | None:
    """Return the PidFile in `sshd -T` output: `default` when it names none, None for `none`."""
    match = _PID_FILE.search(effective_config)
    if match is None:
        return default
    value = match.group(1).strip()
    return None if value.lower() == "none" else Path(value)
