"""The launch front door: a lean ASGI layer in front of everything else.

Launch paths (``/v2/...``, ``/build/...``, legacy ``/repo/...``) and badge paths are answered
here directly, without a framework router, because every mybinder.org launch passes through
them. The operator and probe endpoints go to the FastAPI app; every other path is the
federation's home page, proxied to a page-serving member.

Guarantees:

* A ``Location`` is always ``<configured member URL><raw path>[?<raw query>]`` (or the badge
  URL): the path and query are forwarded byte for byte, never decoded and re-encoded, and a
  request whose path or query holds anything but printable ASCII (CR, LF, NUL, space, bytes
  >= 0x7f) is refused with 400, so there is no header injection and no open redirect.
* The hot path does no I/O, takes no lock and reads only the current snapshot.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from .config import Config
from .cookies import cookie_name, read_cookie, set_cookie_header
from .keys import launch_key
from .metrics import Metrics
from .models import DecisionReason
from .policy import route
from .registry import Registry
from .types import ASGIApp, Receive, Scope, Send

__all__ = ["LOCAL_PATHS", "FrontDoor"]

# Paths served by the FastAPI app (probes, metrics, operator API, docs).
LOCAL_PATHS = frozenset(
    {"/metrics", "/healthz", "/readyz", "/active_hosts", "/docs", "/openapi.json", "/status"}
)
LOCAL_PREFIXES = ("/api/",)
LAUNCH_PREFIXES = ("/v2/", "/build/", "/repo/")
BADGES = {
    "/badge.svg": "/badge.svg",
    "/badge_logo.svg": "/badge_logo.svg",
    "/assets/images/badge.svg": "/badge.svg",
}

_CORS = (b"access-control-allow-origin", b"*")
_NO_STORE = (b"cache-control", b"no-store")
_EMPTY = (b"content-length", b"0")
_PREFLIGHT_HEADERS = [
    _CORS,
    (b"access-control-allow-methods", b"GET, HEAD, OPTIONS"),
    (b"access-control-allow-headers", b"cache-control, last-event-id, content-type"),
    (b"access-control-max-age", b"600"),
    _EMPTY,
]
_ALLOW = (b"allow", b"GET, HEAD, OPTIONS")


def _clean(data: bytes) -> bool:
    """Only printable ASCII without space: what may go into a Location header verbatim."""
    return all(0x21 <= b <= 0x7E for b in data)


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _plain(send: Send, status: int, text: str, *extra: tuple[bytes, bytes]) -> None:
    body = text.encode() + b"\n"
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        _NO_STORE,
        *extra,
    ]
    await _respond(send, status, headers, body)


class FrontDoor:
    """The outermost ASGI app. ``api`` serves LOCAL_PATHS and lifespan; ``proxy`` the rest."""

    def __init__(
        self,
        *,
        config: Config,
        registry: Registry,
        metrics: Metrics,
        api: ASGIApp,
        proxy: ASGIApp,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.api = api
        self.proxy = proxy
        self.rng = rng or random.Random()
        self.wall_clock = wall_clock
        self.cookie_max_age = int(config.host_cookie_age_hours * 3600)
        base = config.badge_base_url
        self.badges = {path: (base + target).encode() for path, target in BADGES.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(LAUNCH_PREFIXES):
            await self.launch(scope, send)
        elif path in self.badges:
            await self.badge(scope, send)
        elif path in LOCAL_PATHS or path.startswith(LOCAL_PREFIXES):
            await self.api(scope, receive, send)
        else:
            await self.proxy(scope, receive, send)

    async def badge(self, scope: Scope, send: Send) -> None:
        start = time.perf_counter()
        headers = [(b"location", self.badges[scope["path"]]), _EMPTY]
        await _respond(send, 301, headers)
        self.metrics.latency.observe("badge", time.perf_counter() - start)

    async def launch(self, scope: Scope, send: Send) -> None:
        """Answer a launch or build request with a 307 to the chosen member."""
        start = time.perf_counter()
        path: str = scope["path"]
        build = path.startswith("/build/")
        kind = "build" if build else "launch"
        method: str = scope["method"]
        if method == "OPTIONS":
            await _respond(send, 204, _PREFLIGHT_HEADERS)
            self.metrics.latency.observe("preflight", time.perf_counter() - start)
            return
        if method not in ("GET", "HEAD"):
            await _plain(send, 405, f"{method} is not allowed on launch URLs", _ALLOW)
            return
        raw: bytes = scope.get("raw_path") or path.encode()
        query: bytes = scope.get("query_string", b"")
        if not raw.startswith(b"/") or raw.startswith(b"//") or not _clean(raw + query):
            await _plain(send, 400, "malformed launch URL")
            return
        key = launch_key(raw.decode("ascii"))

        name = cookie_name(key)
        cookie = None
        for header, value in scope["headers"]:
            if header == b"cookie":
                cookie = read_cookie(value, name)
                if cookie is not None:
                    break

        registry = self.registry
        loads = registry.loads
        decision = route(registry.snapshot, key, cookie=cookie, rng=self.rng, loads=loads)
        if decision is None:
            await _plain(
                send,
                503,
                "every member is in maintenance; try again later",
                (b"retry-after", b"60"),
            )
            return
        member = decision.member
        location = member.url.encode() + raw
        if query:
            location += b"?" + query
        headers = [(b"location", location), _EMPTY, _NO_STORE]
        if build:
            headers.append(_CORS)
        reason = decision.reason
        if reason is DecisionReason.HASH or reason is DecisionReason.RANDOM:
            secure = scope.get("scheme") == "https"
            headers.append(
                (
                    b"set-cookie",
                    set_cookie_header(
                        name,
                        member.name,
                        now=self.wall_clock(),
                        max_age=self.cookie_max_age,
                        secure=secure,
                    ),
                )
            )
        await _respond(send, 307, headers)
        if method == "GET":  # HEAD is a link checker, not a launch
            loads.record(member.name, key, registry.clock())
        self.metrics.redirects.inc(member.name, reason)
        self.metrics.latency.observe(kind, time.perf_counter() - start)
