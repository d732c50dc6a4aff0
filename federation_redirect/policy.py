"""Choosing a member for a request. Pure: no clock, no I/O, no hidden randomness.

``route(snapshot, key, cookie=..., rng=..., loads=...)`` is the one decision function; the web
front door, the ``route`` command and the simulator all call it.

Order of rules:

1. A stickiness cookie naming a member that still honours cookies (healthy, not full, not in
   maintenance, and for ``bounded`` below the per-repository cap) wins: reason ``cookie``.
2. Otherwise, among the routable members (healthy, not full, ready, weight > 0):

   ``rendezvous``
       the best by weighted rendezvous hashing of the repository key (see
       :mod:`federation_redirect.hashing`): reason ``hash``.
   ``random``
       one drawn with probability proportional to weight from the injected ``rng``:
       reason ``random``.
   ``bounded``
       consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018),
       weighted: walk the repository's rendezvous ranking and take the first member whose
       load is under its bound and that has started fewer than ``per_repo_cap`` sessions of
       this repository in the session window. Reason ``hash`` for the first-ranked member,
       ``spill`` for a later one. If no member qualifies, the least utilised one (load over
       bound): reason ``saturated``.

       * load of a member = pods it last reported + launches sent to it since that report;
       * bound = ceil(balance_factor x (total load + 1) x weight / total weight), and never
         more than its ``limit`` (quota - pod_headroom).

       With no load anywhere near a bound the answer is exactly ``rendezvous``'s, so
       repositories stay where their images are cached; only a member that runs ahead of its
       share sheds its *new* repositories to their second choice.
3. If no member is routable, the fallback members (the primes, regardless of health) are
   ranked by unweighted rendezvous hashing: reason ``fallback``. This keeps launches flowing
   to the member most likely to cope instead of failing them.

``None`` is returned only when every member is in maintenance.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Protocol

from .hashing import score
from .models import Decision, DecisionReason, MemberState, Snapshot, Strategy

__all__ = ["NO_LOAD", "Loads", "bound_of", "load_of", "ranked_candidates", "ranking", "route"]


class Loads(Protocol):
    """What the bounded policy needs to know beyond the snapshot (see load.LoadTracker)."""

    def launches(self, member: str) -> int:
        """Launches sent to ``member`` since its last pod report."""
        ...

    def repo_launches(self, member: str, key: str) -> int:
        """Launches of repository ``key`` sent to ``member`` within the session window."""
        ...


class _NoLoad:
    def launches(self, member: str) -> int:
        return 0

    def repo_launches(self, member: str, key: str) -> int:
        return 0


NO_LOAD: Loads = _NoLoad()


def load_of(member: MemberState, loads: Loads) -> int:
    """Pods ``member`` last reported plus launches sent to it since."""
    return (member.capacity.pods or 0) + loads.launches(member.name)


def bound_of(member: MemberState, snapshot: Snapshot, total_load: int) -> int:
    """The most load ``member`` may carry before new repositories spill past it."""
    weight_total = snapshot.candidate_weight
    share = member.weight / weight_total if weight_total > 0 else 0.0
    bound = math.ceil(snapshot.params.balance_factor * (total_load + 1) * share)
    if member.limit is not None:
        bound = min(bound, member.limit)
    return bound


def _best(key: str, members: Sequence[MemberState], *, uniform: bool = False) -> MemberState:
    best = members[0]
    best_score = -1.0
    for m in members:
        s = score(key, m.name, 1.0 if uniform else m.weight)
        # ties: the higher name wins, like hashing.rank
        if s > best_score or (s == best_score and m.name > best.name):
            best, best_score = m, s
    return best


def ranked_candidates(snapshot: Snapshot, key: str) -> list[MemberState]:
    """The routable members in ``key``'s weighted rendezvous order, best first."""
    scored = [(score(key, m.name, m.weight), m.name, m) for m in snapshot.candidates]
    scored.sort(key=lambda t: (t[0], t[1]), reverse=True)
    return [m for _, _, m in scored]


def _bounded(snapshot: Snapshot, key: str, loads: Loads) -> Decision:
    candidates = snapshot.candidates
    cap = snapshot.params.per_repo_cap
    load = {m.name: load_of(m, loads) for m in candidates}
    total = sum(load.values())
    ranked = ranked_candidates(snapshot, key)
    for rank, m in enumerate(ranked):
        if load[m.name] < bound_of(m, snapshot, total) and loads.repo_launches(m.name, key) < cap:
            return Decision(m, DecisionReason.HASH if rank == 0 else DecisionReason.SPILL, rank)
    # Every member is at its bound: the least utilised one that can still take this
    # repository (or, if none can, the least utilised of all).
    under_cap = [m for m in ranked if loads.repo_launches(m.name, key) < cap] or ranked

    def utilisation(m: MemberState) -> float:
        return load[m.name] / max(bound_of(m, snapshot, total), 1)

    chosen = min(under_cap, key=utilisation)
    return Decision(chosen, DecisionReason.SATURATED, ranked.index(chosen))


def route(
    snapshot: Snapshot,
    key: str,
    *,
    cookie: str | None = None,
    rng: random.Random | None = None,
    loads: Loads = NO_LOAD,
) -> Decision | None:
    """Choose the member for repository ``key``.

    ``cookie`` is the member name a stickiness cookie carried, if any (unvalidated: a name
    that is not a member is ignored). ``rng`` is required for the ``random`` strategy;
    ``loads`` feeds the ``bounded`` strategy (no load known: every member is empty).
    """
    strategy = snapshot.strategy
    if cookie is not None:
        held = snapshot.by_name.get(cookie)
        if (
            held is not None
            and held.honours_cookie
            and (
                strategy is not Strategy.BOUNDED
                or loads.repo_launches(held.name, key) < snapshot.params.per_repo_cap
            )
        ):
            return Decision(held, DecisionReason.COOKIE)
    candidates = snapshot.candidates
    if candidates:
        if strategy is Strategy.BOUNDED:
            return _bounded(snapshot, key, loads)
        if strategy is Strategy.RANDOM:
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
