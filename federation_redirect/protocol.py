"""The HTTP protocol the server runs: launches answered as soon as their head is parsed.

uvicorn hands every request to the ASGI app in a task of its own: a scope, a request-response
cycle, an event, a task, two ``send`` coroutines, a header check per header, then a keep-alive
timer. For the launch routes, which carry every mybinder.org launch, :class:`FrontDoorProtocol`
skips all of it: when a ``GET`` or ``HEAD`` head for ``/v2/``, ``/build/`` or ``/repo/`` is
complete, it builds the small scope that :meth:`~federation_redirect.web.FrontDoor.answer`
reads, asks it for the answer (the same call the ASGI path makes, so both decide, count and
measure alike) and writes the response in one ``write``, as uvicorn would have written it
(status line, its default headers, the answer's headers, ``connection: close`` when the
connection is not kept alive, the body unless ``HEAD``); then it goes on as uvicorn does after
a response (keep-alive timer, pipelined requests).

Everything else goes the usual ASGI way, and so does a launch whenever the shortcut could
answer differently: a request pipelined behind one still being answered (answers keep their
order), a connection whose writes are paused, ``Expect: 100-continue``, an upgrade, a
percent-encoded path (uvicorn decodes it), a non-ASCII path, the concurrency limit reached,
abuse controls configured (they read the client address as uvicorn's proxy middleware leaves
it), access logging, a ``root_path``, or an app that is not exactly a
:class:`~federation_redirect.web.FrontDoor` behind uvicorn's proxy-headers middleware.

The scheme (it decides the cookie's ``Secure`` flag) is taken from ``X-Forwarded-Proto`` when
the peer is one that middleware trusts, as it does; the Location, cookies and status are
:class:`~federation_redirect.web.FrontDoor`'s, checked there (printable ASCII only, a
configured member's URL), so the shortcut adds no header of its own but ``connection: close``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import httptools
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from .httplimits import BoundedHttpToolsProtocol
from .web import LAUNCH_PREFIXES, FrontDoor

__all__ = ["FrontDoorProtocol", "front_door_http"]

log = logging.getLogger("federation_redirect.web")

_LAUNCHES = tuple(prefix.encode() for prefix in LAUNCH_PREFIXES)
_SCHEMES = frozenset({"http", "https", "ws", "wss"})
_FORWARDED_PROTO = b"x-forwarded-proto"
_CLOSE = b"connection: close\r\n"
_ERROR = (
    STATUS_LINE[500] + b"content-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\n"
    b"connection: close\r\n\r\nInternal Server Error"
)


class _Answered:
    """Stands for the request-response cycle of a request answered here: complete."""

    response_complete = True
    disconnected = False
    keep_alive = False
    message_event = asyncio.Event()  # set by uvicorn when the connection goes; nobody waits


_ANSWERED: Any = _Answered()


class FrontDoorProtocol(BoundedHttpToolsProtocol):
    """:class:`~federation_redirect.httplimits.BoundedHttpToolsProtocol` that answers launch
    requests itself (module docstring)."""

    # uvicorn's default headers (the date) as bytes, for the list they were made from
    _defaults: ClassVar[tuple[object, bytes]] = (None, b"")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._door: FrontDoor | None = None
        self._idle_since: float | None = None  # loop time the connection fell idle, if it is
        self._proxies: ProxyHeadersMiddleware | None = None
        app: Any = self.app
        if isinstance(app, ProxyHeadersMiddleware):
            self._proxies, app = app, app.app
        if (
            isinstance(app, FrontDoor)
            and app.abuse is None
            and not self.access_log
            and not self.root_path
        ):
            self._door = app

    def on_message_begin(self) -> None:
        if self._door is None:
            super().on_message_begin()
            return
        # uvicorn's, without the ASGI scope: made only if the request goes the ASGI way
        self._in_head = True
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def on_headers_complete(self) -> None:
        if self._door is None:
            super().on_headers_complete()
        elif not self._answer_launch(self._door):
            # uvicorn's scope for this request, made by uvicorn, on the head read so far
            url, headers, expect = self.url, self.headers, self.expect_100_continue
            super().on_message_begin()
            self.url, self.headers, self.expect_100_continue = url, headers, expect
            self.scope["headers"] = headers
            super().on_headers_complete()

    # -- one keep-alive timer per connection ---------------------------------------------------
    # uvicorn arms a timer after every response and cancels it when the next request's bytes
    # arrive (about 2 us a request). Here the timer stays armed: a response notes when the
    # connection fell idle, a read that it is busy, and the timer, when it fires, closes the
    # connection only if it has been idle for the whole timeout (else it waits out the rest).

    def _unset_keepalive_if_required(self) -> None:
        self._idle_since = None  # busy: the armed timer will let the connection be

    def on_response_complete(self) -> None:
        # uvicorn's, but for the timer
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since = None
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self._keep_alive_due
            )

    def _keep_alive_due(self) -> None:
        self.timeout_keep_alive_task = None
        idle_since = self._idle_since
        if idle_since is None:
            return  # a request is being answered; its response arms the timer again
        left = idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_due)
        else:
            self.timeout_keep_alive_handler()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        super().connection_lost(exc)

    def _answer_launch(self, door: FrontDoor) -> bool:
        """Answer the request now if it is a launch that needs nothing of ASGI."""
        url = self.url
        if not url.startswith(_LAUNCHES):
            return False
        cycle = self.cycle
        parser = self.parser
        method = parser.get_method()
        if (
            (method != b"GET" and method != b"HEAD")
            or (cycle is not None and not cycle.response_complete)
            or self.flow.write_paused
            or self.expect_100_continue
            or parser.should_upgrade()
        ):
            return False
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            return False  # uvicorn answers 503
        parsed = httptools.parse_url(url)
        raw: bytes = parsed.path
        if b"%" in raw or not raw.isascii():
            return False
        headers = self.headers
        scheme: str = self.scheme or "http"
        proxies = self._proxies
        if proxies is not None and self._trusts(proxies):
            for name, value in headers:
                if name == _FORWARDED_PROTO:
                    forwarded = value.decode("latin1").strip()
                    if forwarded in _SCHEMES:
                        scheme = forwarded
        http_version = parser.get_http_version()
        scope = {
            "type": "http",
            "http_version": http_version,
            "method": method.decode("ascii"),
            "scheme": scheme,
            "path": raw.decode("ascii"),
            "raw_path": raw,
            "query_string": parsed.query or b"",
            "headers": headers,
            "client": self.client,
            "server": self.server,
            "root_path": "",
        }
        self._head_complete()
        keep_alive = http_version != "1.0" and parser.should_keep_alive()
        try:
            status, answer, body = door.answer(scope)
        except Exception:  # a bug: answer as uvicorn would, and keep serving
            log.exception("exception answering %s", raw.decode("ascii", "replace"))
            self.transport.write(_ERROR)
            keep_alive = False
        else:
            parts = [STATUS_LINE[status], self._default_headers()]
            for name, value in answer:
                parts += (name, b": ", value, b"\r\n")
            if not keep_alive:
                parts.append(_CLOSE)
            parts.append(b"\r\n")
            if method == b"GET":
                parts.append(body)
            self.transport.write(b"".join(parts))
        self.cycle = _ANSWERED
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()
        return True

    def _trusts(self, proxies: ProxyHeadersMiddleware) -> bool:
        client = self.client
        host = client[0] if client else None
        # uvicorn < 0.30 keeps '*' as a flag beside a set of hosts
        return bool(getattr(proxies, "always_trust", False)) or host in proxies.trusted_hosts

    def _default_headers(self) -> bytes:
        defaults = self.server_state.default_headers
        made_from, encoded = FrontDoorProtocol._defaults
        if made_from is not defaults:  # uvicorn makes a new list when the date changes
            encoded = b"".join(name + b": " + value + b"\r\n" for name, value in defaults)
            FrontDoorProtocol._defaults = (defaults, encoded)
        return encoded


def front_door_http(max_head_bytes: int, head_timeout: float) -> type[FrontDoorProtocol]:
    """A :class:`FrontDoorProtocol` class with these request-head limits, for
    ``uvicorn.Config(http=...)``."""
    return type(
        "FrontDoorProtocol",
        (FrontDoorProtocol,),
        {"max_head_bytes": max_head_bytes, "head_timeout": head_timeout},
    )
