"""Every metric federation-redirect exports, in one place.

Per-member state (health, capacity, weight) is computed at scrape time by a custom collector
from the registry's current snapshot, so a member that changed state never leaves a stale
series behind (the production app's gauges kept a ``1`` for a member that had gone down).
Counters that the hot path bumps are plain integers in dicts owned by this module and exported
by the same collector: one event loop, so no lock is needed and the cost per redirect is one
dict update.

Names kept from the production app so existing dashboards keep working:
``federation_health{member,reason}``, ``federation_health_check{member,check}`` and
``federation_redirect_count{member,reason}``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import __version__
from .models import HealthState, OperatorState
from .registry import Registry

__all__ = [
    "CONTENT_TYPE",
    "CheckStats",
    "LatencyHistogram",
    "Metrics",
    "ProxyCounters",
    "RedirectCounters",
    "RedirectWindow",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. A redirect takes tens of microseconds; a proxied page tens of milliseconds.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip


class CheckStats(Protocol):
    """What the health engine counts per member (see health.MemberCheckStats)."""

    rounds_total: int
    failures_total: dict[str, int]
    exceptions_total: int
    last_duration_seconds: float | None


class StoreView(Protocol):
    """What the metrics read of the state store."""

    @property
    def shared(self) -> bool: ...
    @property
    def up(self) -> bool: ...
    @property
    def checker(self) -> bool: ...
    @property
    def replicas(self) -> int: ...
    @property
    def version(self) -> int: ...


class RedirectWindow:
    """Redirects per member over the last ``window`` seconds (the operator API's "share").

    Time is cut into ``slots`` slots of ``window / slots`` seconds each; :meth:`add` counts
    into the current slot (one clock read, one dict update) and :meth:`counts` sums the slots
    that are still in the window, so the figures cover between ``window - window / slots`` and
    ``window`` seconds. ``clock`` is monotonic seconds.
    """

    __slots__ = ("_clock", "_slot_seconds", "_slots", "_stamps", "window")

    def __init__(self, clock: Callable[[], float], window: float = 300.0, slots: int = 60) -> None:
        self.window = window
        self._clock = clock
        self._slot_seconds = window / slots
        self._stamps = [-1] * slots
        self._slots: list[dict[str, int]] = [{} for _ in range(slots)]

    def add(self, member: str) -> None:
        stamp = int(self._clock() // self._slot_seconds)
        index = stamp % len(self._slots)
        if self._stamps[index] != stamp:
            self._stamps[index] = stamp
            self._slots[index] = {}
        slot = self._slots[index]
        slot[member] = slot.get(member, 0) + 1

    def counts(self) -> dict[str, int]:
        """Redirects per member within the window (members with none are absent)."""
        now = int(self._clock() // self._slot_seconds)
        oldest = now - len(self._slots)
        total: dict[str, int] = {}
        for stamp, slot in zip(self._stamps, self._slots, strict=True):
            if oldest < stamp <= now:
                for member, n in slot.items():
                    total[member] = total.get(member, 0) + n
        return total


class RedirectCounters:
    """Redirects per (member, reason) since start, and per member over the last 5 minutes
    when a ``window`` is given. Incremented on the hot path."""

    __slots__ = ("counts", "window")

    def __init__(self, window: RedirectWindow | None = None) -> None:
        self.counts: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.window = window

    def inc(self, member: str, reason: str) -> None:
        self.counts[member, reason] += 1
        if self.window is not None:
            self.window.add(member)


class ProxyCounters:
    """Proxied home-page requests per (member, outcome)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: defaultdict[tuple[str, str], int] = defaultdict(int)

    def inc(self, member: str, outcome: str) -> None:
        self.counts[member, outcome] += 1


@dataclass
class _Series:
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0


class LatencyHistogram:
    """Request duration per route kind, in seconds, with fixed buckets."""

    __slots__ = ("series",)

    def __init__(self) -> None:
        self.series: dict[str, _Series] = {}

    def observe(self, route: str, seconds: float) -> None:
        s = self.series.get(route)
        if s is None:
            s = self.series[route] = _Series()
        s.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        s.total += seconds
        s.count += 1


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._m.families()


class Metrics:
    """Holds the hot-path counters and renders everything for ``/metrics``."""

    def __init__(
        self,
        registry: Registry,
        check_stats: Callable[[], Mapping[str, CheckStats]] = dict,
        store: StoreView | None = None,
    ) -> None:
        self.registry = registry
        self.store = store
        self.check_stats = check_stats
        self.recent = RedirectWindow(registry.clock)
        self.redirects = RedirectCounters(self.recent)
        self.proxied = ProxyCounters()
        self.latency = LatencyHistogram()
        self._prom = CollectorRegistry(auto_describe=False)
        self._prom.register(_Collector(self))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self._prom)

    def families(self) -> Iterator[Metric]:
        reg = self.registry
        snap = reg.snapshot
        members = snap.members

        info = GaugeMetricFamily(
            "federation_info", "Build and routing information.", labels=["version", "strategy"]
        )
        info.add_metric([__version__, str(snap.strategy)], 1)
        yield info

        health = GaugeMetricFamily(
            "federation_health",
            "Overall health of each member: 1 healthy, 0 not. 'reason' is why it is not"
            " ('unknown' before its first check). One series per member, never stale.",
            labels=["member", "reason"],
        )
        per_check = GaugeMetricFamily(
            "federation_health_check",
            "Each BinderHub service check of each member (and 'versions'): 1 ok, 0 failed.",
            labels=["member", "check"],
        )
        state = GaugeMetricFamily(
            "federation_member_state",
            "Health state of each member, one-hot over unknown/healthy/unhealthy.",
            labels=["member", "state"],
        )
        op_state = GaugeMetricFamily(
            "federation_member_operator_state",
            "Operator state of each member, one-hot over ready/drain/maint.",
            labels=["member", "state"],
        )
        routable = GaugeMetricFamily(
            "federation_member_routable",
            "1 if the member is a candidate for new repositories now.",
            labels=["member"],
        )
        full = GaugeMetricFamily(
            "federation_member_full",
            "1 if the member is within pod_headroom of its quota (healthy but not a candidate).",
            labels=["member"],
        )
        weight = GaugeMetricFamily(
            "federation_member_weight",
            "Effective routing weight of each member.",
            labels=["member"],
        )
        quota = GaugeMetricFamily(
            "federation_member_quota_pods",
            "Pod quota each member reports (absent when unlimited or unknown).",
            labels=["member"],
        )
        pods = GaugeMetricFamily(
            "federation_member_pods",
            "Pods each member last reported running.",
            labels=["member"],
        )
        free = GaugeMetricFamily(
            "federation_member_free_slots",
            "Pods each member can still start before it counts as full.",
            labels=["member"],
        )
        last_check = GaugeMetricFamily(
            "federation_health_check_last_timestamp_seconds",
            "Wall-clock time of each member's last completed health check round.",
            labels=["member"],
        )
        failure_ratio = GaugeMetricFamily(
            "federation_member_launch_failure_ratio",
            "Share of each member's launches that failed over outcomes.window_minutes, from its"
            " own /metrics (absent: no signal, or fewer than outcomes.min_attempts launches).",
            labels=["member"],
        )
        degraded = GaugeMetricFamily(
            "federation_member_degraded",
            "1 if the member's launches are failing and its weight is scaled by"
            " outcomes.weight_factor (still healthy and checked).",
            labels=["member"],
        )
        headroom = reg.config.pod_headroom
        for m in members:
            report = reg.health(m.name)
            # what the checks say, even while panic keeps a member routable (panic.py)
            healthy = report.state is HealthState.HEALTHY
            reason = "" if healthy else (report.reason or str(report.state))
            health.add_metric([m.name, reason], 1 if healthy else 0)
            for check, ok in report.checks.items():
                per_check.add_metric([m.name, check], 1 if ok else 0)
            for hs in HealthState:
                state.add_metric([m.name, str(hs)], 1 if report.state is hs else 0)
            for o in OperatorState:
                op_state.add_metric([m.name, str(o)], 1 if m.operator is o else 0)
            routable.add_metric([m.name], 1 if m.routable else 0)
            full.add_metric([m.name], 1 if m.full else 0)
            weight.add_metric([m.name], m.weight)
            cap = m.capacity
            if cap.quota is not None:
                quota.add_metric([m.name], cap.quota)
                free_slots = cap.free_slots(headroom)
                if free_slots is not None and cap.pods is not None:
                    free.add_metric([m.name], free_slots)
            if cap.pods is not None:
                pods.add_metric([m.name], cap.pods)
            if report.checked_at is not None:
                last_check.add_metric([m.name], report.checked_at)
            if report.launch_failure_ratio is not None:
                failure_ratio.add_metric([m.name], report.launch_failure_ratio)
            degraded.add_metric([m.name], 1 if m.degraded else 0)
        yield from (health, per_check, state, op_state, routable, full, weight)
        yield from (quota, pods, free, last_check, failure_ratio, degraded)

        fallback = GaugeMetricFamily(
            "federation_fallback_active",
            "1 while no member is routable and launches go to the fallback (prime) members.",
        )
        fallback.add_metric([], 1 if reg.first_round_done and not snap.candidates else 0)
        yield fallback
        panic = GaugeMetricFamily(
            "federation_panic",
            "1 while every member fell at once through transport failures and launches still go"
            " to them (this redirector's own network is the likelier culprit; see"
            " check.panic_grace_seconds).",
        )
        panic.add_metric([], 1 if reg.panic.active else 0)
        yield panic
        ready = GaugeMetricFamily(
            "federation_ready",
            "1 when /readyz answers ready (first round done and a member routable).",
        )
        ready.add_metric([], 1 if reg.ready else 0)
        yield ready

        if self.store is not None:
            yield from self._store_families(self.store)

        legacy = GaugeMetricFamily(
            "federation_redirect_count",
            "Requests redirected to each member since start, by reason (kept for old dashboards;"
            " prefer federation_redirects_total).",
            labels=["member", "reason"],
        )
        total = CounterMetricFamily(
            "federation_redirects",
            "Requests redirected to each member since start, by decision reason.",
            labels=["member", "reason"],
        )
        for (member, why), count in sorted(self.redirects.counts.items()):
            legacy.add_metric([member, why], count)
            total.add_metric([member, why], count)
        yield legacy
        yield total

        proxied = CounterMetricFamily(
            "federation_proxy_requests",
            "Home-page requests proxied, by member tried and outcome"
            " (ok, failed: tried the next member).",
            labels=["member", "outcome"],
        )
        for (member, outcome), count in sorted(self.proxied.counts.items()):
            proxied.add_metric([member, outcome], count)
        yield proxied

        rounds = CounterMetricFamily(
            "federation_health_check_rounds", "Health check rounds per member.", labels=["member"]
        )
        failures = CounterMetricFamily(
            "federation_health_check_failures",
            "Failed health check rounds per member and reason.",
            labels=["member", "reason"],
        )
        errors = CounterMetricFamily(
            "federation_health_check_errors",
            "Unexpected exceptions inside a member's health check (logged; the loop survives).",
            labels=["member"],
        )
        duration = GaugeMetricFamily(
            "federation_health_check_duration_seconds",
            "Duration of each member's last health check round.",
            labels=["member"],
        )
        for name, st in sorted(self.check_stats().items()):
            rounds.add_metric([name], st.rounds_total)
            for why, count in sorted(st.failures_total.items()):
                failures.add_metric([name, why], count)
            errors.add_metric([name], st.exceptions_total)
            if st.last_duration_seconds is not None:
                duration.add_metric([name], st.last_duration_seconds)
        yield from (rounds, failures, errors, duration)

        latency = HistogramMetricFamily(
            "federation_request_duration_seconds",
            "Time to answer a request, by route kind (launch, build, badge, proxy, preflight); "
            "for launches and builds, to decide, count and build the answer.",
            labels=["route"],
        )
        for route, s in sorted(self.latency.series.items()):
            cumulative = 0
            buckets = []
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), s.buckets, strict=True):
                cumulative += n
                buckets.append((_le(bound), cumulative))
            latency.add_metric([route], buckets, s.total)
        yield latency

    @staticmethod
    def _store_families(store: StoreView) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "federation_state_store_up",
            "1 while the state store answers (always 1 for the in-memory store).",
            labels=["store"],
        )
        up.add_metric(["redis" if store.shared else "memory"], 1 if store.up else 0)
        checker = GaugeMetricFamily(
            "federation_state_store_checker", "1 if this replica runs the health checks now."
        )
        checker.add_metric([], 1 if store.checker else 0)
        replicas = GaugeMetricFamily(
            "federation_state_store_replicas", "Replicas of the redirector seen recently."
        )
        replicas.add_metric([], store.replicas)
        version = GaugeMetricFamily(
            "federation_overrides_version", "Version of the operator overrides in effect here."
        )
        version.add_metric([], store.version)
        yield from (up, checker, replicas, version)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
