"""Options every verb shares: which team (`--team`, `$SFT_TEAM`, else the current team)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from client.state import TEAM_ENV

__all__ = ["team_option"]

F = TypeVar("F", bound=Callable[..., Any])


def team_option(func: F) -> F:
    """Add `--team TEAM` (also `$SFT_TEAM`); None means the current team."""
    return click.option(
        "--team",
        envvar=TEAM_ENV,
        default=None,
        metavar="TEAM",
        help=f"Team to act on [default: ${TEAM_ENV}, else the current team (`sft use`)].",
    )(func)
