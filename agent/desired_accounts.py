"""Desired account lists as sftd handles them: where they go, and only the newest kept.

Plain values from WatchAccounts messages; changes nothing on the machine (the
AccountSink, the reconciler, does).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

from agent.accounts.model import DesiredAccount, DesiredState
from sft.inventory.v1 import agent_pb2, agent_service_pb2

__all__ = [
    "CONFLICT_KINDS",
    "AccountConflictLike",
    "AccountSink",
    "LatestDesired",
    "LoggingAccountSink",
    "desired_state",
]

log = structlog.get_logger("sftd")


class AccountSink(Protocol):
    """Where desired account lists go (the reconciler). Raising means "not applied"."""

    async def apply(self, state: DesiredState) -> object:
        """Make the machine's accounts match `state` (a complete list)."""


class LoggingAccountSink:
    """An AccountSink that changes nothing and logs what it was given, saying `why`."""

    def __init__(self, why: str) -> None:
        self.why = why

    async def apply(self, state: DesiredState) -> None:
        """Log the desired list."""
        log.info(
            "desired accounts not applied",
            why=self.why,
            revision=state.revision,
            accounts=[account.name for account in state.accounts][:100],
        )


def desired_state(message: agent_service_pb2.WatchAccountsResponse) -> DesiredState:
    """Return a WatchAccounts message as the reconciler's plain values."""
    return DesiredState(
        revision=message.revision,
        accounts=tuple(
            DesiredAccount(
                name=account.name,
                user=account.user,
                uid=account.uid,
                gid=account.gid,
                primary_group=account.primary_group,
                supplementary_groups=tuple(sorted(account.supplementary_groups)),
                admin=account.admin,
                windows_name=account.windows_name,
                full_name=account.full_name,
            )
            for account in message.accounts
        ),
        create_missing=message.create_missing,
    )


class LatestDesired:
    """A one-slot queue: only the newest desired list matters, so only it is kept."""

    def __init__(self) -> None:
        self.state: DesiredState | None = None
        self._changed = asyncio.Condition()

    async def offer(self, state: DesiredState) -> None:
        """Keep `state` if it is newer than the one held."""
        async with self._changed:
            if self.state is None or state.revision > self.state.revision:
                self.state = state
                self._changed.notify_all()

    async def newer_than(self, revision: int) -> DesiredState:
        """Return the held list once its revision is above `revision`."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.state is not None and self.state.revision > revision
            )
            assert self.state is not None
            return self.state


class _ConflictKindLike(Protocol):
    value: str


class AccountConflictLike(Protocol):
    """What the reconciler says about a refused account (agent.accounts.reconcile)."""

    name: str
    kind: _ConflictKindLike
    detail: str


CONFLICT_KINDS = {
    "name_in_use": agent_pb2.ACCOUNT_CONFLICT_KIND_NAME_IN_USE,
    "uid_in_use": agent_pb2.ACCOUNT_CONFLICT_KIND_UID_IN_USE,
    "gid_in_use": agent_pb2.ACCOUNT_CONFLICT_KIND_GID_IN_USE,
    "name_invalid": agent_pb2.ACCOUNT_CONFLICT_KIND_NAME_INVALID,
}
