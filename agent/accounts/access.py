"""Enables and disables accounts for the broker's sessions (the local control channel).

Only accounts sftd created and the platform still grants are ever enabled; the
one-time password is returned to the caller and never logged or stored.
"""

from __future__ import annotations

import structlog

from agent.accounts.backend import AccountBackend, AccountChange, BackendError
from agent.accounts.managed import ManagedAccount, ManagedAccounts
from agent.accounts.passwords import one_time_password
from runtime.errors import FailedPrecondition, NotFound, PermissionDenied

__all__ = ["AccountAccess"]

log = structlog.get_logger("sft.agent.accounts")


class AccountAccess:
    """Enable with a one-time password, disable, and fail closed at agent start.

    What *disable* means depends on the mode. Under zero standing privilege (Windows,
    or Linux with the broker) the account is locked and its password forgotten: no
    way in until the next grant. Otherwise (Linux default) a granted account keeps its
    certificate logins, so disable only forgets the password (field back to `*`).
    """

    def __init__(
        self,
        backend: AccountBackend,
        managed: ManagedAccounts,
        *,
        zero_standing_privilege: bool = False,
    ) -> None:
        self.backend = backend
        self.managed = managed
        self.zero_standing_privilege = zero_standing_privilege

    async def enable(self, name: str) -> str:
        """Set a fresh one-time password on account `name`, unlock it, and return it.

        `name` is the account's local name (what the RDP client logs in as).
        """
        async with self.managed.lock:
            record = await self._granted(name)
            password = one_time_password()
            try:
                await self.backend.set_password(record.local_name, password)
                await self.backend.change_account(record.local_name, AccountChange(locked=False))
            except BackendError as error:
                log.error("account enable failed", account=name, user=record.user, error=str(error))
                try:
                    await self._disable(record, reason="enable failed half-way")
                except BackendError as undo:
                    log.error(
                        "account disable failed", account=name, user=record.user, error=str(undo)
                    )
                raise FailedPrecondition(f"could not enable account {name!r}: {error}") from None
            log.info(
                "account enabled",
                account=name,
                user=record.user,
                reason="session granted by the broker",
            )
            return password

    async def disable(self, name: str, *, reason: str = "session ended") -> None:
        """Disable account `name` and forget its password (see the class for what that means)."""
        async with self.managed.lock:
            record = self.managed.by_local_name(name)
            if record is None or record.pending:
                raise NotFound(f"account {name!r} is not managed by sftd")
            try:
                await self._disable(record, reason=reason)
            except BackendError as error:
                raise FailedPrecondition(f"could not disable account {name!r}: {error}") from None

    async def disable_all_without_grant(self, live: set[str]) -> list[str]:
        """Disable every managed account that is usable beyond the `live` grants.

        Called at agent start (with the broker's live sessions, usually none), so a
        crash never leaves an account enabled. Returns the local names disabled; a
        failure is logged and the others still go on.
        """
        disabled = []
        async with self.managed.lock:
            system = await self.backend.read()
            for record in list(self.managed.accounts.values()):
                local = system.account(record.local_name)
                if record.local_name in live or local is None:
                    continue
                if self.backend.numeric_ids and local.uid != record.uid:
                    continue  # not ours any more
                must_lock = self.zero_standing_privilege or not record.granted
                if not local.has_password and (local.locked or not must_lock):
                    continue
                try:
                    await self._disable(record, reason="no live grant at agent start")
                except BackendError as error:
                    log.error(
                        "account disable failed",
                        account=record.local_name,
                        user=record.user,
                        error=str(error),
                    )
                    continue
                disabled.append(record.local_name)
        return disabled

    async def _granted(self, name: str) -> ManagedAccount:
        record = self.managed.by_local_name(name)
        if record is None or record.pending:
            raise NotFound(f"account {name!r} is not managed by sftd; it only enables its own")
        if not record.granted:
            raise PermissionDenied(
                f"account {name!r} is no longer granted on this server; it stays locked"
            )
        system = await self.backend.read()
        local = system.account(record.local_name)
        if local is None:
            raise NotFound(f"account {name!r} does not exist on this server (yet)")
        if self.backend.numeric_ids and local.uid != record.uid:
            raise PermissionDenied(f"account {name!r} was replaced outside sftd; not enabling it")
        return record

    async def _disable(self, record: ManagedAccount, *, reason: str) -> None:
        if self.zero_standing_privilege or not record.granted:
            # Locking also forgets the password (one OS call).
            await self.backend.change_account(record.local_name, AccountChange(locked=True))
        else:
            await self.backend.forget_password(record.local_name)
        log.info(
            "account disabled",
            account=record.local_name,
            user=record.user,
            reason=reason,
            locked=self.zero_standing_privilege or not record.granted,
        )
