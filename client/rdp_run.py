"""Run `sft rdp`: the seven steps of DESIGN.md §3 "RDP", from certificate to launched client.

1. a client certificate for the server (cache, else the platform; a cached one that
   still works when the platform is down); 2. SSH hops through the bastions, if any;
3. the broker's identity, then the mTLS channel; 4. RequestAccess; 5. the local
listener; 6. the `.rdp` file and the RDP client (or, with --no-launch, the address
and credential printed); 7. when the client exits or sft is interrupted:
ReleaseAccess (best effort), listener and channels closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc.aio

from client.errors import PlatformUnreachable
from client.rdp_broker import BrokerAddress, Grant, release_access, request_access
from client.rdp_cache import RDPCache, RDPRecord
from client.rdp_credentials import X509Fetcher, read_client_key
from client.rdp_launch import launch_plan, rdp_file_text, run_client, write_rdp_file
from client.rdp_link import BrokerLink
from client.rdp_progress import Progress
from client.rdp_tunnel import TunnelListener
from client.session import Session
from client.ssh_cache import USABLE_FOR_SECONDS, Hop, ServerRecord, SSHCache
from client.ssh_credentials import CredentialFetcher
from client.ssh_run import team_or_default
from client.state import Home, TeamDir

if TYPE_CHECKING:
    from client.rdp_hops import BastionChain

__all__ = ["RDPInvocation", "run_rdp"]

JSON = "json"


@dataclass
class RDPInvocation:
    """What `sft rdp` was asked to do."""

    name: str
    team: str | None = None
    project: str | None = None
    via: list[str] = field(default_factory=list)
    launch: bool = True
    rdp_file: str | None = None
    output: str = "text"
    verbose: bool = False


def _warn(line: str) -> None:
    sys.stderr.write(f"sft: warning: {line}\n")
    sys.stderr.flush()


def _until(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds))


async def _certificate(fetcher: X509Fetcher, call: RDPInvocation) -> RDPRecord:
    """Return a record whose certificate works, from the cache or the platform."""
    cache = fetcher.cache
    try:
        return await fetcher.record(call.name, project=call.project)
    except PlatformUnreachable as exc:
        key = read_client_key(cache)
        stale = cache.lookup(call.name, key.public_pem, margin=USABLE_FOR_SECONDS) if key else None
        if stale is None:
            raise exc.with_hint(
                f"no cached certificate for {call.name} is still valid; try again once the "
                "platform is reachable"
            ) from None
        _warn(
            f"{exc.reason}; using the cached certificate (valid until {_until(stale.valid_before)})"
        )
        return stale


async def _hops(
    session: Session, cache: SSHCache, via: list[str], bastions: tuple[Hop, ...]
) -> tuple[ServerRecord | Hop, ...]:
    """Return the bastion hops with their SSH certificates (cached ones if the platform is down)."""
    if not via and not bastions:
        return ()
    try:
        return await CredentialFetcher(session, cache).hops(via, bastions)
    except PlatformUnreachable as exc:
        stale = cache.hops(via, bastions, margin=USABLE_FOR_SECONDS)
        if stale is None:
            raise exc.with_hint(
                "no cached certificate for the bastions is still valid; try again once the "
                "platform is reachable"
            ) from None
        _warn(f"{exc.reason}; using the cached bastion certificates")
        return stale


@contextlib.asynccontextmanager
async def _stop_on_signals() -> AsyncIterator[asyncio.Event]:
    """Yield an event set by SIGINT or SIGTERM (Ctrl-C), restoring the handlers afterwards."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for number in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(number, stop.set)
            installed.append(number)
        except (NotImplementedError, RuntimeError):  # Windows: Ctrl-C raises instead
            continue
    try:
        yield stop
    finally:
        for number in installed:
            loop.remove_signal_handler(number)


def _print_connection(call: RDPInvocation, port: int, grant: Grant, rdp_file: str) -> None:
    address = f"127.0.0.1:{port}"
    if call.output == JSON:
        line = {
            "address": address,
            "username": grant.account,
            "password": grant.password,
            "rdp_file": rdp_file,
        }
        sys.stdout.write(json.dumps(line) + "\n")
    else:
        sys.stdout.write(
            f"address:   {address}\nusername:  {grant.account}\npassword:  {grant.password}\n"
            f"rdp file:  {rdp_file}\n"
        )
    sys.stdout.flush()


async def _release(link: BrokerLink, grant: Grant) -> None:
    """End the grant now; a failure only means the broker ends it after its grace period."""
    try:
        await release_access(link.stub, grant.grant_id)
    except grpc.aio.AioRpcError as error:
        _warn(
            f"could not release the grant ({error.details() or error.code().name}); the "
            "broker ends it after its grace period"
        )


class _Connection:
    """What steps 1-5 built; closed in reverse order."""

    def __init__(self, chain: BastionChain | None, link: BrokerLink) -> None:
        self.chain = chain
        self.link = link

    async def close(self) -> None:
        await self.link.close()
        if self.chain is not None:
            await self.chain.close()


async def _connect(
    session: Session, team_dir: TeamDir, call: RDPInvocation, progress: Progress
) -> tuple[_Connection, RDPRecord]:
    """Steps 1-3: certificate, bastions, broker channel."""
    cache = RDPCache(team_dir.path)
    progress.step(f"certificate for {call.name}")
    fetcher = X509Fetcher(session, cache)
    record = await _certificate(fetcher, call)
    key = read_client_key(cache)
    assert key is not None, "the certificate's key was made with it"
    hops = await _hops(session, SSHCache(team_dir.path), call.via, record.bastions)
    chain = None
    address = BrokerAddress(record.address, record.broker_port, record.broker_address)
    if hops:
        from client.rdp_hops import BastionChain  # asyncssh costs ~150 ms to import

        chain = BastionChain(SSHCache(team_dir.path))
        try:
            port = await chain.open(hops, record.address, record.broker_port, progress.step)
        except BaseException:
            await chain.close()
            raise
        address = BrokerAddress("127.0.0.1", port, f"{record.broker_address} (through bastions)")
    link = BrokerLink(address, cache, key.private_pem, record, renew=fetcher.renew, warn=_warn)
    connection = _Connection(chain, link)
    progress.step(f"broker at {address.shown}")
    try:
        await link.connect()
    except BaseException:
        await connection.close()
        raise
    return connection, record


async def _serve(
    session: Session, team_dir: TeamDir, call: RDPInvocation, progress: Progress
) -> int:
    connection, record = await _connect(session, team_dir, call, progress)
    try:
        link = connection.link
        grant = await request_access(link.stub, link.address, record)
        progress.step(f"access granted as {grant.account}")
        again = f"sft rdp {call.name}"
        listener = TunnelListener(link, grant.grant_id, report=_warn, again=again)
        try:
            port = await listener.start()
            progress.step(f"listening on 127.0.0.1:{port}")
            progress.done()
            rdp_path = write_rdp_file(
                call.rdp_file or RDPCache(team_dir.path).rdp_file(call.name),
                rdp_file_text(port, grant.account),
            )
            return await _hold(call, port, grant, rdp_path, progress)
        finally:
            await _release(link, grant)
            await listener.close()
    finally:
        await connection.close()


async def _hold(
    call: RDPInvocation, port: int, grant: Grant, rdp_path: str, progress: Progress
) -> int:
    """Launch the client (or print the connection) and keep the tunnel until it is done."""
    async with _stop_on_signals() as stop:
        if not call.launch:
            _print_connection(call, port, grant, rdp_path)
            progress.say("tunnel open; press Ctrl-C to close it")
            await stop.wait()
            return 0
        plan = launch_plan(
            port=port,
            account=grant.account,
            password=grant.password,
            rdp_file=rdp_path,
            title=call.name,
        )
        status = await run_client(plan, stop)
        if plan.waits or status != 0:
            return status
        # The app took the file and returned: it needs the password typed, and the tunnel.
        sys.stderr.write(
            f"sft rdp: log in as {grant.account} with the one-time password "
            f"{grant.password}\nsft rdp: tunnel open on 127.0.0.1:{port}; press Ctrl-C to "
            "close it\n"
        )
        await stop.wait()
        return 0


def run_rdp(call: RDPInvocation) -> int:
    """Do `sft rdp` and return the exit status (the RDP client's, when one was launched)."""
    team_dir = Home().enrolled(team_or_default(call.team))
    progress = Progress(verbose=call.verbose)

    async def run() -> int:
        async with Session(team_dir) as session:
            try:
                return await _serve(session, team_dir, call, progress)
            finally:
                progress.done()

    return asyncio.run(run())
