"""How verbs print: text for people (default) or one JSON document for scripts (`-o json`).

Data goes to stdout, errors and warnings to stderr. Never prints a token or key.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

__all__ = ["JSON", "emit", "format_table", "human_time", "output_option", "warn"]

F = TypeVar("F", bound=Callable[..., Any])
JSON = "json"


def output_option(func: F) -> F:
    """Add `-o/--output text|json` to a verb."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["text", JSON]),
        default="text",
        show_default=True,
        help="Print text for people or one JSON document for scripts.",
    )(func)


def emit(output: str, data: Any, text: str) -> None:
    """Print `data` as JSON when asked to, else `text`."""
    if output == JSON:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(text)


def warn(message: str) -> None:
    """Print a one-line warning on stderr."""
    click.echo(f"sft: warning: {message}", err=True)


def human_time(value: dt.datetime, now: dt.datetime | None = None) -> str:
    """Return `2025-06-01 12:00 UTC (in 59 min)`: absolute, and relative when near."""
    stamp = f"{value.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"
    if now is None:
        return stamp
    seconds = int((value - now).total_seconds())
    if seconds <= 0:
        return f"{stamp} (expired)"
    if seconds < 3600:
        return f"{stamp} (in {max(seconds // 60, 1)} min)"
    if seconds < 86400:
        return f"{stamp} (in {seconds // 3600} h)"
    return stamp


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Return left-aligned columns separated by two spaces, headers in capitals."""
    cells = [[h.upper() for h in headers], *[list(row) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )
