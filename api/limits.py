"""Limits per request and per client, as ASGI middleware (before any route runs).

- **Body size**: a request whose ``Content-Length`` exceeds ``api.max_body_kb``, or whose body
  grows beyond it while streaming, is answered 413 without reading further.
- **Rate**: a token bucket per client (``api.rate_per_s`` sustained, ``api.rate_burst`` at once);
  the client is its credentials when it sends some (a hash of the Authorization or X-API-Key
  header: a user keeps one bucket across its addresses), else its address; a request with
  credentials also counts against a bucket of its address four times larger, so that sending
  new made-up credentials with each request does not escape the limit. Beyond, 429 with ``Retry-After`` (seconds). Buckets idle for a
  minute are forgotten.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem_response


class BodyLimit:
    """413 for request bodies over ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            response = problem_response(
                413, f"the request body is over {self.max_bytes // 1024} KiB"
            )
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            response = problem_response(
                413, f"the request body is over {self.max_bytes // 1024} KiB"
            )
            await response(scope, receive, send)


class _TooLarge(Exception):
    pass


class RateLimit:
    """429 with Retry-After beyond a token bucket per client."""

    def __init__(self, app: ASGIApp, rate_per_s: float, burst: int) -> None:
        self.app = app
        self.rate = rate_per_s
        self.burst = float(burst)
        self.buckets: dict[str, list[float]] = {}  # client -> [tokens, last refill]
        self.lock = threading.Lock()
        self.pruned = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        address, credential = client_keys(scope)
        if credential is None:  # an anonymous client is its address
            wait = self.take(address)
        else:  # an address may carry many users: a larger bucket, and one per credential
            wait = self.take(address, ADDRESS_FACTOR)
            if wait <= 0:
                wait = self.take(credential)
        if wait > 0:
            response = problem_response(
                429,
                "too many requests: slow down",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def take(self, client: str, factor: float = 1.0) -> float:
        """Take one token for ``client`` (a bucket ``factor`` times the size); 0 when granted,
        else the seconds until one is due."""
        now = time.monotonic()
        rate, burst = self.rate * factor, self.burst * factor
        with self.lock:
            bucket = self.buckets.get(client)
            if bucket is None:
                bucket = self.buckets[client] = [burst, now]
            tokens = min(burst, bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
            if tokens >= 1:
                bucket[0] = tokens - 1
                granted = 0.0
            else:
                bucket[0] = tokens
                granted = (1 - tokens) / rate
            if now - self.pruned > 60:
                self.buckets = {k: b for k, b in self.buckets.items() if now - b[1] < 60}
                self.pruned = now
        return granted


ADDRESS_FACTOR = 4.0


def client_keys(scope: Scope) -> tuple[str, str | None]:
    """The buckets a request counts against: its address, and its credentials if any."""
    headers: dict[bytes, Any] = dict(scope.get("headers") or [])
    credential = headers.get(b"authorization") or headers.get(b"x-api-key")
    client = scope.get("client")
    address = f"addr:{client[0] if client else 'unknown'}"
    if credential:
        return address, "cred:" + hashlib.sha256(credential).hexdigest()[:32]
    return address, None
