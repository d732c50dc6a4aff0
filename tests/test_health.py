"""The health engine against real fake members on 127.0.0.1.

Timings are scaled down (period 0.3 s, timeout 0.3 s, fast_period 0.05 s...) so that the
behaviour the production settings give in seconds happens here in tenths of a second. Pure
parsing edge cases use ``httpx.MockTransport`` at the client seam.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from federation_redirect.config import Config, parse_config
from federation_redirect.health import HealthEngine, RoundResult, versions_match
from federation_redirect.models import HealthState, Snapshot
from federation_redirect.registry import Registry
from federation_redirect.testing import DEFAULT_VERSIONS, RunningMember, start_member

from .conftest import StartFake
from .helpers import FAST_CHECKS

FAST = {**FAST_CHECKS, "timeout": 0.3, "retries": 3}
OTHER_VERSIONS = {**DEFAULT_VERSIONS, "binderhub": "1.1.0+7.gdef"}


def make_config(
    urls: Mapping[str, str],
    *,
    prime: str | None = None,
    top: Mapping[str, Any] | None = None,
    hosts: Mapping[str, Mapping[str, Any]] | None = None,
    **check: Any,
) -> Config:
    """Members named as in ``urls``; the first is the prime unless ``prime`` says otherwise."""
    prime = prime or next(iter(urls))
    return parse_config(
        {
            "hosts": {
                name: {"url": url, "prime": name == prime, **(hosts or {}).get(name, {})}
                for name, url in urls.items()
            },
            "check": {**FAST, **check},
            **(top or {}),
        }
    )


class Engine:
    """A started engine with its registry and a log of every routing-state change."""

    def __init__(self, engine: HealthEngine, registry: Registry) -> None:
        self.engine = engine
        self.registry = registry
        self.stats = engine.stats
        self.changes: list[tuple[float, str, HealthState]] = []
        self._seen = {m.name: m.health for m in registry.snapshot.members}
        registry.subscribe(self._record)

    def _record(self, snapshot: Snapshot) -> None:
        for m in snapshot.members:
            if self._seen[m.name] is not m.health:
                self._seen[m.name] = m.health
                self.changes.append((time.monotonic(), m.name, m.health))

    def state(self, name: str) -> HealthState:
        return self.registry.health(name).state

    def states_of(self, name: str) -> list[HealthState]:
        return [state for _, n, state in self.changes if n == name]

    def failed_rounds(self, name: str) -> int:
        return sum(self.stats[name].failures_total.values())

    async def until(self, name: str, state: HealthState, within: float = 5) -> float:
        """Wait for ``name`` to reach ``state``; return the monotonic time it was seen."""
        return await until(lambda: self.state(name) is state, within, f"{name} {state}")

    async def rounds(self, name: str, n: int, within: float = 5) -> None:
        """Wait for ``n`` more completed rounds of ``name``."""
        target = self.stats[name].rounds_total + n
        await until(lambda: self.stats[name].rounds_total >= target, within, f"{n} rounds")


async def until(predicate: Callable[[], bool], within: float, what: str) -> float:
    """Poll ``predicate`` every 5 ms; return the monotonic time it became true."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.005)
    return time.monotonic()


@asynccontextmanager
async def running(config: Config, **kwargs: Any) -> AsyncIterator[Engine]:
    registry = Registry(config)
    engine = HealthEngine(config, registry, rng=random.Random(1), **kwargs)
    watched = Engine(engine, registry)
    await engine.start()
    try:
        yield watched
    finally:
        await engine.stop()


async def two(start_fake: StartFake, **b: Any) -> tuple[RunningMember, RunningMember]:
    return await start_fake("a"), await start_fake("b", **b)


def urls(*members: RunningMember) -> dict[str, str]:
    return {m.name: m.url for m in members}


# -- leaving rotation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("503", "service:jupyterhub_api"), ("registry_down", "service:docker_registry")],
)
async def test_member_answering_503_leaves_rotation_at_once(
    start_fake: StartFake, mode: str, reason: str
) -> None:
    a, b = await two(start_fake)
    # a long backoff after removal keeps the counters still while we read them
    async with running(make_config(urls(a, b), min_backoff=2, max_backoff=2)) as e:
        await e.until("b", HealthState.HEALTHY)
        await b.set_mode(mode)  # type: ignore[arg-type]
        fault = time.monotonic()
        out = await e.until("b", HealthState.UNHEALTHY)
        assert out - fault <= FAST["period"] * (1 + FAST["jitter"] / 2) + 0.15
        assert e.stats["b"].failures_total == {reason: 1}  # one round was enough
        report = e.registry.health("b")
        assert report.reason == reason
        assert "b" not in [m.name for m in e.registry.snapshot.candidates]
        assert report.checks["versions"] is True
        assert False in report.checks.values()


async def test_hanging_member_leaves_after_two_rounds_bounded_by_timeout(
    start_fake: StartFake,
) -> None:
    a, b = await two(start_fake)
    async with running(make_config(urls(a, b), min_backoff=2, max_backoff=2)) as e:
        await e.until("b", HealthState.HEALTHY)
        await b.set_mode("hang")
        fault = time.monotonic()
        await until(lambda: e.failed_rounds("b") == 1, 2, "first timed-out round")
        report = e.registry.health("b")
        assert report.state is HealthState.HEALTHY and report.reason == "timeout"
        # one deadline for the round, though retries=3 and both fetches hang
        assert report.latency is not None and report.latency <= FAST["timeout"] + 0.1
        out = await e.until("b", HealthState.UNHEALTHY)
        first_hung = b.member.first_request("health", fault)
        assert first_hung is not None
        timeout, fast = FAST["timeout"], FAST["fast_period"]
        assert 2 * timeout - 0.05 <= out - first_hung <= 2 * timeout + fast + 0.2
        assert e.stats["b"].failures_total == {"timeout": 2}
        assert e.states_of("b") == [HealthState.HEALTHY, HealthState.UNHEALTHY]


@pytest.mark.parametrize("fault", ["refuse", "500", "hang"])
async def test_transport_blip_does_not_remove_member(start_fake: StartFake, fault: str) -> None:
    a, b = await two(start_fake)
    # a long fast_period gives the test time to heal the member before the confirming round
    async with running(make_config(urls(a, b), fast_period=0.3)) as e:
        await e.until("b", HealthState.HEALTHY)
        await b.set_mode(fault)  # type: ignore[arg-type]
        await until(lambda: e.failed_rounds("b") == 1, 3, "one failed round")
        await b.set_mode("ok")
        report = e.registry.health("b")
        assert report.state is HealthState.HEALTHY
        assert report.reason in ("connect", "http_status", "timeout")
        assert "failed round 1 of 2" in report.detail
        await e.rounds("b", 2)
        assert e.registry.health("b").reason is None
        assert e.states_of("b") == [HealthState.HEALTHY]  # never left rotation
        assert e.failed_rounds("b") == 1


@pytest.mark.parametrize("fall", [1, 3])
async def test_fall_sets_the_number_of_transport_failures_before_removal(
    start_fake: StartFake, fall: int
) -> None:
    a, b = await two(start_fake)
    async with running(make_config(urls(a, b), fall=fall, min_backoff=2, max_backoff=2)) as e:
        await e.until("b", HealthState.HEALTHY)
        await b.set_mode("500")
        await e.until("b", HealthState.UNHEALTHY)
        assert e.stats["b"].failures_total == {"http_status": fall}


async def test_unknown_member_gets_no_traffic_until_first_good_check(
    start_fake: StartFake,
) -> None:
    a = await start_fake("a")
    b = await start_fake("b", mode="hang")
    c = await start_fake("c")
    config = make_config(urls(a, b, c), jitter=0, timeout=0.5)
    registry = Registry(config)
    assert registry.snapshot.candidates == ()
    async with running(config) as e:
        await e.until("a", HealthState.HEALTHY)
        await e.until("c", HealthState.HEALTHY)
        # b's first round is still waiting for its answer: b is unknown and gets nothing
        assert e.state("b") is HealthState.UNKNOWN
        assert [m.name for m in e.registry.snapshot.candidates] == ["a", "c"]
        assert e.stats["a"].rounds_total == 1  # one good round is enough at start
        # a failed first round removes at once, transport failure or not
        await e.until("b", HealthState.UNHEALTHY)
        assert e.stats["b"].failures_total == {"timeout": 1}
        assert e.states_of("b") == [HealthState.UNHEALTHY]


# -- coming back -------------------------------------------------------------------------------


@pytest.mark.parametrize("rise", [2, 3])
async def test_healed_member_needs_two_good_rounds(start_fake: StartFake, rise: int) -> None:
    a, b = await two(start_fake, mode="503")
    config = make_config(urls(a, b), rise=rise, min_backoff=0.2, max_backoff=0.2)
    async with running(config) as e:
        await e.until("b", HealthState.UNHEALTHY)
        await e.rounds("b", 1)  # heal right after a round: the next one sees the change
        await b.set_mode("ok")
        healed, before = time.monotonic(), e.stats["b"].rounds_total
        back = await e.until("b", HealthState.HEALTHY)
        assert e.stats["b"].rounds_total - before == rise
        assert back - healed <= 0.2 + (rise - 1) * FAST["fast_period"] + 0.2
        assert e.states_of("b") == [HealthState.UNHEALTHY, HealthState.HEALTHY]


@pytest.mark.parametrize(
    ("max_backoff", "failed_period", "expected"),
    [(0.4, 1.0, [0.05, 0.1, 0.2, 0.4, 0.4]), (0.4, 0.15, [0.05, 0.1, 0.15, 0.15])],
)
async def test_unhealthy_member_is_rechecked_with_doubling_backoff(
    start_fake: StartFake,
    caplog: pytest.LogCaptureFixture,
    max_backoff: float,
    failed_period: float,
    expected: list[float],
) -> None:
    caplog.set_level(logging.INFO, logger="federation_redirect.health")
    a, b = await two(start_fake)
    config = make_config(urls(a, b), max_backoff=max_backoff, failed_period=failed_period)
    async with running(config) as e:
        await e.until("b", HealthState.HEALTHY)
        await b.set_mode("503")
        fault = time.monotonic()
        await e.until("b", HealthState.UNHEALTHY)
        await e.rounds("b", len(expected))
    # the first arrival after the fault is the round that removed b
    arrivals = [r.at for r in b.member.log if r.kind == "health" and r.at >= fault]
    gaps = [t1 - t0 for t0, t1 in itertools.pairwise(arrivals)]
    assert len(gaps) >= len(expected)
    for gap, want in zip(gaps, expected, strict=False):
        assert want - 0.01 <= gap <= want + 0.08, (gaps, expected)
    # state changes are logged once each, not once per round
    changes = [
        (r.levelname, r.getMessage()) for r in caplog.records if "member b:" in r.getMessage()
    ]
    assert [(level, msg.split(" (")[0]) for level, msg in changes] == [
        ("INFO", "member b: unknown -> healthy"),
        ("WARNING", "member b: healthy -> unhealthy"),
    ]
    assert "service:jupyterhub_api" in changes[1][1]


async def test_healthy_member_is_rechecked_every_period_with_jitter(
    start_fake: StartFake,
) -> None:
    a = await start_fake("a")
    async with running(make_config(urls(a), period=0.2, jitter=0.5)) as e:
        await e.rounds("a", 6)
    arrivals = [r.at for r in a.member.log if r.kind == "health"]
    gaps = [t1 - t0 for t0, t1 in itertools.pairwise(arrivals)]
    assert all(0.15 - 0.01 <= gap <= 0.25 + 0.05 for gap in gaps), gaps
    assert max(gaps) - min(gaps) > 0.01  # jittered, not a fixed beat


async def test_first_checks_are_spread_over_jitter_times_period(start_fake: StartFake) -> None:
    members = [await start_fake(name) for name in ("a", "b", "c")]
    start = time.monotonic()
    async with running(make_config(urls(*members), period=1.0, jitter=0.4)) as e:
        await until(lambda: all(s.rounds_total >= 1 for s in e.stats.values()), 1, "first")
    firsts = [m.member.first_request("health", start) for m in members]
    assert all(f is not None and f - start <= 0.4 + 0.1 for f in firsts), firsts


# -- capacity ----------------------------------------------------------------------------------


async def test_full_member_stays_healthy_but_marked_full(start_fake: StartFake) -> None:
    a, b = await two(start_fake, pods=295, quota=300)
    async with running(make_config(urls(a, b))) as e:
        await e.until("b", HealthState.HEALTHY)
        report = e.registry.health("b")
        assert report.full and report.reason is None and "full" in report.detail
        assert (report.capacity.quota, report.capacity.pods) == (300, 295)
        assert report.capacity.reported_at is not None
        member = e.registry.snapshot.by_name["b"]
        assert member.health is HealthState.HEALTHY and member.full
        assert [m.name for m in e.registry.snapshot.candidates] == ["a"]
        b.set_pods(100, 300)
        await until(lambda: not e.registry.health("b").full, 3, "b not full")
        assert [m.name for m in e.registry.snapshot.candidates] == ["a", "b"]
        assert e.failed_rounds("b") == 0


async def test_config_quota_applies_when_the_member_reports_none(start_fake: StartFake) -> None:
    a = await start_fake("a", pods=50)  # Pod quota check with "quota": null
    b = await start_fake("b", pods=None)  # no Pod quota check at all (an older hub)
    hosts = {"a": {"quota": 55}, "b": {"quota": 100}}
    async with running(make_config(urls(a, b), hosts=hosts)) as e:
        await e.until("a", HealthState.HEALTHY)
        await e.until("b", HealthState.HEALTHY)
        a_report, b_report = e.registry.health("a"), e.registry.health("b")
        assert (a_report.capacity.quota, a_report.capacity.pods) == (55, 50)
        assert a_report.full  # 50 + headroom 10 >= 55
        assert (b_report.capacity.quota, b_report.capacity.pods) == (100, None)
        assert not b_report.full and b_report.capacity.reported_at is None


# -- versions ----------------------------------------------------------------------------------


async def test_prime_versions_update_reference_even_when_prime_unhealthy(
    start_fake: StartFake,
) -> None:
    a = await start_fake("a", mode="503", versions=OTHER_VERSIONS)
    b = await start_fake("b", versions=OTHER_VERSIONS)
    c = await start_fake("c")  # default versions: differ from the prime's
    async with running(make_config(urls(a, b, c))) as e:
        await e.until("a", HealthState.UNHEALTHY)
        assert e.registry.reference_versions == OTHER_VERSIONS
        await until(lambda: e.registry.health("c").reason == "versions", 3, "c versions")
        assert e.state("c") is HealthState.UNHEALTHY
        await e.rounds("b", 2)
        assert e.state("b") is HealthState.HEALTHY
        a.set_versions(DEFAULT_VERSIONS)  # the prime is upgraded: c matches again
        await e.until("c", HealthState.HEALTHY)
        assert e.registry.reference_versions == DEFAULT_VERSIONS


async def test_version_mismatch_removes_member(start_fake: StartFake) -> None:
    a, b = await two(start_fake)
    async with running(make_config(urls(a, b), min_backoff=2, max_backoff=2)) as e:
        await e.until("b", HealthState.HEALTHY)
        b.set_versions({**DEFAULT_VERSIONS, "builder": "quay.io/jupyterhub/repo2docker:old"})
        await e.until("b", HealthState.UNHEALTHY)
        assert e.stats["b"].failures_total == {"versions": 1}  # explicit: one round
        report = e.registry.health("b")
        assert report.reason == "versions" and report.checks["versions"] is False
        assert 'builder="quay.io/jupyterhub/repo2docker:old"' in report.detail
        assert report.versions is not None and str(report.versions["builder"]).endswith(":old")
        assert report.checks["JupyterHub API"] is True


async def test_binderhub_version_mode_ignores_local_part(start_fake: StartFake) -> None:
    a = await start_fake("a")  # binderhub "1.0.0+42.gabc"
    b = await start_fake("b", versions={"binderhub": "1.0.0+43.gdef", "builder": "other"})
    async with running(make_config(urls(a, b), versions="binderhub")) as e:
        await until(lambda: e.registry.reference_versions is not None, 3, "reference")
        await e.rounds("b", 2)
        assert e.state("b") is HealthState.HEALTHY
        b.set_versions({"binderhub": "1.1.0+1.g000", "builder": "other"})
        await e.until("b", HealthState.UNHEALTHY)
        assert e.registry.health("b").reason == "versions"


@pytest.mark.parametrize(
    ("mode", "member", "reference", "expected"),
    [
        ("exact", {"binderhub": "1.0.0+1"}, {"binderhub": "1.0.0+1"}, True),
        ("exact", {"binderhub": "1.0.0+1"}, {"binderhub": "1.0.0+2"}, False),
        ("exact", {"binderhub": "1.0.0"}, None, True),
        ("binderhub", {"binderhub": "1.0.0+1", "builder": "x"}, {"binderhub": "1.0.0+2"}, True),
        ("binderhub", {"binderhub": "1.0.1+1"}, {"binderhub": "1.0.0+1"}, False),
        ("binderhub", {"binderhub": 1}, {"binderhub": "1.0.0"}, False),
        ("binderhub", {}, {"binderhub": "1.0.0"}, False),
        ("binderhub", {"binderhub": "2"}, {"builder": "x"}, True),
        ("off", {"binderhub": "2"}, {"binderhub": "1"}, True),
    ],
)
def test_versions_match(
    mode: str,
    member: dict[str, object],
    reference: dict[str, object] | None,
    expected: bool,
) -> None:
    assert versions_match(mode, member, reference) is expected


# -- bad answers -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["html", "bad_json", "redirect"])
async def test_html_health_is_bad_response(start_fake: StartFake, mode: str) -> None:
    a, b = await two(start_fake)
    async with running(make_config(urls(a, b), min_backoff=2, max_backoff=2)) as e:
        await e.until("b", HealthState.HEALTHY)
        await b.set_mode(mode)  # type: ignore[arg-type]
        await e.until("b", HealthState.UNHEALTHY)
        reason = "http_status" if mode == "redirect" else "bad_response"
        assert e.stats["b"].failures_total == {reason: 1}  # explicit: removed at once


async def test_oversized_health_body_is_bad_response(start_fake: StartFake) -> None:
    a, b = await two(start_fake, mode="huge")  # 1 MiB, chunked: no Content-Length to trust
    async with running(make_config(urls(a, b), max_response_bytes=4096)) as e:
        await e.until("b", HealthState.UNHEALTHY)
        report = e.registry.health("b")
        assert report.reason == "bad_response"
        assert "4096 byte limit" in report.detail


Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


def _mock_engine(health: Handler, versions: Handler | None = None, **check: Any) -> HealthEngine:
    """An engine whose client answers from these handlers (b's /health, everything else)."""

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            answer = health(request)
        elif versions is not None:
            answer = versions(request)
        else:
            answer = httpx.Response(200, json=DEFAULT_VERSIONS)
        return await answer if inspect.isawaitable(answer) else answer

    config = make_config({"a": "http://a.test", "b": "http://b.test"}, **check)
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return HealthEngine(config, Registry(config), client=client)


def _json(status: int, document: object) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _: httpx.Response(status, json=document)


def _raw(status: int, body: bytes, ctype: str = "application/json", **extra: bytes) -> Any:
    headers = [(b"content-type", ctype.encode())]
    headers += [(k.replace("_", "-").encode(), v) for k, v in extra.items()]
    if "content_length" not in extra:
        headers.append((b"content-length", str(len(body)).encode()))
    # a stream, so that httpx decodes (or fails to) only when the engine reads
    return lambda _: httpx.Response(status, stream=httpx.ByteStream(body), headers=headers)


def _pod(**fields: object) -> dict[str, object]:
    entry: dict[str, object] = {"service": "Pod quota", "total_pods": 3, "quota": 300}
    return {"ok": True, "checks": [{**entry, "ok": True, "_ignore_failure": True, **fields}]}


HUB_OK: dict[str, object] = {"service": "JupyterHub API", "ok": True}
GOOD = {"ok": True, "checks": [HUB_OK]}
BAD, STATUS, HUB = "bad_response", "http_status", "service:jupyterhub_api"
HUB_DOWN = {"ok": False, "checks": [{"service": "JupyterHub API", "ok": False}]}


@pytest.mark.parametrize(
    ("health", "versions", "reason", "explicit"),
    [
        pytest.param(_json(200, {"ok": "yes", "checks": []}), None, BAD, True, id="ok-str"),
        pytest.param(_json(200, {"ok": True, "checks": {}}), None, BAD, True, id="checks-dict"),
        pytest.param(_json(200, {"ok": True}), None, BAD, True, id="no-checks"),
        pytest.param(_json(200, {"ok": True, "checks": ["x"]}), None, BAD, True, id="check-str"),
        pytest.param(
            _json(200, {"ok": True, "checks": [{"service": 1, "ok": True}]}),
            None,
            BAD,
            True,
            id="service-int",
        ),
        pytest.param(
            _json(200, {"ok": True, "checks": [{"service": "JupyterHub API", "ok": 1}]}),
            None,
            BAD,
            True,
            id="check-ok-int",
        ),
        pytest.param(_json(200, _pod(total_pods="12")), None, BAD, True, id="pods-str"),
        pytest.param(_json(200, _pod(total_pods=True)), None, BAD, True, id="pods-bool"),
        pytest.param(_json(200, _pod(quota=-1)), None, BAD, True, id="quota-negative"),
        pytest.param(_json(200, _pod(_ignore_failure="yes")), None, BAD, True, id="ignore-str"),
        pytest.param(
            _json(200, {"ok": True, "checks": [HUB_OK] * 100}), None, BAD, True, id="many-checks"
        ),
        pytest.param(_json(200, []), None, BAD, True, id="array"),
        pytest.param(_raw(200, b"[" * 100_000), None, BAD, True, id="deep-nesting"),
        pytest.param(_raw(200, b'{"ok": NaN, "checks": []}'), None, BAD, True, id="nan"),
        pytest.param(_raw(200, b"\xff\xfe\x00garbage"), None, BAD, True, id="not-utf8"),
        pytest.param(_raw(200, b"<html>hi</html>", "text/html"), None, BAD, True, id="html"),
        pytest.param(
            _raw(200, b'{"ok": true, "checks": []}' + b" " * 70_000),
            None,
            BAD,
            True,
            id="content-length-over-cap",
        ),
        pytest.param(
            _raw(200, b"not gzip", content_encoding=b"gzip"), None, BAD, True, id="bad-gzip"
        ),
        pytest.param(
            _raw(200, b"{}", content_length=b"\xb2"), None, BAD, True, id="odd-content-length"
        ),
        pytest.param(_json(302, GOOD), None, STATUS, True, id="302"),
        pytest.param(_json(404, GOOD), None, STATUS, True, id="404"),
        pytest.param(_json(204, GOOD), None, STATUS, True, id="204"),
        pytest.param(_json(500, GOOD), None, STATUS, False, id="500"),
        pytest.param(_json(429, GOOD), None, STATUS, False, id="429"),
        pytest.param(
            _raw(503, b"<html>no backend</html>", "text/html"),
            None,
            STATUS,
            False,
            id="503-ingress-page",
        ),
        pytest.param(_json(503, HUB_DOWN), None, HUB, True, id="503-hub"),
        pytest.param(_json(200, HUB_DOWN), None, HUB, True, id="200-failed-check"),
        pytest.param(
            _json(503, {"ok": False, "checks": [{"service": "Frobnicator", "ok": False}]}),
            None,
            "service:other",
            True,
            id="503-unknown-service",
        ),
        pytest.param(
            _json(200, {"ok": False, "checks": []}),
            None,
            "service:other",
            True,
            id="ok-false-no-check",
        ),
        pytest.param(
            _json(503, {"ok": True, "checks": []}), None, STATUS, False, id="503-nothing-failed"
        ),
        pytest.param(_json(200, GOOD), _json(200, [1, 2]), BAD, True, id="versions-array"),
        pytest.param(
            _json(200, GOOD), _raw(200, b"<html/>", "text/html"), BAD, True, id="versions-html"
        ),
        pytest.param(_json(200, GOOD), _json(500, {}), STATUS, False, id="versions-500"),
        pytest.param(
            _json(503, HUB_DOWN), _json(502, {}), HUB, True, id="explicit-beats-transport"
        ),
    ],
)
async def test_answers_are_judged_defensively(
    health: Callable[[httpx.Request], httpx.Response],
    versions: Callable[[httpx.Request], httpx.Response] | None,
    reason: str,
    explicit: bool,
) -> None:
    engine = _mock_engine(health, versions)
    try:
        result = await engine.check_round("b")
    finally:
        await engine.stop()
    assert (result.reason, result.explicit) == (reason, explicit), result.detail


@pytest.mark.parametrize(
    "document",
    [
        _pod(ok=False),  # over quota: a soft check, the member stays up
        {"ok": True, "checks": [{"service": "docker-registry", "ok": True}]},  # pre-2019 shape
        {"ok": True, "checks": [], "extra": {"nested": [1, {"x": None}]}},
    ],
)
async def test_good_answers_pass(document: object) -> None:
    engine = _mock_engine(_json(200, document))
    try:
        result = await engine.check_round("b")
    finally:
        await engine.stop()
    assert result.ok, result.detail


async def test_connection_errors_are_retried_within_the_round() -> None:
    attempts: list[str] = []

    def refuse_once(request: httpx.Request) -> httpx.Response:
        attempts.append(request.url.path)
        if len(attempts) == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json=GOOD)

    engine = _mock_engine(refuse_once)
    try:
        result = await engine.check_round("b")
    finally:
        await engine.stop()
    assert result.ok and attempts == ["/health", "/health"]


async def test_connect_retries_stay_within_the_round_deadline() -> None:
    attempts: list[float] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        attempts.append(time.monotonic())
        raise httpx.ConnectError("connection refused", request=request)

    async def refuse_slowly(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)  # like a SYN that takes a while to be reset
        raise httpx.ConnectError("connection refused", request=request)

    engine = _mock_engine(refuse, refuse, retries=5, timeout=0.3)
    try:
        result = await engine.check_round("b")
    finally:
        await engine.stop()
    assert (result.reason, result.explicit) == ("connect", False)
    assert len(attempts) == 10  # 5 per fetch, both fetches
    assert result.latency <= 0.3 + 0.05
    slow = _mock_engine(refuse_slowly, refuse_slowly, retries=50, timeout=0.3)
    try:
        result = await slow.check_round("b")
    finally:
        await slow.stop()
    assert result.reason == "connect" and result.latency <= 0.3 + 0.05  # still one deadline


async def test_read_timeout_is_a_transport_failure() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    engine = _mock_engine(slow)
    try:
        result = await engine.check_round("b")
    finally:
        await engine.stop()
    assert (result.reason, result.explicit) == ("timeout", False)


async def test_check_round_changes_nothing(start_fake: StartFake) -> None:
    a = await start_fake("a", mode="503")
    config = make_config(urls(a))
    registry = Registry(config)
    engine = HealthEngine(config, registry)
    try:
        result = await engine.check_round("a")
    finally:
        await engine.stop()
    assert isinstance(result, RoundResult) and result.reason == "service:jupyterhub_api"
    assert result.versions == DEFAULT_VERSIONS and result.capacity is not None
    assert registry.health("a").state is HealthState.UNKNOWN
    assert registry.reference_versions is None
    assert engine.stats["a"].rounds_total == 0


# -- supervision ---------------------------------------------------------------------------------


class RaiseOnce(httpx.AsyncBaseTransport):
    """A real transport that raises a RuntimeError (a stand-in for a bug) when armed."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.armed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.armed:
            self.armed = False
            raise RuntimeError("injected failure")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_exception_in_check_is_counted_and_loop_survives(
    start_fake: StartFake, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await two(start_fake)
    transport = RaiseOnce()
    client = httpx.AsyncClient(transport=transport)
    config = make_config(urls(a, b), prime="a")
    caplog.set_level(logging.ERROR, logger="federation_redirect.health")
    async with running(config, client=client) as e:
        await e.until("a", HealthState.HEALTHY)
        await e.until("b", HealthState.HEALTHY)
        await e.rounds("b", 1)
        transport.armed = True
        await until(lambda: sum(s.exceptions_total for s in e.stats.values()) == 1, 3, "bug")
        victim = next(name for name, s in e.stats.items() if s.exceptions_total)
        assert e.stats[victim].failures_total == {"error": 1}
        assert e.state(victim) is HealthState.HEALTHY  # an error is not the member's word
        await e.rounds(victim, 2)  # the loop goes on
        assert e.state(victim) is HealthState.HEALTHY
        assert e.registry.health(victim).reason is None
    assert not client.is_closed  # an injected client is the caller's to close
    await client.aclose()
    records = [r for r in caplog.records if r.exc_info and f"member {victim}" in r.getMessage()]
    assert len(records) == 1


async def test_exception_outside_the_round_is_counted_and_loop_survives(
    start_fake: StartFake, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await two(start_fake)
    config = make_config(urls(a, b))
    caplog.set_level(logging.ERROR, logger="federation_redirect.health")
    async with running(config) as e:
        await e.until("b", HealthState.HEALTHY)
        broken = {"armed": True}

        def listener(snapshot: Snapshot) -> None:
            if broken["armed"] and snapshot.by_name["b"].health is HealthState.UNHEALTHY:
                broken["armed"] = False
                raise RuntimeError("listener bug")

        e.registry.subscribe(listener)
        await b.set_mode("503")
        await until(lambda: e.stats["b"].exceptions_total == 1, 3, "listener bug")
        await b.set_mode("ok")
        await e.until("b", HealthState.HEALTHY, within=3)  # the loop survived
    assert any("health loop of member b" in r.getMessage() for r in caplog.records)


async def test_successful_round_is_not_repeated(start_fake: StartFake) -> None:
    a, b = await two(start_fake)
    async with running(make_config(urls(a, b))) as e:
        await e.rounds("b", 3)
        # stopped right after a round: nothing is in flight
    assert e.stats["b"].rounds_total == 3
    assert (b.counts["health"], b.counts["versions"]) == (3, 3)


async def test_engine_stop_cancels_all_tasks(start_fake: StartFake) -> None:
    a = await start_fake("a")
    b = await start_fake("b", mode="hang")
    c = await start_fake("c")
    config = make_config(urls(a, b, c), timeout=5)
    registry = Registry(config)
    engine = HealthEngine(config, registry)
    await engine.start()
    tasks = list(engine.tasks.values())
    assert len(tasks) == 3
    await until(lambda: b.counts["health"] == 1, 3, "b's hanging round")
    started = time.monotonic()
    await engine.stop()
    assert time.monotonic() - started < 0.5  # a hanging round does not hold up stop
    assert all(t.done() and t.cancelled() for t in tasks)
    assert engine.tasks == {} and engine.client.is_closed
    await engine.stop()  # idempotent

    client = httpx.AsyncClient()
    shared = HealthEngine(config, Registry(config), client=client)
    await shared.start()
    await shared.stop()
    assert not client.is_closed
    await client.aclose()


# -- the fake member the tests rely on --------------------------------------------------------


async def test_fake_member_refuses_and_resumes_on_the_same_port() -> None:
    async with await start_member("z") as z, httpx.AsyncClient() as client:
        port = z.port
        await z.set_mode("refuse")
        assert z.mode == "refuse"
        with pytest.raises(httpx.ConnectError):
            await client.get(z.url + "/health")
        await z.set_mode("ok")
        r = await client.get(z.url + "/health")
        assert (r.status_code, z.port) == (200, port)


async def test_fake_member_stops_quickly_with_a_request_hanging() -> None:
    z = await start_member("z", mode="hang")
    async with httpx.AsyncClient() as client:
        pending = asyncio.create_task(client.get(z.url + "/versions"))
        await until(lambda: z.counts["versions"] == 1, 3, "request")
        started = time.monotonic()
        await z.stop()
        assert time.monotonic() - started < 1
        assert (await pending).status_code == 503


async def test_fake_member_page_echoes_headers_and_sets_two_cookies() -> None:
    async with await start_member("z", prefix="/binder") as z, httpx.AsyncClient() as client:
        r = await client.get(
            z.url + "/about?x=1", headers={"X-Forwarded-For": "10.0.0.1", "Origin": "https://o"}
        )
        assert r.status_code == 200 and "member z" in r.text and 'id="root"' in r.text
        assert r.headers["x-echo-x-forwarded-for"] == "10.0.0.1"
        assert r.headers["x-echo-origin"] == "https://o"
        assert r.headers["x-echo-path"] == "/binder/about?x=1"
        assert len(r.headers.get_list("set-cookie")) == 2
        posted = await client.post(z.url + "/", content=b"x" * 1234)
        assert posted.headers["x-echo-body-length"] == "1234"
        launch = await client.get(z.url + "/v2/gh/o/r/HEAD")
        assert launch.text.startswith("launch at member z")
        assert dict(z.counts) == {"page": 2, "launch": 1}


def test_fake_member_runs_in_its_own_process_with_control() -> None:
    command = [sys.executable, "-m", "federation_redirect.testing", "--name", "p"]
    with subprocess.Popen(
        [*command, "--quota", "300", "--pods", "7", "--control"],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            with httpx.Client(base_url=url) as client:
                health = client.get("/health").json()
                assert health["checks"][-1]["total_pods"] == 7
                answer = client.post("/_control", json={"mode": "503", "pods": [299, 300]})
                assert answer.status_code == 200 and answer.json()["mode"] == "503"
                r = client.get("/health")
                assert r.status_code == 503 and json.loads(r.text)["checks"][-1]["quota"] == 300
                assert client.post("/_control", json={"mode": "nope"}).status_code == 400
        finally:
            proc.terminate()
            assert proc.wait(timeout=5) == 0
