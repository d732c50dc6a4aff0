"""Immutable values shared by the routing core, the health engine and the web layer.

Nothing here does I/O. A :class:`Snapshot` is the whole routing view at one instant: the
registry builds a new one whenever anything changes and swaps it in with one assignment,
so readers on the hot path never lock and never see a half-applied change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "SERVICE_REASONS",
    "Capacity",
    "Decision",
    "DecisionReason",
    "HealthReason",
    "HealthReport",
    "HealthState",
    "MemberState",
    "OperatorState",
    "RoutingParams",
    "Snapshot",
    "Strategy",
    "service_reason",
]


class HealthState(StrEnum):
    """What the health engine believes about a member."""

    UNKNOWN = "unknown"  # not checked successfully yet: gets no traffic
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class OperatorState(StrEnum):
    """What the operators want for a member.

    ``ready``: normal. ``drain``: no new repositories, cookies still honoured.
    ``maint``: no traffic at all.
    """

    READY = "ready"
    DRAIN = "drain"
    MAINT = "maint"


class Strategy(StrEnum):
    """How a member is chosen for a repository without a valid cookie."""

    BOUNDED = "bounded"  # rendezvous over capacity weights, with load bounds and spill
    RENDEZVOUS = "rendezvous"  # weighted highest-random-weight hashing: sticky
    RANDOM = "random"  # weighted random choice: not sticky


class DecisionReason(StrEnum):
    """Why a request went to the member it went to (a metric label)."""

    HASH = "hash"  # first routable member in the repository's ranking
    SPILL = "spill"  # a later member of the ranking: the ones before it were at their bound
    SATURATED = "saturated"  # every candidate at its bound: the least utilised one
    RANDOM = "random"  # weighted random choice
    COOKIE = "cookie"  # the stickiness cookie named a member that is still a candidate
    FALLBACK = "fallback"  # nothing routable: the prime member(s) regardless of health


class HealthReason(StrEnum):
    """Why a health check failed (a metric label, so a fixed set)."""

    TIMEOUT = "timeout"
    CONNECT = "connect"
    HTTP_STATUS = "http_status"
    BAD_RESPONSE = "bad_response"
    VERSIONS = "versions"
    FULL = "full"
    ERROR = "error"  # an unexpected exception inside the check (a bug, logged)


# BinderHub's /health service names we know, mapped to bounded reason labels. Anything
# else a member reports becomes "service:other", so a member cannot grow our label set.
SERVICE_REASONS: Mapping[str, str] = MappingProxyType(
    {
        "Docker registry": "service:docker_registry",
        "docker-registry": "service:docker_registry",
        "JupyterHub API": "service:jupyterhub_api",
        "Pod quota": "service:pod_quota",
    }
)


def service_reason(service: object) -> str:
    """The bounded reason label for a failed BinderHub service check."""
    if isinstance(service, str):
        return SERVICE_REASONS.get(service, "service:other")
    return "service:other"


@dataclass(frozen=True, slots=True)
class Capacity:
    """A member's pod capacity as last reported by its ``/health`` "Pod quota" check.

    ``quota`` None means unlimited (or not reported); ``pods`` None means not reported.
    ``reported_at`` is the clock time of that report (seconds), None if never.
    """

    quota: int | None = None
    pods: int | None = None
    reported_at: float | None = None

    def free_slots(self, headroom: int) -> int | None:
        """Pods that can still be started before the member counts as full; None = unbounded."""
        if self.quota is None:
            return None
        return max(0, self.quota - headroom - (self.pods or 0))

    def is_full(self, headroom: int) -> bool:
        """True when ``pods + headroom >= quota`` (the production app's rule)."""
        if self.quota is None or self.pods is None:
            return False
        return self.pods + headroom >= self.quota


@dataclass(frozen=True, slots=True)
class HealthReport:
    """What the health engine last concluded about one member.

    ``reason`` is the failure reason of the last failed round (None after a good one),
    ``detail`` a human-readable sentence for logs and the API. ``checked_at`` is wall-clock
    time (seconds since the epoch) of the last completed round, ``latency`` its duration in
    seconds. ``checks`` maps each BinderHub service check (and ``versions``) to its last result.
    ``full`` is true when the member is within ``pod_headroom`` of its quota: healthy, but not
    a candidate for new repositories.
    """

    state: HealthState = HealthState.UNKNOWN
    reason: str | None = None
    detail: str = "not checked yet"
    checked_at: float | None = None
    latency: float | None = None
    versions: Mapping[str, object] | None = None
    capacity: Capacity = field(default_factory=Capacity)
    full: bool = False
    checks: Mapping[str, bool] = field(default_factory=lambda: MappingProxyType({}))
    # Launch outcomes scraped from the member's own /metrics (see outcomes.py): the failure
    # ratio over the window (None: no signal, or too few attempts), and whether that made
    # the member degraded (still healthy, but its weight is scaled down).
    launch_failure_ratio: float | None = None
    degraded: bool = False


@dataclass(frozen=True, slots=True)
class MemberState:
    """One member as the routing core sees it.

    ``weight`` is the effective weight the ranking uses (>= 0): the configured weight, or for
    the ``bounded`` strategy capacity x weight multiplier, times the slow-start ramp.
    ``index`` is the member's position in the configuration, used only for stable ordering.
    """

    name: str
    url: str
    weight: float
    prime: bool = False
    pages: bool = False
    index: int = 0
    health: HealthState = HealthState.UNKNOWN
    operator: OperatorState = OperatorState.READY
    full: bool = False
    capacity: Capacity = field(default_factory=Capacity)
    limit: int | None = None  # most pods it should hold (quota - pod_headroom); None: no limit
    degraded: bool = False  # launches on it are failing: weight scaled by outcomes.weight_factor

    @property
    def routable(self) -> bool:
        """May receive repositories it does not already hold a cookie for."""
        return (
            self.health is HealthState.HEALTHY
            and not self.full
            and self.operator is OperatorState.READY
            and self.weight > 0
        )

    @property
    def serving(self) -> bool:
        """Healthy, ready and weighted: may take launches, full or not (the bounded policy's
        last resort when no routable member has room)."""
        return (
            self.health is HealthState.HEALTHY
            and self.operator is OperatorState.READY
            and self.weight > 0
        )

    @property
    def honours_cookie(self) -> bool:
        """May receive a browser whose cookie names it (drained members still do)."""
        return (
            self.health is HealthState.HEALTHY
            and not self.full
            and self.operator is not OperatorState.MAINT
        )


@dataclass(frozen=True, slots=True)
class RoutingParams:
    """Knobs of the bounded policy (see :mod:`federation_redirect.policy`)."""

    balance_factor: float = 1.25
    per_repo_cap: int = 100


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The routing view at one instant. Build it with :meth:`build`; never mutate it.

    ``epoch`` increases with every new snapshot. ``candidates`` are the routable members in
    configuration order; ``fallback`` are the members used when there is none (the primes
    that are not in maintenance, or every member not in maintenance if no prime is).
    """

    epoch: int
    members: tuple[MemberState, ...]
    strategy: Strategy
    by_name: Mapping[str, MemberState]
    candidates: tuple[MemberState, ...]
    fallback: tuple[MemberState, ...]
    params: RoutingParams = field(default_factory=RoutingParams)
    candidate_weight: float = 0.0  # sum of the candidates' weights

    @classmethod
    def build(
        cls,
        epoch: int,
        members: tuple[MemberState, ...],
        strategy: Strategy,
        params: RoutingParams | None = None,
    ) -> Snapshot:
        """Derive the lookup tables from ``members`` and return the frozen snapshot."""
        ordered = tuple(sorted(members, key=lambda m: m.index))
        not_maint = tuple(m for m in ordered if m.operator is not OperatorState.MAINT)
        primes = tuple(m for m in not_maint if m.prime)
        candidates = tuple(m for m in ordered if m.routable)
        return cls(
            epoch=epoch,
            members=ordered,
            strategy=strategy,
            by_name=MappingProxyType({m.name: m for m in ordered}),
            candidates=candidates,
            fallback=primes or not_maint,
            params=params or RoutingParams(),
            candidate_weight=sum(m.weight for m in candidates),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one request goes and why. ``rank`` is the member's place in the ranking (0 first)."""

    member: MemberState
    reason: DecisionReason
    rank: int = 0
