"""The production redirector's incidents, replayed.

Each test recreates an incident of mybinder.org's federation redirector with real member
servers (fake BinderHubs on 127.0.0.1) in front of a real redirector (uvicorn) and asserts
the behaviour that was missing then. Each says what removing that behaviour would do to it.
At the end, unit tests of the two pure helpers behind the newer behaviours (``versions.py``,
``panic.py``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from federation_redirect.app import FederationApp, create_app
from federation_redirect.config import parse_config
from federation_redirect.health import versions_match
from federation_redirect.models import HealthState, OperatorState, Strategy
from federation_redirect.panic import PanicGuard
from federation_redirect.state.base import OverrideChange
from federation_redirect.testing import DEFAULT_VERSIONS, RunningMember
from federation_redirect.versions import VersionPolicy

from .conftest import StartFake
from .helpers import FAST_CHECKS, ServedApp

NAMES = ("alpha", "beta", "gamma")  # alpha: prime; alpha and beta serve the home page
V1 = dict(DEFAULT_VERSIONS)
V2 = {**V1, "binderhub": "1.1.0+3.gdef", "builder": "quay.io/jupyterhub/repo2docker:2025.01.0"}


@dataclass
class Federation:
    members: dict[str, RunningMember]
    app: FederationApp
    client: httpx.AsyncClient

    def state(self, name: str) -> HealthState:
        """What the health checks say of ``name`` (not what panic makes of it)."""
        return self.app.registry.reported(name).state

    def member_of(self, location: str) -> str:
        return next(n for n, m in self.members.items() if location.startswith(m.url + "/"))

    async def launches(self, n: int, prefix: str = "/v2/gh/org/repo") -> Counter[str]:
        """``n`` cookie-less launches of distinct repositories: where they went."""
        counts: Counter[str] = Counter()
        for i in range(n):
            r = await self.client.get(f"{prefix}-{i}/HEAD")
            assert r.status_code == 307, (r.status_code, r.text)
            counts[self.member_of(r.headers["location"])] += 1
            self.client.cookies.clear()
        return counts

    async def metric(self, name: str, **labels: str) -> float | None:
        text = (await self.client.get("/metrics")).text
        return metric_value(text, name, **labels)


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the first series of ``name`` whose labels include ``labels``."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None


async def until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait until ``condition()`` holds; how long it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


@asynccontextmanager
async def federation(
    start_fake: StartFake,
    *,
    check: dict[str, Any] | None = None,
    health_client: httpx.AsyncClient | None = None,
    **top: Any,
) -> AsyncIterator[Federation]:
    """Three members (quotas large enough that no load bound acts), a redirector in front."""
    members = {name: await start_fake(name, pods=5, quota=100_000) for name in NAMES}
    config = parse_config(
        {
            "hosts": {
                name: {
                    "url": m.url,
                    "prime": name == "alpha",
                    "pages": name != "gamma",
                    "metrics": None,
                }
                for name, m in members.items()
            },
            "check": {**FAST_CHECKS, **(check or {})},
            **top,
        }
    )
    app = create_app(config, health_client=health_client)
    async with ServedApp(app) as served, httpx.AsyncClient(base_url=served.url) as client:
        fed = Federation(members, app, client)
        for name in NAMES:
            await until(lambda name=name: fed.state(name) is HealthState.HEALTHY, 10, name)
        yield fed


# -- the incidents ------------------------------------------------------------------------


async def test_healthy_but_cannot_launch(start_fake: StartFake) -> None:
    """A member passed every health check but could not launch anything for 11 hours.

    Its own /metrics said so: the redirector now scrapes them, marks it degraded (shown in
    /metrics, weight scaled down), and operators can drain it through the state store.
    Without outcomes scraping the member stays at degraded 0 with its full share; without
    drain it keeps getting new repositories.
    """
    members = {name: await start_fake(name, pods=5, quota=100_000) for name in NAMES}
    config = parse_config(
        {
            "hosts": {
                name: {"url": m.url, "prime": name == "alpha"} for name, m in members.items()
            },
            "check": FAST_CHECKS,
            "outcomes": {
                "scrape_period": 0.2,
                "window_minutes": 0.1,
                "min_attempts": 5,
                "scrape_timeout": 2,
            },
        }
    )
    app = create_app(config)
    async with ServedApp(app) as served, httpx.AsyncClient(base_url=served.url) as client:
        fed = Federation(members, app, client)
        for name in NAMES:
            await until(lambda name=name: fed.state(name) is HealthState.HEALTHY, 10, name)
        members["beta"].outcomes.set_rates(success=0, failure=100)  # every launch fails
        await until(lambda: app.registry.health("beta").degraded, 10, "beta degraded")
        assert fed.state("beta") is HealthState.HEALTHY  # its /health still says ok
        assert await fed.metric("federation_member_degraded", member="beta") == 1
        ratio = await fed.metric("federation_member_launch_failure_ratio", member="beta")
        assert ratio is not None and ratio >= 0.5
        assert await fed.metric("federation_health", member="beta", reason="") == 1
        assert (await fed.launches(150))["beta"] <= 150 * 0.05

        # The operators act: drain it, from any replica, through the state store.
        await app.store.update_member(
            "beta",
            OverrideChange(state=OperatorState.DRAIN),
            actor="ops",
            reason="launches failing since 03:00",
        )
        assert await fed.metric("federation_member_operator_state", member="beta", state="drain")
        assert await fed.metric("federation_member_routable", member="beta") == 0
        assert "beta" not in (await client.get("/active_hosts")).json()["active_hosts"]
        assert (await fed.launches(150, "/build/gh/org/other"))["beta"] == 0


async def test_stale_reference_version_during_a_rolling_upgrade(start_fake: StartFake) -> None:
    """A reference version that changed under the members ejected them all for 9 hours.

    The prime is upgraded first; the others still report the previous versions and must stay
    in rotation for check.version_grace_seconds (3 s here), one by one catching up. One left
    behind is ejected once the window is over. Without the grace window (versions.py and its
    hook in health.py) beta and gamma are ejected as soon as the prime's versions change.
    """
    grace = 3.0
    async with federation(start_fake, check={"version_grace_seconds": grace}) as fed:
        registry = fed.app.registry
        fed.members["alpha"].set_versions(V2)
        await until(lambda: registry.reference_versions == V2, 5, "the prime's new versions")
        changed = time.monotonic()
        ejected: dict[str, float] = {}

        def watch() -> None:
            for name in ("beta", "gamma"):
                if fed.state(name) is not HealthState.HEALTHY:
                    ejected.setdefault(name, time.monotonic() - changed)

        registry.subscribe(lambda _snapshot: watch())
        await asyncio.sleep(grace / 2)  # many check rounds of the members still on V1
        assert not ejected, f"ejected within the grace window: {ejected}"
        hosts = (await fed.client.get("/active_hosts")).json()["active_hosts"]
        assert set(hosts) == set(NAMES)

        fed.members["beta"].set_versions(V2)  # beta's turn; gamma is left behind
        await until(lambda: "gamma" in ejected, grace + 2, "gamma ejected after the window")
        period = FAST_CHECKS["period"] * (1 + FAST_CHECKS["jitter"] / 2)
        assert grace - 0.1 <= ejected["gamma"] <= grace + period + 1
        assert registry.reported("gamma").reason == "versions"
        assert "beta" not in ejected
        fed.members["gamma"].set_versions(V2)
        await until(lambda: fed.state("gamma") is HealthState.HEALTHY, 5, "gamma back")


class _FailingTransport(httpx.AsyncBaseTransport):
    """The real network, except that a bug fires inside the check while ``failing``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.failing = False
        self._real = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.failing and request.url.port == self.port:
            # what production met: a key missing where the code expected it
            raise KeyError("quota")
        return await self._real.handle_async_request(request)

    async def aclose(self) -> None:
        await self._real.aclose()


async def test_exception_inside_a_health_check(start_fake: StartFake) -> None:
    """A health loop died on a missing config key and never re-admitted anyone.

    An exception inside beta's check is a failed round (reason ``error``, counted in
    federation_health_check_errors_total); the loop survives and re-admits beta once the bug
    stops firing. Without the loop's catch-all, beta's loop task dies with the exception and
    beta is never re-admitted.
    """
    transport = _FailingTransport(port=-1)
    async with (
        httpx.AsyncClient(transport=transport, follow_redirects=False, timeout=2) as checks,
        federation(start_fake, health_client=checks) as fed,
    ):
        transport.port = fed.members["beta"].port
        transport.failing = True
        await until(lambda: fed.state("beta") is HealthState.UNHEALTHY, 5, "beta out")
        assert fed.app.registry.reported("beta").reason == "error"
        errors = await fed.metric("federation_health_check_errors_total", member="beta")
        assert errors is not None and errors >= 1
        await asyncio.sleep(0.5)  # several more rounds that raise
        assert not fed.app.engine.tasks["beta"].done(), "beta's health loop died"
        transport.failing = False
        await until(lambda: fed.state("beta") is HealthState.HEALTHY, 5, "beta re-admitted")
        assert "beta" in (await fed.client.get("/active_hosts")).json()["active_hosts"]


async def test_prime_unreachable(start_fake: StartFake) -> None:
    """The prime went down and took the home page with it, six times.

    With the prime unreachable, the home page is served by the other page-serving member,
    and launches go to the healthy members only. Without the proxy's failover (prime only)
    the home page is a 503.
    """
    async with federation(start_fake) as fed:
        await fed.members["alpha"].refuse()
        await until(lambda: fed.state("alpha") is HealthState.UNHEALTHY, 5, "alpha out")
        page = await fed.client.get("/")
        assert page.status_code == 200 and "member beta" in page.text
        assert (await fed.client.get("/readyz")).status_code == 200
        counts = await fed.launches(200)
        assert counts["alpha"] == 0 and counts["beta"] > 0 and counts["gamma"] > 0


async def test_own_network_cut_off(start_fake: StartFake) -> None:
    """Every member fails at once: it is the redirector's network, not the federation.

    When every member falls through transport failures within the fall window, routing keeps
    the last healthy set for check.panic_grace_seconds and exports federation_panic 1,
    while /metrics still shows each member's checks failing. After the grace the rotation
    empties (fallback to the prime). Without panic (panic.py and its hooks in registry.py and
    metrics.py) every launch goes to the prime at once.
    """
    grace = 2.0
    async with federation(start_fake, check={"panic_grace_seconds": grace}) as fed:
        await asyncio.gather(*(m.refuse() for m in fed.members.values()))  # the cut
        for name in NAMES:
            await until(lambda name=name: fed.state(name) is HealthState.UNHEALTHY, 5, name)
        cut_seen = time.monotonic()
        assert await fed.metric("federation_panic") == 1
        assert await fed.metric("federation_fallback_active") == 0
        for name in NAMES:  # not green: the checks fail and the dashboard says so
            assert await fed.metric("federation_health", member=name, reason="connect") == 0
            assert await fed.metric("federation_member_state", member=name, state="unhealthy") == 1
        counts = await fed.launches(150)
        assert all(counts[name] > 10 for name in NAMES), counts  # the last good set, spread

        await until(lambda: not fed.app.registry.panic.active, grace + 2, "grace over")
        assert time.monotonic() - cut_seen >= grace - 0.5
        assert await fed.metric("federation_panic") == 0
        assert await fed.metric("federation_fallback_active") == 1
        assert set(await fed.launches(30, "/v2/gh/org/later")) == {"alpha"}

        for m in fed.members.values():
            await m.resume()
        for name in NAMES:
            await until(lambda name=name: fed.state(name) is HealthState.HEALTHY, 10, name)
        assert await fed.metric("federation_panic") == 0


async def test_member_down_shown_as_down_in_metrics(start_fake: StartFake) -> None:
    """Dashboards showed green while a member was down (a gauge set to 1 was never reset).

    A member that hangs is shown down by every per-member series at the next scrape, with no
    healthy series left behind. With gauges set on change instead of computed at scrape
    time, ``federation_health{member="beta",reason=""} 1`` would remain.
    """
    async with federation(start_fake) as fed:
        assert await fed.metric("federation_health", member="beta", reason="") == 1
        await fed.members["beta"].set_mode("hang")
        await until(lambda: fed.state("beta") is HealthState.UNHEALTHY, 5, "beta out")
        text = (await fed.client.get("/metrics")).text
        health = [
            line for line in text.splitlines() if line.startswith('federation_health{member="beta"')
        ]
        assert health == ['federation_health{member="beta",reason="timeout"} 0.0']
        assert metric_value(text, "federation_member_state", member="beta", state="healthy") == 0
        assert metric_value(text, "federation_member_state", member="beta", state="unhealthy") == 1
        assert metric_value(text, "federation_member_routable", member="beta") == 0
        assert "beta" not in (await fed.client.get("/active_hosts")).json()["active_hosts"]


@pytest.mark.parametrize("strategy", list(Strategy))
async def test_every_strategy_answers_307_to_a_cookieless_build(
    start_fake: StartFake, strategy: Strategy
) -> None:
    """The ``random`` strategy crashed on every request for four years and no test noticed.

    A cookie-less ``/build`` request (what BinderHub's launch page sends) gets a 307 to a
    member under every strategy, bounded, rendezvous and random alike.
    """
    async with federation(start_fake, load_balancer=str(strategy)) as fed:
        cookies = 0
        for i in range(30):
            r = await fed.client.get(f"/build/gh/org/repo-{i}.git/HEAD")
            assert r.status_code == 307, (strategy, r.status_code, r.text)
            assert fed.member_of(r.headers["location"]) in NAMES
            assert r.headers["access-control-allow-origin"] == "*"
            # a cookie for the follow-up launch (not after a spill of the bounded policy)
            cookies += r.headers.get("set-cookie", "").startswith("fr-")
            fed.client.cookies.clear()
        assert cookies >= 10


# -- the pure helpers -----------------------------------------------------------------------


def _policy(grace: float, mode: str = "exact") -> VersionPolicy:
    return VersionPolicy(lambda m, r: versions_match(mode, m, r), grace_seconds=grace)


def test_version_policy_tolerates_the_previous_reference_for_the_grace_window() -> None:
    policy = _policy(60)
    assert policy.acceptable(V2, 0)  # no reference yet: anything goes
    assert not policy.observe(V1, 0)  # the first reference replaces nothing
    assert policy.acceptable(V1, 1) and not policy.acceptable(V2, 1)
    assert policy.observe(V2, 100)  # the prime upgraded
    assert not policy.observe(V2, 101)
    assert policy.acceptable(V2, 101)
    assert policy.acceptable(V1, 159.9) and policy.tolerated(V1, 159.9)
    assert not policy.acceptable(V1, 160.0)
    v3 = {**V1, "binderhub": "9.9.9"}
    assert not policy.acceptable(v3, 101)  # never a reference: ejected at once
    assert policy.previous(120) == [V1]


def test_version_policy_without_grace_and_after_a_rollback() -> None:
    off = _policy(0)
    off.observe(V1, 0)
    off.observe(V2, 1)
    assert not off.acceptable(V1, 1)
    policy = _policy(60, mode="binderhub")
    policy.observe(V1, 0)
    policy.observe(V2, 10)
    policy.observe(V1, 20)  # rolled back: V1 current, V2 the previous one
    assert policy.reference == V1
    assert policy.acceptable({**V1, "builder": "anything"}, 25)  # binderhub mode
    assert policy.tolerated(V2, 79) and not policy.acceptable(V2, 80)


def test_panic_starts_only_when_every_healthy_member_falls_through_transport() -> None:
    guard = PanicGuard(grace_seconds=120, window_seconds=5)
    for name in ("a", "b", "c"):
        guard.observe(name, True, None, 0)
    assert not guard.observe("a", False, "connect", 10)
    assert not guard.observe("b", False, "timeout", 11)
    assert guard.observe("c", False, "connect", 12)
    assert guard.active and guard.kept == {"a", "b", "c"} and guard.since == 12
    assert not guard.observe("c", False, "connect", 13)  # more failed rounds change nothing
    assert not guard.expire(131.9)
    assert guard.expire(132) and not guard.active
    assert not guard.observe("a", False, "connect", 140)  # no new panic after the grace
    guard.observe("a", True, None, 150)  # until members are healthy again...
    guard.observe("b", True, None, 150)
    assert not guard.observe("a", False, "connect", 151)
    assert guard.observe("b", False, "timeout", 152)  # ...and fall together again
    assert guard.kept == {"a", "b"}


def test_panic_does_not_start_for_answers_spread_falls_or_a_lone_member() -> None:
    explicit = PanicGuard(grace_seconds=120, window_seconds=5)
    for name in ("a", "b"):
        explicit.observe(name, True, None, 0)
    explicit.observe("a", False, "connect", 1)
    assert not explicit.observe("b", False, "http_status", 2)  # b answered: our network is fine
    spread = PanicGuard(grace_seconds=120, window_seconds=5)
    for name in ("a", "b", "c"):
        spread.observe(name, True, None, 0)
    spread.observe("a", False, "connect", 1)
    spread.observe("b", False, "connect", 20)
    assert spread.observe("c", False, "connect", 21)  # a fell long before: b and c kept
    assert spread.kept == {"b", "c"}
    assert spread.observe("b", True, None, 22) and not spread.active  # b is back: over
    lone = PanicGuard(grace_seconds=120, window_seconds=5)
    lone.observe("a", True, None, 0)
    assert not lone.observe("a", False, "timeout", 1)
    off = PanicGuard(grace_seconds=0, window_seconds=5)
    for name in ("a", "b"):
        off.observe(name, True, None, 0)
    off.observe("a", False, "connect", 1)
    assert not off.observe("b", False, "connect", 1)
