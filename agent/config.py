"""sftd.yaml: the agent's settings, with ASA's key names, checked in full at start.

Loads and validates only; never writes the file. Every mistake (an unknown key, a
bad value, a missing explicit file) becomes one ConfigError line naming the key and
what it accepts, so `sftd` can refuse to start without a traceback.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from agent import paths
from agent.platform import PlatformURL, parse_platform_url

__all__ = ["AgentConfig", "ConfigError", "LogLevel", "load_config"]

LogLevel = Literal["debug", "info", "warning", "error"]

MAX_NAME_CHARS = 253
MAX_ALT_NAMES = 32
MAX_LABELS = 64
_LABEL_KEY = re.compile(r"[A-Za-z0-9._/-]{1,63}")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9._/-]{0,255}")
# A DNS name or a bare host label: what a client can dial or name.
_DNS_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_DNS_LABEL}(\.{_DNS_LABEL})*\.?")
_INTERFACE = re.compile(r"[A-Za-z0-9_.:@ -]{1,64}")
_LOG_LEVELS: dict[str, LogLevel] = {
    "debug": "debug",
    "info": "info",
    "warn": "warning",
    "warning": "warning",
    "error": "error",
}
DEFAULT_BROKER_PORT = 4421
# Every IPv4 address: the broker is the one part of a server that clients dial.
DEFAULT_BROKER_LISTEN_ADDRESS = "0.0.0.0"
DEFAULT_BROKER_USER = "sft-broker"
# useradd's rule for a portable user name (shadow-utils), at most 32 characters.
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_PRIVILEGED_USERS = frozenset({"root", "toor"})
DEFAULT_SSHD_PORT = 22
DEFAULT_RDP_TARGET = "127.0.0.1:3389"
DEFAULT_SESSION_GRACE_PERIOD_SECONDS = 60
MAX_SESSION_GRACE_PERIOD_SECONDS = 86400


# pydantic's words for a wrong type, said the way sftd.yaml is written.
_PLAIN_MESSAGES = {
    "int_type": "must be a whole number",
    "bool_type": "must be true or false",
    "string_type": "must be text (quote it if YAML reads it as a number or a boolean)",
    "dict_type": "must be a mapping of key: value lines",
    "tuple_type": "must be a list, e.g. [web-1, web-1.example.com]",
    "path_type": "must be a path",
}


class ConfigError(Exception):
    """sftd.yaml cannot be used; the message is one line saying what to change."""


def _platform_url(value: str) -> str:
    return str(parse_platform_url(value))


def _absolute(path: Path) -> Path:
    if not path.is_absolute() and not re.match(r"^[A-Za-z]:\\", str(path)):
        raise ValueError(f"must be an absolute path, not {str(path)!r}")
    return path


def _host(value: str) -> str:
    text = value.strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(text):
        raise ValueError(f"must be an IP address or a DNS name, not {value!r}")
    return text.rstrip(".")


def _name(value: str) -> str:
    text = value.strip()
    if not text or len(text) > MAX_NAME_CHARS:
        raise ValueError(f"must be 1 to {MAX_NAME_CHARS} characters")
    return text


def _labels(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    for key, item in value.items():
        if not _LABEL_KEY.fullmatch(key):
            raise ValueError(f"label key {key!r} must be 1 to 63 characters of A-Z a-z 0-9 . _ / -")
        if not _LABEL_VALUE.fullmatch(item):
            raise ValueError(
                f"label {key}: value {item!r} must be at most 255 characters of "
                "A-Z a-z 0-9 . _ / - (no spaces, commas or =)"
            )
    return value


def _alt_names(value: tuple[str, ...]) -> tuple[str, ...]:
    if len(value) > MAX_ALT_NAMES:
        raise ValueError(f"at most {MAX_ALT_NAMES} names")
    return tuple(_name(item) for item in value)


def _log_level(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in _LOG_LEVELS:
        return _LOG_LEVELS[value.strip().lower()]
    raise ValueError(f"must be DEBUG, INFO, WARN or ERROR, not {value!r}")


def _host_port(value: str) -> str:
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(
            f"must be HOST:PORT with a port 1-65535, e.g. 127.0.0.1:3389, not {value!r}"
        )
    _host(host.removeprefix("[").removesuffix("]"))
    return value.strip()


def _listen_address(value: str) -> str:
    text = value.strip().removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(
            "must be an IP address of this machine to listen on, e.g. 0.0.0.0 (every IPv4 "
            f"address), :: or 127.0.0.1, not {value!r}"
        ) from None


def _user_name(value: str) -> str:
    if not _USER_NAME.fullmatch(value):
        raise ValueError(
            "must be a user name of 1 to 32 characters a-z 0-9 _ - (starting with a letter "
            f"or _), not {value!r}"
        )
    if value in _PRIVILEGED_USERS:
        raise ValueError(
            f"must not be {value!r}: the broker listens to the network and runs with the "
            "least privilege, never as root"
        )
    return value


def _interface(value: str) -> str:
    if not _INTERFACE.fullmatch(value):
        raise ValueError(f"must be a network interface name such as eth0, not {value!r}")
    return value


AbsolutePath = Annotated[Path, AfterValidator(_absolute)]
Port = Annotated[StrictInt, Field(ge=1, le=65535)]
Name = Annotated[StrictStr, AfterValidator(_name)]
URLText = Annotated[StrictStr, AfterValidator(_platform_url)]
HostText = Annotated[StrictStr, AfterValidator(_host)]
InterfaceName = Annotated[StrictStr, AfterValidator(_interface)]


class AgentConfig(BaseModel):
    """Every sftd.yaml key. Field names are snake_case; the YAML keys are the aliases."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_alias=True, validate_by_name=True
    )

    #: Platform URL, https://HOST[:PORT]; required to enroll.
    initial_url: Annotated[URLText | None, Field(alias="InitialURL")] = None
    #: The name clients see (default: the OS host name).
    canonical_name: Annotated[Name | None, Field(alias="CanonicalName")] = None
    alt_names: Annotated[tuple[Name, ...], Field(alias="AltNames"), AfterValidator(_alt_names)] = ()
    labels: Annotated[
        dict[StrictStr, StrictStr], Field(alias="Labels"), AfterValidator(_labels)
    ] = Field(default_factory=dict)
    access_address: Annotated[HostText | None, Field(alias="AccessAddress")] = None
    access_interface: Annotated[InterfaceName | None, Field(alias="AccessInterface")] = None
    bastion: Annotated[Name | None, Field(alias="Bastion")] = None
    auto_enroll: Annotated[StrictBool, Field(alias="AutoEnroll")] = True
    enrollment_token_file: Annotated[AbsolutePath, Field(alias="EnrollmentTokenFile")] = Field(
        default_factory=lambda: paths.default_paths().enrollment_token_file
    )
    log_level: Annotated[LogLevel, Field(alias="LogLevel"), BeforeValidator(_log_level)] = "info"
    sshd_config_file: Annotated[AbsolutePath, Field(alias="SSHDConfigFile")] = Field(
        default_factory=lambda: paths.default_paths().sshd_config_file
    )
    trusted_user_ca_keys_file: Annotated[AbsolutePath, Field(alias="TrustedUserCAKeysFile")] = (
        Field(default_factory=lambda: paths.default_paths().trusted_user_ca_keys_file)
    )
    sshd_port: Annotated[Port, Field(alias="SSHDPort")] = DEFAULT_SSHD_PORT
    state_dir: Annotated[AbsolutePath, Field(alias="StateDir")] = Field(
        default_factory=lambda: paths.default_paths().state_dir
    )
    log_dir: Annotated[AbsolutePath, Field(alias="LogDir")] = Field(
        default_factory=lambda: paths.default_paths().log_dir
    )
    #: Certify sshd's host keys and wire it to the project's CAs (Linux default).
    manage_sshd: Annotated[StrictBool, Field(alias="ManageSSHD")] = Field(
        default_factory=lambda: paths.current_os() == "linux"
    )
    manage_accounts: Annotated[StrictBool, Field(alias="ManageAccounts")] = True
    #: Run the RDP access broker (Windows default).
    broker: Annotated[StrictBool, Field(alias="Broker")] = Field(
        default_factory=lambda: paths.current_os() == "windows"
    )
    broker_port: Annotated[Port, Field(alias="BrokerPort")] = DEFAULT_BROKER_PORT
    #: The address the broker listens on (with BrokerPort); 0.0.0.0 is every IPv4 address.
    broker_listen_address: Annotated[
        StrictStr, Field(alias="BrokerListenAddress"), AfterValidator(_listen_address)
    ] = DEFAULT_BROKER_LISTEN_ADDRESS
    #: Linux: the system user the broker runs as; sftd (as root) creates it if missing.
    broker_user: Annotated[StrictStr, Field(alias="BrokerUser"), AfterValidator(_user_name)] = (
        DEFAULT_BROKER_USER
    )
    rdp_target: Annotated[StrictStr, Field(alias="RDPTarget"), AfterValidator(_host_port)] = (
        DEFAULT_RDP_TARGET
    )
    #: Seconds after the last tunnel closes before the account is disabled again.
    session_grace_period_seconds: Annotated[
        StrictInt, Field(alias="SessionGracePeriod", ge=0, le=MAX_SESSION_GRACE_PERIOD_SECONDS)
    ] = DEFAULT_SESSION_GRACE_PERIOD_SECONDS

    @model_validator(mode="after")
    def _check(self) -> AgentConfig:
        if self.access_address and self.access_interface:
            raise ValueError(
                "AccessAddress and AccessInterface are both set; set one "
                "(AccessAddress names the address, AccessInterface the NIC to take it from)"
            )
        if self.broker and not self.manage_accounts:
            raise ValueError(
                "Broker is true but ManageAccounts is false; the broker enables accounts "
                "through sftd's account management: set ManageAccounts: true, or Broker: false"
            )
        return self

    @property
    def platform_url(self) -> PlatformURL | None:
        """Return InitialURL parsed, or None when it is not set."""
        return parse_platform_url(self.initial_url) if self.initial_url else None

    @property
    def key_names(self) -> tuple[str, ...]:
        """Return the sftd.yaml keys, as written in the file."""
        return _key_names()


def _key_names() -> tuple[str, ...]:
    return tuple(sorted(str(field.alias) for field in AgentConfig.model_fields.values()))


def _describe(error: ValidationError, where: str) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            problems.append(
                f"unknown key {key!r}; the keys sftd knows are {', '.join(_key_names())}"
            )
            continue
        ctx = item.get("ctx") or {}
        if item["type"] in {"less_than_equal", "greater_than_equal"}:
            bound = "at most" if item["type"] == "less_than_equal" else "at least"
            limit = ctx.get("le", ctx.get("ge"))
            problems.append(f"{key}: must be {bound} {limit}, not {item.get('input')!r}")
            continue
        message = _PLAIN_MESSAGES.get(item["type"], str(item["msg"]))
        message = message.removeprefix("Value error, ")
        if item["type"] in _PLAIN_MESSAGES:
            message = f"{message}, not {item.get('input')!r}"
        problems.append(f"{key}: {message}" if key else message)
    return f"{where}: {'; '.join(problems)}"


def load_config(path: Path | None) -> AgentConfig:
    """Read sftd.yaml at `path` (None: the default path, which may be absent)."""
    explicit = path is not None
    target = path if path is not None else paths.default_paths().config_file
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {target} does not exist (given with --conf)") from None
        return AgentConfig()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {target}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{target}: not valid YAML{at} ({problem})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{target}: must be a mapping of Key: value lines, e.g. `SSHDPort: 22`")
    try:
        return AgentConfig.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(target))) from None
