"""Panic mode: when every member falls at once, suspect our own network, not the federation.

If the redirector's own network is cut (a broken node, a NetworkPolicy, DNS), every health
check fails with a *transport* failure at about the same time, and without this module the
rotation would empty: every launch would go to the prime, which is no better off than the
others. The members are most likely fine; it is the redirector that cannot see them. So:

*Panic* starts when the last healthy member falls, if every member that was healthy at some
moment of the last ``window_seconds`` fell through a transport failure (``timeout`` or
``connect``: nobody answered) and there are at least ``min_members`` (2) of them (one member
failing alone is not "all at once"). While it lasts the registry keeps routing to that set,
the *kept* members, as if they were healthy; their health in ``/metrics`` stays what the
checks say, and ``federation_panic`` is 1.

Panic ends when any member passes its checks again (normal routing resumes), or after
``grace_seconds`` (the rotation empties and launches fall back to the prime, as without
panic; it does not start again until some member has been healthy again).

``window_seconds`` (:func:`fall_window`) is how far apart a simultaneous cut can make members
fall: each meets it at its next check, up to one period later, and needs ``fall`` failed
rounds, of up to ``timeout`` each, ``fast_period`` apart. A member that answers at all (an
HTTP error, a failed service check, wrong versions) is not behind a cut network: its fall
never starts panic.

Pure: no I/O, no clock of its own (``now`` is the caller's monotonic seconds); it logs when
panic starts and ends.
"""

from __future__ import annotations

import logging
from typing import Final

from .config import CheckConfig

__all__ = ["TRANSPORT_REASONS", "PanicGuard", "fall_window"]

log = logging.getLogger("federation_redirect.panic")

#: Failure reasons that mean nobody answered (see health.py's table).
TRANSPORT_REASONS: Final = frozenset({"timeout", "connect"})


def fall_window(check: CheckConfig) -> float:
    """Seconds within which a cut network makes every member fall, at the worst phase."""
    return check.period * (1 + check.jitter / 2) + check.fall * (check.timeout + check.fast_period)


class PanicGuard:
    """Watches members' health transitions and decides which members to keep in panic.

    Feed it every health report with :meth:`observe`; call :meth:`expire` periodically (the
    registry's once-a-second tick). :attr:`kept` is the set to route to as if healthy (empty
    outside panic); :attr:`active` says whether panic is on.
    """

    __slots__ = (
        "_exhausted",
        "_fell",
        "_healthy",
        "_kept",
        "_since",
        "grace_seconds",
        "min_members",
        "window_seconds",
    )

    def __init__(
        self, *, grace_seconds: float, window_seconds: float, min_members: int = 2
    ) -> None:
        self.grace_seconds = grace_seconds
        self.window_seconds = window_seconds
        self.min_members = max(2, min_members)
        self._healthy: set[str] = set()
        self._fell: dict[str, tuple[float, str | None]] = {}  # last healthy -> not, and why
        self._kept: frozenset[str] = frozenset()
        self._since: float | None = None
        self._exhausted = False  # grace ran out; no new panic until a member is healthy

    @classmethod
    def from_config(cls, check: CheckConfig) -> PanicGuard:
        return cls(grace_seconds=check.panic_grace_seconds, window_seconds=fall_window(check))

    @property
    def active(self) -> bool:
        return bool(self._kept)

    @property
    def kept(self) -> frozenset[str]:
        """Members routed to as if healthy while panic lasts (empty otherwise)."""
        return self._kept

    @property
    def since(self) -> float | None:
        """When the current panic started (None outside panic)."""
        return self._since

    def observe(self, name: str, healthy: bool, reason: str | None, now: float) -> bool:
        """Fold in one member's latest health; True if :attr:`kept` changed."""
        if healthy:
            self._fell.pop(name, None)
            self._healthy.add(name)
            self._exhausted = False
            if self._kept:
                log.warning("panic over: member %s passes its checks again", name)
                return self._end()
            return False
        if name not in self._healthy:
            return False
        self._healthy.discard(name)
        self._fell[name] = (now, reason)
        if self._healthy or self._kept or self._exhausted or self.grace_seconds <= 0:
            return False
        recent = {
            member: why
            for member, (at, why) in self._fell.items()
            if now - at <= self.window_seconds
        }
        if len(recent) < self.min_members or not all(
            why in TRANSPORT_REASONS for why in recent.values()
        ):
            return False
        self._kept = frozenset(recent)
        self._since = now
        log.warning(
            "panic: every member fell within %.1f s through transport failures (%s); the "
            "network of this redirector is the likelier culprit: routing to them for up to %g s",
            self.window_seconds,
            ", ".join(f"{m}: {w}" for m, w in sorted(recent.items())),
            self.grace_seconds,
        )
        return True

    def expire(self, now: float) -> bool:
        """End panic if its grace is over; True if :attr:`kept` changed."""
        if self._since is None or now - self._since < self.grace_seconds:
            return False
        log.warning(
            "panic over after %g s: members still unreachable, falling back", self.grace_seconds
        )
        self._exhausted = True
        return self._end()

    def _end(self) -> bool:
        self._kept = frozenset()
        self._since = None
        return True
