"""Launches answered by the HTTP protocol itself (federation_redirect.protocol): the same bytes
as the ASGI path, in order with everything else on the connection, and only when nothing of
ASGI could make a difference."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from typing import Any

import pytest

from federation_redirect.app import FederationApp, create_app
from federation_redirect.cookies import cookie_name
from federation_redirect.keys import launch_key
from federation_redirect.types import Scope

from .helpers import ServedApp, asgi_request, mark, three_members

BROWSER = b"User-Agent: Mozilla/5.0\r\nAccept: text/html\r\nX-Forwarded-For: 203.0.113.7\r\n"


def make_app(**top: Any) -> FederationApp:
    app = create_app(three_members(**top), rng=random.Random(7), run_health_checks=False)
    mark(app.registry, "a", "b", "c")
    return app


class Spy:
    """Counts the launches that went the ASGI way (FrontDoor.launch)."""

    def __init__(self, app: FederationApp) -> None:
        self.asgi = 0
        launch = app.launch

        async def counted(scope: Scope, send: Any) -> None:
            self.asgi += 1
            await launch(scope, send)

        app.launch = counted  # type: ignore[method-assign]


async def exchange(port: int, data: bytes, answers: int = 1) -> list[bytes]:
    """Write ``data`` on one connection and read ``answers`` complete responses."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        out = []
        for _ in range(answers):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            match = re.search(rb"\r\ncontent-length: (\d+)\r\n", head, re.I)
            length = int(match.group(1)) if match else 0
            is_head = data.startswith(b"HEAD ") and answers == 1
            body = b"" if is_head else await reader.readexactly(length)
            out.append(head + body)
        return out
    finally:
        writer.close()


def comparable(answer: bytes) -> bytes:
    """An answer without what depends on the second it was made in."""
    answer = re.sub(rb"\r\ndate: [^\r]*", b"", answer)
    return re.sub(rb"expires=[^;]*; ", b"", answer)


REQUESTS = [
    b"GET /v2/gh/org/repo/HEAD?urlpath=lab HTTP/1.1\r\nHost: x\r\n" + BROWSER + b"\r\n",
    b"GET /v2/gh/org/repo/HEAD HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: https\r\n\r\n",
    b"GET /build/gh/org/repo/abc HTTP/1.1\r\nHost: x\r\nOrigin: https://mybinder.org\r\n\r\n",
    b"HEAD /v2/gh/org/repo/HEAD HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /repo/org/repo HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/gh/org/repo/HEAD HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /v2/gh/org/repo/HEAD HTTP/1.0\r\n\r\n",
    # carrying its stickiness cookie among others: no Set-Cookie
    b"GET /v2/gh/org/repo/HEAD HTTP/1.1\r\nHost: x\r\nCookie: a=1; "
    + cookie_name(launch_key("/v2/gh/org/repo/HEAD")).encode()
    + b"=b\r\n\r\n",
    b"GET /v2/nope HTTP/1.1\r\nHost: x\r\n\r\n",  # malformed: 400 with a body
    b"GET /v2/gh/org/repo/\x7fHEAD HTTP/1.1\r\nHost: x\r\n\r\n",  # not printable: 400
]


@pytest.fixture
def app() -> FederationApp:
    return make_app(load_balancer="rendezvous")


async def test_launches_are_answered_without_the_asgi_cycle(app: FederationApp) -> None:
    spy = Spy(app)
    async with ServedApp(app, lifespan="off") as served:
        (answer,) = await exchange(served.port, REQUESTS[0])
    assert answer.startswith(b"HTTP/1.1 307 ")
    assert spy.asgi == 0
    assert app.registry.loads.total_launches() == 1  # counted like any launch


@pytest.mark.parametrize("request_bytes", REQUESTS, ids=range(len(REQUESTS)))
async def test_the_shortcut_answers_byte_for_byte_as_the_asgi_path(
    app: FederationApp, request_bytes: bytes
) -> None:
    async with (
        ServedApp(app, lifespan="off") as fast,
        ServedApp(app, lifespan="off", shortcut=False) as asgi,
    ):
        (quick,) = await exchange(fast.port, request_bytes)
        (usual,) = await exchange(asgi.port, request_bytes)
    assert comparable(quick) == comparable(usual)
    assert quick.startswith((b"HTTP/1.1 307 ", b"HTTP/1.1 400 "))
    if b"Cookie: " in request_bytes:  # the member it names is healthy: no new cookie
        assert b"set-cookie" not in quick


async def test_each_launch_is_counted_and_measured_once_either_way(app: FederationApp) -> None:
    async with (
        ServedApp(app, lifespan="off") as fast,
        ServedApp(app, lifespan="off", shortcut=False) as asgi,
    ):
        for port in (fast.port, asgi.port):
            await exchange(port, REQUESTS[0])
            await exchange(port, REQUESTS[3])  # HEAD: answered, not a launch
    assert app.registry.loads.total_launches() == 2
    assert sum(s.count for s in app.metrics.latency.series.values()) == 4


async def test_pipelined_requests_are_answered_in_order(app: FederationApp) -> None:
    spy = Spy(app)
    launch = b"GET /v2/gh/org/one/HEAD HTTP/1.1\r\nHost: x\r\n\r\n"
    probe = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    preflight = b"OPTIONS /build/gh/org/one/HEAD HTTP/1.1\r\nHost: x\r\n\r\n"
    async with ServedApp(app, lifespan="off") as served:
        answers = await exchange(served.port, launch + probe + launch + preflight + launch, 5)
    statuses = [a.split(b" ", 2)[1] for a in answers]
    assert statuses == [b"307", b"200", b"307", b"204", b"307"]
    # the first launch is answered at once; the preflight always goes the ASGI way, and so do
    # the launches that arrive while an ASGI request before them is still being answered
    assert 1 <= spy.asgi <= 3


async def test_a_kept_alive_connection_serves_many_launches_then_times_out(
    app: FederationApp,
) -> None:
    async with ServedApp(app, lifespan="off", timeout_keep_alive=1) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        try:
            for n in range(3):
                writer.write(f"GET /v2/gh/org/r{n}/HEAD HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 307 ")
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed when idle
        finally:
            writer.close()


async def test_keep_alive_counts_from_the_last_answer_not_the_first(
    app: FederationApp,
) -> None:
    async with ServedApp(app, lifespan="off", timeout_keep_alive=1) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        loop = asyncio.get_running_loop()
        try:
            for n in range(6):  # busy for 2.4 s, never idle for 1 s
                writer.write(f"GET /v2/gh/org/r{n}/HEAD HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 307 ")
                await asyncio.sleep(0.4)
            idle_from = loop.time() - 0.4
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert 0.9 <= loop.time() - idle_from <= 2.0
        finally:
            writer.close()


async def test_http_1_0_and_connection_close_end_the_connection(app: FederationApp) -> None:
    async with ServedApp(app, lifespan="off") as served:
        for request in (REQUESTS[5], REQUESTS[6]):
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(request)
            answer = await asyncio.wait_for(reader.read(), 5)  # until the server closes
            writer.close()
            assert answer.startswith(b"HTTP/1.1 307 ")
            assert b"\r\nconnection: close\r\n" in answer


async def test_forwarded_proto_counts_only_from_a_trusted_peer(app: FederationApp) -> None:
    request = REQUESTS[1]
    async with ServedApp(app, lifespan="off") as trusted:
        (answer,) = await exchange(trusted.port, request)
    assert re.search(rb"set-cookie: [^\r]*; Secure", answer, re.I)
    async with ServedApp(app, lifespan="off", forwarded_allow_ips="10.0.0.1") as untrusted:
        (answer,) = await exchange(untrusted.port, request)
    assert b"set-cookie:" in answer and not re.search(rb"; Secure", answer, re.I)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v2/gh/org/re%70o/HEAD HTTP/1.1\r\nHost: x\r\n\r\n",  # uvicorn decodes the path
        b"GET /v2/gh/org/repo/HEAD HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
        b"POST /v2/gh/org/repo/HEAD HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["percent-encoded", "expect-continue", "post"],
)
async def test_what_the_shortcut_cannot_answer_alike_goes_the_asgi_way(
    app: FederationApp, request_bytes: bytes
) -> None:
    spy = Spy(app)
    async with ServedApp(app, lifespan="off") as served:
        (answer,) = await exchange(served.port, request_bytes)
    assert spy.asgi == 1
    assert answer.startswith((b"HTTP/1.1 307 ", b"HTTP/1.1 405 "))


async def test_abuse_controls_keep_launches_on_the_asgi_path() -> None:
    app = make_app(abuse={"rate_limit": {"per_minute": 1, "burst": 1}})
    spy = Spy(app)
    launch = b"GET /v2/gh/org/r%d/HEAD HTTP/1.1\r\nHost: x\r\n\r\n"
    async with ServedApp(app, lifespan="off") as served:
        answers = [(await exchange(served.port, launch % n))[0] for n in range(2)]
    assert spy.asgi == 2
    assert [a.split(b" ", 2)[1] for a in answers] == [b"307", b"429"]


async def test_a_failing_answer_is_a_500_and_the_server_goes_on(
    app: FederationApp, caplog: pytest.LogCaptureFixture
) -> None:
    answer = app.answer

    def broken(scope: Scope) -> Any:
        raise RuntimeError("a bug")

    async with ServedApp(app, lifespan="off") as served:
        app.answer = broken  # type: ignore[method-assign]
        (failed,) = await exchange(served.port, REQUESTS[0])
        app.answer = answer  # type: ignore[method-assign]
        (ok,) = await exchange(served.port, REQUESTS[0])
    assert failed.startswith(b"HTTP/1.1 500 ") and b"connection: close" in failed
    assert ok.startswith(b"HTTP/1.1 307 ")
    assert "exception answering /v2/gh/org/repo/HEAD" in caplog.text


async def test_each_launch_logs_one_debug_line_and_nothing_at_info(
    app: FederationApp, caplog: pytest.LogCaptureFixture
) -> None:
    async with ServedApp(app, lifespan="off") as served:
        with caplog.at_level(logging.INFO, logger="federation_redirect"):
            await exchange(served.port, REQUESTS[0])
        assert not caplog.records
        with caplog.at_level(logging.DEBUG, logger="federation_redirect"):
            await exchange(served.port, REQUESTS[0])
            await exchange(served.port, REQUESTS[3])  # HEAD: answered, logged, not counted
    lines = [r.getMessage() for r in caplog.records if r.name == "federation_redirect.web"]
    assert len(lines) == 2
    assert re.fullmatch(
        r"GET /v2/gh/org/repo/HEAD\?urlpath=lab -> 307 [abc] \(hash\) \[repository \S+\]",
        lines[0],
    ), lines[0]
    assert lines[1].startswith("HEAD /v2/gh/org/repo/HEAD -> 307 "), lines[1]


async def test_the_debug_line_cannot_be_broken_by_a_control_byte(
    app: FederationApp, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="federation_redirect.web"):
        answer = await asgi_request(app, b"/v2/gh/o/r/\r\nX-Forged: 1")
    assert answer.status == 400
    (line,) = [r.getMessage() for r in caplog.records if r.name == "federation_redirect.web"]
    assert line == r"GET /v2/gh/o/r/\r\nX-Forged: 1 -> 400 malformed launch URL"
