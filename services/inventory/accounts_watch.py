"""The fan-out behind WatchAccounts: tells every waiting agent stream when its team's
accounts revision moves, and computes each project's account list once per revision.

What lets one process hold ten thousand streams: a stream waits on an in-memory event
and never holds a database session; one poller task per team with watchers reads
Team.accounts_revision (to see other replicas' changes), never one query per stream;
and the list for (project, revision) is computed once and shared. `notify` wakes this
process's streams at once after a local commit. Every task here is owned and cancelled.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from runtime.clock import Clock, utc_now
from runtime.database import Database
from runtime.errors import NotFound, Unavailable
from services.inventory import desired_accounts, servers
from services.inventory.models import Server

__all__ = ["AccountsHub", "AccountsWatch", "HubStats"]

log = structlog.get_logger("sft.inventory.accounts")

_MAX_BACKOFF_SECONDS = 30.0
# Big enough for every project with watchers at a couple of revisions each; an evicted
# entry costs one recomputation, never a wrong answer (the key includes the revision).
_DEFAULT_CACHE_SIZE = 1024
# SQLite allows 32766 bound parameters; stay far below for the "still enrolled?" check.
_ID_CHUNK = 500

T = TypeVar("T")


def _forget(tasks: set[asyncio.Task[Any]]) -> Any:
    """Return a done-callback that drops a task and retrieves its outcome."""

    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        # Retrieve the exception, so a computation whose waiters all left is not reported
        # as "never retrieved"; the waiters that remained got it already.
        if not task.cancelled():
            task.exception()

    return done


@dataclass(frozen=True)
class HubStats:
    """What the hub holds right now (for tests and metrics)."""

    teams: int
    watchers: int
    tasks: int
    cached_lists: int


@dataclass
class _Team:
    """One team's watchers in this process, and the revision they have been told about."""

    revision: int
    servers: Counter[str] = field(default_factory=Counter)
    gone: set[str] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    poke: asyncio.Event = field(default_factory=asyncio.Event)
    poller: asyncio.Task[None] | None = None

    def publish(self, revision: int) -> None:
        """Record a newer revision and wake every waiter."""
        if revision <= self.revision:
            return
        self.revision = revision
        woken, self.changed = self.changed, asyncio.Event()
        woken.set()


class AccountsWatch:
    """One stream's subscription to its team's revision."""

    def __init__(self, hub: AccountsHub, state: _Team, server_id: str) -> None:
        self._hub = hub
        self._state = state
        self._server_id = server_id

    async def changed(self, after: int) -> int | None:
        """Wait until the team's revision passes `after`; return it.

        Returns None when the hub closes (the stream should end cleanly); raises
        NotFound when the server was deleted meanwhile.
        """
        state = self._state
        while True:
            if self._hub.closed:
                return None
            if self._server_id in state.gone:
                raise NotFound(
                    "this server was deleted from the platform; enroll it again with a new "
                    "enrollment token"
                )
            if state.revision > after:
                return state.revision
            await state.changed.wait()


class AccountsHub:
    """Wakes WatchAccounts streams on account changes; shares each project's list."""

    def __init__(
        self,
        database: Database,
        clock: Clock = utc_now,
        poll_interval: float = 2.0,
        *,
        cache_size: int = _DEFAULT_CACHE_SIZE,
    ) -> None:
        # `clock` is accepted for symmetry with the servicers' wiring; revisions, not
        # times, drive the hub.
        self._database = database
        self._clock = clock
        self._poll_interval = poll_interval
        self._cache_size = cache_size
        self._teams: dict[str, _Team] = {}
        self._cache: OrderedDict[tuple[str, int], desired_accounts.DesiredAccounts | None] = (
            OrderedDict()
        )
        self._pending: dict[
            tuple[str, int], asyncio.Task[desired_accounts.DesiredAccounts | None]
        ] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False

    def notify(self, team_id: str) -> None:
        """Say a commit in this process bumped `team_id`'s revision; wake its streams now.

        Safe to call from any coroutine on the hub's loop; a no-op for teams nobody here
        watches.
        """
        state = self._teams.get(team_id)
        if state is not None:
            state.poke.set()

    @asynccontextmanager
    async def watch(
        self, team_id: str, server_id: str, revision: int
    ) -> AsyncIterator[AccountsWatch]:
        """Subscribe a stream of `server_id` (which has seen `revision`) until the block ends."""
        state = self._teams.get(team_id)
        if state is None:
            state = self._teams[team_id] = _Team(revision)
            if not self.closed:
                state.poller = self._own(asyncio.create_task(self._poll(team_id, state)))
        state.publish(revision)
        state.servers[server_id] += 1
        try:
            yield AccountsWatch(self, state, server_id)
        finally:
            self._unsubscribe(team_id, state, server_id)

    def _unsubscribe(self, team_id: str, state: _Team, server_id: str) -> None:
        """Drop one watcher; stop the team's poller when it was the last."""
        state.servers[server_id] -= 1
        if state.servers[server_id] <= 0:
            del state.servers[server_id]
            state.gone.discard(server_id)
        if not state.servers and self._teams.get(team_id) is state:
            del self._teams[team_id]
            if state.poller is not None:
                state.poller.cancel()

    async def desired(
        self, project_id: str, revision: int
    ) -> desired_accounts.DesiredAccounts | None:
        """Return the project's account list at `revision`, computed once for all streams."""
        key = (project_id, revision)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        task = self._pending.get(key)
        if task is None:
            task = self._own(asyncio.create_task(self._compute(project_id, revision)))
            self._pending[key] = task
        # shield: one stream going away must not cancel the computation others await.
        return await asyncio.shield(task)

    async def _compute(
        self, project_id: str, revision: int
    ) -> desired_accounts.DesiredAccounts | None:
        """Compute, cache and return a project's list at `revision`."""
        key = (project_id, revision)
        try:
            try:
                async with self._database.sessions() as session:
                    result = await desired_accounts.desired_accounts(session, project_id, revision)
            except (SQLAlchemyError, OSError) as error:
                log.warning("computing desired accounts failed", error=str(error)[:200])
                raise Unavailable(
                    "the platform database is unavailable; the agent reconnects and retries"
                ) from None
            self._cache[key] = result
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return result
        finally:
            self._pending.pop(key, None)

    async def _poll(self, team_id: str, state: _Team) -> None:
        """Read the team's revision every poll interval, or at once when notified."""
        failures = 0
        while True:
            try:
                async with asyncio.timeout(self._poll_interval):
                    await state.poke.wait()
            except TimeoutError:
                pass
            state.poke.clear()
            try:
                await self._refresh(team_id, state)
                failures = 0
            except (SQLAlchemyError, OSError) as error:
                failures += 1
                delay = min(_MAX_BACKOFF_SECONDS, self._poll_interval * 2**failures)
                log.warning(
                    "reading the accounts revision failed; retrying",
                    team_id=team_id,
                    error=str(error).splitlines()[0] if str(error) else type(error).__name__,
                    retry_seconds=round(delay, 1),
                )
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 (jitter)

    async def _refresh(self, team_id: str, state: _Team) -> None:
        """Read the team's revision; on a newer one, mark deleted servers and publish."""
        async with self._database.sessions() as session:
            revision = await servers.team_revision(session, team_id)
            if revision is not None and revision <= state.revision:
                return
            watched = sorted(state.servers)
            alive: set[str] = set()
            for start in range(0, len(watched), _ID_CHUNK):
                chunk = watched[start : start + _ID_CHUNK]
                alive.update(await session.scalars(select(Server.id).where(Server.id.in_(chunk))))
        state.gone.update(set(watched) - alive)
        if revision is None:
            # The team was deleted: every server of it is gone; wake them all to end.
            state.gone.update(watched)
            woken, state.changed = state.changed, asyncio.Event()
            woken.set()
            return
        state.publish(revision)

    def _own(self, task: asyncio.Task[T]) -> asyncio.Task[T]:
        """Keep `task` until it is done, so close() can cancel and await it."""
        self._tasks.add(task)
        task.add_done_callback(_forget(self._tasks))
        return task

    def stats(self) -> HubStats:
        """Return how many teams, watchers, live tasks and cached lists the hub holds."""
        return HubStats(
            teams=len(self._teams),
            watchers=sum(sum(state.servers.values()) for state in self._teams.values()),
            tasks=sum(1 for task in self._tasks if not task.done()),
            cached_lists=len(self._cache),
        )

    async def close(self) -> None:
        """End every watch (streams return cleanly) and cancel and await every task."""
        self.closed = True
        for state in self._teams.values():
            woken, state.changed = state.changed, asyncio.Event()
            woken.set()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._cache.clear()
