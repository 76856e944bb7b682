"""Fill the SSH cache from the platform: resolve names, get certificates, remember servers.

One writer at a time per team (a file lock), and every writer looks at the cache again
once it holds the lock: ten `sft ssh` started together with an empty cache sign one
certificate, not ten. Refusals change nothing on disk but the key pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import filelock

from client.commands.calls import explain_status
from client.device_key import generate_device_key, private_key_openssh, public_key_line
from client.errors import ClientError
from client.files import write_atomic
from client.resolve import resolve_server
from client.ssh_args import SSHInvocation
from client.ssh_cache import RENEW_BEFORE_SECONDS, Credential, Hop, Route, ServerRecord, SSHCache

if TYPE_CHECKING:
    from client.session import Session
    from sft.auth.v1 import access_service_pb2

__all__ = ["LOCK_TIMEOUT_SECONDS", "CredentialFetcher", "cache_lock"]

#: How long an `sft` waits for another one that is fetching credentials for the same team.
LOCK_TIMEOUT_SECONDS = 60.0

Clock = Callable[[], float]


@contextlib.asynccontextmanager
async def cache_lock(lock_file: str) -> AsyncIterator[None]:
    """Hold a credential cache's lock file, waiting at most LOCK_TIMEOUT_SECONDS for it."""
    lock = filelock.FileLock(lock_file, mode=0o600)
    try:
        await asyncio.to_thread(lock.acquire, timeout=LOCK_TIMEOUT_SECONDS)
    except filelock.Timeout:
        raise ClientError(
            f"another sft has held the credential cache for {LOCK_TIMEOUT_SECONDS:.0f} s "
            f"({lock_file})",
            hint="wait for it to finish, or stop it if it hangs",
        ) from None
    try:
        yield
    finally:
        lock.release()


class CredentialFetcher:
    """Gets what the cache lacks for one route, under the team's cache lock."""

    def __init__(
        self,
        session: Session,
        cache: SSHCache,
        *,
        clock: Clock = time.time,
        margin: float = RENEW_BEFORE_SECONDS,
    ) -> None:
        self.session = session
        self.cache = cache
        self._clock = clock
        self._margin = margin
        self._key_line = ""

    def _locked(self) -> contextlib.AbstractAsyncContextManager[None]:
        self.cache.ensure_directories()
        return cache_lock(self.cache.lock_file)

    async def route(self, call: SSHInvocation) -> Route:
        """Return a fresh route to `call.name` through `call.via`, fetching what is missing."""
        async with self._locked():
            cached = self.cache.route(call.name, call.via, call.account, margin=self._margin)
            if cached is not None:
                return cached
            self._key_line = self._ensure_key()
            target = await self._named(call.name, project=call.project, account=call.account)
            hops = await self._hops(call.via, target.bastions)
            self.cache.rebuild_known_hosts()
            return Route(target, hops)

    async def hops(
        self, via: list[str], bastions: tuple[Hop, ...]
    ) -> tuple[ServerRecord | Hop, ...]:
        """Return fresh hops through `via` (names), then `bastions`, each with its certificate.

        What `sft rdp` uses for its bastion chain: the hops `sft ssh --via` would make.
        """
        async with self._locked():
            cached = self.cache.hops(via, bastions, margin=self._margin)
            if cached is not None:
                return cached
            self._key_line = self._ensure_key()
            hops = await self._hops(via, bastions)
            self.cache.rebuild_known_hosts()
            return hops

    async def _hops(
        self, via: list[str], bastions: tuple[Hop, ...]
    ) -> tuple[ServerRecord | Hop, ...]:
        hops: list[ServerRecord | Hop] = []
        for name in via:
            hops.append(await self._named(name, project=None, account=""))
        for bastion in bastions:
            hops.append(await self._server(bastion.server) if bastion.server else bastion)
        return tuple(hops)

    def _ensure_key(self) -> str:
        """Return the public key line, making the key pair first if there is none."""
        existing = self.cache.public_key()
        if existing is not None and os.path.isfile(self.cache.key_file):
            return existing
        key = generate_device_key()
        line = f"{public_key_line(key)} sft-{self.session.team}"
        write_atomic(self.cache.key_file, private_key_openssh(key))
        write_atomic(self.cache.public_key_file, (line + "\n").encode())
        return line

    async def _named(self, name: str, *, project: str | None, account: str) -> ServerRecord:
        now = self._clock()
        fresh = self.cache.lookup(name, account, now=now, margin=self._margin)
        if fresh is not None:
            return fresh
        if name.startswith("teams/"):  # a resource name: IssueCredentials checks it
            return await self._server(name, account=account, names=[name])
        server = await resolve_server(self.session, name, project=project)
        return await self._server(server.name, account=account, names=[name])

    async def _server(
        self, resource: str, *, account: str = "", names: tuple[str, ...] | list[str] = ()
    ) -> ServerRecord:
        now = self._clock()
        record = self.cache.fresh_server(resource, account, now=now, margin=self._margin)
        if record is not None:
            self.cache.remember_names(record.server, list(names))
            return record
        record = await self._issue(resource, account)
        self.cache.store_server(record, list(names))
        return record

    async def _issue(self, resource: str, account: str) -> ServerRecord:
        """Ask the platform for a certificate for `resource`; store it; return the record."""
        from sft.auth.v1 import access_pb2, access_service_pb2, access_service_pb2_grpc

        stub = access_service_pb2_grpc.AccessServiceStub(self.session.channel())
        request = access_service_pb2.IssueCredentialsRequest(
            server=resource,
            kind=access_pb2.CREDENTIAL_KIND_SSH,
            ssh_public_key=self._key_line,
            account_name=account,
        )
        try:
            reply: access_service_pb2.IssueCredentialsResponse = await stub.IssueCredentials(
                request
            )
        except ClientError as exc:
            raise explain_status(
                exc,
                {
                    "PERMISSION_DENIED": "ask a team admin to grant you the server's project",
                    "NOT_FOUND": "see the servers you can reach with `sft list-servers`",
                },
            ) from None
        return self._store(reply, account)

    def _store(
        self, reply: access_service_pb2.IssueCredentialsResponse, account: str
    ) -> ServerRecord:
        connection = reply.connection
        valid_before = float(reply.valid_before.ToSeconds())
        self.cache.store_credential(
            Credential(
                project=connection.project,
                requested_account=account,
                account=reply.account_name,
                certificate=reply.certificate,
                serial=reply.serial,
                valid_after=float(reply.valid_after.ToSeconds()),
                valid_before=valid_before,
                public_key=self._key_line,
            )
        )
        record = ServerRecord(
            server=connection.server,
            project=connection.project,
            canonical_name=connection.canonical_name,
            hostname=connection.hostname,
            address=connection.address,
            ssh_port=connection.ssh_port or 22,
            known_hosts=connection.known_hosts,
            account=reply.account_name,
            requested_account=account,
            expires=valid_before,
            bastions=tuple(
                Hop(address=hop.address, ssh_port=hop.ssh_port or 22, server=hop.server)
                for hop in connection.bastions
            ),
        )
        return record
