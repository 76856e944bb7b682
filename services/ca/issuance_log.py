"""The issuance log's writer: every signed certificate is committed before it is returned,
and concurrent signings share one transaction (group commit).

A signing call appends its record and waits until the transaction holding it has
committed; only then does the caller get the certificate. So a certificate is never
handed out without its log row, exactly as when each call had its own transaction,
but N concurrent calls cost one commit instead of N (on SQLite a commit is an fsync
and the only writer; it was most of the cost of a signature).

If a batch fails on a unique serial (p ≈ 2^-63 per pair), its records are retried one
by one so only the colliding call fails. A caller that goes away while waiting does
not stop its row from being written: a logged certificate that nobody received is
harmless, the reverse would not be.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from runtime.database import Database
from runtime.errors import Conflict, ResourceExhausted, Unavailable
from services.ca.models import IssuanceRow
from services.ca.repository import IssuanceRecord

__all__ = ["IssuanceLog"]

log = structlog.get_logger("sft.ca")

#: Records written in one transaction at most.
MAX_BATCH = 256
#: Records waiting at most; beyond this, callers are told to back off.
MAX_PENDING = 8192

_Pending = tuple[dict[str, Any], "asyncio.Future[None]"]


def _values(record: IssuanceRecord) -> dict[str, Any]:
    return {
        "team": record.team,
        "project": record.project,
        "serial": record.serial,
        "kind": record.kind,
        "subject": record.subject,
        "principals": list(record.principals),
        "key_id": record.key_id,
        "key_fingerprint": record.key_fingerprint,
        "authority_id": record.authority.id,
        "authority_fingerprint": record.authority.fingerprint,
        "valid_after": record.valid_after,
        "valid_before": record.valid_before,
        "caller": record.caller,
        "request_id": record.request_id,
        "create_time": record.create_time,
    }


class IssuanceLog:
    """Appends issuance records in batched transactions; `append` returns once committed."""

    def __init__(
        self, database: Database, *, max_batch: int = MAX_BATCH, max_pending: int = MAX_PENDING
    ) -> None:
        self._database = database
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._pending: deque[_Pending] = deque()
        self._writer: asyncio.Task[None] | None = None

    async def append(self, record: IssuanceRecord) -> None:
        """Write `record`; return when it is committed, raise if it could not be."""
        if len(self._pending) >= self._max_pending:
            raise ResourceExhausted(
                "the CA's issuance log is behind (too many certificates waiting to be "
                "recorded); retry in a moment"
            )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # If the caller left, nobody reads an error; retrieve it so asyncio does not warn.
        done.add_done_callback(lambda future: future.cancelled() or future.exception())
        self._pending.append((_values(record), done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="ca-issuance-log")
        # Shielded: a caller cancelled while waiting must not cancel the future the
        # writer resolves (its row is written regardless).
        await asyncio.shield(done)

    async def _drain(self) -> None:
        while self._pending:
            batch = [
                self._pending.popleft() for _ in range(min(self._max_batch, len(self._pending)))
            ]
            try:
                await self._write([values for values, _ in batch])
            except IntegrityError:
                await self._write_one_by_one(batch)
                continue
            except Exception as error:
                log.error("issuance log write failed", error=str(error), records=len(batch))
                _settle(batch, _unavailable)
                continue
            _settle(batch, None)

    async def _write(self, rows: list[dict[str, Any]]) -> None:
        async with self._database.sessions.begin() as session:
            await session.execute(insert(IssuanceRow), rows)

    async def _write_one_by_one(self, batch: list[_Pending]) -> None:
        for values, done in batch:
            try:
                await self._write([values])
            except IntegrityError:
                _settle([(values, done)], _serial_taken)
            except Exception as error:
                log.error("issuance log write failed", error=str(error), records=1)
                _settle([(values, done)], _unavailable)
            else:
                _settle([(values, done)], None)


def _serial_taken() -> Conflict:
    return Conflict(
        "another certificate of this project got the same serial at the same time; retry"
    )


def _unavailable() -> Unavailable:
    return Unavailable(
        "the CA could not record the certificate in its issuance log, so it was not issued; "
        "retry, and tell the platform operator if it persists"
    )


def _settle(batch: list[_Pending], error: Callable[[], Exception] | None) -> None:
    for _, done in batch:
        if done.done():
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error())
