"""Launch outcomes: the tracker's verdict on a fake clock, the /metrics reader on exposition
text (prometheus-client's own, with BinderHub's metric definitions), and the whole path
against real fake members on 127.0.0.1 with scrape periods and windows in tenths of a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from federation_redirect.cli import main
from federation_redirect.config import Config, parse_config
from federation_redirect.errors import CheckFailed, ConfigError
from federation_redirect.health import HealthEngine
from federation_redirect.metrics import Metrics
from federation_redirect.models import Capacity, HealthReport, HealthState
from federation_redirect.outcomes import (
    MetricsFilter,
    OutcomeCounts,
    OutcomeSettings,
    OutcomeTracker,
    Verdict,
    parse_outcomes,
    scrape_metrics,
)
from federation_redirect.policy import NO_LOAD, route
from federation_redirect.registry import Registry
from federation_redirect.state.base import report_from_json, report_to_json
from federation_redirect.testing import HUGE_METRICS_BYTES, RunningMember

from .conftest import StartFake

WINDOW = 900.0
SETTINGS = OutcomeSettings(window=WINDOW, min_attempts=10, degrade_ratio=0.5, recover_ratio=0.25)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Hub:
    """One member's cumulative counters, scraped into a tracker on a fake clock."""

    def __init__(self, settings: OutcomeSettings = SETTINGS) -> None:
        self.clock = Clock()
        self.tracker = OutcomeTracker(settings, ["hub"], clock=self.clock)
        self.ok = self.failed = self.built = self.build_failed = 0.0
        self.created: float | None = 1.7e9

    def scrape(
        self,
        ok: float = 0,
        failed: float = 0,
        *,
        after: float = 60,
        builds: tuple[int, int] = (0, 0),
    ) -> Verdict:
        """``after`` seconds later, ``ok`` and ``failed`` more launches have happened."""
        self.clock.now += after
        self.ok += ok
        self.failed += failed
        self.built += builds[0]
        self.build_failed += builds[1]
        return self.tracker.observe(
            "hub",
            OutcomeCounts(self.ok, self.failed, self.created),
            OutcomeCounts(self.built, self.build_failed, self.created),
        )

    def minutes(self, n: int, ok: float = 0, failed: float = 0) -> list[Verdict]:
        return [self.scrape(ok, failed) for _ in range(n)]

    def fail_scrape(self, after: float = 60) -> Verdict:
        self.clock.now += after
        return self.tracker.fail("hub", "http_status")


# -- the verdict --------------------------------------------------------------------------------


def test_a_member_never_scraped_has_no_ratio_and_is_not_degraded() -> None:
    verdict = Hub().tracker.verdict("hub")
    assert (verdict.degraded, verdict.launch_failure_ratio, verdict.signal) == (False, None, False)


def test_the_first_scrape_is_only_a_baseline_whatever_the_counts_since_start() -> None:
    hub = Hub()
    first = hub.scrape(ok=3, failed=5000)
    assert (first.degraded, first.launch_failure_ratio, first.launches) == (False, None, 0)
    assert first.signal


def test_the_ratio_counts_only_the_launches_within_the_window() -> None:
    hub = Hub()
    hub.scrape()
    hub.minutes(5, ok=10, failed=2)  # minutes 1-5: 10 of 60 failed, under degrade_ratio
    verdict = hub.minutes(15, ok=19, failed=1)[-1]  # minutes 6-20: the window holds 15 of them
    assert verdict.launches == 300 and verdict.launch_failures == 15
    assert verdict.launch_failure_ratio == pytest.approx(0.05)


def test_fewer_launches_than_min_attempts_give_no_ratio_and_never_degrade() -> None:
    hub = Hub()
    hub.scrape()
    nine = hub.scrape(failed=9)
    assert (nine.launch_failure_ratio, nine.degraded) == (None, False)
    ten = hub.scrape(failed=1)
    assert (ten.launch_failure_ratio, ten.degraded, ten.change) == (1.0, True, "degraded")


def test_launches_that_start_failing_degrade_once_min_attempts_of_them_have_failed() -> None:
    hub = Hub()
    hub.scrape()
    hub.minutes(15, ok=20)  # a good window: 300 launches
    still = hub.scrape(ok=0, failed=6)
    assert not still.degraded  # 6 failed launches are not min_attempts yet
    verdict = hub.scrape(ok=0, failed=6)
    # over the window 12 of 272 failed (4 %), but the newest 12 launches all failed
    assert verdict.launch_failure_ratio == pytest.approx(12 / 272)
    assert verdict.degraded and verdict.change == "degraded"
    assert "12 of 12 launches failed (100%) in the last 2 min" in verdict.detail
    assert "12 of 272 launches failed (4%) in the last 15 min" in verdict.detail


def test_one_bad_minute_of_a_member_that_often_fails_is_not_enough() -> None:
    hub = Hub()
    hub.scrape()
    assert not any(v.degraded for v in hub.minutes(15, ok=16, failed=4))  # 20 % as usual
    # 7 of this minute's 10 launches failed, but the newest 10 failures span 30 launches
    verdict = hub.scrape(ok=3, failed=7)
    assert not verdict.degraded
    assert hub.scrape(ok=0, failed=10).degraded  # the newest 10 launches all failed: news


def test_a_steady_failure_ratio_at_degrade_ratio_degrades_and_under_it_does_not() -> None:
    under = Hub()
    under.scrape()
    assert not any(v.degraded for v in under.minutes(30, ok=11, failed=9))
    at = Hub()
    at.scrape()
    assert at.minutes(2, ok=5, failed=5)[-1].degraded


def test_recovery_needs_a_whole_window_under_recover_ratio() -> None:
    hub = Hub()
    hub.scrape()
    assert hub.scrape(failed=20).degraded
    # between recover_ratio and degrade_ratio: stays degraded however long
    assert all(v.degraded for v in hub.minutes(40, ok=7, failed=3))
    # good again: the ratio falls under 25 % once the bad minutes leave the window...
    verdicts = hub.minutes(40, ok=10)
    under_at = next(i for i, v in enumerate(verdicts) if v.launch_failure_ratio < 0.25)
    recovered_at = next(i for i, v in enumerate(verdicts) if not v.degraded)
    # ...and it recovers one whole window (15 scrapes a minute apart) after that
    assert recovered_at - under_at == 15
    assert verdicts[recovered_at].change == "recovered"
    assert "under recover_ratio 25% for 15 min" in verdicts[recovered_at].detail


def test_a_bad_minute_while_recovering_restarts_the_recovery_clock() -> None:
    hub = Hub()
    hub.scrape()
    hub.scrape(failed=20)
    good = hub.minutes(5, ok=20)
    assert good[-1].launch_failure_ratio < 0.25 and good[-1].degraded  # the clock runs
    bad = hub.scrape(ok=10, failed=30)  # 50 of 160 failed in the window: over 25 % again
    assert bad.degraded and bad.launch_failure_ratio > 0.25
    verdicts = hub.minutes(40, ok=20)
    under_at = next(i for i, v in enumerate(verdicts) if v.launch_failure_ratio < 0.25)
    assert next(i for i, v in enumerate(verdicts) if not v.degraded) == under_at + 15


def test_a_degraded_member_that_gets_few_launches_recovers_unless_they_fail() -> None:
    quiet = Hub()
    quiet.scrape()
    quiet.scrape(failed=10)
    # no launches at all: once the failures have left the window (15 min), nothing says it
    # still fails, and it recovers a window later
    assert [v.degraded for v in quiet.minutes(30)][-2:] == [True, False]
    failing = Hub()
    failing.scrape()
    failing.scrape(failed=10)
    failing.minutes(15)
    # 3 launches, all failed: 3 / max(3, min_attempts) = 30 % is not under 25 %
    assert all(v.degraded for v in failing.minutes(30, failed=0.2))
    assert failing.scrape(failed=1).launch_failure_ratio is None  # too few for a ratio


def test_a_counter_that_went_down_is_a_restart_counting_from_zero() -> None:
    hub = Hub()
    hub.scrape(ok=1000)
    hub.scrape(ok=100)
    hub.ok, hub.failed = 0, 0  # the hub restarted...
    verdict = hub.scrape(ok=2, failed=10)  # ...and 12 launches happened since
    assert (verdict.launches, verdict.launch_failures) == (112, 10)


def test_a_new_created_time_is_a_restart_even_when_the_counts_grew() -> None:
    hub = Hub()
    hub.scrape(ok=10)
    hub.ok, hub.failed = 0, 0
    hub.created = 1.8e9  # restarted, and by now more launches than before the restart
    verdict = hub.scrape(ok=30, failed=30)
    assert (verdict.launches, verdict.launch_failures) == (60, 30)
    assert verdict.degraded


def test_two_failed_scrapes_change_nothing_and_the_third_drops_the_signal() -> None:
    hub = Hub()
    hub.scrape()
    hub.scrape(failed=30)
    assert [hub.fail_scrape().degraded for _ in range(2)] == [True, True]
    lost = hub.fail_scrape()
    assert (lost.degraded, lost.change, lost.signal, lost.launch_failure_ratio) == (
        False,
        "lost",
        False,
        None,
    )
    assert "unavailable for 3 scrapes in a row (http_status)" in lost.detail
    back = hub.scrape(failed=30)  # a baseline again: 30 more failures since do not count
    assert (back.degraded, back.launches) == (False, 0)


def test_a_gap_longer_than_the_window_starts_a_new_baseline() -> None:
    hub = Hub()
    hub.scrape()
    verdict = hub.scrape(failed=100, after=WINDOW + 1)
    assert (verdict.launches, verdict.degraded) == (0, False)
    assert hub.scrape(ok=12).launches == 12


def test_build_failures_are_measured_but_never_degrade() -> None:
    hub = Hub()
    hub.scrape()
    verdict = hub.scrape(ok=20, builds=(2, 18))
    assert verdict.build_failure_ratio == pytest.approx(0.9)
    assert (verdict.builds, verdict.build_failures, verdict.degraded) == (20, 18, False)
    assert "18 of 20 builds failed (90%)" in verdict.detail


def test_an_adopted_degraded_state_clears_only_after_a_good_window() -> None:
    hub = Hub()
    hub.tracker.adopt("hub", True)
    assert hub.tracker.verdict("hub").degraded
    hub.scrape()  # the recovery clock starts with this first scrape: no failure seen
    verdicts = hub.minutes(15, ok=20)
    assert [v.degraded for v in verdicts][-2:] == [True, False]
    hub.tracker.adopt("hub", True)
    assert not [hub.fail_scrape() for _ in range(3)][-1].degraded  # no signal: not degraded


# -- reading /metrics -----------------------------------------------------------------------------


def binderhub_registry() -> tuple[CollectorRegistry, Histogram, Histogram, Counter]:
    """BinderHub's own metric definitions (binderhub/builder.py), in its order."""
    registry = CollectorRegistry()
    build_time = Histogram(
        "binderhub_build_time_seconds",
        "Histogram of build times",
        ["status"],
        buckets=[60, 120, 300, 600, 1800, 3600, 7200, math.inf],
        registry=registry,
    )
    launch_time = Histogram(
        "binderhub_launch_time_seconds",
        "Histogram of launch times",
        ["status", "retries"],
        buckets=[2, 5, 10, 20, 30, 60, 120, 300, 600, math.inf],
        registry=registry,
    )
    launch_count = Counter(
        "binderhub_launch_count",
        "Counter of launches by repo",
        ["status", "provider", "repo"],
        registry=registry,
    )
    return registry, build_time, launch_time, launch_count


def binderhub_exposition(repos: int = 50, *, openmetrics: bool = False) -> bytes:
    registry, build_time, launch_time, launch_count = binderhub_registry()
    for _ in range(7):
        launch_time.labels(status="success", retries=0).observe(4)
    launch_time.labels(status="success", retries=2).observe(40)
    for _ in range(3):  # each failed launch: 3 retries, then the failure
        for _ in range(3):
            launch_time.labels(status="retry", retries=-1).observe(30)
        launch_time.labels(status="failure", retries=-1).observe(30)
    build_time.labels(status="success").observe(100)
    build_time.labels(status="failure").observe(100)
    for i in range(repos):
        launch_count.labels(status="success", provider="GitHub", repo=f"https://x/{i}").inc()
    return (generate_openmetrics if openmetrics else generate_latest)(registry)


def read(body: bytes, chunk: int = 7, *, ended: bool = True) -> tuple[Any, Any, MetricsFilter]:
    kept = MetricsFilter()
    for start in range(0, len(body), chunk):
        if kept.feed(body[start : start + chunk]):
            ended = False
            break
    launches, builds = parse_outcomes(kept.text(body_ended=ended))
    return launches, builds, kept


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text-0.0.4", "openmetrics"])
def test_binderhubs_own_exposition_is_read_with_retries_ignored(openmetrics: bool) -> None:
    launches, builds, _ = read(binderhub_exposition(openmetrics=openmetrics))
    assert (launches.success, launches.failure) == (8, 3)
    assert (builds.success, builds.failure) == (1, 1)
    assert launches.created is not None and abs(launches.created - time.time()) < 60


def test_reading_stops_once_both_histograms_have_gone_by() -> None:
    body = binderhub_exposition(repos=5000)
    launches, _, kept = read(body, chunk=4096)
    assert launches.success == 8
    assert kept.done and kept.bytes_read < 16384 < len(body)


def test_a_histogram_cut_short_by_the_byte_cap_is_not_used() -> None:
    body = binderhub_exposition()
    cut = body.index(b'binderhub_launch_time_seconds_count{retries="-1"')
    launches, builds, _ = read(body[:cut], ended=False)
    assert launches is None and builds is not None


@pytest.mark.parametrize("body", [b"", b"# TYPE up gauge\nup 1\n", b"<html>binderhub</html>"])
def test_histograms_absent_from_a_body_read_to_its_end_are_none(body: bytes) -> None:
    launches, builds, _ = read(body)
    assert (launches, builds) == (None, None)


def test_an_empty_histogram_means_no_launches_yet_not_no_signal() -> None:
    registry, *_ = binderhub_registry()
    launches, _, _ = read(generate_latest(registry))
    assert launches == OutcomeCounts(0.0, 0.0, None)


def test_over_long_lines_and_any_chunking_are_survived() -> None:
    noise = b'binderhub_launch_count_total{repo="' + b"x" * 20000 + b'"} 1.0\n'
    body = b"# HELP a\n" + noise + binderhub_exposition(repos=0) + noise
    for chunk in (1, 3, 4096, 65536):
        launches, _, _ = read(body, chunk=chunk)
        assert (launches.success, launches.failure) == (8, 3), chunk


@pytest.mark.parametrize(
    "line",
    [
        b'binderhub_launch_time_seconds_count{status="success"} many\n',
        b'binderhub_launch_time_seconds_count{status="success"} -3.0\n',
        b'binderhub_launch_time_seconds_count{status="success"} NaN\n',
        b'binderhub_launch_time_seconds_count{status="success" 3\n',
    ],
)
def test_counts_that_are_not_counts_are_refused(line: bytes) -> None:
    body = b"# TYPE binderhub_launch_time_seconds histogram\n" + line
    with pytest.raises(ValueError):
        read(body)


def test_kept_lines_are_bounded() -> None:
    line = b'binderhub_launch_time_seconds_count{status="success",n="%d"} 1.0\n'
    body = b"".join(line % i for i in range(3000))
    with pytest.raises(ValueError, match="bytes of launch and build samples"):
        read(body, chunk=65536)


# -- scraping real fake members -----------------------------------------------------------------


async def scrape(member: RunningMember, *, max_bytes: int = 4 << 20, limit: float = 5.0) -> Any:
    async with httpx.AsyncClient() as client:
        return await scrape_metrics(
            client, member.url + "/metrics", time_limit=limit, max_bytes=max_bytes
        )


async def test_a_fake_binderhubs_counts_grow_and_only_its_first_kilobytes_are_read(
    start_fake: StartFake,
) -> None:
    member = await start_fake("a", noise_repos=100_000)  # about 20 MB of per-repo counters
    member.outcomes.add(success=12, failure=3, build_success=2, build_failure=1)
    scraped = await scrape(member)
    assert (scraped.launches.success, scraped.launches.failure) == (12, 3)
    assert (scraped.builds.success, scraped.builds.failure) == (2, 1)
    assert scraped.bytes_read < 300_000 and not scraped.capped  # of about 20 MB
    member.outcomes.restart()
    member.outcomes.add(failure=1)
    again = await scrape(member)
    assert again.launches.failure == 1 and again.launches.created > scraped.launches.created


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("404", "http_status"), ("garbage", "bad_response"), ("huge", "bad_response")],
)
async def test_unusable_metrics_fail_with_the_health_checks_reasons_in_bounded_time_and_memory(
    start_fake: StartFake, mode: Any, reason: str
) -> None:
    member = await start_fake("a", metrics_mode=mode)
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(CheckFailed) as failed:
            await scrape(member, max_bytes=4 << 20)
        took = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert failed.value.reason == reason
    # the 20 MiB body: 4 MiB read (the cap), in well under a second without tracemalloc;
    # peak memory (of the whole process, fake member included) a small fraction of the body
    assert took < 3 and peak < HUGE_METRICS_BYTES / 4, (took, peak)
    if mode == "huge":
        assert "in the first 4194304 bytes" in failed.value.detail


async def test_a_hanging_metrics_endpoint_costs_the_scrape_timeout(start_fake: StartFake) -> None:
    member = await start_fake("a", metrics_mode="hang")
    started = time.monotonic()
    with pytest.raises(CheckFailed) as failed:
        await scrape(member, limit=0.3)
    assert failed.value.reason == "timeout"
    assert 0.29 < time.monotonic() - started < 1.0


async def test_a_refused_connection_is_a_connect_failure(start_fake: StartFake) -> None:
    member = await start_fake("a")
    await member.refuse()
    with pytest.raises(CheckFailed) as failed:
        await scrape(member)
    assert failed.value.reason == "connect"


# -- the engine, the registry and everything that shows the verdict ------------------------------


def engine_config(
    urls: dict[str, str], hosts: dict[str, dict[str, Any]] | None = None, **outcomes: Any
) -> Config:
    return parse_config(
        {
            "hosts": {
                name: {"url": url, "prime": i == 0, **(hosts or {}).get(name, {})}
                for i, (name, url) in enumerate(urls.items())
            },
            "load_balancer": "rendezvous",
            "check": {"period": 0.5, "jitter": 0, "timeout": 0.5},
            "outcomes": {
                "scrape_period": 0.25,
                "window_minutes": 0.02,  # 1.2 s
                "scrape_timeout": 0.3,
                **outcomes,
            },
        }
    )


async def wait_for(condition: Any, timeout: float) -> float:
    """Poll ``condition()`` every 10 ms; the monotonic time it first held (fails on timeout)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
    return time.monotonic()


async def test_failing_launches_degrade_a_member_within_two_scrapes_and_it_recovers_after_a_window(
    start_fake: StartFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="federation_redirect.outcomes")
    prime = await start_fake("a")
    member = await start_fake("b", noise_repos=2000)
    member.outcomes.set_rates(success=50)
    config = engine_config({"a": prime.url, "b": member.url}, {"a": {"metrics": None}})
    registry = Registry(config)
    engine = HealthEngine(config, registry)
    period, window = 0.25, 1.2
    await engine.start()
    try:
        await wait_for(lambda: registry.health("b").launch_failure_ratio == 0.0, 2)
        await asyncio.sleep(window)  # a whole window of good launches
        assert not registry.health("b").degraded
        member.outcomes.set_rates(failure=50)
        tenth_failure = time.monotonic() + 10 / 50  # min_attempts failed launches by then
        degraded_at = await wait_for(lambda: registry.health("b").degraded, 2)
        assert degraded_at - tenth_failure < 2 * period + 0.1
        snapshot = registry.snapshot
        assert snapshot.by_name["b"].degraded and snapshot.by_name["b"].weight == 0.1
        assert snapshot.by_name["b"].routable  # still healthy and a candidate
        rendered = Metrics(registry).render().decode()
        assert 'federation_member_degraded{member="b"} 1.0' in rendered
        assert 'federation_member_launch_failure_ratio{member="b"}' in rendered
        assert 'federation_member_launch_failure_ratio{member="a"}' not in rendered
        member.outcomes.set_rates(success=50)
        good_again = time.monotonic()
        recovered_at = await wait_for(lambda: not registry.health("b").degraded, 4 * window)
        assert window <= recovered_at - good_again < 2 * window + 3 * period
        assert registry.snapshot.by_name["b"].weight == 1.0
        assert registry.health("a").launch_failure_ratio is None
    finally:
        await engine.stop()
    changes = [
        r.getMessage()
        for r in caplog.records
        if r.name == "federation_redirect.outcomes" and r.levelno == logging.WARNING
    ]
    assert len(changes) == 2
    assert changes[0].startswith("member b: degraded, weight x0.1: ")
    assert "launches failed (100%) in the last" in changes[0]
    assert changes[1].startswith("member b: no longer degraded: under recover_ratio 25%")


async def test_members_without_usable_metrics_are_never_degraded_and_cost_bounded_time(
    start_fake: StartFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="federation_redirect.outcomes")
    members = {
        "none": await start_fake("none"),
        "missing": await start_fake("missing", metrics_mode="404"),
        "garbage": await start_fake("garbage", metrics_mode="garbage"),
        "huge": await start_fake("huge", metrics_mode="huge"),
        "hang": await start_fake("hang", metrics_mode="hang"),
    }
    for m in members.values():
        m.outcomes.set_rates(failure=100)  # what /metrics would say, if it could be read
    urls = {name: m.url for name, m in members.items()}
    config = engine_config(urls, {"none": {"metrics": None}}, max_bytes=1 << 20)
    registry = Registry(config)
    engine = HealthEngine(config, registry)
    await engine.start()
    try:
        await asyncio.sleep(1.5)
        for name in urls:
            report = registry.health(name)
            assert report.state is HealthState.HEALTHY, name
            assert (report.degraded, report.launch_failure_ratio) == (False, None), name
        assert members["none"].counts["metrics"] == 0
        assert all(members[n].counts["metrics"] >= 2 for n in urls if n != "none")
        for name in ("missing", "garbage", "huge", "hang"):
            started = time.monotonic()
            verdict = await engine.scrape(name)
            assert time.monotonic() - started < 0.6, name  # scrape_timeout 0.3 s, cap 1 MiB
            assert not verdict.degraded and not verdict.signal
        assert all(s.exceptions_total == 0 for s in engine.stats.values())
    finally:
        await engine.stop()
    told = [r.getMessage() for r in caplog.records]
    for name in ("missing", "garbage", "huge", "hang"):  # said once each, not every scrape
        assert sum(m.startswith(f"member {name}: no launch outcomes") for m in told) == 1


async def test_pausing_the_engine_stops_its_scrapes(start_fake: StartFake) -> None:
    member = await start_fake("a")
    config = engine_config({"a": member.url})
    engine = HealthEngine(config, Registry(config))
    await engine.start()
    await wait_for(lambda: member.counts["metrics"] >= 2, 2)
    await engine.pause()
    seen = member.counts["metrics"]
    await asyncio.sleep(0.6)
    assert member.counts["metrics"] == seen
    await engine.stop()


async def test_a_checker_that_takes_over_keeps_a_degraded_member_degraded(
    start_fake: StartFake,
) -> None:
    member = await start_fake("a")
    config = engine_config({"a": member.url}, window_minutes=1)
    registry = Registry(config)
    registry.report("a", HealthReport(state=HealthState.HEALTHY, degraded=True))
    engine = HealthEngine(config, registry)
    await engine.start()
    try:
        await wait_for(lambda: registry.reported("a").checked_at is not None, 2)
        await asyncio.sleep(0.6)  # a couple of scrapes of good launches: not a whole window
        assert registry.reported("a").degraded
    finally:
        await engine.stop()


def registry_of(*names: str, **top: Any) -> Registry:
    hosts = {n: {"url": f"https://{n}.example", "prime": i == 0} for i, n in enumerate(names)}
    return Registry(parse_config({"hosts": hosts, **top}))


def report(degraded: bool, pods: int = 40, ratio: float | None = None) -> HealthReport:
    return HealthReport(
        state=HealthState.HEALTHY,
        capacity=Capacity(quota=100, pods=pods),
        degraded=degraded,
        launch_failure_ratio=ratio,
    )


def test_a_degraded_member_keeps_routing_with_its_weight_scaled_and_its_pods_as_limit() -> None:
    registry = registry_of("a", "b", "c")
    registry.report("a", report(False))
    registry.report("b", report(True, pods=40, ratio=0.8))
    registry.report("c", report(False))
    b = registry.snapshot.by_name["b"]
    a = registry.snapshot.by_name["a"]
    assert b.degraded and b.routable and b.honours_cookie
    assert b.weight == pytest.approx(a.weight * 0.1)
    assert (a.limit, b.limit) == (90, 40)  # quota - pod_headroom; b: what it holds
    assert registry.health("b").degraded and registry.health("b").launch_failure_ratio == 0.8
    registry.report("b", report(False))
    assert not registry.snapshot.by_name["b"].degraded
    assert registry.snapshot.by_name["b"].weight == a.weight


def test_if_every_serving_member_is_degraded_none_is(caplog: pytest.LogCaptureFixture) -> None:
    registry = registry_of("a", "b")
    registry.report("a", report(True))
    registry.report("b", report(False))
    assert registry.snapshot.by_name["a"].degraded
    registry.report("b", report(True))
    assert not any(m.degraded for m in registry.snapshot.members)
    assert registry.snapshot.by_name["a"].weight == registry.snapshot.by_name["b"].weight
    assert not registry.health("a").degraded and registry.reported("a").degraded
    assert "none counts as degraded" in caplog.text
    registry.report("b", HealthReport(state=HealthState.UNHEALTHY, degraded=True))
    assert not registry.snapshot.by_name["a"].degraded  # a alone is routable, and degraded
    registry.report("b", report(False))
    assert registry.snapshot.by_name["a"].degraded


def test_a_full_member_that_launches_keeps_a_failing_one_degraded() -> None:
    # b is full (95 of 100 pods, headroom 10): not routable, but its launches succeed
    # whenever its sessions end, so a failing a stays the last resort
    registry = registry_of("a", "b")
    registry.report("a", report(True, pods=0, ratio=1.0))
    registry.report("b", replace(report(False, pods=95), full=True))
    snap = registry.snapshot
    assert not snap.by_name["b"].routable and snap.by_name["b"].serving
    assert snap.by_name["a"].degraded
    for i in range(50):
        decision = route(snap, f"gh:org/repo-{i}", loads=NO_LOAD)
        assert decision is not None and decision.member.name == "b"


def test_the_verdict_travels_in_the_shared_health_report() -> None:
    original = report(True, ratio=0.75)
    copied = report_from_json(report_to_json(original), now=5.0)
    assert (copied.degraded, copied.launch_failure_ratio) == (True, 0.75)
    older = json.loads(report_to_json(original))
    del older["degraded"], older["launch_failure_ratio"]  # from a replica without outcomes
    parsed = report_from_json(json.dumps(older), now=5.0)
    assert (parsed.degraded, parsed.launch_failure_ratio) == (False, None)
    for odd in (2, -0.1, "0.5", True):
        older["launch_failure_ratio"] = odd
        assert report_from_json(json.dumps(older), now=5.0).launch_failure_ratio is None


def test_outcome_settings_and_metrics_urls_are_validated() -> None:
    config = parse_config({"hosts": {"a": {"url": "https://a.example/", "prime": True}}})
    assert config.hosts["a"].metrics == "https://a.example/metrics"
    assert config.outcomes.model_dump() == {
        "enabled": True,
        "scrape_period": 60,
        "window_minutes": 15,
        "min_attempts": 10,
        "degrade_ratio": 0.5,
        "recover_ratio": 0.25,
        "weight_factor": 0.1,
        "scrape_timeout": 10,
        "max_bytes": 4194304,
    }
    off = parse_config(
        {"hosts": {"a": {"url": "https://a.example", "prime": True, "metrics": None}}}
    )
    assert off.hosts["a"].metrics is None
    with pytest.raises(ConfigError) as bad:
        parse_config(
            {
                "hosts": {"a": {"url": "https://a.example", "prime": True, "metrics": "ftp://x"}},
                "outcomes": {"weight_factor": 0, "recover_ratio": 0.6, "min_attempts": 0},
            }
        )
    assert "hosts.a.metrics: must be an http:// or https:// URL" in bad.value.problems
    assert "outcomes.weight_factor: must be > 0" in bad.value.problems
    assert "outcomes.min_attempts: must be >= 1" in bad.value.problems
    with pytest.raises(ConfigError) as order:
        parse_config(
            {
                "hosts": {"a": {"url": "https://a.example", "prime": True}},
                "outcomes": {"recover_ratio": 0.6},
            }
        )
    assert order.value.problems == ["outcomes: recover_ratio must be <= degrade_ratio"]


def test_route_shows_a_degraded_member_with_its_weight_scaled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.json"
    hosts = {
        "alpha": {"url": "https://alpha.example", "weight": 50, "prime": True},
        "beta": {"url": "https://beta.example", "weight": 50},
    }
    path.write_text(json.dumps({"hosts": hosts, "load_balancer": "rendezvous"}))
    url = "https://mybinder.org/v2/gh/org/repo/HEAD"
    args = ["route", "--config", str(path), "--degraded", "beta", url]
    assert main([*args, "--json"]) == 0
    ranking = {r["member"]: r for r in json.loads(capsys.readouterr().out)[0]["ranking"]}
    assert (ranking["beta"]["degraded"], ranking["beta"]["weight"]) == (True, 5)
    assert (ranking["alpha"]["degraded"], ranking["alpha"]["weight"]) == (False, 50)
    assert main(args) == 0
    assert "(degraded: launches failing, weight scaled down)" in capsys.readouterr().out
    assert main(["route", "--config", str(path), "--degraded", "nobody", url]) == 2
    assert "--degraded 'nobody': no such member" in capsys.readouterr().err
