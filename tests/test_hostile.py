"""Hostile input: generated requests, misbehaving members, slow and oversized clients.

* **Generated requests** (hypothesis) over paths, queries, methods, headers and cookies: no
  ``Location`` outside the configured members and the badge host, no header injection, no
  5xx, no exception in the log. Through the ASGI app directly (fast), and a smaller sample as
  raw bytes on a socket to a real uvicorn server configured as ``federation-redirect serve``
  configures it (so httptools' parser is in the loop). ``bench/hostile.py`` runs the same
  generators for 100,000 requests and prints the counts.
* **Misbehaving members**: health answers that are endless, trickled, not UTF-8, of the wrong
  types, deeply nested or redirected elsewhere: each round ends within its deadline, reads a
  bounded amount, and marks the member unhealthy with a specific reason.
* **Slow and oversized clients** against the CLI's server settings: 200 slowloris connections
  do not slow other clients; oversized request lines and headers are refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import socket
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation_redirect.app import FederationApp, create_app
from federation_redirect.cli import _server_config
from federation_redirect.config import Config, parse_config
from federation_redirect.health import HealthEngine
from federation_redirect.httplimits import BoundedHttpToolsProtocol, bounded_http
from federation_redirect.models import HealthState
from federation_redirect.registry import Registry
from federation_redirect.types import Message, Receive, Scope, Send

from .conftest import StartFake
from .helpers import Answer, ServedApp, asgi_request, mark

# -- the generators (bench/hostile.py imports these) ----------------------------------------

MEMBERS = {
    "a": "https://a.example",
    "b": "https://b.example",
    "c": "https://c.example:8443/sub",
}
BADGE_BASE = "https://static.mybinder.org"
BANNED = "192.0.2.0/24"
INJECTED = b"x-injected"  # a header name only an injection could produce

PREFIXES = [
    b"/v2/gh/", b"/v2/gl/", b"/v2/git/", b"/v2/zenodo/", b"/v2/", b"/v2", b"/build/gh/",
    b"/build/", b"/repo/", b"/repo", b"/", b"//", b"///", b"/badge.svg", b"/badge_logo.svg",
    b"/assets/images/badge.svg", b"/metrics", b"/healthz", b"/readyz", b"/active_hosts",
    b"/status", b"/docs", b"/openapi.json", b"/api/v1/", b"/api/v1/members/a",
    b"/api/v1/members/", b"/api/v1/audit", b"", b"*", b"http://evil.example/v2/gh/o/r",
    b"\\\\evil.example/", b"/v2/gh/o/r/HEAD",
]  # fmt: skip
FRAGMENTS = [
    b"org/repo/HEAD", b"o/r", b"a", b"..", b"/", b"//", b"%2F", b"%2f%2e%2e", b"%0d%0a",
    b"%00", b"%ff", b"%", b"%zz", b"?", b"#", b"@", b"@evil.example", b"\\", b"//evil.example",
    b"http://evil.example", b"https:evil.example", b"\r\nX-Injected: 1", b"\nX-Injected: 1",
    b"\r", b"\x00", b" ", b"\t", b"\x7f", b"\xff", b"\xc3\xa9", b"\xe2\x80\xa8", b"..%2f",
    b"%252e", b";", b",", b"=", b"'", b'"', b"<script>", b"${jndi:x}", b"~", b"*", b"+", b"x" * 300,
]  # fmt: skip
QUERY_FRAGMENTS = [
    b"urlpath=lab", b"a=b", b"&", b"=", b"?", b"%0d%0aX-Injected:%201", b"\r\nX-Injected: 1",
    b"#frag", b"x=%ff", b"\xff", b" ", b"redirect=https://evil.example", b"labpath=a%20b",
    b"\x00", b";",
]  # fmt: skip
HEADER_NAMES = [
    b"host", b"cookie", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
    b"origin", b"referer", b"user-agent", b"accept", b"authorization", b"x-real-ip",
    b"forwarded", b"x-binder-launch-host", b"connection", b"upgrade", b"accept-encoding",
    b"if-none-match", b"x-anything",
]  # fmt: skip
HEADER_VALUES = [
    b"evil.example", b"mybinder.org", b"https", b"http", b"gopher", b"1.2.3.4", b"192.0.2.7",
    b"192.0.2.7, 127.0.0.1", b"10.0.0.1, 192.0.2.9", b"::1", b"[2001:db8::1]:443",
    b"unknown", b"_hidden", b", , ,", b"1.2.3.4:99999", b"999.1.1.1", b"close", b"keep-alive",
    b"upgrade", b"websocket", b"Bearer x", b"\xff\xfe", b"\x00", b"a\r\nX-Injected: 1",
    b"", b" ", b"x" * 1000, b"https://evil.example", b"gzip, br",
]  # fmt: skip
COOKIE_VALUES = [b"a", b"b", b"c", b"evil", b"a; fr-0=b", b"", b"\xff", b"a\r\nX-Injected: 1"]
METHODS = ["GET"] * 8 + ["HEAD", "OPTIONS", "POST", "PUT", "DELETE", "PATCH", "TRACE", "GE T"]


@dataclass
class Request:
    """One generated request, as bytes."""

    method: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def _joined(pieces: Sequence[bytes]) -> bytes:
    return b"".join(pieces)


# Built once: strategies made inside the draw would be rebuilt and re-validated per example.
CLEAN_SEGMENTS = [b"org/", b"repo/", b"HEAD", b"main", b"o/r/", b"a.git/", b"v1.0", b"-_.~"]
_SEGMENT = st.one_of(
    st.sampled_from(CLEAN_SEGMENTS), st.sampled_from(FRAGMENTS), st.binary(max_size=8)
)
_PATH = st.builds(
    lambda prefix, pieces: prefix + _joined(pieces),
    st.sampled_from([b"/v2/gh/", b"/build/gh/", b"/v2/gl/", b"/repo/"]) | st.sampled_from(PREFIXES),
    st.lists(_SEGMENT, max_size=6),
)
_QUERY = st.lists(st.sampled_from(QUERY_FRAGMENTS), max_size=4).map(_joined)
_HEADERS = st.lists(
    st.tuples(st.sampled_from(HEADER_NAMES), st.sampled_from(HEADER_VALUES)), max_size=5
)
_COOKIE_NAME = st.sampled_from(
    [b"fr-0123456789abcdef", b"fr-", b"fr-zz", b"host", b"x"]
) | st.binary(min_size=1, max_size=8).map(lambda b: b"fr-" + b.hex().encode())
_COOKIE = st.tuples(_COOKIE_NAME, st.sampled_from(COOKIE_VALUES) | st.binary(max_size=12)).map(
    lambda pair: pair[0] + b"=" + pair[1]
)
COOKIES = st.builds(
    lambda separator, parts: separator.join(parts),
    st.sampled_from([b"; ", b";", b", ", b"\x00"]),
    st.lists(_COOKIE, max_size=4),
)
_METHOD = st.sampled_from(METHODS)


def _clean(b: bytes) -> bytes:
    return bytes(c for c in b if 0x21 <= c <= 0x7E and c not in b"#")


def _request(
    method: str,
    path: bytes,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    cookie: bytes | None,
    printable_only: bool,
) -> Request:
    if cookie is not None:
        headers = [*headers, (b"cookie", cookie)]
    if printable_only:
        target = _clean(path) + (b"?" + _clean(query) if query else b"")
        if not target.startswith(b"/"):
            target = b"/" + target
        path, _, query = target.partition(b"?")  # as the server will split it
        headers = [
            (n, bytes(c for c in v if c not in b"\r\n\x00")) for n, v in headers if n != b"upgrade"
        ]
    return Request(method, path, query, headers)


def hostile_requests(*, printable_only: bool = False) -> st.SearchStrategy[Request]:
    """Requests built from hostile pieces; ``printable_only`` for what a socket can carry
    without the test itself breaking the framing (no CR, LF, NUL in the request line)."""
    return st.builds(
        _request,
        _METHOD,
        _PATH,
        _QUERY,
        _HEADERS,
        st.none() | COOKIES,
        st.just(printable_only),
    )


_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9a-z-]+$")
_SET_COOKIE = re.compile(rb"^fr-[0-9a-f]{16}=(a|b|c); ")


def allowed_locations(config: Config) -> tuple[tuple[str, ...], frozenset[str]]:
    """(member URL prefixes, exact badge URLs) a Location may point to."""
    prefixes = tuple(h.url + "/" for h in config.hosts.values())
    badges = frozenset(config.badge_base_url + p for p in ("/badge.svg", "/badge_logo.svg"))
    return prefixes, badges


def judge(
    request: Request,
    status: int,
    headers: Sequence[tuple[bytes, bytes]],
    allowed: tuple[tuple[str, ...], frozenset[str]],
) -> list[str]:
    """Every way an answer breaks the rules: an 'escape', a 5xx, an injected header."""
    problems = []
    if status >= 500 or status < 100:
        problems.append(f"status {status}")
    prefixes, badges = allowed
    for name, value in headers:
        lower = name.lower()
        if not _TOKEN.match(lower) or lower == INJECTED:
            problems.append(f"header name {name!r}")
        if re.search(rb"[\r\n\x00]", value):
            problems.append(f"header {name!r} value {value!r}")
        if lower == b"location":
            location = value.decode("latin-1")
            if not (location.startswith(prefixes) or location in badges):
                problems.append(f"escape: Location {location!r}")
            elif location.startswith(prefixes):
                # the path and query are passed on byte for byte, nothing added
                target = request.raw_path + (b"?" + request.query if request.query else b"")
                if not value.endswith(target):
                    problems.append(f"Location {location!r} is not the request's {target!r}")
        if lower == b"set-cookie" and status == 307 and not _SET_COOKIE.match(value):
            problems.append(f"Set-Cookie {value!r}")
    return problems


def fuzz_config() -> Config:
    """Three members on example URLs, every abuse control on (127.0.0.1 a trusted proxy)."""
    return parse_config(
        {
            "hosts": {
                name: {"url": url, "prime": name == "a", "pages": name != "c"}
                for name, url in MEMBERS.items()
            },
            "badge_base_url": BADGE_BASE,
            "abuse": {
                "banned_networks": [{"cidr": BANNED, "message": "banned: see https://x"}],
                "trusted_proxies": ["127.0.0.1", "10.0.0.0/8"],
                # high enough that most launches are redirected, low enough to meet it
                "rate_limit": {"per_minute": 60_000, "burst": 300},
            },
        }
    )


def _member_page(request: httpx.Request) -> httpx.Response:
    # what a page-serving member answers for the home page (no Location, no cookie)
    return httpx.Response(
        200, headers={"content-type": "text/html"}, stream=httpx.ByteStream(b"<html>home</html>")
    )


def fuzz_app(config: Config) -> FederationApp:
    """The complete app, members marked healthy, the home page from an in-process member."""
    proxy = httpx.AsyncClient(transport=httpx.MockTransport(_member_page))
    app = create_app(config, run_health_checks=False, proxy_client=proxy)
    mark(app.registry, *config.hosts)
    return app


class ErrorLog(logging.Handler):
    """Collects records at ERROR and above, and any record carrying an exception."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@contextlib.contextmanager
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


async def asgi_answer(app: FederationApp, request: Request) -> Answer:
    return await asgi_request(
        app,
        request.raw_path,
        method=request.method,
        query=request.query,
        headers=request.headers,
    )


# -- generated requests through the ASGI app ------------------------------------------------


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def fuzzed(loop: asyncio.AbstractEventLoop) -> FederationApp:
    return fuzz_app(fuzz_config())


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=hostile_requests())
def test_generated_requests_through_the_app_never_escape(
    request: Request, fuzzed: FederationApp, loop: asyncio.AbstractEventLoop
) -> None:
    allowed = allowed_locations(fuzzed.config)
    with error_log() as errors:
        answer = loop.run_until_complete(asgi_answer(fuzzed, request))
    assert not errors.records, [r.getMessage() for r in errors.records]
    assert judge(request, answer.status, answer.headers, allowed) == []


def test_the_generators_reach_every_kind_of_answer(
    fuzzed: FederationApp, loop: asyncio.AbstractEventLoop
) -> None:
    """The generated requests are not all refused at the door: the properties mean something."""
    seen: set[int] = set()

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(request=hostile_requests())
    def collect(request: Request) -> None:
        seen.add(loop.run_until_complete(asgi_answer(fuzzed, request)).status)

    collect()
    assert {200, 307, 400, 404, 405} <= seen, seen


# -- generated requests as raw bytes to a real server ---------------------------------------


def serve_args(port: int = 0) -> argparse.Namespace:
    """The arguments ``federation-redirect serve`` would parse."""
    return argparse.Namespace(
        host="127.0.0.1", port=port, log_level="warning", forwarded_allow_ips=None
    )


class PlainMember:
    """A member that answers like BinderHub for /health and /versions, and a plain page for
    everything else, whatever the path (the fake BinderHub of ``testing.py`` echoes request
    details back in headers, and uvicorn refuses some of the hostile ones)."""

    def __init__(self, name: str) -> None:
        self.page = f"<html>home page of member {name}</html>".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        path = scope["path"]
        if path == "/health":
            body, kind = b'{"ok": true, "checks": []}', b"application/json"
        elif path == "/versions":
            body, kind = b'{"binderhub": "1.0.0"}', b"application/json"
        else:
            body, kind = self.page, b"text/html"
        headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class ThreadServer:
    """``federation-redirect serve``'s uvicorn server (``_server_config``), with three real
    members, in a thread of its own, so synchronous hypothesis tests can talk to it."""

    def __init__(self, config_for: Callable[[dict[str, str]], Config]) -> None:
        self.config_for = config_for
        self.port = 0
        self.members: dict[str, str] = {}
        self.config: Config | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="redirector", daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> ThreadServer:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the redirector thread did not start")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by __enter__
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            members = {
                name: await stack.enter_async_context(ServedApp(PlainMember(name), lifespan="off"))
                for name in ("a", "b", "c")
            }
            self.members = {name: m.url for name, m in members.items()}
            self.config = self.config_for(self.members)
            server = uvicorn.Server(_server_config(self.config, serve_args()))
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
            task = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
            app = server.config.loaded_app
            registry = _registry_of(app)
            await until(lambda: registry.ready, 30)
            self._ready.set()
            await self._stop.wait()
            server.should_exit = True
            await task


async def until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s")
        await asyncio.sleep(0.01)


def _registry_of(app: Any) -> Registry:
    # uvicorn wraps the app in its proxy-headers middleware
    while not isinstance(app, FederationApp):
        app = app.app
    return app.registry


def live_config(members: dict[str, str]) -> Config:
    doc = fuzz_config().model_dump(mode="json")
    for name, url in members.items():
        doc["hosts"][name] = {"url": url, "prime": name == "a", "pages": name != "c"}
    doc["check"] = {"period": 5, "timeout": 2}
    return parse_config(doc)


def live_config_without_abuse_controls(members: dict[str, str]) -> Config:
    """As :func:`live_config`, but launches are answered by the HTTP protocol itself (abuse
    controls keep them on the ASGI path)."""
    doc = live_config(members).model_dump(mode="json")
    del doc["abuse"]
    return parse_config(doc)


@pytest.fixture(scope="module", params=["asgi", "shortcut"])
def live(request: pytest.FixtureRequest) -> Iterator[ThreadServer]:
    config_for = live_config if request.param == "asgi" else live_config_without_abuse_controls
    with ThreadServer(config_for) as server:
        yield server


@dataclass
class RawAnswer:
    status: int
    headers: list[tuple[bytes, bytes]]
    raw: bytes


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> RawAnswer | None:
    """Send ``data``, read one response head (None: the server closed without answering)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received and len(received) < 1 << 20:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            received += chunk
    if not received:
        return None
    head = received.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3})", lines[0])
    assert match, f"not an HTTP response: {received[:200]!r}"
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        assert sep, f"not a header line: {line!r}"
        headers.append((name, value.strip()))
    return RawAnswer(int(match.group(1)), headers, received)


def wire(request: Request) -> bytes:
    target = request.raw_path + (b"?" + request.query if request.query else b"")
    lines = [request.method.encode() + b" " + target + b" HTTP/1.1", b"host: redirector.test"]
    lines += [name + b": " + value for name, value in request.headers if name != b"host"]
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def live_allowed(server: ThreadServer) -> tuple[tuple[str, ...], frozenset[str]]:
    assert server.config is not None
    return allowed_locations(server.config)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=hostile_requests(printable_only=True))
def test_generated_requests_as_raw_bytes_to_a_real_server_never_escape(
    request: Request, live: ThreadServer
) -> None:
    with error_log() as errors:
        answer = raw_exchange(live.port, wire(request))
    assert answer is not None, "no answer"
    assert not errors.records, [r.getMessage() for r in errors.records]
    assert judge(request, answer.status, answer.headers, live_allowed(live)) == []


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /v2/gh/o/r/HEAD\r\nX-Injected: 1 HTTP/1.1",
        b"GET /v2/gh/o/r/HEAD?a=b\rX-Injected: 1 HTTP/1.1",
        b"GET /v2/gh/o/r/\x00HEAD HTTP/1.1",
        b"GET /v2/gh/o/r/\xffHEAD HTTP/1.1",
        b"GET http://evil.example/v2/gh/o/r/HEAD HTTP/1.1",
        b"GET //evil.example/v2/gh/o/r HTTP/1.1",
        b"GET /v2/gh/o/r/HEAD?%0d%0aX-Injected:%201 HTTP/1.1",
        b"GET /v2/gh/o/r/HEAD HTTP/1.1\r\nX-Injected: 1",
        b"GET * HTTP/1.1",
        b"CONNECT evil.example:443 HTTP/1.1",
        b"GET /v2/gh/o/r/HEAD HTTP/9.9",
    ],
)
def test_crafted_request_lines_are_refused_or_answered_cleanly(
    live: ThreadServer, request_line: bytes
) -> None:
    with error_log() as errors:
        answer = raw_exchange(live.port, request_line + b"\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert not errors.records, [r.getMessage() for r in errors.records]
    if answer is None:
        return  # the server closed the connection: refused
    assert answer.status < 500
    names = {n.lower() for n, _ in answer.headers}
    assert INJECTED not in names
    for name, value in answer.headers:
        if name.lower() == b"location":
            assert value.decode().startswith(live_allowed(live)[0]), value


# -- misbehaving members --------------------------------------------------------------------


class HostileMember:
    """A raw ASGI member whose /health and /versions misbehave as ``kind`` says."""

    def __init__(self, kind: str, target: str = "") -> None:
        self.kind = kind
        self.target = target  # where "redirect" points
        self.bytes_sent = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        await getattr(self, "_" + self.kind)(send)

    async def _start(self, send: Send, status: int = 200, **headers: str) -> None:
        raw = [(b"content-type", b"application/json")]
        raw += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})

    async def _body(self, send: Send, body: bytes, more: bool = True) -> None:
        self.bytes_sent += len(body)
        message: Message = {"type": "http.response.body", "body": body, "more_body": more}
        await send(message)

    async def _endless(self, send: Send) -> None:
        # a multi-gigabyte body, streamed without Content-Length, for as long as it is read
        await self._start(send)
        await self._body(send, b'{"ok": true, "checks": [], "pad": "')
        chunk = b"x" * 65536
        for _ in range((4 << 30) // len(chunk)):
            await self._body(send, chunk)
        await self._body(send, b'"}', more=False)

    async def _declared_huge(self, send: Send) -> None:
        await self._start(send, content_length=str(4 << 30))
        await self._body(send, b"{", more=False)

    async def _trickle(self, send: Send) -> None:
        await self._start(send)
        for byte in b'{"ok": true, "checks": []}':
            await self._body(send, bytes([byte]))
            await asyncio.sleep(1.0)
        await self._body(send, b"", more=False)

    async def _invalid_utf8(self, send: Send) -> None:
        await self._start(send)
        await self._body(send, b'{"ok": true, "checks": [], "x": "\xff\xfe\xc3"}', more=False)

    async def _wrong_types(self, send: Send) -> None:
        await self._start(send)
        body = {"ok": "yes", "checks": {"service": 1}, "binderhub": ["1.0"]}
        await self._body(send, json.dumps(body).encode(), more=False)

    async def _deep(self, send: Send) -> None:
        await self._start(send)
        await self._body(send, b"[" * 60_000 + b"]" * 60_000, more=False)

    async def _redirect(self, send: Send) -> None:
        await self._start(send, 302, location=self.target + "/health")
        await self._body(send, b"", more=False)


async def _good_member(scope: Scope, receive: Receive, send: Send) -> None:
    """Where the hostile member redirects to: a perfectly healthy-looking member."""
    if scope["type"] != "http":
        return
    body = b'{"ok": true, "checks": []}'
    if scope["path"] == "/versions":
        body = b'{"binderhub": "1.0.0"}'
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


HOSTILE = {
    # kind: (reason, explicit)
    "endless": ("bad_response", True),
    "declared_huge": ("bad_response", True),
    "trickle": ("timeout", False),
    "invalid_utf8": ("bad_response", True),
    "wrong_types": ("bad_response", True),
    "deep": ("bad_response", True),
    "redirect": ("http_status", True),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
async def test_a_misbehaving_member_is_marked_unhealthy_in_bounded_time_and_memory(
    kind: str, start_fake: StartFake
) -> None:
    reason, explicit = HOSTILE[kind]
    prime = await start_fake("prime")
    async with ServedApp(_good_member, lifespan="off") as elsewhere:
        member = HostileMember(kind, target=elsewhere.url)
        async with ServedApp(member, lifespan="off") as served:
            timeout = 1.5
            config = parse_config(
                {
                    "hosts": {
                        "prime": {"url": prime.url, "prime": True},
                        "bad": {"url": served.url},
                    },
                    "check": {"timeout": timeout, "period": 60, "jitter": 0, "retries": 2},
                }
            )
            registry = Registry(config)
            engine = HealthEngine(config, registry)
            tracemalloc.start()
            started = time.monotonic()
            try:
                result = await engine.check_round("bad")
                took = time.monotonic() - started
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert (result.reason, result.explicit) == (reason, explicit), result.detail
            assert took <= timeout + 0.5
            cap = config.check.max_response_bytes
            assert peak < 20 * cap + (2 << 20), peak  # a few copies of the cap, not the body
            if kind == "endless":  # stopped reading early (what is sent fills socket buffers)
                assert member.bytes_sent < 64 << 20, member.bytes_sent
            # the engine itself marks it unhealthy with that reason, at its first round
            await engine.start()
            try:
                await until(lambda: registry.health("bad").state is not HealthState.UNKNOWN, 5)
            finally:
                await engine.stop()
            assert registry.health("bad").state is HealthState.UNHEALTHY
            assert registry.health("bad").reason == reason


# -- slow and oversized clients -------------------------------------------------------------


@dataclass
class CliServer:
    url: str
    port: int
    app: FederationApp


@contextlib.asynccontextmanager
async def cli_server(start_fake: StartFake) -> AsyncIterator[CliServer]:
    """The redirector with exactly the uvicorn settings of ``federation-redirect serve``."""
    members = {n: await start_fake(n, pods=5, quota=100_000) for n in ("a", "b", "c")}
    config = parse_config(
        {
            "hosts": {n: {"url": m.url, "prime": n == "a"} for n, m in members.items()},
            "check": {"period": 5, "timeout": 2},
        }
    )
    server = uvicorn.Server(_server_config(config, serve_args()))
    server.capture_signals = _no_signals  # type: ignore[method-assign]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        app = server.config.loaded_app
        while not isinstance(app, FederationApp):
            app = app.app
        registry = app.registry
        await until(lambda: registry.ready, 30)
        yield CliServer(f"http://127.0.0.1:{port}", port, app)
    finally:
        server.should_exit = True
        server.force_exit = True
        await asyncio.wait_for(task, 15)


@contextlib.contextmanager
def _no_signals() -> Iterator[None]:
    yield


async def _latencies(url: str, n: int) -> list[float]:
    out = []
    async with httpx.AsyncClient(base_url=url) as client:
        for i in range(n):
            start = time.perf_counter()
            r = await client.get(f"/v2/gh/org/repo-{i}/HEAD")
            out.append(time.perf_counter() - start)
            assert r.status_code == 307
            client.cookies.clear()
    return sorted(out)


async def test_slowloris_connections_do_not_slow_other_clients(start_fake: StartFake) -> None:
    async with cli_server(start_fake) as server:
        before = await _latencies(server.url, 100)
        slow: list[asyncio.StreamWriter] = []
        try:
            for _ in range(200):
                _, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(b"GET /v2/gh/o/r/HEAD HTTP/1.1\r\nHost: x\r\nX-a: ")
                slow.append(writer)

            async def drip() -> None:  # one more byte a second on each, never finishing
                while True:
                    for writer in slow:
                        if not writer.is_closing():
                            writer.write(b"a")
                    await asyncio.sleep(1)

            dripping = asyncio.create_task(drip())
            await asyncio.sleep(0.5)
            during = await _latencies(server.url, 200)
            dripping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dripping
        finally:
            for writer in slow:
                writer.close()
        p50, p99 = during[len(during) // 2], during[int(len(during) * 0.99)]
        assert p99 < 0.05, (p50, p99, before[len(before) // 2])
        assert p50 < max(0.01, 5 * before[len(before) // 2])


OVERSIZED: dict[str, Callable[[], bytes]] = {
    "request line": lambda: b"GET /v2/gh/o/r/HEAD?" + b"a" * (1 << 20) + b" HTTP/1.1\r\n\r\n",
    "one header": lambda: (
        b"GET /v2/gh/o/r/HEAD HTTP/1.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    ),
    "many headers": lambda: (
        b"GET /v2/gh/o/r/HEAD HTTP/1.1\r\n" + b"X-h: aaaaaaaaaaaaaaaa\r\n" * 50_000 + b"\r\n"
    ),
    "cookies": lambda: (
        b"GET /v2/gh/o/r/HEAD HTTP/1.1\r\nCookie: "
        + b"fr-0123456789abcdef=a; " * 40_000
        + b"\r\n\r\n"
    ),
}


@pytest.mark.parametrize("what", list(OVERSIZED))
async def test_oversized_request_lines_and_headers_are_refused(
    start_fake: StartFake, what: str
) -> None:
    async with cli_server(start_fake) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(OVERSIZED[what]())
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            try:
                head = await asyncio.wait_for(reader.read(200), 5)
            except ConnectionError:
                head = b""
        finally:
            writer.close()
        # refused: a 4xx, or the connection closed; never a redirect, never a 5xx
        refused = head == b"" or re.match(rb"HTTP/1\.1 4\d\d", head) is not None
        assert refused, f"{what}: {head[:80]!r}"
        # and the server is still serving
        assert (await _latencies(server.url, 5))[-1] < 0.5


async def _echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = f"{scope['method']} {scope['path']} {size}".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def bounded_server(max_head: int, timeout: float) -> AsyncIterator[int]:
    config = uvicorn.Config(
        _echo_app,
        http=bounded_http(max_head, timeout),
        lifespan="off",
        log_config=None,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    server.capture_signals = _no_signals  # type: ignore[method-assign]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started, 10)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_a_head_that_arrives_in_one_read_arms_no_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    armed: list[object] = []
    original = BoundedHttpToolsProtocol._arm

    def counting_arm(self: BoundedHttpToolsProtocol) -> None:
        armed.append(self)
        original(self)

    monkeypatch.setattr(BoundedHttpToolsProtocol, "_arm", counting_arm)
    async with bounded_server(max_head=1024, timeout=5) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in range(50):
                writer.write(f"GET /r{i} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
                await reader.readuntil(f"GET /r{i} 0".encode())
            # one timer for the connection's opening, none per request (other servers of
            # this process arm theirs: only this server's connections count)
            assert len(mine(armed, port)) == 1
            writer.write(b"GET /slow HTTP/1.1\r\nhost: x\r\n")  # a head that goes on
            await writer.drain()
            await asyncio.sleep(0.1)
            assert len(mine(armed, port)) == 2
        finally:
            writer.close()


def mine(protocols: list[Any], port: int) -> list[Any]:
    """The protocols of the connections accepted on ``port``."""
    return [p for p in protocols if p.server is not None and p.server[1] == port]


async def test_request_heads_are_bounded_in_size_and_time_but_bodies_and_keep_alive_are_not() -> (
    None
):
    async with bounded_server(max_head=1024, timeout=0.3) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # keep-alive: three requests, a body far larger than the head limit, then pipelining
        body = b"x" * 300_000
        writer.write(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await reader.readuntil(b"GET /a 0")).startswith(b"HTTP/1.1 200")
        writer.write(b"POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 300000\r\n\r\n" + body)
        assert (await reader.readuntil(b"POST /b 300000")).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.5)  # idle between requests longer than the head timeout: fine
        writer.write(b"GET /c HTTP/1.1\r\nhost: x\r\n\r\nGET /d HTTP/1.1\r\nhost: x\r\n\r\n")
        assert b"GET /d 0" in await reader.readuntil(b"GET /d 0")
        # a head that never ends in time: 408, closed
        writer.write(b"GET /e HTTP/1.1\r\nhost: x\r\nx-slow: ")
        started = time.monotonic()
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 408") and 0.25 < time.monotonic() - started < 2
        writer.close()

        # a connection that sends nothing at all is closed too
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 408")
        writer.close()

        # a head over the limit, sent in small pieces: 431, closed, nothing buffered past it
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /f HTTP/1.1\r\nhost: x\r\n")
        for _ in range(30):
            writer.write(b"x-h: " + b"a" * 60 + b"\r\n")
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 431")
        writer.close()
