"""The redirector as users meet it: a real uvicorn server in front of three real members."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from federation_redirect.app import FederationApp, create_app
from federation_redirect.config import parse_config
from federation_redirect.models import HealthState
from federation_redirect.testing import RunningMember, start_member

from .helpers import FAST_CHECKS, ServedApp


@dataclass
class Federation:
    members: dict[str, RunningMember]
    app: FederationApp
    url: str
    client: httpx.AsyncClient

    def member_of(self, location: str) -> str:
        return next(n for n, m in self.members.items() if location.startswith(m.url + "/"))

    async def wait_for(self, name: str, state: HealthState, timeout: float = 10) -> float:
        start = time.monotonic()
        while self.app.registry.snapshot.by_name[name].health is not state:
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{name} did not become {state} within {timeout}s")
            await asyncio.sleep(0.01)
        return time.monotonic() - start


@pytest.fixture
async def federation() -> AsyncIterator[Federation]:
    members = {
        # quotas large enough that no load bound is active: these tests are about health
        name: await start_member(name, pods=5, quota=100_000)
        for name in ("alpha", "beta", "gamma")
    }
    config = parse_config(
        {
            "hosts": {
                name: {
                    "url": m.url,
                    "weight": 1,
                    "prime": name == "alpha",
                    "pages": name != "gamma",
                }
                for name, m in members.items()
            },
            "check": FAST_CHECKS,
        }
    )
    app = create_app(config)
    try:
        async with ServedApp(app) as served, httpx.AsyncClient(base_url=served.url) as client:
            fed = Federation(members, app, served.url, client)
            deadline = time.monotonic() + 10
            while (await client.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "redirector never became ready"
                await asyncio.sleep(0.02)
            for name in members:
                await fed.wait_for(name, HealthState.HEALTHY)
            yield fed
    finally:
        for m in members.values():
            await m.stop()


async def test_launch_answers_307_to_a_member_with_path_and_query_unchanged(
    federation: Federation,
) -> None:
    r = await federation.client.get("/v2/gh/Org/Repo/main?urlpath=lab/tree/a.ipynb")
    assert r.status_code == 307
    location = r.headers["location"]
    member = federation.member_of(location)
    assert (
        location == federation.members[member].url + "/v2/gh/Org/Repo/main?urlpath=lab/tree/a.ipynb"
    )
    build = await federation.client.get("/build/gh/org/repo.git/abc")
    assert build.status_code == 307
    assert federation.member_of(build.headers["location"]) == member
    assert build.headers["access-control-allow-origin"] == "*"


async def test_escaped_and_nested_query_bytes_reach_the_member_unchanged(
    federation: Federation,
) -> None:
    raw = "/v2/gl/group%2Fsub%2Frepo/HEAD?urlpath=pluto/open?path=%252Fx%2Fy&labpath=a%20b"
    r = await federation.client.get(raw)
    assert r.headers["location"].endswith(raw)
    followed = await federation.client.get(r.headers["location"])
    assert followed.status_code == 200


async def test_three_thousand_repositories_split_within_five_points_of_the_weights(
    federation: Federation,
) -> None:
    counts: Counter[str] = Counter()
    for i in range(3000):
        r = await federation.client.get(f"/v2/gh/org-{i % 50}/repo-{i}/HEAD")
        counts[federation.member_of(r.headers["location"])] += 1
        federation.client.cookies.clear()  # a fresh visitor each time
    shares = {name: counts[name] / 3000 for name in federation.members}
    assert all(abs(share - 1 / 3) <= 0.05 for share in shares.values()), shares


async def test_member_answering_503_leaves_rotation_and_comes_back(
    federation: Federation,
) -> None:
    beta = federation.members["beta"]
    await beta.set_mode("503")
    await federation.wait_for("beta", HealthState.UNHEALTHY, timeout=FAST_CHECKS["period"] * 2 + 1)
    for i in range(200):
        r = await federation.client.get(f"/v2/gh/o/r{i}/HEAD")
        assert federation.member_of(r.headers["location"]) != "beta"
    await beta.set_mode("ok")
    await federation.wait_for("beta", HealthState.HEALTHY, timeout=5)
    assert "beta" in (await federation.client.get("/active_hosts")).json()["active_hosts"]


async def test_hanging_member_leaves_rotation_and_comes_back(federation: Federation) -> None:
    gamma = federation.members["gamma"]
    await gamma.set_mode("hang")
    await federation.wait_for(
        "gamma", HealthState.UNHEALTHY, timeout=FAST_CHECKS["timeout"] * 2 + 3
    )
    await gamma.set_mode("ok")
    await federation.wait_for("gamma", HealthState.HEALTHY, timeout=5)


async def test_full_member_leaves_rotation_for_new_repositories_and_comes_back(
    federation: Federation,
) -> None:
    gamma = federation.members["gamma"]
    gamma.set_pods(99_995, 100_000)  # within pod_headroom (10) of the quota
    deadline = time.monotonic() + 5
    while not federation.app.registry.snapshot.by_name["gamma"].full:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert federation.app.registry.snapshot.by_name["gamma"].health is HealthState.HEALTHY
    for i in range(200):
        r = await federation.client.get(f"/v2/gh/o/r{i}/HEAD")
        assert federation.member_of(r.headers["location"]) != "gamma"
    gamma.set_pods(10, 100_000)
    while federation.app.registry.snapshot.by_name["gamma"].full:
        assert time.monotonic() < deadline + 5
        await asyncio.sleep(0.02)


async def test_every_member_down_falls_back_to_the_prime(federation: Federation) -> None:
    for m in federation.members.values():
        await m.set_mode("503")
    for name in federation.members:
        await federation.wait_for(name, HealthState.UNHEALTHY)
    r = await federation.client.get("/v2/gh/o/r/HEAD")
    assert r.status_code == 307 and federation.member_of(r.headers["location"]) == "alpha"
    assert (await federation.client.get("/readyz")).status_code == 503
    metrics = (await federation.client.get("/metrics")).text
    assert "federation_fallback_active 1.0" in metrics


async def test_member_that_went_down_shows_no_stale_healthy_series(federation: Federation) -> None:
    await federation.members["beta"].set_mode("registry_down")
    await federation.wait_for("beta", HealthState.UNHEALTHY)
    lines = [
        line
        for line in (await federation.client.get("/metrics")).text.splitlines()
        if line.startswith('federation_health{member="beta"')
    ]
    assert lines == ['federation_health{member="beta",reason="service:docker_registry"} 0.0']


async def test_home_page_is_proxied_from_the_prime(federation: Federation) -> None:
    r = await federation.client.get("/")
    assert r.status_code == 200 and "member alpha" in r.text
    assert r.headers["x-echo-x-forwarded-for"] == "127.0.0.1"
    assert r.headers["x-echo-x-forwarded-host"].startswith("127.0.0.1:")
    # Through a trusted proxy (127.0.0.1 is uvicorn's default) the chain is kept as it came.
    proxied = await federation.client.get("/", headers={"X-Forwarded-For": "10.1.2.3"})
    assert proxied.headers["x-echo-x-forwarded-for"] == "10.1.2.3"
    assert r.headers["x-echo-origin"].startswith("https://127.0.0.1:")
    assert len(r.headers.get_list("set-cookie")) == 2


async def test_home_page_fails_over_when_the_prime_is_unreachable(federation: Federation) -> None:
    await federation.members["alpha"].refuse()
    r = await federation.client.get("/about")
    assert r.status_code == 200 and "member beta" in r.text
    launch = await federation.client.get("/v2/gh/o/r/HEAD")
    assert launch.status_code == 307


async def test_home_page_is_a_clean_503_when_no_page_serving_member_answers(
    federation: Federation,
) -> None:
    await federation.members["alpha"].refuse()
    await federation.members["beta"].refuse()
    r = await federation.client.get("/about")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "30"
    assert "temporarily unavailable" in r.text


async def test_a_members_cookies_never_reach_another_visitor(federation: Federation) -> None:
    first = await federation.client.get("/")
    assert first.headers.get_list("set-cookie")  # the member sets cookies for visitor one
    async with httpx.AsyncClient(base_url=federation.url) as stranger:
        await stranger.get("/about")
    # The proxy's shared client must not have kept them for the stranger's request.
    assert "cookie" not in federation.members["alpha"].member.last_headers


async def test_trailing_slash_on_an_api_path_is_not_redirected_by_host(
    federation: Federation,
) -> None:
    r = await federation.client.get("/api/v1/members/", headers={"Host": "evil.example"})
    assert r.status_code != 307 or "evil.example" not in r.headers.get("location", "")
