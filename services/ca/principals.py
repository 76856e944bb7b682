"""Rules for the names a certificate may carry as principals. Pure; no I/O.

Must not import other services: the account-name rule is duplicated on purpose.
"""

from __future__ import annotations

import ipaddress
import re

from runtime.errors import InvalidInput

__all__ = ["PRIVILEGED_ACCOUNTS", "check_account_name", "check_host_principal"]

# The portable subset useradd accepts: lowercase, <= 32 characters.
_UNIX_ACCOUNT = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# Windows (SAM) names: <= 20 characters. We keep a strict subset that never needs
# quoting in an authorized_principals file or a key id: letters, digits, '_', '.', '-'.
_WINDOWS_ACCOUNT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,19}$")
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$"
)
#: Accounts that own the whole machine; compared case-insensitively (Windows is).
PRIVILEGED_ACCOUNTS = frozenset({"root", "administrator"})


def check_account_name(name: str, *, allow_privileged: bool = False) -> str:
    """Return `name` if it is a unix or windows account name we sign for; else InvalidInput."""
    windows_ok = _WINDOWS_ACCOUNT.fullmatch(name) is not None and not name.endswith(".")
    if not (_UNIX_ACCOUNT.fullmatch(name) or windows_ok):
        raise InvalidInput(
            f"account name {name!r} is not valid: use up to 32 lowercase letters, digits, '_' "
            "and '-' starting with a letter or '_' (unix), or up to 20 letters, digits, '_', "
            "'.' and '-' not ending in '.' (windows)"
        )
    if name.casefold() in PRIVILEGED_ACCOUNTS and not allow_privileged:
        raise InvalidInput(
            f"account {name!r} is privileged; certificates for it are refused unless the "
            "project explicitly allows privileged accounts"
        )
    return name


def check_host_principal(principal: str) -> str:
    """Return `principal` if it is a lowercase DNS name or an IP address; else InvalidInput."""
    # A scoped IPv6 address ("fe80::1%eth0") names an interface, not a host: refused.
    if "%" not in principal:
        try:
            ipaddress.ip_address(principal)
        except ValueError:
            pass
        else:
            return principal
    if not _HOST_NAME.fullmatch(principal):
        raise InvalidInput(
            f"host principal {principal!r} is not valid: use a lowercase DNS name "
            "(labels of letters, digits and '-') or an IP address"
        )
    return principal
