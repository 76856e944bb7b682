"""`sft admin`: the verbs team and project admins use to run a team.

The subgroups live in client/commands/admin_*.py and load only when named, so
`sft --help` pays nothing for them (they import grpc and the stubs at the top).
"""

from __future__ import annotations

import importlib

import click

__all__ = ["admin_group"]

#: Subgroup name → "module:attribute" of its click group.
SUBGROUPS = {
    "user": "client.commands.admin_users:user_group",
    "group": "client.commands.admin_groups:group_group",
    "service-user": "client.commands.admin_users:service_user_group",
    "project": "client.commands.admin_projects:project_group",
    "token": "client.commands.admin_tokens:token_group",
    "bastion": "client.commands.admin_bastions:bastion_group",
    "server": "client.commands.admin_servers:server_group",
    "audit": "client.commands.admin_audit:audit_group",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported the first time they are asked for."""

    def __init__(self, *args: object, subgroups: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.subgroups = subgroups

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Return every subcommand name, loaded or not."""
        return sorted({*super().list_commands(ctx), *self.subgroups})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Return the subcommand `cmd_name`, importing its module if needed."""
        if cmd_name not in self.subgroups:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = self.subgroups[cmd_name].split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group("admin", cls=LazyGroup, subgroups=SUBGROUPS)
def admin_group() -> None:
    """Administer the team: users, groups, projects, tokens, servers, audit.

    Most verbs need the team admin role; project settings, grants, tokens, servers
    and bastions also accept an admin grant on the project. Every verb takes
    --team and, where it prints data, -o json.

    \b
    Examples:
      sft admin user invite bob --display-name "Bob Smith"
      sft admin project create web --ttl 10m --max-ttl 1h
      sft admin project grant developers web
      sft admin token create --project web
      sft admin audit list --since 1h
    """
