"""Streaming pass-through of the federation's home page to a page-serving member.

Every path that is not a launch, a badge or a local endpoint belongs to the home page, which
one BinderHub (the prime, or another member flagged ``pages``) serves. Requests are forwarded
with hop-by-hop headers removed, ``X-Forwarded-For`` appended, ``X-Forwarded-Host`` and
``Origin`` set as the production app does, and the answer is streamed back unchanged (repeated
``Set-Cookie`` headers kept, compressed bodies passed through as they are).

Members are tried healthy first, then the primes, then in configuration order. A member that
cannot be reached, or that answers 502/503/504, is skipped for the next one; if none answers,
the client gets a small 503 page with ``Retry-After``, never a 500.
"""

from __future__ import annotations

import logging
import time

import httpx

from .config import Config
from .metrics import Metrics
from .models import HealthState, MemberState, OperatorState
from .registry import Registry
from .types import Receive, Scope, Send

__all__ = ["HomeProxy"]

log = logging.getLogger("federation_redirect.proxy")

METHODS = frozenset({"GET", "HEAD", "POST", "OPTIONS"})
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
_RETRY_STATUSES = frozenset({502, 503, 504})
UNAVAILABLE_PAGE = (
    b"<!doctype html><html><head><meta charset='utf-8'><title>Binder is unavailable</title>"
    b"</head><body><h1>Binder is temporarily unavailable</h1><p>The home page cannot be "
    b"reached right now. Launch links keep working; please try again in a minute.</p>"
    b"</body></html>\n"
)


def _hop_by_hop(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    names = set(HOP_BY_HOP)
    for k, v in headers:
        if k.lower() == b"connection":
            names.update(t.strip().lower() for t in v.split(b","))
    return names


class HomeProxy:
    """ASGI app forwarding a request to the first page-serving member that answers."""

    def __init__(
        self, config: Config, registry: Registry, metrics: Metrics, client: httpx.AsyncClient
    ) -> None:
        self.config = config
        self.registry = registry
        self.metrics = metrics
        self.client = client

    def order(self) -> list[MemberState]:
        """Page-serving members in the order they are tried."""
        members = [m for m in self.registry.snapshot.members if m.pages]
        usable = [m for m in members if m.operator is not OperatorState.MAINT] or members
        return sorted(
            usable, key=lambda m: (m.health is not HealthState.HEALTHY, not m.prime, m.index)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        try:
            await self._forward(scope, receive, send)
        finally:
            self.metrics.latency.observe("proxy", time.perf_counter() - start)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        if method not in METHODS:
            await self._simple(
                send, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD, POST, OPTIONS")]
            )
            return
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope.get("query_string", b"")
        if not raw.startswith(b"/") or not all(0x21 <= b <= 0x7E for b in raw + query):
            await self._simple(send, 400, b"malformed URL\n")
            return
        body = await self._read_body(receive)
        if body is None:
            await self._simple(send, 413, b"request body too large\n")
            return
        headers = self._forward_headers(scope)
        target = raw + (b"?" + query if query else b"")
        for member in self.order():
            url = member.url + target.decode("ascii")
            request = self.client.build_request(
                method, url, headers=headers, content=body if method == "POST" else None
            )
            try:
                response = await self.client.send(request, stream=True)
            except httpx.HTTPError as exc:
                log.info("home page: %s unreachable: %s", member.name, type(exc).__name__)
                self.metrics.proxied.inc(member.name, "failed")
                continue
            if response.status_code in _RETRY_STATUSES:
                await response.aclose()
                self.metrics.proxied.inc(member.name, "failed")
                continue
            self.metrics.proxied.inc(member.name, "ok")
            await self._relay(response, method, send)
            return
        await self._simple(
            send,
            503,
            UNAVAILABLE_PAGE,
            [(b"retry-after", b"30"), (b"content-type", b"text/html; charset=utf-8")],
        )

    async def _read_body(self, receive: Receive) -> bytes | None:
        limit = self.config.proxy.max_body_bytes
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b""
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _forward_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        incoming: list[tuple[bytes, bytes]] = scope["headers"]
        drop = _hop_by_hop(incoming) | {b"host", b"content-length"}
        out = []
        host = b""
        forwarded_for = b""
        has_forwarded_host = False
        for k, v in incoming:
            name = k.lower()
            if name == b"host":
                host = v
            elif name == b"x-forwarded-for":
                forwarded_for = v if not forwarded_for else forwarded_for + b", " + v
                continue
            elif name == b"x-forwarded-host":
                has_forwarded_host = True
            elif name in (b"origin", b"x-binder-launch-host"):
                continue
            if name not in drop:
                out.append((k, v))
        client = scope.get("client")
        if client:
            # Behind a trusted proxy uvicorn already took the client from X-Forwarded-For,
            # whose last entry it then is: append only a hop that is not there yet.
            addr = str(client[0]).encode()
            if not forwarded_for:
                forwarded_for = addr
            elif forwarded_for.rsplit(b",", 1)[-1].strip() != addr:
                forwarded_for += b", " + addr
        if forwarded_for:
            out.append((b"x-forwarded-for", forwarded_for))
        if host:
            if not has_forwarded_host:
                out.append((b"x-forwarded-host", host))
            # the production app presents the page request as cross-origin from our host
            out.append((b"origin", b"https://" + host))
        launch_host = self.config.proxy.launch_host
        if launch_host:
            out.append((b"x-binder-launch-host", launch_host.encode()))
        elif host:
            out.append((b"x-binder-launch-host", b"https://" + host + b"/"))
        return out

    async def _relay(self, response: httpx.Response, method: str, send: Send) -> None:
        raw_headers = response.headers.raw
        drop = _hop_by_hop(list(raw_headers))
        headers = [(k.lower(), v) for k, v in raw_headers if k.lower() not in drop]
        try:
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            if method == "HEAD":
                await send({"type": "http.response.body", "body": b""})
                return
            try:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.HTTPError as exc:
                # Headers are out; the best we can do is end the body early.
                log.info("home page: stream from upstream broke: %s", type(exc).__name__)
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    async def _simple(
        self,
        send: Send,
        status: int,
        body: bytes,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = [
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *(extra or []),
        ]
        if not any(k == b"content-type" for k, _ in headers):
            headers.append((b"content-type", b"text/plain; charset=utf-8"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
