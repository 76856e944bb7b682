"""How verbs print: text for people (default) or one JSON document for scripts (`-o json`).

Data goes to stdout, errors and warnings to stderr. Never prints a token or key.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

__all__ = [
    "JSON",
    "Column",
    "choose_columns",
    "emit",
    "format_table",
    "human_age",
    "human_time",
    "iso_time",
    "output_option",
    "render_columns",
    "short_id",
    "short_time",
    "table_output_option",
    "warn",
]

F = TypeVar("F", bound=Callable[..., Any])
JSON = "json"
TEXT = "text"
#: ASA spelled the default listing format `table`; it is the same as `text`.
TABLE = "table"


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


def human_age(value: dt.datetime | None, now: dt.datetime) -> str:
    """Return how long ago `value` was (`45s ago`, `12m ago`, `3h ago`, `2d ago`), or `never`."""
    if value is None:
        return "never"
    seconds = max(int((now - value).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Return left-aligned columns separated by two spaces, headers in capitals."""
    cells = [[h.upper() for h in headers], *[list(row) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _table_means_text(ctx: click.Context, param: click.Parameter, value: str) -> str:
    return TEXT if value == TABLE else value


def table_output_option(func: F) -> F:
    """Add `-o/--output text|table|json` to a listing verb (`table` is `text`)."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice([TEXT, TABLE, JSON]),
        default=TEXT,
        show_default=True,
        callback=_table_means_text,
        help="Print a table for people (`text` or `table`) or one JSON document for scripts.",
    )(func)


def iso_time(value: dt.datetime | None) -> str | None:
    """Return `value` in ISO 8601 (UTC) for JSON output, or None when unset."""
    return value.astimezone(dt.UTC).isoformat() if value is not None else None


def short_id(resource: str) -> str:
    """Return the last segment of a resource name (`teams/a/projects/web` → `web`)."""
    return resource.rsplit("/", 1)[-1]


def short_time(value: str | None) -> str:
    """Return an ISO time from JSON output as a table cell, `2025-06-01 12:00` (or blank)."""
    return (value or "")[:16].replace("T", " ")


@dataclass(frozen=True)
class Column:
    """One column a listing can show: its name on the command line and how to fill a cell."""

    name: str
    cell: Callable[[Any], str]
    header: str = ""

    @property
    def title(self) -> str:
        """Return the header to print (the name with spaces for underscores by default)."""
        return self.header or self.name.replace("_", " ")


def choose_columns(
    spec: str | None, available: Sequence[Column], default: Sequence[str]
) -> list[Column]:
    """Return the columns named in `spec` (`name,hostname`), or `default` when None.

    Raises click.BadParameter (a usage error) naming the unknown column and the known ones.
    """
    by_name = {column.name: column for column in available}
    names = default if spec is None else [part.strip() for part in spec.split(",")]
    chosen: list[Column] = []
    for name in names:
        if name not in by_name:
            known = ", ".join(column.name for column in available)
            raise click.BadParameter(
                f"unknown column {name!r}; choose from {known}" if name else "empty column name",
                param_hint="'--columns'",
            )
        chosen.append(by_name[name])
    if not chosen:
        raise click.BadParameter("name at least one column", param_hint="'--columns'")
    return chosen


def render_columns(columns: Sequence[Column], items: Sequence[Any], empty: str) -> str:
    """Return `items` as a table of `columns`, or the sentence `empty` when there are none."""
    if not items:
        return empty
    return format_table(
        [column.title for column in columns],
        [[column.cell(item) for column in columns] for item in items],
    )
