"""The server interceptor every platform service runs behind.

Per call it binds a request id, the method and the caller's identity into the log
context, counts and times the call, and turns domain errors into gRPC statuses with
their human message. Unexpected exceptions are logged here, once, with their stack,
and the caller gets INTERNAL with the request id: never a traceback.
"""

from __future__ import annotations

import inspect
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
import structlog

from runtime.errors import SftError
from runtime.identity import ANONYMOUS, Authenticator, Identity, current_identity
from runtime.metrics import RPC_HANDLED, RPC_HANDLING_SECONDS, RPC_IN_FLIGHT, RPC_STARTED
from runtime.service_identity import identity_from_peer_certificate

__all__ = ["ServerCallInterceptor", "status_for"]

log = structlog.get_logger("sft.rpc")

REQUEST_ID_KEY = "x-request-id"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Probes and tooling call these constantly; their canonical line goes to debug.
_QUIET_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


def status_for(error: SftError) -> grpc.StatusCode:
    """Return the gRPC status code for a domain error."""
    return getattr(grpc.StatusCode, error.status_name, grpc.StatusCode.UNKNOWN)


def _request_id(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _SAFE_REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


class _Method:
    """What is fixed per RPC method: its names and its metric children (looked up once)."""

    def __init__(self, full_method: str, rpc_type: str) -> None:
        _, _, rest = full_method.partition("/")
        service, _, method = rest.partition("/")
        self.full_method = full_method
        self.labels = (rpc_type, service, method)
        self.quiet = full_method.startswith(_QUIET_PREFIXES)
        self.started = RPC_STARTED.labels(*self.labels)
        self.in_flight = RPC_IN_FLIGHT.labels(service, method)
        self.seconds = RPC_HANDLING_SECONDS.labels(*self.labels)
        self._handled: dict[grpc.StatusCode, Any] = {}

    def handled(self, code: grpc.StatusCode) -> Any:
        """Return the handled-total counter child for `code`."""
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = RPC_HANDLED.labels(*self.labels, code.name)
        return child


class _Call:
    """Book-keeping for one RPC: its method, start time and final status."""

    def __init__(self, method: _Method) -> None:
        self.method = method
        self.full_method = method.full_method
        self.code = grpc.StatusCode.OK
        self.error: str | None = None
        self.started = time.perf_counter()


class ServerCallInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Bind context, authenticate, measure and map errors for every RPC."""

    def __init__(self, authenticate: Authenticator | None = None) -> None:
        self._authenticate = authenticate
        # Wrapped handlers per method: grpc asks for a handler on every call.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def _identify(self, context: grpc.aio.ServicerContext) -> Identity:
        # Only the internal listener asks for client certificates, and its handshake
        # has verified the chain to the platform CA: a peer certificate is a service.
        peer_certificates = context.auth_context().get("x509_pem_cert")
        if peer_certificates:
            return identity_from_peer_certificate(peer_certificates[0])
        if self._authenticate is None:
            return ANONYMOUS
        return await self._authenticate(context.invocation_metadata() or ())

    @asynccontextmanager
    async def _scope(self, call: _Call, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        structlog.contextvars.clear_contextvars()
        request_id = _request_id(context.invocation_metadata())
        structlog.contextvars.bind_contextvars(
            request_id=request_id, method=call.full_method, peer=context.peer()
        )
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        method = call.method
        method.started.inc()
        method.in_flight.inc()
        token = None
        try:
            identity = await self._identify(context)
            token = current_identity.set(identity)
            structlog.contextvars.bind_contextvars(caller=str(identity))
            yield
        except SftError as error:
            call.code, call.error = status_for(error), error.message
            await context.abort(call.code, error.message)
        except NotImplementedError:
            # The generated base servicer raises this for RPCs a later version implements.
            call.code = grpc.StatusCode.UNIMPLEMENTED
            await context.abort(
                call.code, f"{call.full_method} is not implemented by this platform version"
            )
        except grpc.aio.AbortError:
            code = context.code()
            call.code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
            raise
        except Exception:
            call.code = grpc.StatusCode.INTERNAL
            log.exception("rpc failed unexpectedly")
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error; quote request id {request_id} to the platform operator",
            )
        finally:
            elapsed = time.perf_counter() - call.started
            method.in_flight.dec()
            method.handled(call.code).inc()
            method.seconds.observe(elapsed)
            quiet = method.quiet and call.code is grpc.StatusCode.OK
            (log.debug if quiet else log.info)(
                "rpc", code=call.code.name, duration_ms=round(elapsed * 1000, 2), error=call.error
            )
            if token is not None:
                current_identity.reset(token)

    def _wrap(self, handler: grpc.RpcMethodHandler, full_method: str) -> grpc.RpcMethodHandler:
        method = _Method(full_method, _rpc_type(handler))
        scope = self._scope

        if not handler.response_streaming:
            behavior: Callable[..., Awaitable[Any]] = (
                handler.stream_unary if handler.request_streaming else handler.unary_unary
            )

            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with scope(_Call(method), context):
                    result = behavior(request, context)
                    return await result if inspect.isawaitable(result) else result

            factory = (
                grpc.stream_unary_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_unary_rpc_method_handler
            )
            return factory(
                unary_response,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        streaming: Callable[..., AsyncIterator[Any]] = (
            handler.stream_stream if handler.request_streaming else handler.unary_stream
        )

        async def streaming_response(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            async with scope(_Call(method), context):
                async for response in streaming(request, context):
                    yield response

        factory = (
            grpc.stream_stream_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_stream_rpc_method_handler
        )
        return factory(
            streaming_response,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Wrap the method handler grpc found for this call."""
        full_method = handler_call_details.method
        wrapped = self._wrapped.get(full_method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            wrapped = self._wrapped[full_method] = self._wrap(handler, full_method)
        return wrapped
