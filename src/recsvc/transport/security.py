"""Who may call: server TLS (optionally mutual) and bearer tokens, from `Settings`.

Transport security is grpc's own (`grpc.ssl_server_credentials`); tokens are checked by one
server interceptor, installed only when tokens are configured (an interceptor puts a coroutine
in every call's path). A call without a token, or with one the service does not know, ends
UNAUTHENTICATED with the same message either way, so a caller learns nothing about which
tokens exist; tokens are compared in constant time (`hmac.compare_digest`), every known token
every time. Health checks stay open for probes unless `auth_health_open` is False.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from recsvc.errors import ConfigError

if TYPE_CHECKING:  # `recsvc client` reads files with read_file: no pydantic on its path
    from recsvc.settings import Settings

HEALTH_PREFIX = "/grpc.health.v1.Health/"
DENIED = "a valid bearer token is required"


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' files (None: plaintext). A client CA makes it mutual
    TLS: callers without a certificate signed by it are refused in the handshake."""
    cert, key, ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if cert is None and key is None:
        if ca is not None:
            raise ConfigError("tls_client_ca_file: mutual TLS needs tls_cert_file and "
                              "tls_key_file too")
        return None
    if cert is None or key is None:
        raise ConfigError("tls_cert_file and tls_key_file: set both, or neither")
    return grpc.ssl_server_credentials(
        [(read_file(key, "tls_key_file"), read_file(cert, "tls_cert_file"))],
        root_certificates=read_file(ca, "tls_client_ca_file") if ca else None,
        require_client_auth=ca is not None)


def tokens(settings: Settings) -> list[bytes]:
    """The bearer tokens the settings name (file and list together); empty: no check."""
    found: list[str] = []
    if settings.auth_tokens_file is not None:
        text = read_file(settings.auth_tokens_file, "auth_tokens_file").decode()
        found += [line.strip() for line in text.splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    if settings.auth_tokens:
        found += [t.strip() for t in settings.auth_tokens.split(",") if t.strip()]
    for token in found:
        if len(token) < 16:
            raise ConfigError("auth_tokens: a token must have at least 16 characters")
    return [t.encode() for t in found]


class TokenAuth(grpc.aio.ServerInterceptor):
    """Lets a call through only with `authorization: Bearer <a known token>`."""

    def __init__(self, known: Sequence[bytes], *, health_open: bool = True) -> None:
        if not known:
            raise ValueError("TokenAuth needs at least one token")
        self.known = list(known)
        self.health_open = health_open

    def allowed(self, metadata: Sequence[tuple[str, Any]] | None) -> bool:
        given = b""
        for key, value in metadata or ():
            if key == "authorization":
                raw = value.encode() if isinstance(value, str) else bytes(value)
                if raw[:7].lower() == b"bearer ":
                    given = raw[7:].strip()
                break
        # every known token compared, whatever matched: the time says nothing of which
        matched = False
        for token in self.known:
            matched |= hmac.compare_digest(given, token)
        return matched and bool(given)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if (self.health_open and method.startswith(HEALTH_PREFIX)) or \
                self.allowed(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        return _denied(handler)


def _denied(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that ends the call UNAUTHENTICATED."""
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)
        yield  # an async generator, as a streaming handler is

    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(unary)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary)
    return grpc.unary_stream_rpc_method_handler(stream)


def interceptors(settings: Settings) -> list[grpc.aio.ServerInterceptor]:
    known = tokens(settings)
    return [TokenAuth(known, health_open=settings.auth_health_open)] if known else []


def read_file(path: Path, name: str) -> bytes:
    """The bytes of `path`; a ConfigError naming the setting (`name`) when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None
