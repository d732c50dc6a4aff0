"""The operator API (``/api/v1``): reads, authenticated writes, refusals, and their effect on routing.

Most tests call the complete redirector app in process through httpx's ASGI transport with
members marked healthy by hand; the acceptance tests use fake members on 127.0.0.1, real
uvicorn servers and a real Redis (see test_shared_state.py).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from federation_redirect.admin import MAX_BODY_BYTES
from federation_redirect.app import FederationApp, create_app
from federation_redirect.auth import TOKENS_ENV, AdminTokens, parse_tokens
from federation_redirect.config import Config, parse_config
from federation_redirect.localredis import LocalRedis
from federation_redirect.models import HealthReport, HealthState, OperatorState
from federation_redirect.testing import RunningMember

from .conftest import StartFake
from .helpers import ServedApp, asgi_request, mark, three_members
from .test_shared_state import NAMES, Replicas, eventually

TOKEN = "correct-horse-battery-staple"
OPS = {"Authorization": f"Bearer {TOKEN}"}


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def build(
    config: Config | None = None,
    *,
    tokens: AdminTokens | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FederationApp:
    app = create_app(
        config or three_members(load_balancer="rendezvous"),
        run_health_checks=False,
        admin_tokens=tokens if tokens is not None else AdminTokens({"ops": TOKEN}),
        clock=clock,
        wall_clock=lambda: 1_700_000_000.0,
    )
    mark(app.registry, "a", "b", "c")
    return app


@pytest.fixture
def app() -> FederationApp:
    return build()


@pytest.fixture
async def client(app: FederationApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://redirector") as c:
        yield c


async def unchanged(app: FederationApp) -> None:
    """Nothing was written: no override, version 0, empty audit log."""
    assert dict(app.store.overrides) == {}
    assert app.store.version == 0
    assert await app.store.audit() == []
    assert [m.weight for m in app.registry.snapshot.members] == [1.0, 1.0, 1.0]


# -- reads ------------------------------------------------------------------------------------


async def test_members_lists_every_member_with_weights_state_health_capacity_and_share(
    client: httpx.AsyncClient, app: FederationApp
) -> None:
    app.registry.report(
        "b",
        HealthReport(
            state=HealthState.UNHEALTHY,
            reason="timeout",
            detail="no answer within 5 s",
            checked_at=1_699_999_990.0,
            latency=5.0,
        ),
    )
    r = await client.get("/api/v1/members")
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    members = r.json()["members"]
    assert [m["name"] for m in members] == ["a", "b", "c"]
    a, b, _ = members
    assert a["state"] == "ready" and a["routable"] and a["prime"]
    assert (a["configured_weight"], a["weight"], a["operator_multiplier"]) == (1.0, 1.0, 1.0)
    assert a["effective_weight"] == 1.0
    assert a["weight_override"] is None and a["weight_percent"] is None
    assert a["health"]["state"] == "healthy"
    assert a["capacity"] == {
        "quota": 100,
        "pods": 1,
        "free_slots": 89,
        "full": False,
        "limit": 90,
        "load": 1,
        "bound": None,  # rendezvous has no load bound
    }
    assert a["traffic"] == {"window_seconds": 300.0, "redirects": 0, "share": None}
    assert a["degraded"] is False and a["launch_failure_ratio"] is None
    assert a["last_change"] is None
    assert b["health"] == {
        "state": "unhealthy",
        "reason": "timeout",
        "detail": "no answer within 5 s",
        "checked_at": 1_699_999_990.0,
        "latency_seconds": 5.0,
        "checks": {},
        "versions": None,
        "versions_match": None,
    }
    assert not b["routable"]
    one = await client.get("/api/v1/members/b")
    assert one.json() == b


async def test_the_bounded_strategy_shows_each_routable_members_load_bound() -> None:
    app = build(three_members())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:
        members = (await c.get("/api/v1/members")).json()["members"]
    # three members with 1 pod each and limits of 90 (quota 100 - headroom 10): the total
    # load counted is the idle floor, 10 % of 270 = 27, so bound = ceil(1.25 x 27 x 1/3) = 12
    assert [m["capacity"]["bound"] for m in members] == [12, 12, 12]
    assert [m["effective_weight"] for m in members] == [100.0, 100.0, 100.0]  # quota x weight


async def test_an_unknown_member_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/members/nope")
    assert r.status_code == 404
    assert r.json() == {"detail": "no member named 'nope'"}


async def test_share_counts_the_redirects_of_the_last_five_minutes() -> None:
    clock = Clock()
    app = build(clock=clock)
    for i in range(40):
        answer = await asgi_request(app, f"/v2/gh/org/repo-{i}/HEAD".encode())
        assert answer.status == 307
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:
        members = (await c.get("/api/v1/members")).json()["members"]
        traffic = {m["name"]: m["traffic"] for m in members}
        assert sum(t["redirects"] for t in traffic.values()) == 40
        assert sum(t["share"] for t in traffic.values()) == pytest.approx(1.0)
        assert all(t["redirects"] > 0 for t in traffic.values())
        fed = (await c.get("/api/v1/federation")).json()
        assert fed["traffic"]["redirects"] == 40
        clock.now += 301
        members = (await c.get("/api/v1/members")).json()["members"]
        assert [m["traffic"]["share"] for m in members] == [None, None, None]
        assert [m["traffic"]["redirects"] for m in members] == [0, 0, 0]


async def test_federation_is_one_document_for_status_pages_with_cors(
    client: httpx.AsyncClient, app: FederationApp
) -> None:
    app.registry.set_reference_versions({"binderhub": "1.0"})
    r = await client.get("/api/v1/federation", headers={"Origin": "https://status.example"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    doc = r.json()
    assert doc["strategy"] == "rendezvous"
    assert doc["generated_at"] == 1_700_000_000.0
    assert doc["reference_versions"] == {"binderhub": "1.0"}
    assert doc["fallback_active"] is False
    assert doc["routable"] == ["a", "b", "c"]
    assert doc["fallback"] == ["a"]
    assert doc["store"] == {
        "kind": "memory",
        "up": True,
        "replicas": 1,
        "checker": True,
        "overrides_version": 0,
    }
    assert [m["name"] for m in doc["members"]] == ["a", "b", "c"]
    mark(app.registry, "a", "b", "c", state=HealthState.UNHEALTHY)
    doc = (await client.get("/api/v1/federation")).json()
    assert doc["fallback_active"] is True and doc["routable"] == []


async def test_degraded_and_launch_failure_ratio_come_from_the_health_report(
    client: httpx.AsyncClient, app: FederationApp
) -> None:
    app.registry.report(
        "c",
        HealthReport(state=HealthState.HEALTHY, degraded=True, launch_failure_ratio=0.25),
    )
    c = (await client.get("/api/v1/members/c")).json()
    assert c["degraded"] is True
    assert c["launch_failure_ratio"] == 0.25


# -- writes -----------------------------------------------------------------------------------


async def test_a_weight_replaces_the_configured_one_until_reset(
    client: httpx.AsyncClient, app: FederationApp
) -> None:
    r = await client.patch(
        "/api/v1/members/b", json={"weight": 3, "reason": "incident 42"}, headers=OPS
    )
    assert r.status_code == 200, r.text
    b = r.json()
    assert (b["weight"], b["weight_override"], b["operator_multiplier"]) == (3.0, 3.0, 3.0)
    assert b["effective_weight"] == 3.0
    assert b["last_change"] == {"by": "ops", "at": 1_700_000_000.0, "reason": "incident 42"}
    assert app.registry.snapshot.by_name["b"].weight == 3.0
    r = await client.patch("/api/v1/members/b", json={"weight": None}, headers=OPS)
    assert r.json()["weight"] == 1.0 and r.json()["weight_override"] is None
    assert app.registry.snapshot.by_name["b"].weight == 1.0
    entries = (await client.get("/api/v1/audit")).json()["entries"]
    assert [(e["actor"], e["member"], e["changes"], e["reason"]) for e in entries] == [
        ("ops", "b", {"weight": {"from": 3.0, "to": None}}, ""),
        ("ops", "b", {"weight": {"from": None, "to": 3.0}}, "incident 42"),
    ]
    assert entries[0]["at"] == 1_700_000_000.0


async def test_weight_percent_is_relative_to_the_configured_weight() -> None:
    config = parse_config(
        {
            "hosts": {
                "a": {"url": "https://a.example", "prime": True, "weight": 50},
                "b": {"url": "https://b.example", "weight": 50},
                "c": {"url": "https://c.example", "weight": 50},
            },
            "load_balancer": "rendezvous",
        }
    )
    app = build(config)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:
        r = await c.patch("/api/v1/members/a", json={"weight_percent": 20}, headers=OPS)
        a = r.json()
        assert (a["configured_weight"], a["weight"], a["weight_percent"]) == (50.0, 10.0, 20.0)
        assert a["operator_multiplier"] == pytest.approx(0.2)
        # an absolute weight replaces the percentage, and the other way round
        a = (await c.patch("/api/v1/members/a", json={"weight": 5}, headers=OPS)).json()
        assert (a["weight"], a["weight_percent"], a["weight_override"]) == (5.0, None, 5.0)
        r = await c.patch("/api/v1/members/a", json={"weight_percent": None}, headers=OPS)
        assert r.json()["weight"] == 50.0


async def test_the_same_patch_twice_changes_and_logs_once(
    client: httpx.AsyncClient, app: FederationApp
) -> None:
    body = {"state": "drain", "weight_percent": 50, "reason": "upgrade"}
    first = await client.patch("/api/v1/members/c", json=body, headers=OPS)
    second = await client.patch("/api/v1/members/c", json=body, headers=OPS)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert app.store.version == 1
    assert len((await client.get("/api/v1/audit")).json()["entries"]) == 1


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"weight": -1}, "weight", "greater than or equal to 0"),
        ({"weight_percent": -5}, "weight_percent", "greater than or equal to 0"),
        ({"weight": "5"}, "weight", "valid number"),
        ({"weight": True}, "weight", "valid number"),
        ({"weight": 2e9}, "weight", "less than or equal to"),
        ({"state": "off"}, "state", "'ready', 'drain' or 'maint'"),
        ({"state": None}, "state", "'ready', 'drain' or 'maint'"),
        ({"reason": 5}, "reason", "valid string"),
        ({"reason": "a\nb"}, "reason", "match pattern"),
        ({"reason": "x" * 501}, "reason", "at most 500"),
        ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
        ({"weight": 1, "weight_percent": 50}, "body", "not both"),
        ({}, "body", "at least one of"),
        ([1, 2], "body", "an object"),
    ],
)
async def test_invalid_bodies_are_422_with_the_reason_and_change_nothing(
    client: httpx.AsyncClient, app: FederationApp, body: object, field: str, message: str
) -> None:
    r = await client.patch("/api/v1/members/b", json=body, headers=OPS)
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert errors[0]["loc"][-1] == field
    assert message in errors[0]["msg"]
    await unchanged(app)


@pytest.mark.parametrize("raw", [b"", b"{", b"nan", b'{"weight": NaN}', b'{"weight": 1e999}'])
async def test_bodies_that_are_not_finite_json_are_422(
    client: httpx.AsyncClient, app: FederationApp, raw: bytes
) -> None:
    r = await client.patch(
        "/api/v1/members/b",
        content=raw,
        headers={**OPS, "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    await unchanged(app)


async def test_a_patch_of_an_unknown_member_is_404(
    client: httpx.AsyncClient, app: FederationApp
) -> None:
    r = await client.patch("/api/v1/members/zeta", json={"weight": 1}, headers=OPS)
    assert r.status_code == 404
    await unchanged(app)


# -- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer "},
    ],
    ids=["none", "wrong", "longer", "shorter", "basic", "no-scheme", "empty"],
)
async def test_a_write_without_a_valid_token_is_401_and_changes_nothing(
    client: httpx.AsyncClient, app: FederationApp, headers: dict[str, str]
) -> None:
    r = await client.patch("/api/v1/members/b", json={"weight": 0}, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "Bearer" in r.json()["detail"]
    await unchanged(app)


async def test_an_unauthenticated_write_is_401_whatever_its_body(
    client: httpx.AsyncClient, app: FederationApp
) -> None:
    for body in (b"not json", b"x" * (MAX_BODY_BYTES + 1)):
        r = await client.patch("/api/v1/members/nope", content=body)
        assert r.status_code == 401
    await unchanged(app)


async def test_without_any_token_configured_writes_are_disabled_with_403() -> None:
    app = build(tokens=AdminTokens())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:
        for headers in ({}, OPS):
            r = await c.patch("/api/v1/members/b", json={"state": "maint"}, headers=headers)
            assert r.status_code == 403
            assert "writes are disabled" in r.json()["detail"]
            assert TOKENS_ENV in r.json()["detail"]
        assert (await c.get("/api/v1/members")).status_code == 200  # reads stay public
    await unchanged(app)


async def test_the_audit_log_names_the_operator_whose_token_was_used() -> None:
    app = build(
        tokens=AdminTokens({"alice": "alice-token-0123456789", "bob": "bob-token-987654321"})
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:
        for who in ("alice", "bob"):
            headers = {
                "Authorization": f"Bearer {who}-token-"
                + ("0123456789" if who == "alice" else "987654321")
            }
            r = await c.patch("/api/v1/members/a", json={"reason": f"by {who}"}, headers=headers)
            assert r.status_code == 200
        entries = (await c.get("/api/v1/audit?limit=1")).json()["entries"]
    assert [(e["actor"], e["reason"], e["changes"]) for e in entries] == [("bob", "by bob", {})]


async def test_tokens_come_from_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKENS_ENV, "alice:tok-alice-0123456789, bob:tok-bob-0123456789")
    config = three_members()
    app = create_app(config, run_health_checks=False)
    mark(app.registry, "a", "b", "c")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:
        r = await c.patch(
            "/api/v1/members/c",
            json={"state": "drain"},
            headers={"Authorization": "Bearer tok-bob-0123456789"},
        )
        assert r.status_code == 200
        assert r.json()["last_change"]["by"] == "bob"


async def test_the_tokens_file_is_read_at_start_and_again_when_it_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    path.write_text("# operators\nalice:first-token-0123456789\n")
    config = three_members(admin={"tokens_file": str(path)})
    app = create_app(config, run_health_checks=False, admin_tokens=None)
    mark(app.registry, "a", "b", "c")

    async def status(token: str) -> int:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://x"
        ) as c:
            r = await c.patch(
                "/api/v1/members/a",
                json={"reason": token[:5]},
                headers={"Authorization": f"Bearer {token}"},
            )
            return r.status_code

    assert await status("first-token-0123456789") == 200
    path.write_text("alice:second-token-0123456789\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime, whatever the fs
    assert await status("first-token-0123456789") == 401
    assert await status("second-token-0123456789") == 200
    # a malformed file keeps the last good tokens and logs which entry, never the token
    caplog.set_level(logging.ERROR, logger="federation_redirect.auth")
    path.write_text("alice:second-token-0123456789\nbroken-entry-with-secret\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert await status("second-token-0123456789") == 200
    assert "entry 2: expected name:token" in caplog.text
    assert "secret" not in caplog.text
    # a deleted file revokes its tokens: writes are disabled
    path.unlink()
    assert await status("second-token-0123456789") == 403


def test_token_entries_are_parsed_strictly() -> None:
    digests, problems = parse_tokens("a:x1, b:x2\n# c:x3\n\n d : x4 ")
    assert sorted(digests.values()) == ["a", "b", "d"] and problems == []
    _, problems = parse_tokens("a:x1,bad name:x2,c:,d:x1,e:tab\there")
    assert [(p.entry, p.message.split(" ")[0]) for p in problems] == [
        (2, "the"),
        (3, "the"),
        (4, "same"),
        (5, "the"),
    ]
    tokens = AdminTokens({"a": "token-aaaaaaaaaaaaaaaa"}, env_value="b:token-bbbbbbbbbbbbbbbb")
    assert tokens.identify("token-aaaaaaaaaaaaaaaa") == "a"
    assert tokens.identify("token-bbbbbbbbbbbbbbbb") == "b"
    assert tokens.identify("token-a") is None
    assert tokens.identify("") is None
    assert tokens.names == {"a", "b"}
    # a malformed variable is ignored whole, so a typo cannot half-configure the operators
    assert AdminTokens(env_value="a:token-aaaaaaaaaaaaaaaa,oops").enabled is False


# -- request size -----------------------------------------------------------------------------


def padded(size: int) -> bytes:
    body = b'{"state": "drain"}'
    return body[:-1] + b" " * (size - len(body)) + b"}"


async def test_a_body_of_16_kib_is_accepted_and_one_byte_more_is_413(
    client: httpx.AsyncClient, app: FederationApp
) -> None:
    json_headers = {**OPS, "Content-Type": "application/json"}
    r = await client.patch(
        "/api/v1/members/b", content=padded(MAX_BODY_BYTES + 1), headers=json_headers
    )
    assert r.status_code == 413
    assert r.json() == {"detail": "request body larger than 16384 bytes"}
    await unchanged(app)
    r = await client.patch(
        "/api/v1/members/b", content=padded(MAX_BODY_BYTES), headers=json_headers
    )
    assert r.status_code == 200
    assert r.json()["state"] == "drain"


async def test_a_large_body_is_413_by_its_streamed_size_without_content_length(
    app: FederationApp,
) -> None:
    headers = [(b"host", b"x"), (b"authorization", f"Bearer {TOKEN}".encode())]
    answer = await asgi_request(
        app,
        b"/api/v1/members/b",
        method="PATCH",
        headers=headers,
        body=padded(MAX_BODY_BYTES + 1),
    )
    assert answer.status == 413
    # a lying Content-Length does not help either
    answer = await asgi_request(
        app,
        b"/api/v1/members/b",
        method="PATCH",
        headers=[*headers, (b"content-length", b"20")],
        body=padded(10 * MAX_BODY_BYTES),
    )
    assert answer.status == 413
    await unchanged(app)


async def test_a_chunked_upload_over_the_limit_to_a_real_server_is_413(app: FederationApp) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        body = padded(4 * MAX_BODY_BYTES)
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    async with ServedApp(app, lifespan="off") as served, httpx.AsyncClient() as http:
        r = await http.patch(f"{served.url}/api/v1/members/b", content=chunks(), headers=OPS)
        assert r.status_code == 413
        r = await http.patch(
            f"{served.url}/api/v1/members/b",
            content=b"{" + b" " * (MAX_BODY_BYTES * 2) + b"}",
            headers=OPS,
        )
        assert r.status_code == 413
    await unchanged(app)


# -- drain and maintenance (acceptance 2) -----------------------------------------------------


async def launch(app: FederationApp, repo: str, cookie: str | None = None) -> tuple[str, str]:
    """Launch ``repo``; the member it went to and the Set-Cookie (or cookie sent back)."""
    headers = [(b"host", b"mybinder.example")]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    answer = await asgi_request(app, f"/v2/gh/org/{repo}/HEAD".encode(), headers=headers)
    assert answer.status == 307
    location = answer.header("location") or ""
    member = location.split("//")[1].split(".")[0]
    set_cookie = answer.header("set-cookie")
    return member, set_cookie.split(";")[0] if set_cookie else (cookie or "")


async def test_drain_stops_new_repositories_but_honours_cookies_and_maint_stops_everything(
    client: httpx.AsyncClient, app: FederationApp
) -> None:
    # browsers that were sent to b before the drain, with their cookies
    holders: list[tuple[str, str]] = []
    i = 0
    while len(holders) < 20:
        member, cookie = await launch(app, f"held-{i}")
        if member == "b":
            holders.append((f"held-{i}", cookie))
        i += 1
    r = await client.patch(
        "/api/v1/members/b", json={"state": "drain", "reason": "upgrade"}, headers=OPS
    )
    assert r.status_code == 200 and r.json()["state"] == "drain"
    assert r.json()["routable"] is False and r.json()["honours_cookies"] is True
    fresh = Counter([(await launch(app, f"new-{j}"))[0] for j in range(1000)])
    assert fresh["b"] == 0 and fresh["a"] + fresh["c"] == 1000
    for repo, cookie in holders:
        assert (await launch(app, repo, cookie))[0] == "b"  # cookie holders keep reaching it

    r = await client.patch("/api/v1/members/b", json={"state": "maint"}, headers=OPS)
    assert r.json()["honours_cookies"] is False
    for repo, cookie in holders:
        assert (await launch(app, repo, cookie))[0] != "b"
    fresh = Counter([(await launch(app, f"new-{j}"))[0] for j in range(1000)])
    assert fresh["b"] == 0

    r = await client.patch("/api/v1/members/b", json={"state": "ready"}, headers=OPS)
    fresh = Counter([(await launch(app, f"new-{j}"))[0] for j in range(1000)])
    assert 280 <= fresh["b"] <= 390  # back to its third
    states = [e["changes"]["state"] for e in (await client.get("/api/v1/audit")).json()["entries"]]
    assert states == [
        {"from": "maint", "to": "ready"},
        {"from": "drain", "to": "maint"},
        {"from": "ready", "to": "drain"},
    ]


# -- replicas sharing state through Redis (acceptance 1) --------------------------------------


@pytest.fixture
async def redis_replicas(
    members: dict[str, RunningMember], redis_server: LocalRedis, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Replicas]:
    monkeypatch.setenv(TOKENS_ENV, f"ops:{TOKEN}")
    group = Replicas(members, redis_server)
    async with group.stack:
        yield group


@pytest.fixture
async def members(start_fake: StartFake) -> dict[str, RunningMember]:
    # idle members with equal, large quotas: no load bound is near, the weights alone decide
    return {name: await start_fake(name, pods=0, quota=100_000) for name in NAMES}


async def split(client: httpx.AsyncClient, urls: dict[str, str], tag: str) -> Counter[str]:
    """Where 1,000 repositories never launched before go (no cookie).

    HEAD requests get the same decision as launches but add no load, so the split shows the
    weights alone (with GETs the bounded policy would also even out the earlier rounds' load).
    """
    by_url = {url: name for name, url in urls.items()}
    counts: Counter[str] = Counter()
    for i in range(1000):
        r = await client.head(f"/v2/gh/{tag}/repo-{i}/HEAD")
        client.cookies.clear()
        assert r.status_code == 307
        counts[by_url[r.headers["location"].split("/v2/")[0]]] += 1
    return counts


async def test_a_weight_set_on_one_replica_changes_the_split_on_every_replica_within_a_second(
    redis_replicas: Replicas,
) -> None:
    (_, client_a), (b, client_b) = await redis_replicas.add(), await redis_replicas.add()
    await redis_replicas.all_healthy()
    urls = {name: m.url for name, m in redis_replicas.members.items()}
    before = await split(client_b, urls, "before")
    assert all(250 <= before[n] <= 420 for n in NAMES), before

    r = await client_a.patch(
        "/api/v1/members/alpha", json={"weight": 3, "reason": "alpha has new nodes"}, headers=OPS
    )
    assert r.status_code == 200, r.text
    took = await eventually(
        lambda: b.registry.snapshot.by_name["alpha"].weight == 3 * 100_000,
        1.0,
        "alpha's weight on replica b",
    )
    after_b = await split(client_b, urls, "after")
    after_a = await split(client_a, urls, "after")
    assert after_a == after_b  # the same repositories go to the same members on both
    # weights 3:1:1 -> alpha 60 %, the others 20 % each
    assert 540 <= after_a["alpha"] <= 660, after_a
    assert all(140 <= after_a[n] <= 260 for n in ("beta", "gamma")), after_a
    entries = (await client_b.get("/api/v1/audit")).json()["entries"]
    assert entries[0]["actor"] == "ops"
    assert entries[0]["reason"] == "alpha has new nodes"
    assert entries[0]["changes"] == {"weight": {"from": None, "to": 3.0}}
    print(
        f"\nacceptance 1: b applied a's weight in {took * 1000:.0f} ms; 1,000 new repositories "
        f"before {dict(before)}, after (a and b alike) {dict(after_a)}"
    )


async def test_a_write_while_redis_is_down_is_503_and_changes_nothing(
    redis_replicas: Replicas,
) -> None:
    a, client = await redis_replicas.add()
    await redis_replicas.all_healthy()
    redis_replicas.redis.stop()
    await eventually(lambda: not a.store.up, 5, "outage seen")
    r = await client.patch("/api/v1/members/beta", json={"state": "maint"}, headers=OPS)
    assert r.status_code == 503
    assert "nothing was changed" in r.json()["detail"]
    assert "Redis" in r.json()["detail"]
    assert a.registry.snapshot.by_name["beta"].operator is OperatorState.READY
    fed = (await client.get("/api/v1/federation")).json()
    assert fed["store"]["kind"] == "redis" and fed["store"]["up"] is False
    redis_replicas.redis.start()


async def test_an_api_change_survives_a_restart_of_every_replica(
    redis_replicas: Replicas,
) -> None:
    _, client = await redis_replicas.add()
    await redis_replicas.all_healthy()
    r = await client.patch(
        "/api/v1/members/gamma", json={"state": "drain", "reason": "move"}, headers=OPS
    )
    assert r.status_code == 200
    await redis_replicas.stack.aclose()
    redis_replicas.apps.clear()
    later, later_client = await redis_replicas.add()
    await eventually(
        lambda: later.registry.snapshot.by_name["gamma"].operator is OperatorState.DRAIN,
        2,
        "drain loaded from Redis",
    )
    gamma = (await later_client.get("/api/v1/members/gamma")).json()
    assert gamma["state"] == "drain" and gamma["last_change"]["reason"] == "move"


# -- schema -----------------------------------------------------------------------------------


async def test_the_openapi_schema_documents_the_operator_api(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    assert set(paths) >= {
        "/api/v1/members",
        "/api/v1/members/{name}",
        "/api/v1/audit",
        "/api/v1/federation",
    }
    patch = paths["/api/v1/members/{name}"]["patch"]
    assert patch["security"] == [{"operatorToken": []}]
    assert set(patch["responses"]) >= {"200", "401", "403", "404", "413", "422", "503"}
    body = patch["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"weight", "weight_percent", "state", "reason"}
    assert body["additionalProperties"] is False
    assert schema["components"]["securitySchemes"]["operatorToken"]["scheme"] == "bearer"
    member = schema["components"]["schemas"]["MemberView"]
    assert {"degraded", "launch_failure_ratio", "traffic", "capacity"} <= set(member["properties"])
    json.dumps(schema)  # serialisable as is
    assert "/status" not in paths
