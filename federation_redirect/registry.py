"""The registry: the one place that turns configuration and health into a Snapshot.

The health engine reports each member's :class:`HealthReport`; the registry merges it with the
configuration into a new immutable :class:`Snapshot` and swaps it in with a single attribute
assignment. The hot path reads ``registry.snapshot`` and never locks. Everything runs on one
event loop, so there is no concurrent writer to guard against.

Effective weight of a member, as the ranking uses it::

    rendezvous, random:  weight
    bounded:             capacity x weight      (capacity: the quota the member reports in
                                                 /health, else `quota` in its config entry,
                                                 else the mean capacity of those that have one)
    both then            x ramp                 (slow start: from 5 % to 100 % linearly over
                                                 routing.slow_start_seconds after a member
                                                 comes back from unhealthy)
                         x outcomes.weight_factor  (only while the member is degraded: its
                                                 launches fail, see outcomes.py; and only if
                                                 some serving member, full or not, is not
                                                 degraded, else no member counts as degraded)

A degraded member also gets, as its ``limit`` (the most pods the bounded policy lets it hold,
normally quota - pod_headroom), the pods it last reported: it keeps its sessions but does not
grow. Failing launches hold no pods, so its pod count no longer says how loaded it is, and the
bounded policy would take that emptiness for room: simulated, a member failing every launch
then drew most launches of the most popular repositories (spread by utilisation) however small
its weight. With the limit held, it takes new repositories only when no other member has room
(the policy's last resort), and ``weight_factor`` scales its share under the other strategies.

So with ``bounded`` the production weights (50 for every member) act as equal operator
multipliers, and traffic follows capacity: quotas 300/180/60 get 56/33/11 % of repositories.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType

from .config import Config
from .load import LoadTracker
from .models import (
    HealthReport,
    HealthState,
    MemberState,
    OperatorState,
    RoutingParams,
    Snapshot,
    Strategy,
)
from .panic import PanicGuard
from .state.base import EMPTY_OVERRIDES, Override

__all__ = ["RAMP_FLOOR", "Registry"]

log = logging.getLogger("federation_redirect.registry")

RAMP_FLOOR = 0.05  # weight fraction of a member at the start of its slow start


class Registry:
    """Current health of every member and the routing snapshot derived from it."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        routing = config.routing
        self.loads = LoadTracker(
            session_seconds=routing.session_minutes * 60,
            report_seconds=routing.report_seconds,
            warm_seconds=routing.warm_hours * 3600,
        )
        self._params = RoutingParams(
            balance_factor=routing.balance_factor, per_repo_cap=routing.per_repo_cap
        )
        self._health: dict[str, HealthReport] = {name: HealthReport() for name in config.hosts}
        self._checked: set[str] = set()
        self._recovered_at: dict[str, float] = {}
        self._epoch = 0
        self._listeners: list[Callable[[Snapshot], None]] = []
        self._report_listeners: list[Callable[[str, HealthReport], None]] = []
        self.overrides: Mapping[str, Override] = EMPTY_OVERRIDES
        self.reference_versions: Mapping[str, object] | None = None
        self._was_falling_back = False
        self._all_degraded = False  # every routable member is degraded: none counts as such
        self.panic = PanicGuard.from_config(config.check)  # every member fell at once: see panic.py
        self.snapshot: Snapshot = self._build()

    # -- reading ------------------------------------------------------------------------

    def health(self, name: str) -> HealthReport:
        """The last report for member ``name`` (KeyError if not a member).

        ``degraded`` is as the routing applies it: False for every member while every
        routable member is degraded (see :meth:`reported` for the report as made).
        """
        report = self._health[name]
        if report.degraded and self._all_degraded:
            return replace(report, degraded=False)
        return report

    def reported(self, name: str) -> HealthReport:
        """The last report for member ``name`` exactly as the health engine made it."""
        return self._health[name]

    @property
    def first_round_done(self) -> bool:
        """Every member has completed at least one health check round."""
        return len(self._checked) == len(self._health)

    @property
    def ready(self) -> bool:
        """For /readyz: the first round is done and at least one member is routable."""
        return self.first_round_done and bool(self.snapshot.candidates)

    @property
    def ramping(self) -> bool:
        """Some member is in its slow-start window (``tick`` keeps its weight moving)."""
        return bool(self._recovered_at)

    # -- writing ------------------------------------------------------------------------

    def report(self, name: str, report: HealthReport) -> None:
        """Record a member's latest health; rebuild the snapshot if routing changed."""
        old = self._health[name]
        self._health[name] = report
        self._checked.add(name)
        healthy = report.state is HealthState.HEALTHY
        panicked = self.panic.observe(name, healthy, report.reason, self.clock())
        for listener in self._report_listeners:
            listener(name, report)
        if old.capacity.pods != report.capacity.pods:
            self.loads.reported(name)
        if (
            old.state is HealthState.UNHEALTHY
            and report.state is HealthState.HEALTHY
            and self.config.routing.slow_start_seconds > 0
        ):
            self._recovered_at[name] = self.clock()
        elif report.state is not HealthState.HEALTHY:
            self._recovered_at.pop(name, None)
        if (old.state, old.full, old.capacity.quota, old.capacity.pods, old.degraded) != (
            report.state,
            report.full,
            report.capacity.quota,
            report.capacity.pods,
            report.degraded,
        ) or panicked:
            self._swap()

    def set_overrides(self, overrides: Mapping[str, Override]) -> None:
        """Apply the operators' overrides (unknown member names are ignored)."""
        if dict(overrides) != dict(self.overrides):
            self.overrides = MappingProxyType(dict(overrides))
            self._swap()

    def configured_weight(self, name: str) -> float:
        """The member's weight after operator overrides, before capacity and ramp."""
        host = self.config.hosts[name]
        override = self.overrides.get(name)
        return host.weight if override is None else override.effective_weight(host.weight)

    def on_report(self, listener: Callable[[str, HealthReport], None]) -> None:
        """Call ``listener(name, report)`` after every health report (for sharing them)."""
        self._report_listeners.append(listener)

    def tick(self) -> None:
        """Advance slow-start ramps (the app calls this every second while ``ramping``)."""
        if self._recovered_at or self.panic.expire(self.clock()):
            self._swap()

    def set_reference_versions(self, versions: Mapping[str, object]) -> bool:
        """Set the prime's /versions as the reference. True if it changed."""
        frozen = MappingProxyType(dict(versions))
        if self.reference_versions == frozen:
            return False
        log.info("reference versions updated: %s -> %s", self.reference_versions, dict(versions))
        self.reference_versions = frozen
        return True

    def subscribe(self, listener: Callable[[Snapshot], None]) -> None:
        """Call ``listener(snapshot)`` after every swap."""
        self._listeners.append(listener)

    # -- internals ----------------------------------------------------------------------

    def _capacities(self) -> dict[str, float]:
        known: dict[str, float] = {}
        for name, host in self.config.hosts.items():
            quota = self._health[name].capacity.quota or host.quota
            if quota:
                known[name] = float(quota)
        default = sum(known.values()) / len(known) if known else 1.0
        return {name: known.get(name, default) for name in self.config.hosts}

    def _ramp(self, name: str, now: float) -> float:
        since = self._recovered_at.get(name)
        if since is None:
            return 1.0
        window = self.config.routing.slow_start_seconds
        fraction = (now - since) / window
        if fraction >= 1.0:
            del self._recovered_at[name]
            return 1.0
        return max(RAMP_FLOOR, fraction)

    def _build(self) -> Snapshot:
        self._epoch += 1
        now = self.clock()
        config = self.config
        bounded = config.load_balancer is Strategy.BOUNDED
        capacities = self._capacities() if bounded else {}
        headroom = config.pod_headroom
        members = []
        kept = self.panic.kept  # in panic: the members that fell at once stay routable
        for index, (name, host) in enumerate(config.hosts.items()):
            report = self._health[name]
            override = self.overrides.get(name)
            weight = self.configured_weight(name) * (capacities[name] if bounded else 1.0)
            quota = report.capacity.quota or host.quota
            members.append(
                MemberState(
                    name=name,
                    url=host.url,
                    weight=weight * self._ramp(name, now),
                    prime=host.prime,
                    pages=host.serves_pages,
                    index=index,
                    health=HealthState.HEALTHY if name in kept else report.state,
                    full=report.full,
                    capacity=report.capacity,
                    limit=None if quota is None else max(0, quota - headroom),
                    operator=OperatorState.READY if override is None else override.state,
                    degraded=report.degraded,
                )
            )
        # Degraded only means something next to a member that is not: if every serving
        # member (healthy and ready, full or not) is degraded, none is (their launches would
        # fail wherever they went). A full member that is not degraded still counts: it has
        # free pods whenever its sessions end, and its launches succeed.
        if any(m.degraded for m in members):
            self._all_degraded = not any(m.serving and not m.degraded for m in members)
            factor = config.outcomes.weight_factor
            members = [
                m
                if not m.degraded
                else replace(m, degraded=False)
                if self._all_degraded
                else replace(m, weight=m.weight * factor, limit=_held(m))
                for m in members
            ]
        else:
            self._all_degraded = False
        return Snapshot.build(self._epoch, tuple(members), config.load_balancer, self._params)

    def _swap(self) -> None:
        was_all_degraded = self._all_degraded
        snapshot = self._build()
        self.snapshot = snapshot
        if self._all_degraded != was_all_degraded:
            if self._all_degraded:
                log.warning("no serving member is free of degradation: none counts as degraded")
            elif any(r.degraded for r in self._health.values()):
                factor = self.config.outcomes.weight_factor
                log.warning("degraded members' weights are scaled by %g again", factor)
        falling_back = not snapshot.candidates and self.first_round_done
        if falling_back and not self._was_falling_back:
            log.warning(
                "no member is routable: falling back to %s",
                ", ".join(m.name for m in snapshot.fallback) or "nothing",
            )
        elif self._was_falling_back and not falling_back:
            log.warning(
                "members routable again: %s", ", ".join(m.name for m in snapshot.candidates)
            )
        self._was_falling_back = falling_back
        for listener in self._listeners:
            listener(snapshot)


def _held(member: MemberState) -> int:
    """A degraded member's limit: the pods it holds now, never above its usual limit."""
    pods = member.capacity.pods or 0
    return pods if member.limit is None else min(member.limit, pods)
