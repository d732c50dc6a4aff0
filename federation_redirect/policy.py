"""Choosing a member for a request. Pure: no clock, no I/O, no hidden randomness.

``route(snapshot, key, cookie=..., rng=...)`` is the one decision function; the web front
door, the ``route`` command and the simulator all call it.

Order of rules:

1. A stickiness cookie naming a member that still honours cookies (healthy, not full, not in
   maintenance) wins: reason ``cookie``.
2. Otherwise, among the routable members (healthy, not full, ready, weight > 0):
   ``rendezvous`` takes the best by weighted rendezvous hashing of the repository key
   (see :mod:`federation_redirect.hashing`): reason ``hash``; ``random`` draws one with
   probability proportional to weight from the injected ``rng``: reason ``random``.
3. If no member is routable, the fallback members (the primes, regardless of health) are
   ranked by unweighted rendezvous hashing: reason ``fallback``. This keeps launches flowing
   to the member most likely to cope instead of failing them.

``None`` is returned only when every member is in maintenance.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .hashing import score
from .models import Decision, DecisionReason, MemberState, Snapshot, Strategy

__all__ = ["ranking", "route"]


def _best(key: str, members: Sequence[MemberState], *, uniform: bool = False) -> MemberState:
    best = members[0]
    best_score = -1.0
    for m in members:
        s = score(key, m.name, 1.0 if uniform else m.weight)
        # ties: the higher name wins, like hashing.rank
        if s > best_score or (s == best_score and m.name > best.name):
            best, best_score = m, s
    return best


def route(
    snapshot: Snapshot,
    key: str,
    *,
    cookie: str | None = None,
    rng: random.Random | None = None,
) -> Decision | None:
    """Choose the member for repository ``key``.

    ``cookie`` is the member name a stickiness cookie carried, if any (unvalidated: a name
    that is not a member is ignored). ``rng`` is required for the ``random`` strategy.
    """
    if cookie is not None:
        held = snapshot.by_name.get(cookie)
        if held is not None and held.honours_cookie:
            return Decision(held, DecisionReason.COOKIE)
    candidates = snapshot.candidates
    if candidates:
        if snapshot.strategy is Strategy.RANDOM:
            if rng is None:
                raise ValueError("the random strategy needs an rng")
            chosen = rng.choices(candidates, [m.weight for m in candidates])[0]
            return Decision(chosen, DecisionReason.RANDOM)
        return Decision(_best(key, candidates), DecisionReason.HASH)
    if snapshot.fallback:
        return Decision(_best(key, snapshot.fallback, uniform=True), DecisionReason.FALLBACK)
    return None


def ranking(snapshot: Snapshot, key: str) -> list[tuple[MemberState, float]]:
    """Every member with its rendezvous score for ``key``, best first (for display)."""
    scored = [(m, score(key, m.name, m.weight)) for m in snapshot.members]
    scored.sort(key=lambda ms: (ms[1], ms[0].name), reverse=True)
    return scored
