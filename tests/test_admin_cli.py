"""The operator commands (members, set-weight, drain, undrain, maint, audit) against a real server.

The redirector is a real uvicorn server on 127.0.0.1 in the test's event loop; the command runs
in process through ``main`` in a worker thread (it is a blocking HTTP client), or as a real
process where the environment and exit status are the point.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator

import pytest

from federation_redirect.app import FederationApp, create_app
from federation_redirect.auth import AdminTokens
from federation_redirect.cli import TOKEN_ENV, URL_ENV, main
from federation_redirect.models import HealthReport, HealthState

from .helpers import ServedApp, mark, three_members

TOKEN = "cli-test-token-0123456789"


@pytest.fixture
async def served(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[FederationApp, str]]:
    app = create_app(
        three_members(load_balancer="rendezvous"),
        run_health_checks=False,
        admin_tokens=AdminTokens({"ops": TOKEN}),
    )
    mark(app.registry, "a", "b", "c")
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.delenv(URL_ENV, raising=False)
    async with ServedApp(app, lifespan="off") as server:
        yield app, server.url


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command in a thread (the server answers on this loop meanwhile)."""
    status = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return status, out, err


async def test_members_prints_a_table_of_every_member(
    served: tuple[FederationApp, str], capsys: pytest.CaptureFixture[str]
) -> None:
    app, url = served
    app.registry.report("c", HealthReport(state=HealthState.UNHEALTHY, reason="timeout"))
    status, out, err = await run(capsys, "members", "--url", url)
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == [
        "MEMBER",
        "STATE",
        "HEALTH",
        "WEIGHT",
        "CONFIG",
        "EFFECTIVE",
        "PODS/QUOTA",
        "LOAD/BOUND",
        "SHARE",
        "5M",
        "NOTES",
    ]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["a", "ready", "healthy"],
        ["b", "ready", "healthy"],
        ["c", "ready", "unhealthy"],
    ]
    assert lines[3].rstrip().endswith("timeout")
    assert "1/100" in lines[1]


async def test_members_json_is_the_apis_document(
    served: tuple[FederationApp, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url = served
    monkeypatch.setenv(URL_ENV, url)  # --url defaults to $FEDERATION_REDIRECT_URL
    status, out, _ = await run(capsys, "members", "--json")
    assert status == 0
    assert [m["name"] for m in json.loads(out)["members"]] == ["a", "b", "c"]


async def test_set_weight_takes_a_number_a_percentage_or_reset(
    served: tuple[FederationApp, str], capsys: pytest.CaptureFixture[str]
) -> None:
    app, url = served
    status, out, err = await run(capsys, "set-weight", "b", "2.5", "--url", url, "--reason", "r1")
    assert (status, err) == (0, "")
    assert out.strip() == "b: state ready, weight 2.5, effective 2.5, health healthy"
    assert app.registry.snapshot.by_name["b"].weight == 2.5
    status, out, _ = await run(capsys, "set-weight", "b", "40%", "--url", url)
    assert out.strip() == (
        "b: state ready, weight 0.4 (40% of configured), effective 0.4, health healthy"
    )
    status, out, _ = await run(capsys, "set-weight", "b", "reset", "--url", url, "--json")
    assert status == 0
    member = json.loads(out)
    assert (member["weight"], member["weight_override"], member["weight_percent"]) == (
        1.0,
        None,
        None,
    )
    entries = await app.store.audit()
    assert [(e.actor, dict(e.changes), e.reason) for e in entries] == [
        ("ops", {"weight_percent": (40.0, None)}, ""),
        ("ops", {"weight": (2.5, None), "weight_percent": (None, 40.0)}, ""),
        ("ops", {"weight": (None, 2.5)}, "r1"),
    ]


@pytest.mark.parametrize("weight", ["-1", "abc", "nan", "inf", "%", "-5%"])
async def test_set_weight_refuses_a_bad_weight_before_sending_anything(
    served: tuple[FederationApp, str], capsys: pytest.CaptureFixture[str], weight: str
) -> None:
    app, url = served
    status, out, err = await run(capsys, "set-weight", "--url", url, "b", "--", weight)
    assert status == 2 and out == ""
    assert "expected a number >= 0, NN% or reset" in err
    assert app.store.version == 0


async def test_drain_undrain_and_maint_change_the_state_and_audit_shows_them(
    served: tuple[FederationApp, str], capsys: pytest.CaptureFixture[str]
) -> None:
    app, url = served
    for command, state in (("drain", "drain"), ("maint", "maint"), ("undrain", "ready")):
        status, out, err = await run(capsys, command, "c", "--url", url, "--reason", command)
        assert (status, err) == (0, ""), err
        assert out.startswith(f"c: state {state},")
        assert app.registry.snapshot.by_name["c"].operator.value == state
    status, out, _ = await run(capsys, "audit", "--url", url)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "(UTC)", "BY", "MEMBER", "CHANGE", "REASON"]
    assert [line.split()[2:] for line in lines[1:]] == [
        ["ops", "c", "state", "maint", "->", "ready", "undrain"],
        ["ops", "c", "state", "drain", "->", "maint", "maint"],
        ["ops", "c", "state", "ready", "->", "drain", "drain"],
    ]
    status, out, _ = await run(capsys, "audit", "--url", url, "--json", "--limit", "1")
    assert [e["reason"] for e in json.loads(out)["entries"]] == ["undrain"]


async def test_audit_says_when_there_is_nothing_yet(
    served: tuple[FederationApp, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = served
    status, out, _ = await run(capsys, "audit", "--url", url)
    assert (status, out) == (0, "no operator changes yet\n")


async def test_refusals_exit_1_with_the_servers_reason(
    served: tuple[FederationApp, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, url = served
    status, _, err = await run(capsys, "drain", "nope", "--url", url)
    assert status == 1
    assert err == "error: 404: no member named 'nope'\n"
    status, _, err = await run(capsys, "set-weight", "a", "5", "--url", url, "--reason", "x\ty")
    assert status == 1
    assert err.startswith("error: 422: reason: String should match pattern")
    monkeypatch.setenv(TOKEN_ENV, "wrong")
    status, _, err = await run(capsys, "maint", "a", "--url", url)
    assert status == 1
    assert err.startswith("error: 401: missing or wrong operator token")
    monkeypatch.delenv(TOKEN_ENV)
    status, _, err = await run(capsys, "maint", "a", "--url", url)
    assert status == 1
    assert err == f"error: no operator token: set {TOKEN_ENV}\n"
    assert app.store.version == 0


async def test_writes_disabled_on_the_server_exit_1_with_its_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(three_members(), run_health_checks=False, admin_tokens=AdminTokens())
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    async with ServedApp(app, lifespan="off") as server:
        status, _, err = await run(capsys, "drain", "a", "--url", server.url)
    assert status == 1
    assert err.startswith("error: 403: writes are disabled")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_unreachable_redirector_exits_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    url = f"http://127.0.0.1:{closed_port()}"
    for argv in (["members"], ["drain", "a"], ["audit"]):
        status, out, err = await run(capsys, *argv, "--url", url)
        assert status == 3 and out == ""
        assert err.startswith(f"error: cannot connect to {url}")


async def test_a_server_error_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    async def broken(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b'{"detail": "nothing was changed"}'})  # type: ignore[operator]

    async with ServedApp(broken, lifespan="off") as server:  # type: ignore[arg-type]
        status, _, err = await run(capsys, "members", "--url", server.url)
    assert status == 3
    assert err == "error: 503: nothing was changed\n"


async def test_the_command_as_a_process_reads_the_url_and_token_from_the_environment(
    served: tuple[FederationApp, str],
) -> None:
    app, url = served
    env = {**os.environ, URL_ENV: url, TOKEN_ENV: TOKEN}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "federation_redirect",
        "set-weight",
        "a",
        "0",
        "--reason",
        "from a process",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().startswith("a: state ready, weight 0,")
    assert app.registry.snapshot.by_name["a"].weight == 0
    assert (await app.store.audit())[0].reason == "from a process"
