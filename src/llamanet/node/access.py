"""Who may use a node: API keys for users, a swarm key between peers, per-client limits.

- `--api-key` (several allowed): every API route but `/health` (and the static web UI, which
  asks for the key) needs `Authorization: Bearer <key>`; otherwise 401.
- `--swarm-key`: peers prove membership of a private swarm with an HMAC over a timestamp and the
  forwarding node's id (the secret itself never travels). A node with a swarm key only accepts
  forwarded requests that carry a valid proof (403 otherwise), and publishes a `swarm` id in its
  record so peers of other swarms never route to it, nor it to them. Proven peer requests skip
  the API key (the forwarding node already checked the user) and the per-client limits.
- `--rate-limit N` generation requests per minute and `--max-streams N` concurrent generation
  requests per client (API key, or IP address without one): 429 with Retry-After. Embeddings
  count as generation requests: they run the model too.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections import Counter
from collections.abc import Iterable

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Receive, Scope, Send

from llamanet.node.errors import APIError
from llamanet.swarm.membership import FORWARDED_HEADER, SWARM_AUTH_HEADER, verify_swarm_proof

PUBLIC_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
GENERATION_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/chat/completions/stream",
        "/v1/embeddings",
        "/generate",
        "/generate/stream",
    }
)


class AccessControl:
    """Pure ASGI middleware (streaming-safe) applying the rules in the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_paths: Iterable[str],
        api_keys: Iterable[str] = (),
        swarm_key: str | None = None,
        rate_limit: int = 0,
        max_streams: int = 0,
    ) -> None:
        self.app = app
        self.api_paths = frozenset(api_paths)
        self.api_keys = [k for k in api_keys if k]
        self.swarm_key = swarm_key or None
        self.rate = RateLimitItemPerMinute(rate_limit) if rate_limit > 0 else None
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.max_streams = max_streams
        self.open_streams: Counter[str] = Counter()

    def _is_api(self, path: str) -> bool:
        return path not in PUBLIC_PATHS and (
            path in self.api_paths or path.startswith(("/v1/", "/nodes/", "/generate"))
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._is_api(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            peer = self._check_peer(headers)
            client = None if peer else self._check_user(headers, scope)
        except APIError as exc:
            await exc.response()(scope, receive, send)
            return
        if client is None or scope["path"] not in GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        try:  # a request refused for concurrency does not use up the client's rate
            self._check_concurrency(client)
            self._check_rate(client)
        except APIError as exc:
            await exc.response()(scope, receive, send)
            return
        self.open_streams[client] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open_streams[client] -= 1
            if self.open_streams[client] <= 0:
                del self.open_streams[client]

    def _check_concurrency(self, client: str) -> None:
        if self.max_streams and self.open_streams[client] >= self.max_streams:
            raise APIError(
                429,
                f"Too many concurrent requests from this client (limit "
                f"{self.max_streams}); wait for one to finish.",
                code="concurrency_limit_exceeded",
                headers={"Retry-After": "1"},
            )

    def _check_peer(self, headers: dict[str, str]) -> bool:
        """True for a forwarded request proven to come from this private swarm."""
        forwarded_by = headers.get(FORWARDED_HEADER.lower())
        if self.swarm_key is None or forwarded_by is None:
            return False
        proof = headers.get(SWARM_AUTH_HEADER.lower(), "")
        if not verify_swarm_proof(self.swarm_key, forwarded_by, proof):
            raise APIError(
                403,
                "This node belongs to a private swarm; the forwarding node did "
                "not prove membership.",
                type="permission_error",
                code="swarm_auth_failed",
            )
        return True

    def _check_user(self, headers: dict[str, str], scope: Scope) -> str:
        """Returns the client identity used for limits (the key's hash, or the IP)."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if self.api_keys:
            if not token or not any(hmac.compare_digest(token, k) for k in self.api_keys):
                raise APIError(
                    401,
                    "Missing or invalid API key: send 'Authorization: Bearer <key>'."
                    if not token
                    else "Invalid API key.",
                    type="authentication_error",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return "key:" + hashlib.sha256(token.encode()).hexdigest()[:16]
        client = scope.get("client")
        return "ip:" + (client[0] if client else "unknown")

    def _check_rate(self, client: str) -> None:
        if self.rate is None or self.limiter.hit(self.rate, client):
            return
        reset = self.limiter.get_window_stats(self.rate, client).reset_time
        wait = max(1, math.ceil(reset - time.time()))
        raise APIError(
            429,
            f"Rate limit exceeded ({self.rate.amount} requests per minute); retry in {wait} s.",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(wait)},
        )
