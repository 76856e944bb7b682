"""Entry point of `sft`. The verbs arrive with the inventory/auth, ssh and rdp issues."""

from __future__ import annotations

import click

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sft", prog_name="sft")
def main() -> None:
    """Reach enrolled servers over SSH and RDP with short-lived certificates."""
