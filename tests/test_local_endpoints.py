"""The local endpoints without FastAPI: the same answers as the FastAPI app, the lifespan as
Starlette runs it, and FastAPI loaded only when something else is asked for."""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from federation_redirect.app import FederationApp, create_app
from federation_redirect.local import LocalEndpoints
from federation_redirect.models import HealthState
from federation_redirect.types import Message

from .helpers import Answer, ServedApp, asgi_request, mark, three_members

PATHS = (b"/healthz", b"/readyz", b"/active_hosts", b"/metrics", b"/status")


def make_app() -> FederationApp:
    return create_app(three_members(), rng=random.Random(3), run_health_checks=False)


async def both(app: FederationApp, path: bytes, **kwargs: Any) -> tuple[Answer, Answer]:
    """The answer of the local endpoints, then the FastAPI app's, to the same request."""
    mine = await asgi_request(app.local, path, **kwargs)
    theirs = await asgi_request(app.api, path, **kwargs)
    return mine, theirs


@pytest.mark.parametrize("path", PATHS)
async def test_the_answers_are_the_fastapi_apps_byte_for_byte(path: bytes) -> None:
    app = make_app()
    # not ready, then ready with some launches counted
    mine, theirs = await both(app, path)
    assert mine == theirs
    mark(app.registry, "a", "b")
    mark(app.registry, "c", state=HealthState.UNHEALTHY)
    for k in range(5):
        assert (await asgi_request(app, f"/v2/gh/o/r{k}/HEAD".encode())).status == 307
    mine, theirs = await both(app, path, query=b"x=1&y")
    assert mine == theirs
    assert mine.status == 200
    if path == b"/readyz":
        assert json.loads(mine.body)["routable"] == ["a", "b"]


@pytest.mark.parametrize("method", ["HEAD", "POST", "PUT", "DELETE", "OPTIONS"])
async def test_other_methods_are_answered_by_the_fastapi_app(method: str) -> None:
    app = make_app()
    for path in PATHS:
        mine, theirs = await both(app, path, method=method)
        assert mine == theirs
        assert mine.status == 405


async def test_the_front_door_gives_these_answers() -> None:
    app = make_app()
    mark(app.registry, "a", "b", "c")
    for path in PATHS:
        through_door = await asgi_request(app, path)
        direct = await asgi_request(app.api, path)
        if path == b"/metrics":  # the door's own request is not counted in either
            assert through_door.status == direct.status == 200
        else:
            assert through_door == direct


def test_fastapi_is_imported_only_for_the_operator_api_and_the_docs() -> None:
    program = """
import asyncio, random, sys
from federation_redirect.app import create_app
from tests.helpers import asgi_request, mark, three_members

async def main():
    app = create_app(three_members(), rng=random.Random(1), run_health_checks=False)
    mark(app.registry, "a", "b", "c")
    for path in (b"/healthz", b"/readyz", b"/active_hosts", b"/metrics", b"/status",
                 b"/v2/gh/o/r/HEAD", b"/"):
        await asgi_request(app, path)
    before = sorted(m for m in sys.modules if m.split(".")[0] in ("fastapi", "starlette"))
    answer = await asgi_request(app, b"/api/v1/members")
    after = "fastapi" in sys.modules and "federation_redirect.admin" in sys.modules
    print(before, answer.status, after)

asyncio.run(main())
"""
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["[]", "200", "True"]


async def test_the_lifespan_runs_and_reports_as_starlettes_router_does() -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        assert isinstance(app, LocalEndpoints)
        events.append("start")
        yield
        events.append("stop")

    async def run(local: LocalEndpoints) -> list[Message]:
        incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
        sent: list[Message] = []

        async def receive() -> Message:
            return next(incoming)

        async def send(message: Message) -> None:
            sent.append(message)

        with contextlib.suppress(RuntimeError):
            await local({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
        return sent

    app = make_app()
    local = LocalEndpoints(
        app.registry, app.metrics, lifespan, store=app.store, tokens=app.local._tokens
    )
    assert [m["type"] for m in await run(local)] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert events == ["start", "stop"]

    @contextlib.asynccontextmanager
    async def failing(app: Any) -> AsyncIterator[None]:
        raise RuntimeError("no store")
        yield

    local.lifespan = failing
    sent = await run(local)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "no store" in sent[0]["message"]


async def test_a_served_app_starts_its_background_work_and_answers() -> None:
    app = make_app()
    async with ServedApp(app) as served, httpx.AsyncClient(base_url=served.url) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).status_code == 503
        members = await client.get("/api/v1/members")
        assert members.status_code == 200
        assert {m["name"] for m in members.json()["members"]} == {"a", "b", "c"}
