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

Costs (README, "Performance"): a redirect is decided, counted and measured synchronously in
one call (:meth:`FrontDoor.answer`), whose answer the server's HTTP protocol writes at once
(:mod:`federation_redirect.protocol`: no ASGI cycle, task or ``send``) or, when it cannot,
:meth:`FrontDoor.launch` sends with two ``send`` calls; header names and constant
headers are prebuilt bytes, member URLs are encoded once per snapshot, the cookie expiry date
is formatted once a second, repository keys are interned (one string per repository for the
launch counters and the ranking cache), and no regex, framework or validation model runs per
request.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Callable
from typing import Final

from .abuse import AbuseControls
from .config import Config
from .cookies import SetCookie, cookie_name, read_cookie
from .keys import launch_key
from .metrics import Metrics
from .models import Decision, DecisionReason, Snapshot
from .policy import route
from .registry import Registry
from .types import ASGIApp, Receive, Scope, Send

__all__ = ["LAUNCH_PREFIXES", "LOCAL_PATHS", "Answer", "FrontDoor"]

log = logging.getLogger("federation_redirect.web")

# Paths served by the local endpoints (probes, metrics, operator API, docs, status page).
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
# A decided redirect: the 307's headers, the decision and the repository key
_Redirect = tuple[list[tuple[bytes, bytes]], Decision, str]
_LOCATION: Final = b"location"
_SET_COOKIE: Final = b"set-cookie"
_COOKIE: Final = b"cookie"
_COOKIE_REASONS = (DecisionReason.HASH, DecisionReason.RANDOM)
# Bytes that may go into a Location header verbatim: printable ASCII without space.
_PRINTABLE: Final = bytes(range(0x21, 0x7F))


# An answer: status, headers (each answer has a content-length) and body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _plain_answer(status: int, text: str, *extra: tuple[bytes, bytes]) -> Answer:
    body = text.encode() + b"\n"
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        _NO_STORE,
        *extra,
    ]
    return status, headers, body


async def _plain(send: Send, status: int, text: str, *extra: tuple[bytes, bytes]) -> None:
    await _respond(send, *_plain_answer(status, text, *extra))


def _trace(scope: Scope, status: int, outcome: str, reason: str = "", key: str = "") -> None:
    """One debug line per launch answered (``--log-level debug``); nothing at other levels.
    No client address: the metrics count, this line explains."""
    if log.isEnabledFor(logging.DEBUG):
        raw = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string") or b""
        target = raw + b"?" + query if query else raw
        log.debug(
            "%s %s -> %d %s%s%s",
            scope["method"],
            str(target)[2:-1],  # as a bytes literal: a control byte cannot break the line
            status,
            outcome,
            f" ({reason})" if reason else "",
            f" [repository {key}]" if key else "",
        )


def _refused(scope: Scope, status: int, text: str, *extra: tuple[bytes, bytes]) -> Answer:
    """A launch refused with ``text``: traced at debug level and answered in plain text."""
    _trace(scope, status, text)
    return _plain_answer(status, text, *extra)


class FrontDoor:
    """The outermost ASGI app. ``local`` serves LOCAL_PATHS, the lifespan and any other kind
    of connection (see :mod:`federation_redirect.local`); ``proxy`` the other paths."""

    def __init__(
        self,
        *,
        config: Config,
        registry: Registry,
        metrics: Metrics,
        local: ASGIApp,
        proxy: ASGIApp,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.local = local
        self.proxy = proxy
        self.rng = rng or random.Random()
        self.wall_clock = wall_clock
        self.cookie_max_age = int(config.host_cookie_age_hours * 3600)
        self.set_cookie = SetCookie(self.cookie_max_age)
        base = config.badge_base_url
        self.badges = {path: (base + target).encode() for path, target in BADGES.items()}
        # None unless the configuration asks for abuse controls (then checked on launches)
        self.abuse = AbuseControls.from_config(config.abuse)
        # member name -> URL bytes, for the snapshot they were made from
        self._urls_of: Snapshot | None = None
        self._urls: dict[str, bytes] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.local(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(LAUNCH_PREFIXES):
            await self.launch(scope, send)
        elif path in self.badges:
            await self.badge(scope, send)
        elif path in LOCAL_PATHS or path.startswith(LOCAL_PREFIXES):
            await self.local(scope, receive, send)
        else:
            await self.proxy(scope, receive, send)

    async def badge(self, scope: Scope, send: Send) -> None:
        start = time.perf_counter()
        headers = [(b"location", self.badges[scope["path"]]), _EMPTY]
        await _respond(send, 301, headers)
        self.metrics.latency.observe("badge", time.perf_counter() - start)

    async def launch(self, scope: Scope, send: Send) -> None:
        """Answer a launch or build request: a 307 to the chosen member for GET and HEAD."""
        method: str = scope["method"]
        if method == "GET" or method == "HEAD":
            await _respond(send, *self.answer(scope))
        elif method == "OPTIONS":
            start = time.perf_counter()
            await _respond(send, 204, _PREFLIGHT_HEADERS)
            self.metrics.latency.observe("preflight", time.perf_counter() - start)
        else:
            await _plain(send, 405, f"{method} is not allowed on launch URLs", _ALLOW)

    def answer(self, scope: Scope) -> Answer:
        """The answer to a GET or HEAD launch, decided, counted and measured, without I/O:
        the 307, or 400 (malformed URL), 503 (every member in maintenance) or an abuse
        control's refusal. Sent by :meth:`launch`, or straight from the HTTP protocol
        (:mod:`federation_redirect.protocol`)."""
        start = time.perf_counter()
        method: str = scope["method"]
        decided = self.redirect(scope)
        if decided is None:
            return _refused(scope, 400, "malformed launch URL")
        if isinstance(decided, str):
            return _refused(scope, 503, decided, (b"retry-after", b"60"))
        headers, decision, key = decided
        if self.abuse is not None:
            new = method == "GET" and decision.reason is not DecisionReason.COOKIE
            refusal = self.abuse.check(scope, new_session=new)
            if refusal is not None:
                return _refused(scope, refusal.status, refusal.message, *refusal.headers)
        member = decision.member.name
        if method == "GET":  # HEAD is a link checker, not a launch
            registry = self.registry
            registry.loads.record(member, key, registry.clock())
        metrics = self.metrics
        metrics.redirects.inc(member, decision.reason)
        kind = "build" if scope["path"].startswith("/build/") else "launch"
        metrics.latency.observe(kind, time.perf_counter() - start)
        _trace(scope, 307, member, decision.reason, key)
        return 307, headers, b""

    def redirect(self, scope: Scope) -> _Redirect | str | None:
        """Decide a GET or HEAD launch: ``(headers of the 307, decision, repository key)``, a
        503 text if every member is in maintenance, or None if the URL is malformed (400).
        No I/O; nothing is counted."""
        path: str = scope["path"]
        raw: bytes = scope.get("raw_path") or path.encode()
        query: bytes = scope.get("query_string", b"")
        if (
            raw[:1] != b"/"
            or raw[:2] == b"//"
            or raw.translate(None, _PRINTABLE)  # anything left is not printable ASCII
            or (query and query.translate(None, _PRINTABLE))
        ):
            return None
        # Interned: every request for a repository then shares one key string, and so do the
        # launch counters and the ranking cache that keep it.
        key = sys.intern(launch_key(raw.decode("ascii")))

        name = cookie_name(key)
        cookie = None
        for header, value in scope["headers"]:
            if header == _COOKIE:
                cookie = read_cookie(value, name)
                if cookie is not None:
                    break

        registry = self.registry
        snapshot = registry.snapshot
        decision = route(snapshot, key, cookie=cookie, rng=self.rng, loads=registry.loads)
        if decision is None:
            return "every member is in maintenance; try again later"
        member = decision.member
        if snapshot is not self._urls_of:
            self._urls = {m.name: m.url.encode() for m in snapshot.members}
            self._urls_of = snapshot
        location = (self._urls.get(member.name) or member.url.encode()) + raw
        if query:
            location += b"?" + query
        headers = [(_LOCATION, location), _EMPTY, _NO_STORE]
        if path.startswith("/build/"):
            headers.append(_CORS)
        if decision.reason in _COOKIE_REASONS:
            value = self.set_cookie.header(
                name, member.name, now=self.wall_clock(), secure=scope.get("scheme") == "https"
            )
            headers.append((_SET_COOKIE, value))
        return headers, decision, key
