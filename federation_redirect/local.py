"""The local paths' ASGI app, without FastAPI for the frequent requests.

The front door (:mod:`federation_redirect.web`) hands the local paths (probes, metrics,
``/active_hosts``, ``/status``, the operator API, ``/docs``, ``/openapi.json``) and the ASGI
lifespan to :class:`LocalEndpoints`. It answers a ``GET`` of ``/healthz``, ``/readyz``,
``/active_hosts``, ``/metrics`` and ``/status`` itself, with the status, headers and body the
FastAPI app of :func:`federation_redirect.api.build_api` gives (a test compares them), and runs
the lifespan as Starlette's router does. Everything else goes to that FastAPI app, which is
built, and FastAPI and the operator API's models imported, on first use: a replica that only
redirects, answers probes and is scraped never loads them (about 6 MiB of its memory).
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from .auth import AdminTokens
from .metrics import CONTENT_TYPE, Metrics
from .registry import Registry
from .state.base import StateStore
from .status import load_status_page
from .types import Receive, Scope, Send

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["LocalEndpoints", "active_hosts_document", "ready_document"]

Lifespan = Callable[[Any], AbstractAsyncContextManager[None]]


def ready_document(registry: Registry) -> tuple[dict[str, Any], int]:
    """``/readyz``: its JSON document and status."""
    body = {
        "ready": registry.ready,
        "first_round_done": registry.first_round_done,
        "routable": [m.name for m in registry.snapshot.candidates],
    }
    return body, 200 if registry.ready else 503


def active_hosts_document(registry: Registry) -> dict[str, dict[str, dict[str, Any]]]:
    """``/active_hosts``: the members in rotation, in the production redirector's shape."""
    hosts = registry.config.hosts
    return {
        "active_hosts": {
            m.name: {
                "url": hosts[m.name].url,
                "weight": hosts[m.name].weight,
                "health": hosts[m.name].health,
                "versions": hosts[m.name].versions,
                "prime": hosts[m.name].prime,
            }
            for m in registry.snapshot.candidates
        }
    }


def _json(document: Any) -> bytes:
    # as Starlette's JSONResponse renders
    return json.dumps(
        document, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode()


class LocalEndpoints:
    """The ASGI app of the local paths (see the module docstring). ``lifespan`` (called with
    this app) runs the background tasks; ``store``, ``tokens`` and ``wall_clock`` go to the
    operator API."""

    def __init__(
        self,
        registry: Registry,
        metrics: Metrics,
        lifespan: Lifespan | None = None,
        *,
        store: StateStore,
        tokens: AdminTokens,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.lifespan = lifespan
        self._store = store
        self._tokens = tokens
        self._wall_clock = wall_clock
        self._fastapi: FastAPI | None = None
        self._page = page = load_status_page()
        # in the order Starlette's HTMLResponse(page.body, headers=page.headers) sends them
        self._page_headers = [
            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in page.headers.items()),
            (b"content-length", str(len(page.body)).encode()),
            (b"content-type", b"text/html; charset=utf-8"),
        ]
        self._gets: dict[str, Callable[[Send], Awaitable[None]]] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/active_hosts": self._active_hosts,
            "/metrics": self._metrics,
            "/status": self._status,
        }

    @property
    def fastapi(self) -> FastAPI:
        """The FastAPI app of every local endpoint (built on first use; the lifespan is not
        its business)."""
        if self._fastapi is None:
            from .api import build_api

            self._fastapi = build_api(
                self.registry,
                self.metrics,
                store=self._store,
                tokens=self._tokens,
                wall_clock=self._wall_clock,
                status_page=self._page,
            )
        return self._fastapi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["method"] == "GET":
                answer = self._gets.get(scope["path"])
                if answer is not None:
                    await answer(send)
                    return
        elif kind == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.fastapi(scope, receive, send)

    # -- the answers of the FastAPI app, without it -----------------------------------------

    @staticmethod
    async def _send(send: Send, status: int, body: bytes, content_type: bytes) -> None:
        headers = [(b"content-length", str(len(body)).encode()), (b"content-type", content_type)]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _healthz(self, send: Send) -> None:
        await self._send(send, 200, _json({"status": "ok"}), b"application/json")

    async def _readyz(self, send: Send) -> None:
        document, status = ready_document(self.registry)
        await self._send(send, status, _json(document), b"application/json")

    async def _active_hosts(self, send: Send) -> None:
        document = active_hosts_document(self.registry)
        await self._send(send, 200, _json(document), b"application/json")

    async def _metrics(self, send: Send) -> None:
        await self._send(send, 200, self.metrics.render(), CONTENT_TYPE.encode())

    async def _status(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._page_headers})
        await send({"type": "http.response.body", "body": self._page.body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        # Starlette's Router.lifespan, for the app's one lifespan context (or none)
        started = False
        await receive()  # lifespan.startup
        try:
            if self.lifespan is None:
                await send({"type": "lifespan.startup.complete"})
                started = True
                await receive()  # lifespan.shutdown
            else:
                async with self.lifespan(self):
                    await send({"type": "lifespan.startup.complete"})
                    started = True
                    await receive()  # lifespan.shutdown
        except BaseException:
            failed = "shutdown" if started else "startup"
            await send({"type": f"lifespan.{failed}.failed", "message": traceback.format_exc()})
            raise
        else:
            await send({"type": "lifespan.shutdown.complete"})
