"""The registry: the one place that turns configuration and health into a Snapshot.

The health engine reports each member's :class:`HealthReport`; the registry merges it with the
configuration into a new immutable :class:`Snapshot` and swaps it in with a single attribute
assignment. The hot path reads ``registry.snapshot`` and never locks. Everything runs on one
event loop, so there is no concurrent writer to guard against.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType

from .config import Config
from .models import HealthReport, MemberState, Snapshot

__all__ = ["Registry"]

log = logging.getLogger("federation_redirect.registry")


class Registry:
    """Current health of every member and the routing snapshot derived from it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._health: dict[str, HealthReport] = {name: HealthReport() for name in config.hosts}
        self._checked: set[str] = set()
        self._epoch = 0
        self._listeners: list[Callable[[Snapshot], None]] = []
        self.reference_versions: Mapping[str, object] | None = None
        self.snapshot: Snapshot = self._build()
        self._was_falling_back = False

    # -- reading ------------------------------------------------------------------------

    def health(self, name: str) -> HealthReport:
        """The last report for member ``name`` (KeyError if not a member)."""
        return self._health[name]

    @property
    def first_round_done(self) -> bool:
        """Every member has completed at least one health check round."""
        return len(self._checked) == len(self._health)

    @property
    def ready(self) -> bool:
        """For /readyz: the first round is done and at least one member is routable."""
        return self.first_round_done and bool(self.snapshot.candidates)

    # -- writing ------------------------------------------------------------------------

    def report(self, name: str, report: HealthReport) -> None:
        """Record a member's latest health; rebuild the snapshot if routing changed."""
        old = self._health[name]
        self._health[name] = report
        self._checked.add(name)
        if (old.state, old.full, old.capacity) != (report.state, report.full, report.capacity):
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

    def _build(self) -> Snapshot:
        self._epoch += 1
        members = []
        for index, (name, host) in enumerate(self.config.hosts.items()):
            report = self._health[name]
            members.append(
                MemberState(
                    name=name,
                    url=host.url,
                    weight=host.weight,
                    prime=host.prime,
                    pages=host.serves_pages,
                    index=index,
                    health=report.state,
                    full=report.full,
                    capacity=report.capacity,
                )
            )
        return Snapshot.build(self._epoch, tuple(members), self.config.load_balancer)

    def _swap(self) -> None:
        snapshot = self._build()
        self.snapshot = snapshot
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
