"""Bearer-token authentication for ``llmfeat serve`` (``serve.auth``).

Off by default: the service binds to loopback, and only processes on the machine reach it. With
``serve.auth.token`` or ``serve.auth.token_file`` set, every request but ``GET /health`` (what a load balancer
or an orchestrator probes) must carry ``Authorization: Bearer <token>``, compared in constant time
(``hmac.compare_digest``). Anything else gets ``401`` with ``WWW-Authenticate: Bearer`` and the same body
whether the header is missing, malformed or wrong, and whether or not the path exists: nothing about the token,
nor which routes there are. That covers the write routes (``POST /reload``, and any added later, e.g. rewards
that feed a learning policy) and the reads (recommendations reveal what users clicked), ``/docs`` and
``/openapi.json`` included.

One shared token, as Feast's feature server's ``auth`` section offers in its simplest mode, because the
callers are a few internal services. Per-client identities or token rotation without a restart belong to a
proxy in front (an OIDC-aware gateway): the token is read once, at start.

A pure ASGI middleware rather than a FastAPI dependency: it runs before routing, so it needs no change to each
route (routes added later are covered) and unknown paths get the same 401 as known ones.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path

from llmfeat.core.config import ConfigError, ServeAuthConfig

OPEN_PATHS = frozenset({"/health"})
"""Reachable without the token: liveness only (status, index version, item count)."""

_BODY = json.dumps({"detail": "Not authenticated"}).encode()


def resolve_token(auth: ServeAuthConfig) -> str | None:
    """The configured token, or None when authentication is off. Exactly one of token / token_file."""
    if auth.token is not None and auth.token_file is not None:
        raise ConfigError("serve.auth: set token or token_file, not both")
    if auth.token_file is not None:
        path = Path(auth.token_file)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"serve.auth.token_file {path}: cannot be read ({exc.strerror or exc})"
            ) from exc
        if not token:
            raise ConfigError(f"serve.auth.token_file {path} is empty")
        return token
    if auth.token is not None:
        token = auth.token.strip()
        if not token:
            raise ConfigError("serve.auth.token is empty; leave it unset to turn authentication off")
        return token
    return None


class BearerAuth:
    """ASGI middleware: 401 for every HTTP or WebSocket request but ``OPEN_PATHS`` without the right token."""

    def __init__(self, app, token: str, open_paths: frozenset[str] = OPEN_PATHS):
        if not token:
            raise ValueError("BearerAuth needs a non-empty token")
        self.app = app
        self._token = token.encode("utf-8")
        self._open = open_paths

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                # compare_digest takes time independent of where the bytes differ (length aside)
                return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self._token)
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or scope.get("path") in self._open:
            await self.app(scope, receive, send)
            return
        if self._authorized(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({
            "type": "http.response.start",
            "status": 401,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode()),
                        (b"www-authenticate", b"Bearer")],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": _BODY})


def protect(app, token: str | None) -> None:
    """Require ``token`` on every route of ``app`` but ``OPEN_PATHS``; no-op when ``token`` is None.
    Call before the app starts serving."""
    if token is not None:
        app.add_middleware(BearerAuth, token=token)
