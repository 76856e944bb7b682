"""Entry point of `sftd`. Enrollment and reconciliation arrive with the agent issue."""

from __future__ import annotations

import click

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sft", prog_name="sftd")
def main() -> None:
    """The sft server agent."""
