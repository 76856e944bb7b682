"""Channels from one platform service to the others, as itself.

A service never calls another by reaching into its tables; it calls its gRPC API on
the internal listener, presenting its own service certificate (see
runtime.service_identity). In one process every service is reached on this process's
own internal listener; in a split deployment each address comes from configuration.
Channels are opened on first use and shared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import grpc

from runtime.errors import (
    SftError,
    Unavailable,
)
from runtime.service_identity import service_channel
from runtime.status_errors import refusal
from runtime.tls import service_tls_files

__all__ = ["Peers", "relay"]


class Peers:
    """Where the other platform services are, and the credentials to call them as `me`."""

    def __init__(
        self,
        me: str,
        tls_dir: Path,
        addresses: Mapping[str, str] | None = None,
        *,
        local_address: Callable[[], str | None] = lambda: None,
        _channels: dict[tuple[str, str], grpc.aio.Channel] | None = None,
    ) -> None:
        self.me = me
        self._tls_dir = tls_dir
        self._addresses = dict(addresses or {})
        self._local_address = local_address
        # Shared by every Peers derived with for_service, so close() closes them all.
        self._channels = {} if _channels is None else _channels

    def platform_ca_pem(self) -> bytes:
        """Return the platform CA certificate (what enrollment codes and tokens pin)."""
        return (self._tls_dir / "ca.pem").read_bytes()

    def address_of(self, service: str) -> str:
        """Return `service`'s internal address, or raise Unavailable if none is known."""
        address = self._addresses.get(service) or self._local_address()
        if not address:
            raise Unavailable(
                f"the {self.me} service has no address for the {service} service; set "
                f"{service}_address (or run both in one process with internal_listen on)"
            )
        return address

    def channel(self, service: str) -> grpc.aio.Channel:
        """Return the shared channel to `service`, opening it on first use."""
        channel = self._channels.get((self.me, service))
        if channel is None:
            channel = service_channel(
                self.address_of(service), service_tls_files(self._tls_dir, self.me)
            )
            self._channels[(self.me, service)] = channel
        return channel

    def for_service(self, me: str) -> Peers:
        """Return the same directory, calling as service `me` instead."""
        return Peers(
            me,
            self._tls_dir,
            self._addresses,
            local_address=self._local_address,
            _channels=self._channels,
        )

    async def close(self) -> None:
        """Close every channel opened."""
        channels = list(self._channels.values())
        self._channels.clear()
        for channel in channels:
            await channel.close()


def relay(error: grpc.aio.AioRpcError, service: str) -> SftError:
    """Turn another service's refusal into our own error for the caller.

    Refusals about the request (bad input, not found, denied) pass through with their
    message; anything else (the peer is down, or refused *our* service certificate) is
    UNAVAILABLE, because the caller can do nothing about it but retry or tell an operator.
    """
    refused = refusal(
        error.code(),
        error.details(),
        default=f"the {service} service refused the request",
        unauthenticated=False,
    )
    if refused is not None:
        return refused
    return Unavailable(
        f"the {service} service could not be reached or failed "
        f"({error.code().name}: {error.details() or 'no detail'}); try again, and tell the "
        "platform operator if it persists"
    )
