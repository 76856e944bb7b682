"""Configuration from a YAML file, the environment and flags, validated in one place.

Precedence: flags > environment > file > defaults. Every problem is reported as a
single ConfigError line naming the key, the value's source and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

__all__ = ["ConfigError", "load_config"]

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(Exception):
    """A configuration problem, worded as one line for the operator."""


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def _from_environment(
    model: type[BaseModel], prefix: str, environ: Mapping[str, str], ignore: frozenset[str]
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    known = set(model.model_fields)
    for name, raw in environ.items():
        if not name.startswith(prefix) or name in ignore:
            continue
        key = name[len(prefix) :].lower()
        if key not in known:
            raise ConfigError(
                f"environment variable {name} names no setting; "
                f"known: {', '.join(prefix + k.upper() for k in sorted(known))}"
            )
        values[key] = raw
    return values


def _describe(error: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    loc = ".".join(str(part) for part in error["loc"]) or "config"
    top = str(error["loc"][0]) if error["loc"] else ""
    source = sources.get(top, "")
    where = f" (from {source})" if source else ""
    if error["type"] == "extra_forbidden":
        return f"unknown setting {loc!r}{where}; check its spelling against the README"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"setting {loc!r}{where}: {message}"


def load_config(
    model: type[ModelT],
    *,
    file: Path | None,
    env_prefix: str,
    overrides: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    ignore_env: frozenset[str] = frozenset(),
) -> ModelT:
    """Merge file, environment and flag values and validate them against `model`."""
    environ = os.environ if environ is None else environ
    sources: dict[str, str] = {}
    merged: dict[str, Any] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if file is not None:
        layers.append((str(file), _read_file(file)))
    layers.append(("environment", _from_environment(model, env_prefix, environ, ignore_env)))
    layers.append(("command line", {k: v for k, v in overrides.items() if v is not None}))
    for source, values in layers:
        for key, value in values.items():
            merged[key] = value
            sources[key] = source
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ConfigError(_describe(first, sources) + suffix) from None
