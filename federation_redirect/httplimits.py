"""Bounds on a client's request head (request line and headers): size and time.

uvicorn's httptools protocol reads a request head of any size (httptools keeps a header's
value in memory until its end, however long) and waits for it forever (uvicorn's only timeout
is between requests), so one client could grow the server's memory without limit, and a few
hundred could hold every connection slot by sending a byte now and then (slowloris).
:class:`BoundedHttpToolsProtocol` adds the two limits h11 and nginx have:

* a request head larger than ``max_head_bytes`` gets ``431`` and the connection is closed
  (counted as received, so memory stays within about ``max_head_bytes`` plus one read);
* a request head not complete within ``head_timeout`` seconds of its first byte (or of the
  connection opening) gets ``408`` and the connection is closed.

Idle keep-alive connections between requests are left to ``timeout_keep_alive``. Use it as
uvicorn's ``http`` class through :func:`bounded_http`, which fixes the limits.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["BoundedHttpToolsProtocol", "bounded_http"]


def _answer(status: bytes, text: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(text)).encode() + b"\r\nconnection: close\r\n\r\n" + text
    )


_TOO_LARGE = _answer(b"431 Request Header Fields Too Large", b"request head too large\n")
_TOO_SLOW = _answer(b"408 Request Timeout", b"request head not received in time\n")


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size and a time limit on each request head."""

    max_head_bytes: ClassVar[int] = 64 * 1024
    head_timeout: ClassVar[float] = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # until the first request's head is complete
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        in_head = self._in_head
        # parse first: the head may end within this read and a body (or, pipelined, the
        # next request) follow in it
        super().data_received(data)
        if self._in_head:  # a head goes on past this read
            self._head_bytes = (self._head_bytes if in_head else 0) + len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse(_TOO_LARGE)
            elif self._head_timer is None:
                # a head that arrives whole in one read (the usual case) costs no timer
                self._arm()

    def on_message_begin(self) -> None:
        self._in_head = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_complete()
        super().on_headers_complete()

    def _head_complete(self) -> None:
        """The request head is complete: its limits no longer apply."""
        self._in_head = False
        self._disarm()

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _timed_out(self) -> None:
        self._head_timer = None
        if self._in_head:
            self._refuse(_TOO_SLOW)

    def _refuse(self, answer: bytes) -> None:
        self._disarm()
        self._in_head = False  # nothing more is read from this connection
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()


def bounded_http(max_head_bytes: int, head_timeout: float) -> type[BoundedHttpToolsProtocol]:
    """A :class:`BoundedHttpToolsProtocol` class with these limits, for ``uvicorn.Config``."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"max_head_bytes": max_head_bytes, "head_timeout": head_timeout},
    )
