"""Small helpers shared by the web tests: a raw ASGI call and registry setup."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from federation_redirect.config import Config, parse_config
from federation_redirect.models import Capacity, HealthReport, HealthState
from federation_redirect.registry import Registry
from federation_redirect.types import ASGIApp, Message

# Health-check settings for tests against live members: rounds of a few tenths of a second.
FAST_CHECKS: dict[str, Any] = {
    "period": 0.3,
    "jitter": 0.1,
    "timeout": 0.5,
    "retries": 2,
    "failed_period": 1,
    "fast_period": 0.05,
    "min_backoff": 0.05,
    "max_backoff": 0.2,
}


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.decode("latin-1").lower() == name.lower():
                return v.decode("latin-1")
        return None

    def all(self, name: str) -> list[str]:
        return [v.decode("latin-1") for k, v in self.headers if k.decode().lower() == name.lower()]


async def asgi_request(
    app: ASGIApp,
    raw_path: bytes,
    *,
    method: str = "GET",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    scheme: str = "http",
    body: bytes = b"",
) -> Answer:
    """Call the ASGI app directly with a crafted scope (bytes exactly as given)."""
    path = raw_path.decode("latin-1")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": headers if headers is not None else [(b"host", b"mybinder.example")],
        "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 80),
    }
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    answer = Answer(status=0)

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")

    await app(scope, receive, send)
    return answer


def three_members(**top: Any) -> Config:
    """A config with three members a (prime), b, c on unroutable example URLs."""
    return parse_config(
        {
            "hosts": {
                "a": {"url": "https://a.example", "prime": True, "weight": 1},
                "b": {"url": "https://b.example", "weight": 1},
                "c": {"url": "https://c.example:8443/sub", "weight": 1},
            },
            **top,
        }
    )


def mark(
    registry: Registry, *names: str, state: HealthState = HealthState.HEALTHY, full: bool = False
) -> None:
    """Report members as in the given state, as the health engine would."""
    for name in names:
        registry.report(
            name,
            HealthReport(
                state=state, full=full, capacity=Capacity(quota=100, pods=95 if full else 1)
            ),
        )


class ServedApp:
    """Any ASGI app served by a real uvicorn server on 127.0.0.1 in this event loop, with the
    HTTP protocol ``federation-redirect serve`` runs (launches answered without ASGI's cycle)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        lifespan: Literal["auto", "on", "off"] = "on",
        shortcut: bool = True,
        forwarded_allow_ips: str | None = None,
        timeout_keep_alive: int = 5,
    ) -> None:
        import uvicorn

        from federation_redirect.cli import HEADER_TIMEOUT_SECONDS, MAX_HEADER_BYTES
        from federation_redirect.httplimits import bounded_http
        from federation_redirect.protocol import front_door_http

        self.app = app
        # shortcut=False: every request through ASGI, with the same request-head limits
        protocol = front_door_http if shortcut else bounded_http
        self._config = uvicorn.Config(
            app,
            http=protocol(MAX_HEADER_BYTES, HEADER_TIMEOUT_SECONDS),
            forwarded_allow_ips=forwarded_allow_ips,
            timeout_keep_alive=timeout_keep_alive,
            lifespan=lifespan,
            access_log=False,
            log_config=None,
            log_level="warning",
            ws="none",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(self._config)
        self._server.capture_signals = _no_signals  # type: ignore[method-assign]
        self.port = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ServedApp:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.005)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await asyncio.wait_for(self._task, timeout=10)


@contextlib.contextmanager
def _no_signals() -> Iterator[None]:
    yield
