"""sshd's host keys as sftd reads them, and what the platform returns for them.

Reads public halves only (`<HostKey>.pub`); never opens a private host key.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent import paths
from agent.config import AgentConfig
from agent.state import HostCertificate, TrustAnchors
from sft.inventory.v1 import agent_pb2

__all__ = [
    "MAX_HOST_KEYS",
    "HostKey",
    "host_certificates",
    "host_key_paths",
    "read_host_keys",
    "trust_anchors",
]

log = structlog.get_logger("sftd.host_keys")

MAX_HOST_KEYS = 8
_HOST_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
# sshd_config lines: `Keyword value` or `Keyword=value`.
_SSHD_LINE = re.compile(r"([A-Za-z]+)(?:\s*=\s*|\s+)(.*)")


@dataclass(frozen=True)
class HostKey:
    """One of sshd's host keys: where its private half is, and its public line."""

    path: Path
    public_line: str
    fingerprint: str


def host_key_paths(sshd_config_file: Path, defaults: tuple[Path, ...]) -> tuple[Path, ...]:
    """Return the private host key paths `HostKey` names in sshd_config, else sshd's defaults.

    Reads the main file only (no Include) and stops at the first Match block, where
    sshd does not allow HostKey anyway.
    """
    try:
        text = sshd_config_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return defaults
    named: list[Path] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _SSHD_LINE.fullmatch(line)
        if match is None:
            continue
        keyword, value = match.group(1).lower(), match.group(2).strip()
        if keyword == "match":
            break
        if keyword == "hostkey" and value:
            named.append(Path(value.strip('"')))
    return tuple(named) or defaults


def _parse_public_line(text: str) -> tuple[str, str] | None:
    """Return (`type base64`, fingerprint) for an OpenSSH public key line, else None."""
    parts = text.split()
    if len(parts) < 2 or parts[0] not in _HOST_KEY_TYPES:
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    # The blob starts with its own type as an SSH string; a mismatch means a damaged file.
    if blob[4 : 4 + len(parts[0])] != parts[0].encode():
        return None
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"{parts[0]} {parts[1]}", fingerprint


def read_host_keys(config: AgentConfig) -> tuple[HostKey, ...]:
    """Return sshd's host public keys (from `<HostKey>.pub`), existing ones only, at most 8."""
    key_paths = host_key_paths(config.sshd_config_file, paths.default_paths().host_key_files)
    found: dict[str, HostKey] = {}
    for path in key_paths:
        public = path.with_name(path.name + ".pub")
        try:
            text = public.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            log.debug("no readable public half of a host key", host_key=str(path))
            continue
        parsed = _parse_public_line(text)
        if parsed is None:
            log.warning("not an OpenSSH public key; skipping it", file=str(public))
            continue
        line, fingerprint = parsed
        found.setdefault(fingerprint, HostKey(path, line, fingerprint))
    return tuple(found.values())[:MAX_HOST_KEYS]


def trust_anchors(message: agent_pb2.TrustAnchors) -> TrustAnchors:
    """Return the trust anchors in `message` as plain values."""
    return TrustAnchors(message.trusted_user_ca_keys, message.x509_ca_bundle_pem)


def host_certificates(
    keys: tuple[HostKey, ...], messages: list[agent_pb2.HostCertificate]
) -> tuple[HostCertificate, ...]:
    """Pair each returned certificate with the host key file it certifies."""
    by_fingerprint = {key.fingerprint: key for key in keys}
    paired = []
    for message in messages:
        key = by_fingerprint.get(message.host_key_fingerprint)
        if key is None:
            log.warning(
                "the platform certified a host key sftd did not send; ignoring it",
                fingerprint=message.host_key_fingerprint,
            )
            continue
        paired.append(
            HostCertificate(
                host_key_file=str(key.path),
                host_key_fingerprint=message.host_key_fingerprint,
                certificate=message.certificate,
                principals=tuple(message.principals),
                valid_after=message.valid_after.ToDatetime(tzinfo=dt.UTC),
                valid_before=message.valid_before.ToDatetime(tzinfo=dt.UTC),
            )
        )
    return tuple(paired)
