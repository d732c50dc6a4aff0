"""Which ``/versions`` a member may report: the prime's, or the prime's previous one for a while.

The prime's ``/versions`` is the *reference*; a member whose versions differ from it (as
``check.versions`` compares them) is ejected at once. During a rolling upgrade that starts
with the prime, every other member still runs the *previous* reference until its turn comes,
and mybinder.org once lost its healthy members for nine hours that way. So when the reference
changes, the one it replaced stays acceptable for ``check.version_grace_seconds``:

=====================================  =========================================================
member's versions match                acceptable?
=====================================  =========================================================
the current reference (or none yet)    yes
a reference replaced less than         yes: a member that has not been upgraded yet
``grace`` seconds ago
any other reference, or nothing seen   no: a member on a version the prime never had, or one
                                       left behind longer than the grace window
=====================================  =========================================================

Pure: no I/O, no clock of its own (``now`` is monotonic seconds from the caller); the
comparison itself is injected (the health engine's ``versions_match`` for its mode). The
policy notices a new reference when it is handed one that differs from the last
(:meth:`VersionPolicy.observe`), so the grace window starts at the first check after the prime
reported its new versions: at most one check period late, which only lengthens it.

A member upgraded *before* the prime runs a version that was never a reference, so under
``exact`` or ``binderhub`` it is ejected until the prime catches up: upgrade the prime first
(or use ``check.versions: off`` for an upgrade that must start elsewhere).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TypeAlias

__all__ = ["Match", "VersionPolicy"]

Versions: TypeAlias = Mapping[str, object]
#: ``match(member_versions, reference)``: True when the member is acceptable against it.
Match: TypeAlias = Callable[[Versions, Versions | None], bool]

_HISTORY = 8  # previous references remembered; older ones are past any sane grace window


class VersionPolicy:
    """The current reference and the references it replaced, with when they were replaced.

    ``grace_seconds`` 0 disables the grace window (only the current reference is acceptable).
    """

    __slots__ = ("_history", "_match", "grace_seconds", "reference")

    def __init__(self, match: Match, *, grace_seconds: float, history: int = _HISTORY) -> None:
        self._match = match
        self.grace_seconds = grace_seconds
        self.reference: Versions | None = None
        # (previous reference, monotonic time it was replaced), newest first
        self._history: deque[tuple[Versions, float]] = deque(maxlen=history)

    def observe(self, reference: Versions | None, now: float) -> bool:
        """Take ``reference`` as the current one; True if it replaced a different one.

        None (no reference known) changes nothing.
        """
        if reference is None or (self.reference is not None and reference == self.reference):
            return False
        frozen = MappingProxyType(dict(reference))
        previous, self.reference = self.reference, frozen
        if previous is None:
            return False
        # the same reference coming back (a rollback) is current again, not also previous
        kept = [(v, t) for v, t in self._history if v != frozen]
        self._history.clear()
        self._history.append((previous, now))
        self._history.extend(kept[: (self._history.maxlen or _HISTORY) - 1])
        return True

    def acceptable(self, member: Versions, now: float) -> bool:
        """Whether a member reporting ``member`` may stay in rotation at ``now``."""
        return self._match(member, self.reference) or self.tolerated(member, now)

    def tolerated(self, member: Versions, now: float) -> bool:
        """Acceptable only thanks to the grace window: it matches a recent previous reference."""
        if self.grace_seconds <= 0:
            return False
        return any(
            now - replaced < self.grace_seconds and self._match(member, previous)
            for previous, replaced in self._history
        )

    def previous(self, now: float) -> list[Versions]:
        """The previous references still within the grace window, newest first."""
        return [v for v, t in self._history if now - t < self.grace_seconds]
