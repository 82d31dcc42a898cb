"""Bearer-key authentication.

- `RAGTUNE_API_KEY` set: every path except `/healthz` and `/readyz` needs
  `Authorization: Bearer <key>` (checked by `KeyMiddleware`, constant-time compare).
- Admin operations (index rebuild, adapters) need the key even when none is configured,
  unless the server listens on loopback only AND the user opted out explicitly
  (`--no-auth-local` / `RAGTUNE_ALLOW_LOCAL_NOAUTH=1`): see `require_admin`.
"""

from __future__ import annotations

import hmac

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .config import ApiConfig
from .errors import ApiError, error_response

OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_matches(token: str | None, key: str) -> bool:
    """Constant-time comparison (hmac.compare_digest) of a presented token and the key."""
    if token is None:
        return False
    return hmac.compare_digest(token.encode("utf-8"), key.encode("utf-8"))


def _unauthorized(message: str):
    return error_response(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


class KeyMiddleware:
    """Pure ASGI middleware: rejects requests without the API key (when one is set)."""

    def __init__(self, app: ASGIApp, config: ApiConfig) -> None:
        self.app, self.config = app, config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self.config.api_key
        if scope["type"] != "http" or key is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        token = bearer_token(header)
        if not key_matches(token, key):
            msg = "missing API key: send 'Authorization: Bearer <key>'" if token is None else "invalid API key"
            await _unauthorized(msg)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def check_admin(config: ApiConfig, authorization: str | None) -> None:
    """Raise ApiError unless an admin operation is allowed for this request."""
    if config.api_key is not None:
        if not key_matches(bearer_token(authorization), config.api_key):
            raise ApiError(401, "unauthorized", "this operation needs the API key",
                           headers={"WWW-Authenticate": "Bearer"})
        return
    if config.admin_open:
        return
    if config.allow_local_noauth:
        hint = f"--no-auth-local only applies on loopback, but the server listens on {config.host}"
    else:
        hint = "set RAGTUNE_API_KEY, or on a loopback-only server opt out with --no-auth-local"
    raise ApiError(403, "admin_disabled", f"index rebuild and adapters need an API key: {hint}")


def require_admin(request: Request) -> None:
    """FastAPI dependency for rebuild and adapter endpoints."""
    check_admin(request.app.state.config, request.headers.get("authorization"))
