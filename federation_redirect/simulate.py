"""Replaying a launch trace through the real routing code, to compare routing policies.

:func:`simulate` feeds every launch of a trace to :func:`federation_redirect.policy.route`, with
the routing view built by the server's own :class:`~federation_redirect.registry.Registry`
(on a simulated clock) and the server's own :class:`~federation_redirect.load.LoadTracker`
(``registry.loads``), exactly as the front door does: route, redirect, ``loads.record``. The
policy code is not copied or changed; only the members are simulated.

Policies
--------
``bounded``, ``rendezvous`` and ``random`` run the configuration as given with its
``load_balancer`` replaced. ``rendezvous-capacity`` is ``rendezvous`` with each member's weight
replaced by ``quota x weight`` in a copy of the configuration (a member without a ``quota``
gets the mean of the others', as the registry does for ``bounded``): sticky hashing with
capacity weights but no load bounds. ``random`` draws from ``random.Random`` seeded with
``--seed``.

Member model (the same for every policy)
----------------------------------------
* **Capacity.** A member holds at most ``quota`` (its config entry) user pods; no quota: no
  limit. Each accepted launch holds one pod for a session length drawn once per launch from
  the configured distribution (``exponential`` by default, mean ``session_minutes``;
  ``lognormal`` with sigma 0.8, or ``fixed``), so every policy replays the same sessions.
  Build pods are not modelled.
* **Refusals.** As BinderHub does, a member refuses a launch when it already runs ``quota``
  pods (``rejected_quota``), or when it already runs ``routing.per_repo_cap`` sessions of that
  repository (its ``per_repo_quota``: ``rejected_repo_cap``), or while it is failed
  (``rejected_unavailable``; only a fallback decision can send one there). A refused launch
  holds no pod and warms no cache; it is not retried.
* **Cache.** A member is *warm* for a repository if it accepted a launch of it within
  ``cache_hours`` (its image is built and pulled there); an accepted launch on a warm member
  is a *cache hit*. Every other launch, refused ones included, is a *miss*. Caches start
  cold.
* **What the policy sees.** Each member reports ``HealthReport(HEALTHY, Capacity(quota,
  pods, now), full=pods + pod_headroom >= quota)`` every ``report_seconds``, member *i* of
  *n* offset by ``i/n`` of that period (all report once when the trace starts). Between
  reports the policy knows only its own redirects (``registry.loads.record``). Every
  simulated second the server's housekeeping runs: ``loads.expire(now)`` and
  ``registry.tick()``. No cookies: every launch is a fresh visitor.
* **Failures** (``Outage``: member, start and end minute). At the start the member is
  reported ``UNHEALTHY`` and refuses launches; its running sessions carry on until they end
  and its cache stays warm (a failing health check, such as a registry or hub API outage,
  does not stop running pods). At the end it is reported healthy again and returns through
  the registry's slow start.
* **Failing launches** (``Degradation``: member, start and end minute, failure ratio). In the
  window the member stays healthy (every check passes) but each launch it accepts fails with
  that probability (a draw per launch, seeded by ``seed`` and the launch's index, so runs
  compare launch for launch): a failed launch holds no pod and warms no cache, and counts in
  ``failed_launches``. Each member counts its launch outcomes as BinderHub does, and unless
  outcomes are off (``Options.outcomes`` or ``outcomes.enabled``) they feed the server's own
  :class:`~federation_redirect.outcomes.OutcomeTracker` as if scraped every
  ``outcomes.scrape_period`` (member *i* of *n* offset by ``(i + 1)/n`` of it); the verdict
  reaches the registry exactly as the health engine reports it, so a degraded member's weight
  is scaled by ``outcomes.weight_factor``.
* **Weight changes** (``WeightChange``: member, multiplier, minute) are applied as a live
  reconfiguration: a new registry from the changed configuration, told every member's
  current state, keeping the load tracker's counts (a slow-start ramp in progress ends).
* **Time.** Times are seconds after midnight UTC of the trace's first launch; outage and
  weight minutes count from that midnight. A trace whose timestamps all fall on whole
  minutes (the archive rounds down to the minute) has each launch moved to a uniformly
  drawn second within its minute, with ``seed``, and then sorted (stable).

The ``routing`` section of the configuration is what the *policy* believes
(``session_minutes``, ``report_seconds`` of the load tracker); ``session_minutes`` and
``report_seconds`` of :class:`Options` are the simulated *world*, so a mismatch can be studied.

Measures per policy: launches, cache hits and misses, refusals by kind, refusals while the
*offered demand* (sessions that would be running had every launch been accepted, a property
of the trace alone) is under ``demand_threshold`` of the total quota, the fraction of
launches sent to the first member of their repository's ranking in the snapshot used, decision
reasons, each member's share of launches and its peak and time-averaged utilisation (pods over
quota, between the first and the last launch), failed launches and the periods each member
was degraded, and, when there are outages, failing launches or weight changes, the churn
against the same run without them (see :class:`Churn`).
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal, TypedDict

from .config import Config
from .errors import FederationRedirectError
from .keys import launch_key
from .models import Capacity, HealthReport, HealthState, Strategy
from .outcomes import OutcomeCounts, OutcomeSettings, OutcomeTracker
from .policy import ranked_candidates, route
from .registry import Registry
from .trace import Launch

__all__ = [
    "DISTRIBUTIONS",
    "POLICIES",
    "Churn",
    "Degradation",
    "MemberResult",
    "Options",
    "Outage",
    "PolicyResult",
    "RepositoryResult",
    "ScenarioError",
    "SimulationResult",
    "WeightChange",
    "Workload",
    "format_report",
    "parse_degradation",
    "parse_outage",
    "parse_weight_change",
    "policy_config",
    "prepare",
    "simulate",
]

POLICIES = ("bounded", "rendezvous", "rendezvous-capacity", "random")
DISTRIBUTIONS = ("exponential", "lognormal", "fixed")
LOGNORMAL_SIGMA = 0.8

Distribution = Literal["exponential", "lognormal", "fixed"]
Progress = Callable[[str, int, int], None]


class ScenarioError(FederationRedirectError):
    """A simulation option is malformed or names no member (the message says which)."""


# -- scenario -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outage:
    """``member`` is failed from ``start_min`` to ``end_min`` (minutes after midnight UTC)."""

    member: str
    start_min: float
    end_min: float


@dataclass(frozen=True, slots=True)
class Degradation:
    """Launches on ``member`` fail with probability ``ratio`` from ``start_min`` to
    ``end_min`` (minutes after midnight UTC); its health checks keep passing."""

    member: str
    start_min: float
    end_min: float
    ratio: float = 1.0


@dataclass(frozen=True, slots=True)
class WeightChange:
    """``member``'s configured weight becomes ``weight`` at ``at_min``."""

    member: str
    weight: float
    at_min: float


def _minutes(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ScenarioError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ScenarioError(f"{what}: {text!r} must be a finite number >= 0")
    return value


def _member_window(head: str, flag: str, text: str, shape: str) -> tuple[str, float, float]:
    """``MEMBER@START_MIN-END_MIN`` of ``--flag text`` as (member, start, end) minutes."""
    member, at, window = head.rpartition("@")
    start, dash, end = window.partition("-")
    if not (member and at and dash):
        raise ScenarioError(f"{flag} {text!r}: expected {shape}")
    start_min, end_min = _minutes(start, flag), _minutes(end, flag)
    if end_min <= start_min:
        raise ScenarioError(f"{flag} {text!r}: END_MIN must be after START_MIN")
    return member, start_min, end_min


def parse_outage(text: str) -> Outage:
    """``MEMBER@START_MIN-END_MIN``, e.g. ``hetzner-gesis@600-660``."""
    return Outage(*_member_window(text, "--fail", text, "MEMBER@START_MIN-END_MIN"))


def parse_degradation(text: str) -> Degradation:
    """``MEMBER@START_MIN-END_MIN[:FAILURE_RATIO]``, e.g. ``hetzner-2i2c@600-720:0.8``."""
    head, colon, ratio_text = text.rpartition(":")
    if not colon:
        head, ratio_text = text, "1"
    window = _member_window(head, "--degrade", text, "MEMBER@START_MIN-END_MIN[:RATIO]")
    ratio = _minutes(ratio_text, "--degrade")
    if ratio > 1:
        raise ScenarioError(f"--degrade {text!r}: the failure ratio must be within 0..1")
    return Degradation(*window, ratio)


def parse_weight_change(text: str) -> WeightChange:
    """``MEMBER=WEIGHT@MIN``, e.g. ``bids-ovh=100@720``."""
    head, at, minute = text.rpartition("@")
    member, eq, weight = head.rpartition("=")
    if not (member and at and eq):
        raise ScenarioError(f"--weight {text!r}: expected MEMBER=WEIGHT@MIN")
    return WeightChange(member, _minutes(weight, "--weight"), _minutes(minute, "--weight"))


@dataclass(frozen=True, slots=True)
class Options:
    """The simulated world (see the module docstring). Times in minutes and hours."""

    session_minutes: float = 20.0
    session_distribution: Distribution = "exponential"
    cache_hours: float = 6.0
    report_seconds: float = 60.0
    seed: int = 0
    outages: tuple[Outage, ...] = ()
    weight_changes: tuple[WeightChange, ...] = ()
    degradations: tuple[Degradation, ...] = ()
    outcomes: bool = True  # outcome-aware health (also needs the config's outcomes.enabled)
    demand_threshold: float = 0.85
    watch: tuple[str, ...] = ()  # specs (``gh/org/repo/HEAD``) reported one by one

    @property
    def watched(self) -> dict[str, str]:
        """Routing key -> spec of each watched repository."""
        return {launch_key(f"/v2/{spec.strip('/')}"): spec for spec in self.watch}

    def check(self, config: Config) -> None:
        """Raise :class:`ScenarioError` for a value out of range or an unknown member."""
        if not (self.session_minutes > 0 and self.cache_hours >= 0 and self.report_seconds > 0):
            raise ScenarioError("session minutes and report seconds must be > 0, cache hours >= 0")
        if self.session_distribution not in DISTRIBUTIONS:
            raise ScenarioError(f"session distribution must be one of {', '.join(DISTRIBUTIONS)}")
        named = [o.member for o in self.outages] + [w.member for w in self.weight_changes]
        for name in named + [d.member for d in self.degradations]:
            if name not in config.hosts:
                raise ScenarioError(
                    f"no member {name!r} in the configuration ({', '.join(config.hosts)})"
                )

    @property
    def has_events(self) -> bool:
        return bool(self.outages or self.weight_changes or self.degradations)


def policy_config(config: Config, policy: str) -> Config:
    """The configuration ``policy`` runs with (see the module docstring)."""
    if policy == "rendezvous-capacity":
        known = [h.quota for h in config.hosts.values() if h.quota is not None]
        default = sum(known) / len(known) if known else 1.0
        hosts = {
            name: host.model_copy(
                update={"weight": host.weight * (host.quota if host.quota else default)}
            )
            for name, host in config.hosts.items()
        }
        return config.model_copy(update={"hosts": hosts, "load_balancer": Strategy.RENDEZVOUS})
    if policy not in POLICIES:
        raise ScenarioError(f"unknown policy {policy!r} (one of {', '.join(POLICIES)})")
    return config.model_copy(update={"load_balancer": Strategy(policy)})


def _with_weight(config: Config, member: str, weight: float) -> Config:
    hosts = dict(config.hosts)
    hosts[member] = hosts[member].model_copy(update={"weight": weight})
    return config.model_copy(update={"hosts": hosts})


# -- workload -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workload:
    """A trace ready to replay, identical for every policy.

    ``times`` are seconds after ``midnight`` (epoch seconds), non-decreasing; ``durations``
    are session lengths in seconds; ``demand[i]`` is the offered demand when launch ``i``
    arrives, counting it.
    """

    midnight: float
    times: tuple[float, ...]
    keys: tuple[str, ...]
    durations: tuple[float, ...]
    demand: tuple[int, ...]
    minute_rounded: bool

    def __len__(self) -> int:
        return len(self.times)


def _duration(rng: random.Random, mean: float, distribution: Distribution) -> float:
    if distribution == "fixed":
        return mean
    if distribution == "lognormal":
        return rng.lognormvariate(math.log(mean) - LOGNORMAL_SIGMA**2 / 2, LOGNORMAL_SIGMA)
    return rng.expovariate(1.0 / mean)


def prepare(launches: Sequence[Launch], options: Options) -> Workload:
    """Order ``launches`` in time, spread minute-rounded ones, draw their session lengths."""
    if not launches:
        raise ScenarioError("the trace has no launches")
    first = min(launch.time for launch in launches)
    day = datetime.fromtimestamp(first, UTC).date()
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    times = [launch.time - midnight for launch in launches]
    rounded = all(float(t).is_integer() and int(t) % 60 == 0 for t in times)
    if rounded:
        spread = random.Random(f"spread:{options.seed}")
        times = [t + spread.random() * 60 for t in times]
    order = sorted(range(len(times)), key=times.__getitem__)
    sessions = random.Random(f"sessions:{options.seed}")
    mean = options.session_minutes * 60
    durations = [_duration(sessions, mean, options.session_distribution) for _ in order]
    ends: list[float] = []
    demand = []
    for i, index in enumerate(order):
        t = times[index]
        while ends and ends[0] <= t:
            heapq.heappop(ends)
        heapq.heappush(ends, t + durations[i])
        demand.append(len(ends))
    return Workload(
        midnight=midnight,
        times=tuple(times[i] for i in order),
        keys=tuple(launches[i].key for i in order),
        durations=tuple(durations),
        demand=tuple(demand),
        minute_rounded=rounded,
    )


# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberResult:
    """One member under one policy. Utilisations are None for a member without a quota."""

    launches: int
    accepted: int
    share: float
    peak_utilization: float | None
    mean_utilization: float | None


@dataclass(frozen=True, slots=True)
class Churn:
    """Launches from the first outage or weight change to the end of the trace, compared
    with the same run without those events.

    ``moved`` went to a different member. Of those, ``expected`` are moves the events
    themselves ask for: a repository of a failed member while it is out, of a member while it
    was degraded, or one moving to or from a reweighted member after its change;
    ``slow_start`` are repositories of a
    recovered member sent elsewhere during its slow-start window; the rest are knock-on
    effects of load, split by what the run without events did with the repository within
    the window: ``other_homed`` if it sent all its launches to one member (a sticky
    repository that moved), ``other_spread`` if it spread them over several (a popular
    repository, placed by load anyway, and warm wherever it goes). ``homed_while_out``: the
    part of ``other_homed`` moved while a ``--fail`` outage was on (the rest moved after).
    ``repositories_fraction``: of the repositories launched in the window, those with at
    least one launch moved.
    """

    window_launches: int
    moved: int
    expected: int
    slow_start: int
    other_homed: int
    other_spread: int
    repositories_fraction: float
    homed_while_out: int = 0

    @property
    def moved_fraction(self) -> float:
        return self.moved / self.window_launches if self.window_launches else 0.0


@dataclass(frozen=True, slots=True)
class RepositoryResult:
    """One watched repository under one policy: its launches, hits, refusals, and the
    members its launches were sent to (with counts)."""

    launches: int
    cache_hits: int
    rejected: int
    members: dict[str, int]


@dataclass(frozen=True, slots=True)
class DegradedPeriod:
    """``member`` was degraded from ``start`` to ``end`` (seconds after midnight; None: still
    at the end of the trace)."""

    member: str
    start: float
    end: float | None


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """Everything measured for one policy (see the module docstring)."""

    policy: str
    launches: int
    cache_hits: int
    rejected_quota: int
    rejected_repo_cap: int
    rejected_unavailable: int
    rejected_below_threshold: int
    first_choice: int
    reasons: dict[str, int]
    members: dict[str, MemberResult]
    churn: Churn | None = None
    repositories: dict[str, RepositoryResult] = field(default_factory=dict)
    chosen: tuple[str, ...] = field(default=(), repr=False)
    failed_launches: int = 0
    degraded_periods: tuple[DegradedPeriod, ...] = ()

    @property
    def misses(self) -> int:
        return self.launches - self.cache_hits

    @property
    def rejected(self) -> int:
        return self.rejected_quota + self.rejected_repo_cap + self.rejected_unavailable

    @property
    def cache_hit_rate(self) -> float:
        return self.cache_hits / self.launches if self.launches else 0.0

    @property
    def first_choice_rate(self) -> float:
        return self.first_choice / self.launches if self.launches else 0.0


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """The policies' results and the facts of the trace they shared."""

    workload: Workload
    options: Options
    capacity: int | None  # total quota; None if some member has no quota
    per_repo_cap: int
    pod_headroom: int
    policies: dict[str, PolicyResult]
    outcomes: bool = True  # outcome-aware health was on

    def to_json(self) -> SimulationJSON:
        """The ``--json`` document (rates and shares as fractions 0..1)."""
        w, o = self.workload, self.options
        day = datetime.fromtimestamp(w.midnight, UTC).date().isoformat()
        peak = max(w.demand) if w.demand else 0
        return {
            "trace": {
                "day": day,
                "launches": len(w),
                "repositories": len(set(w.keys)),
                "minute_rounded": w.minute_rounded,
                "peak_demand": peak,
                "peak_demand_fraction": peak / self.capacity if self.capacity else None,
            },
            "model": {
                "session_minutes": o.session_minutes,
                "session_distribution": o.session_distribution,
                "cache_hours": o.cache_hours,
                "report_seconds": o.report_seconds,
                "seed": o.seed,
                "capacity": self.capacity,
                "per_repo_cap": self.per_repo_cap,
                "pod_headroom": self.pod_headroom,
                "demand_threshold": o.demand_threshold,
                "fail": [f"{x.member}@{x.start_min:g}-{x.end_min:g}" for x in o.outages],
                "weight": [f"{x.member}={x.weight:g}@{x.at_min:g}" for x in o.weight_changes],
                "degrade": [
                    f"{x.member}@{x.start_min:g}-{x.end_min:g}:{x.ratio:g}" for x in o.degradations
                ],
                "outcomes": self.outcomes,
            },
            "policies": {name: _policy_json(r) for name, r in self.policies.items()},
        }


class MemberJSON(TypedDict):
    launches: int
    accepted: int
    share: float
    peak_utilization: float | None
    mean_utilization: float | None


class ChurnJSON(TypedDict):
    window_launches: int
    moved: int
    expected: int
    slow_start: int
    other_homed: int
    other_spread: int
    repositories_fraction: float
    homed_while_out: int


class DegradedJSON(TypedDict):
    member: str
    from_min: float
    to_min: float | None


class RepositoryJSON(TypedDict):
    launches: int
    cache_hits: int
    rejected: int
    members: dict[str, int]


class PolicyJSON(TypedDict):
    launches: int
    cache_hits: int
    cache_hit_rate: float
    misses: int
    rejected: int
    rejected_quota: int
    rejected_repo_cap: int
    rejected_unavailable: int
    rejected_below_threshold: int
    failed_launches: int
    degraded: list[DegradedJSON]
    first_choice_rate: float
    moved_fraction: float | None
    churn: ChurnJSON | None
    reasons: dict[str, int]
    members: dict[str, MemberJSON]
    repositories: dict[str, RepositoryJSON]


class TraceJSON(TypedDict):
    day: str
    launches: int
    repositories: int
    minute_rounded: bool
    peak_demand: int
    peak_demand_fraction: float | None


class ModelJSON(TypedDict):
    session_minutes: float
    session_distribution: str
    cache_hours: float
    report_seconds: float
    seed: int
    capacity: int | None
    per_repo_cap: int
    pod_headroom: int
    demand_threshold: float
    fail: list[str]
    weight: list[str]
    degrade: list[str]
    outcomes: bool


class SimulationJSON(TypedDict):
    trace: TraceJSON
    model: ModelJSON
    policies: dict[str, PolicyJSON]


def _policy_json(r: PolicyResult) -> PolicyJSON:
    churn = r.churn
    return {
        "launches": r.launches,
        "cache_hits": r.cache_hits,
        "cache_hit_rate": r.cache_hit_rate,
        "misses": r.misses,
        "rejected": r.rejected,
        "rejected_quota": r.rejected_quota,
        "rejected_repo_cap": r.rejected_repo_cap,
        "rejected_unavailable": r.rejected_unavailable,
        "rejected_below_threshold": r.rejected_below_threshold,
        "failed_launches": r.failed_launches,
        "degraded": [
            {
                "member": d.member,
                "from_min": d.start / 60,
                "to_min": None if d.end is None else d.end / 60,
            }
            for d in r.degraded_periods
        ],
        "first_choice_rate": r.first_choice_rate,
        "moved_fraction": None if churn is None else churn.moved_fraction,
        "churn": None
        if churn is None
        else {
            "window_launches": churn.window_launches,
            "moved": churn.moved,
            "expected": churn.expected,
            "slow_start": churn.slow_start,
            "other_homed": churn.other_homed,
            "other_spread": churn.other_spread,
            "repositories_fraction": churn.repositories_fraction,
            "homed_while_out": churn.homed_while_out,
        },
        "reasons": dict(sorted(r.reasons.items())),
        "members": {
            name: {
                "launches": m.launches,
                "accepted": m.accepted,
                "share": m.share,
                "peak_utilization": m.peak_utilization,
                "mean_utilization": m.mean_utilization,
            }
            for name, m in r.members.items()
        },
        "repositories": {
            spec: {
                "launches": x.launches,
                "cache_hits": x.cache_hits,
                "rejected": x.rejected,
                "members": dict(x.members),
            }
            for spec, x in r.repositories.items()
        },
    }


# -- the replay -----------------------------------------------------------------------------


class _Member:
    """One simulated BinderHub (see "Member model" in the module docstring)."""

    __slots__ = (
        "accepted",
        "busy",
        "changed_at",
        "degraded",
        "down",
        "failing",
        "launch_failed",
        "launch_ok",
        "launches",
        "name",
        "peak",
        "per_repo",
        "quota",
        "ratio",
        "running",
        "warm",
    )

    def __init__(self, name: str, quota: int | None, start: float) -> None:
        self.name = name
        self.quota = quota
        self.running = 0
        self.per_repo: Counter[str] = Counter()
        self.warm: dict[str, float] = {}
        self.down = False
        self.launches = 0
        self.accepted = 0
        self.busy = 0.0  # integral of running pods over time (pod-seconds)
        self.changed_at = start
        self.peak = 0
        self.failing = 0.0  # probability that a launch it accepts fails
        self.launch_ok = 0  # cumulative launch outcomes, as BinderHub counts them
        self.launch_failed = 0
        self.degraded = False  # the outcome verdict the registry was last told
        self.ratio: float | None = None

    def account(self, now: float) -> None:
        self.busy += self.running * (now - self.changed_at)
        self.changed_at = now

    def end_session(self, key: str, now: float) -> None:
        self.account(now)
        self.running -= 1
        left = self.per_repo[key] - 1
        if left:
            self.per_repo[key] = left
        else:
            del self.per_repo[key]

    def report(self, now: float, headroom: int) -> HealthReport:
        if self.down:
            return HealthReport(
                state=HealthState.UNHEALTHY,
                reason="simulated",
                detail="simulated outage",
                launch_failure_ratio=self.ratio,
                degraded=self.degraded,
            )
        capacity = Capacity(quota=self.quota, pods=self.running, reported_at=now)
        return HealthReport(
            state=HealthState.HEALTHY,
            detail="simulated",
            capacity=capacity,
            full=capacity.is_full(headroom),
            launch_failure_ratio=self.ratio,
            degraded=self.degraded,
        )


@dataclass(frozen=True, slots=True, order=True)
class _Event:
    at: float
    order: int  # outage ends before starts at the same time; then configuration order
    kind: Literal["down", "up", "weight", "failing"] = field(compare=False)
    member: str = field(compare=False)
    weight: float = field(default=0.0, compare=False)  # the new weight, or failure ratio


def _events(options: Options) -> list[_Event]:
    events = []
    for i, o in enumerate(options.outages):
        events.append(_Event(o.start_min * 60, 2 * i + 1, "down", o.member))
        events.append(_Event(o.end_min * 60, 2 * i, "up", o.member))
    for i, d in enumerate(options.degradations):
        events.append(_Event(d.start_min * 60, 10**5 + 2 * i + 1, "failing", d.member, d.ratio))
        events.append(_Event(d.end_min * 60, 10**5 + 2 * i, "failing", d.member, 0.0))
    for i, w in enumerate(options.weight_changes):
        events.append(_Event(w.at_min * 60, 10**6 + i, "weight", w.member, w.weight))
    return sorted(events)


class _Replay:
    """One policy over one workload, with or without the scenario's events."""

    def __init__(
        self,
        config: Config,
        policy: str,
        workload: Workload,
        options: Options,
        *,
        with_events: bool,
    ) -> None:
        self.base_config = config
        self.policy = policy
        self.workload = workload
        self.options = options
        self.headroom = config.pod_headroom
        self.per_repo_cap = config.routing.per_repo_cap
        self.cache_seconds = options.cache_hours * 3600
        start = workload.times[0]
        self.now = start
        self.registry = Registry(policy_config(config, policy), clock=lambda: self.now)
        self.rng = random.Random(f"random:{options.seed}")
        names = list(config.hosts)
        self.members = {n: _Member(n, config.hosts[n].quota, start) for n in names}
        self.ends: list[tuple[float, int, str, str]] = []
        self.seq = 0
        period = options.report_seconds
        self.reports = [(start + period * (1 + i / len(names)), n) for i, n in enumerate(names)]
        heapq.heapify(self.reports)
        self.next_housekeeping = math.floor(start) + 1.0
        self.events = _events(options) if with_events else []
        self.event_index = 0
        self.tracker: OutcomeTracker | None = None
        self.scrapes: list[tuple[float, str]] = []
        self.scrape_period = config.outcomes.scrape_period
        if options.outcomes and config.outcomes.enabled:
            settings = OutcomeSettings.from_config(config.outcomes)
            self.tracker = OutcomeTracker(settings, names, clock=lambda: self.now)
            scraped = [n for n in names if config.hosts[n].metrics is not None]
            self.scrapes = [
                (start + self.scrape_period * (i + 1) / len(scraped), n)
                for i, n in enumerate(scraped)
            ]
            heapq.heapify(self.scrapes)
        self.degraded_since: dict[str, float] = {}
        self.degraded_periods: list[DegradedPeriod] = []
        for member in self.members.values():
            self._report(member)

    # -- world ------------------------------------------------------------------------------

    def _report(self, member: _Member) -> None:
        self.registry.report(member.name, member.report(self.now, self.headroom))

    def _apply(self, event: _Event) -> None:
        member = self.members[event.member]
        if event.kind == "weight":
            self._reconfigure(event)
            return
        if event.kind == "failing":
            member.failing = event.weight
            return
        member.down = event.kind == "down"
        self._report(member)

    def _scrape(self, member: _Member) -> None:
        """What the health engine does with a scrape of ``member``'s /metrics."""
        assert self.tracker is not None
        name = member.name
        verdict = self.tracker.observe(name, OutcomeCounts(member.launch_ok, member.launch_failed))
        if verdict.degraded and not member.degraded:
            self.degraded_since[name] = self.now
        elif member.degraded and not verdict.degraded:
            since = self.degraded_since.pop(name)
            self.degraded_periods.append(DegradedPeriod(name, since, self.now))
        if (verdict.degraded, verdict.launch_failure_ratio) != (member.degraded, member.ratio):
            member.degraded, member.ratio = verdict.degraded, verdict.launch_failure_ratio
            report = replace(
                self.registry.reported(name),
                degraded=verdict.degraded,
                launch_failure_ratio=verdict.launch_failure_ratio,
            )
            self.registry.report(name, report)

    def _reconfigure(self, event: _Event) -> None:
        self.base_config = config = _with_weight(self.base_config, event.member, event.weight)
        old = self.registry
        registry = Registry(policy_config(config, self.policy), clock=lambda: self.now)
        for name in self.members:
            registry.report(name, old.reported(name))
        registry.loads = old.loads  # a live change keeps the launch counts
        self.registry = registry

    def _advance(self, until: float) -> None:
        """Process everything that happens up to and including ``until``."""
        inf = math.inf
        while True:
            t_end = self.ends[0][0] if self.ends else inf
            t_event = (
                self.events[self.event_index].at if self.event_index < len(self.events) else inf
            )
            t_report = self.reports[0][0]
            t_scrape = self.scrapes[0][0] if self.scrapes else inf
            t_house = self.next_housekeeping
            t = min(t_end, t_event, t_report, t_scrape, t_house)
            if t > until:
                return
            self.now = max(self.now, t)
            if t == t_end:
                _, _, name, key = heapq.heappop(self.ends)
                self.members[name].end_session(key, self.now)
            elif t == t_event:
                self._apply(self.events[self.event_index])
                self.event_index += 1
            elif t == t_report:
                _, name = heapq.heapreplace(
                    self.reports, (t_report + self.options.report_seconds, self.reports[0][1])
                )
                self._report(self.members[name])
            elif t == t_scrape:
                _, name = heapq.heapreplace(
                    self.scrapes, (t_scrape + self.scrape_period, self.scrapes[0][1])
                )
                self._scrape(self.members[name])
            else:
                self.registry.loads.expire(self.now)
                self.registry.tick()
                self.next_housekeeping += 1.0

    # -- launches ---------------------------------------------------------------------------

    def run(self, progress: Progress | None = None, label: str = "") -> PolicyResult:
        w = self.workload
        total = len(w)
        capacity = _capacity(self.base_config)
        threshold = None if capacity is None else self.options.demand_threshold * capacity
        hits = first = failed = 0
        refused: Counter[str] = Counter()
        below = 0
        reasons: Counter[str] = Counter()
        chosen: list[str] = []
        watched = self.options.watched
        seen: dict[str, list[int]] = {key: [0, 0, 0] for key in watched}
        sent: dict[str, Counter[str]] = {key: Counter() for key in watched}
        step = max(1, total // 200)
        for i in range(total):
            t, key = w.times[i], w.keys[i]
            self._advance(t)
            self.now = max(self.now, t)
            registry = self.registry
            snapshot = registry.snapshot
            decision = route(snapshot, key, rng=self.rng, loads=registry.loads)
            if decision is None:  # every member in maintenance: cannot happen here
                raise AssertionError("no routing decision")
            name = decision.member.name
            chosen.append(name)
            reasons[decision.reason] += 1
            ranked = ranked_candidates(snapshot, key)
            if ranked and ranked[0].name == name:
                first += 1
            registry.loads.record(name, key, self.now)
            outcome = self._launch(self.members[name], key, w.durations[i], i)
            if key in watched:
                seen[key][0] += 1
                seen[key][1] += outcome == "hit"
                seen[key][2] += outcome not in ("hit", "miss", "failed")
                sent[key][name] += 1
            if outcome == "hit":
                hits += 1
            elif outcome == "failed":
                failed += 1
            elif outcome != "miss":
                refused[outcome] += 1
                if threshold is not None and w.demand[i] < threshold:
                    below += 1
            if progress is not None and (i % step == 0 or i + 1 == total):
                progress(label, i + 1, total)
        end = w.times[-1]
        for member in self.members.values():
            member.account(end)
        periods = self.degraded_periods + [
            DegradedPeriod(name, since, None) for name, since in self.degraded_since.items()
        ]
        span = end - w.times[0]
        return PolicyResult(
            policy=self.policy,
            launches=total,
            cache_hits=hits,
            rejected_quota=refused["quota"],
            rejected_repo_cap=refused["repo_cap"],
            rejected_unavailable=refused["unavailable"],
            rejected_below_threshold=below,
            first_choice=first,
            reasons={str(k): v for k, v in reasons.items()},
            members={
                m.name: MemberResult(
                    launches=m.launches,
                    accepted=m.accepted,
                    share=m.launches / total,
                    peak_utilization=None if not m.quota else m.peak / m.quota,
                    mean_utilization=None
                    if not m.quota
                    else (m.busy / (m.quota * span) if span > 0 else m.running / m.quota),
                )
                for m in self.members.values()
            },
            repositories={
                spec: RepositoryResult(
                    launches=seen[key][0],
                    cache_hits=seen[key][1],
                    rejected=seen[key][2],
                    members=dict(sent[key]),
                )
                for key, spec in watched.items()
            },
            chosen=tuple(chosen),
            failed_launches=failed,
            degraded_periods=tuple(sorted(periods, key=lambda p: (p.start, p.member))),
        )

    def _launch(self, member: _Member, key: str, duration: float, index: int) -> str:
        """Offer launch ``index`` to ``member``: "hit", "miss", "failed" or the refusal kind."""
        member.launches += 1
        if member.down:
            return "unavailable"
        if member.quota is not None and member.running >= member.quota:
            return "quota"
        if member.per_repo[key] >= self.per_repo_cap:
            return "repo_cap"
        if member.failing and _draw(self.options.seed, index) < member.failing:
            member.launch_failed += 1
            return "failed"
        member.launch_ok += 1
        now = self.now
        member.account(now)
        member.running += 1
        member.accepted += 1
        member.peak = max(member.peak, member.running)
        member.per_repo[key] += 1
        self.seq += 1
        heapq.heappush(self.ends, (now + duration, self.seq, member.name, key))
        warm_since = member.warm.get(key)
        member.warm[key] = now
        if warm_since is not None and now - warm_since <= self.cache_seconds:
            return "hit"
        return "miss"


def _draw(seed: int, index: int) -> float:
    """A uniform number in [0, 1) fixed by the seed and the launch's index."""
    digest = hashlib.blake2b(f"fail:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _capacity(config: Config) -> int | None:
    quotas = [h.quota for h in config.hosts.values()]
    if any(q is None for q in quotas):
        return None
    return sum(q for q in quotas if q is not None)


def _churn(
    workload: Workload,
    options: Options,
    slow_start_seconds: float,
    baseline: Sequence[str],
    changed: Sequence[str],
    degraded: Sequence[DegradedPeriod] = (),
) -> Churn:
    starts = [o.start_min * 60 for o in options.outages]
    starts += [c.at_min * 60 for c in options.weight_changes]
    starts += [d.start_min * 60 for d in options.degradations]
    begin = min(starts)
    first = bisect.bisect_left(workload.times, begin)
    window = range(first, len(workload.times))
    homes: dict[str, set[str]] = {}
    for i in window:
        homes.setdefault(workload.keys[i], set()).add(baseline[i])
    moved = expected = ramp = homed = homed_while_out = 0
    moved_repos: set[str] = set()
    for i in window:
        before, after = baseline[i], changed[i]
        if before == after:
            continue
        t, key = workload.times[i], workload.keys[i]
        moved += 1
        moved_repos.add(key)
        was_degraded = any(
            p.member == before and p.start <= t and (p.end is None or t < p.end) for p in degraded
        )
        if (
            was_degraded
            or any(
                o.member == before and o.start_min * 60 <= t < o.end_min * 60
                for o in options.outages
            )
            or any(
                c.member in (before, after) and t >= c.at_min * 60 for c in options.weight_changes
            )
        ):
            expected += 1
        elif any(
            o.member == before and o.end_min * 60 <= t < o.end_min * 60 + slow_start_seconds
            for o in options.outages
        ):
            ramp += 1
        elif len(homes[key]) == 1:
            homed += 1
            if any(o.start_min * 60 <= t < o.end_min * 60 for o in options.outages):
                homed_while_out += 1
    return Churn(
        window_launches=len(window),
        moved=moved,
        expected=expected,
        slow_start=ramp,
        other_homed=homed,
        other_spread=moved - expected - ramp - homed,
        repositories_fraction=len(moved_repos) / len(homes) if homes else 0.0,
        homed_while_out=homed_while_out,
    )


def simulate(
    config: Config,
    launches: Sequence[Launch] | Workload,
    policies: Iterable[str] = POLICIES,
    options: Options | None = None,
    *,
    progress: Progress | None = None,
) -> SimulationResult:
    """Replay ``launches`` under each of ``policies`` (see the module docstring).

    With outages or weight changes each policy also runs without them, to measure churn.
    ``progress(label, done, total)`` is called about 200 times per run. Raises
    :class:`ScenarioError` for bad options, an unknown policy or an empty trace.
    """
    options = options or Options()
    options.check(config)
    names = list(policies)
    for name in names:
        policy_config(config, name)  # unknown policy: fail before any work
    workload = launches if isinstance(launches, Workload) else prepare(launches, options)
    results: dict[str, PolicyResult] = {}
    with _quiet_registry():
        for name in names:
            results[name] = _run_policy(config, name, workload, options, progress)
    return SimulationResult(
        workload=workload,
        options=options,
        capacity=_capacity(config),
        per_repo_cap=config.routing.per_repo_cap,
        pod_headroom=config.pod_headroom,
        policies=results,
        outcomes=options.outcomes and config.outcomes.enabled,
    )


@contextmanager
def _quiet_registry() -> Iterator[None]:
    # A replay swaps snapshots thousands of times, and every swap into or out of "nothing
    # routable" logs a warning that is news in a server and noise here.
    logger = logging.getLogger("federation_redirect.registry")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _run_policy(
    config: Config, name: str, workload: Workload, options: Options, progress: Progress | None
) -> PolicyResult:
    result = _Replay(config, name, workload, options, with_events=True).run(progress, name)
    if not options.has_events:
        return result
    baseline = _Replay(config, name, workload, options, with_events=False)
    base = baseline.run(progress, f"{name} (without events)")
    slow_start = config.routing.slow_start_seconds
    churn = _churn(
        workload, options, slow_start, base.chosen, result.chosen, result.degraded_periods
    )
    return replace(result, churn=churn)


# -- the table ------------------------------------------------------------------------------


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def format_report(result: SimulationResult) -> str:
    """The terminal table: one row per policy, then each member's share and utilisation."""
    doc = result.to_json()
    trace, model = doc["trace"], doc["model"]
    lines = [
        f"trace {trace['day']}: {trace['launches']:,} launches of {trace['repositories']:,} "
        f"repositories; peak offered demand {trace['peak_demand']} sessions"
        + (
            f" ({_pct(trace['peak_demand_fraction'], 0)} of capacity {model['capacity']})"
            if model["capacity"]
            else ""
        ),
        f"sessions {model['session_distribution']} mean {model['session_minutes']:g} min, "
        f"warm window {model['cache_hours']:g} h, reports every {model['report_seconds']:g} s, "
        f"per-repo cap {model['per_repo_cap']}, headroom {model['pod_headroom']}, "
        f"seed {model['seed']}"
        + (f", fail {' '.join(model['fail'])}" if model["fail"] else "")
        + (f", weight {' '.join(model['weight'])}" if model["weight"] else "")
        + (f", degrade {' '.join(model['degrade'])}" if model["degrade"] else "")
        + ("" if model["outcomes"] else ", outcome-aware health off"),
        "",
    ]
    low = f"rej<{100 * model['demand_threshold']:.0f}%"
    header = ["policy", "launches", "hits", "hit rate", "misses", "rej quota", "rej repo", low]
    header += ["1st choice", "moved"]
    failing = bool(model["degrade"])
    if failing:
        header.insert(header.index(low) + 1, "failed")
    rows = [header]
    for name, p in doc["policies"].items():
        rows.append(
            [
                name,
                f"{p['launches']:,}",
                f"{p['cache_hits']:,}",
                _pct(p["cache_hit_rate"]),
                f"{p['misses']:,}",
                f"{p['rejected_quota']:,}",
                f"{p['rejected_repo_cap']:,}",
                f"{p['rejected_below_threshold']:,}",
                *([f"{p['failed_launches']:,}"] if failing else []),
                _pct(p["first_choice_rate"]),
                _pct(p["moved_fraction"]),
            ]
        )
    lines += _columns(rows)
    lines.append("")
    members = list(next(iter(doc["policies"].values()))["members"]) if doc["policies"] else []
    rows = [["share / peak / mean util", *members]]
    for name, p in doc["policies"].items():
        cells = [name]
        for member in members:
            m = p["members"][member]
            cells.append(
                f"{_pct(m['share'])} / {_pct(m['peak_utilization'], 0)}"
                f" / {_pct(m['mean_utilization'], 0)}"
            )
        rows.append(cells)
    lines += _columns(rows)
    churned = [(n, p["churn"]) for n, p in doc["policies"].items() if p["churn"] is not None]
    if churned:
        lines.append("")
        rows = [
            [
                "churn",
                "window",
                "moved",
                "expected",
                "slow start",
                "other homed",
                "other spread",
                "repos moved",
            ]
        ]
        for name, c in churned:
            assert c is not None
            rows.append(
                [
                    name,
                    f"{c['window_launches']:,}",
                    f"{c['moved']:,}",
                    f"{c['expected']:,}",
                    f"{c['slow_start']:,}",
                    f"{c['other_homed']:,}",
                    f"{c['other_spread']:,}",
                    _pct(c["repositories_fraction"]),
                ]
            )
        lines += _columns(rows)
    return "\n".join(lines)


def _columns(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]
