"""Choosing a member for a request. Pure: no clock, no I/O, no hidden randomness.

``route(snapshot, key, cookie=..., rng=..., loads=...)`` is the one decision function; the web
front door, the ``route`` command and the simulator all call it.

Order of rules:

1. A stickiness cookie naming a member that still honours cookies (healthy, not full, not in
   maintenance, and for ``bounded`` below the per-repository limit) wins: reason ``cookie``.
2. Otherwise, among the routable members (healthy, not full, ready, weight > 0):

   ``rendezvous``
       the best by weighted rendezvous hashing of the repository key (see
       :mod:`federation_redirect.hashing`): reason ``hash``.
   ``random``
       one drawn with probability proportional to weight from the injected ``rng``:
       reason ``random``.
   ``bounded``
       consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018),
       weighted, aware of where images are warm:

       a. A repository sent to two or more members within the session window (a popular
          one, or one spilled earlier) goes to the least utilised of those members that has
          room (below): its image is warm on all of them, so choosing among them costs no
          cold start, and the member it piles on keeps its room for the many repositories
          that are warm nowhere else.
       b. Otherwise walk the repository's rendezvous ranking and take the first member that
          has room: load under its bound, and fewer than the per-repository limit of this
          repository's launches sent to it in the session window.

       Reason ``hash`` for the first-ranked member, ``spill`` for a later one. If no member
       has room, the least utilised (load over bound) of those under both the
       per-repository limit and their ``limit``: reason ``saturated``; if there is none,
       rule 3.

       * load of a member = pods it last reported + launches sent to it since that report;
       * bound = ceil(balance_factor x (total load + 1) x weight / total weight), and never
         more than its ``limit`` (quota - pod_headroom);
       * per-repository limit (:func:`repo_limit`) = per_repo_cap less a safety margin of
         ceil(3 x sqrt(0.74 x per_repo_cap)) (74 for 100), never below 1. The policy counts
         *launches* in the session window, but BinderHub refuses at ``per_repo_quota``
         *running sessions*, and the two differ by chance: for Poisson arrivals and
         exponential sessions whose mean is the window, the difference has variance
         (2/e) x rate x window, about 0.74 x per_repo_cap at the cap (Campbell's theorem);
         the margin is three standard deviations of it.

       With no load near a bound and every repository sent to at most one member in the
       window, the answer is exactly ``rendezvous``'s, so repositories stay where their
       images are cached; a member that runs ahead of its share sheds only its *new*
       repositories to their next choice. ``federation-redirect simulate`` replays real
       launch traces through this function to measure all of this (README, "Simulation").
3. ``bounded`` only: when no routable member can take the repository (none is routable, or
   each is at the per-repository limit or its ``limit``), the ready, healthy member (full
   or not) with the most room by the policy's own estimates: first those with pods left
   (quota > load), then the largest min(quota - load, per-repository limit - launches of
   the repository in the window). Reason ``saturated``. A full member (within
   ``pod_headroom`` of its quota) still has free pods, plus those freed since its report,
   and the prime has no better claim to them than the others.
4. Otherwise, if no member is routable, the fallback members (the primes, regardless of
   health) are ranked by unweighted rendezvous hashing: reason ``fallback``. This keeps
   launches flowing to the member most likely to cope instead of failing them.

``None`` is returned only when every member is in maintenance.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Protocol

from .hashing import score
from .models import (
    Decision,
    DecisionReason,
    HealthState,
    MemberState,
    OperatorState,
    Snapshot,
    Strategy,
)

__all__ = [
    "NO_LOAD",
    "Loads",
    "bound_of",
    "load_of",
    "ranked_candidates",
    "ranking",
    "repo_limit",
    "route",
]


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


def repo_limit(per_repo_cap: int) -> int:
    """Launches of one repository in the session window at which it spills from a member:
    ``per_repo_cap - ceil(3 x sqrt(0.74 x per_repo_cap))``, at least 1 (module docstring)."""
    return max(1, per_repo_cap - math.ceil(3 * math.sqrt(0.74 * per_repo_cap)))


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
    return _ranked(key, snapshot.candidates)


def _ranked(key: str, members: Sequence[MemberState]) -> list[MemberState]:
    scored = [(score(key, m.name, m.weight), m.name, m) for m in members]
    scored.sort(key=lambda t: (t[0], t[1]), reverse=True)
    return [m for _, _, m in scored]


def _overflow(snapshot: Snapshot, key: str, loads: Loads) -> Decision | None:
    """Rule 3 of the module docstring; None if no member is ready and healthy."""
    usable = [
        m
        for m in snapshot.members
        if m.health is HealthState.HEALTHY and m.operator is OperatorState.READY and m.weight > 0
    ]
    if not usable:
        return None
    ranked = _ranked(key, usable)
    cap = repo_limit(snapshot.params.per_repo_cap)

    def room(m: MemberState) -> tuple[bool, float]:
        # A member with pods left by our estimate (an upper bound of its pods) can surely
        # start one; the per-repository count is only an estimate either way.
        quota = m.capacity.quota if m.capacity.quota is not None else m.limit
        pods = math.inf if quota is None else quota - load_of(m, loads)
        return pods > 0, min(pods, cap - loads.repo_launches(m.name, key))

    chosen = max(ranked, key=room)  # max keeps the first of equals: the better ranked
    return Decision(chosen, DecisionReason.SATURATED, ranked.index(chosen))


def _bounded(snapshot: Snapshot, key: str, loads: Loads) -> Decision | None:
    """Rule 2 for ``bounded``; None when rule 3 applies."""
    candidates = snapshot.candidates
    cap = repo_limit(snapshot.params.per_repo_cap)
    load = {m.name: load_of(m, loads) for m in candidates}
    total = sum(load.values())
    ranked = ranked_candidates(snapshot, key)
    bound = {m.name: bound_of(m, snapshot, total) for m in ranked}
    sent = {m.name: loads.repo_launches(m.name, key) for m in ranked}

    def utilisation(m: MemberState) -> float:
        return load[m.name] / max(bound[m.name], 1)

    def has_room(m: MemberState) -> bool:
        return load[m.name] < bound[m.name] and sent[m.name] < cap

    def ranked_decision(m: MemberState) -> Decision:
        rank = ranked.index(m)
        return Decision(m, DecisionReason.HASH if rank == 0 else DecisionReason.SPILL, rank)

    warm = [m for m in ranked if sent[m.name] > 0]
    if len(warm) >= 2:
        open_warm = [m for m in warm if has_room(m)]
        if open_warm:
            return ranked_decision(min(open_warm, key=utilisation))
    for m in ranked:
        if has_room(m):
            return ranked_decision(m)
    # Every member is at its bound: the least utilised one that can still take this
    # repository and is under its limit; if none can, the caller looks further (_overflow).
    under_cap = [
        m for m in ranked if sent[m.name] < cap and (m.limit is None or load[m.name] < m.limit)
    ]
    if not under_cap:
        return None
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
                or loads.repo_launches(held.name, key) < repo_limit(snapshot.params.per_repo_cap)
            )
        ):
            return Decision(held, DecisionReason.COOKIE)
    candidates = snapshot.candidates
    if strategy is Strategy.BOUNDED:
        decision = (_bounded(snapshot, key, loads) if candidates else None) or _overflow(
            snapshot, key, loads
        )
        if decision is not None:
            return decision
    elif candidates:
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
