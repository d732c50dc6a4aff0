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

       a. A repository sent within the warm window (``routing.warm_hours``, default 6 h, the
          life of a member's image cache) to members that now have room *for a warm
          repository* (load under ``balance_factor`` x its bound, and under its ``limit`` and
          the per-repository limit) goes to the best ranked of them; when it was sent to two
          or more of them within the session window (a popular repository, spread by the
          per-repository limit), to the least utilised of those. Its image is warm there, so
          this costs no cold start, and a member that runs ahead of its share sheds its *new*
          repositories first, not the ones whose images it holds.
       b. Otherwise walk the repository's rendezvous ranking and take the first member that
          has room: load under its bound, and fewer than the per-repository limit of this
          repository's launches sent to it in the session window.

       Reason ``hash`` for the first-ranked member, ``spill`` for a later one. If no member
       has room, the least utilised (load over bound) of those under both the
       per-repository limit and their ``limit``, warm ones first: reason ``saturated``; if
       there is none, rule 3.

       * load of a member = pods it last reported + launches sent to it since that report;
       * bound = ceil(balance_factor x max(total load + 1, idle floor) x weight / total
         weight), and never more than its ``limit`` (quota - pod_headroom); the idle floor is
         10 % of the candidates' combined limits, so a nearly idle federation spills nothing;
       * per-repository limit (:func:`repo_limit`) = per_repo_cap less a safety margin of
         ceil(3 x sqrt(0.74 x per_repo_cap)) (74 for 100), never below 1. The policy counts
         *launches* in the session window, but BinderHub refuses at ``per_repo_quota``
         *running sessions*, and the two differ by chance: for Poisson arrivals and
         exponential sessions whose mean is the window, the difference has variance
         (2/e) x rate x window, about 0.74 x per_repo_cap at the cap (Campbell's theorem);
         the margin is three standard deviations of it.

       With no load near a bound and no repository warm anywhere but on its first-ranked
       member, the answer is exactly ``rendezvous``'s, so repositories stay where their
       images are cached; a member that runs ahead of its share sheds only its *new*
       repositories to their next choice. ``federation-redirect simulate`` replays real
       launch traces through this function to measure all of this (README, "Simulation").
3. ``bounded`` only: when no routable member can take the repository (none is routable, or each is
   at the per-repository limit or its ``limit``), the ready, healthy member (full or not) with
   the most room by the policy's own estimates: members that are not degraded first (their
   launches succeed; the others' pod estimates are upper bounds, as sessions end between
   reports), then those with pods left (quota > load), then the largest min(quota - load, per-
   repository limit - launches of the repository in the window). Reason ``saturated``. A full
   member (within ``pod_headroom`` of its quota) still has free pods, plus those freed since its
   report, and the prime has no better claim to them than the others.
4. Otherwise, if no member is routable, the fallback members (the primes, regardless of
   health) are ranked by unweighted rendezvous hashing: reason ``fallback``. This keeps
   launches flowing to the member most likely to cope instead of failing them.

``None`` is returned only when every member is in maintenance.

Costs: everything that depends only on a member list (names, pod reports, limits, weights, the
:class:`~federation_redirect.hashing.Ranker` with its bounded per-key cache of rankings) is
computed once per member list of a snapshot and memoised by identity; a decision then reads the
launch counts of the members it examines (usually one: the first ranked, or where the
repository is warm) and the total from the :class:`Loads` counters, and hashes the key only
when its ranking is not cached. The memos hold a bounded number of entries, so memory does not
grow with the number of snapshots or distinct repositories; they never change a result (nor can
unlocked use from several threads: it could only repeat work).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from itertools import accumulate
from types import MappingProxyType
from typing import Protocol

from .hashing import Ranker, score
from .models import (
    Decision,
    DecisionReason,
    MemberState,
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

    def total_launches(self) -> int:
        """The sum of :meth:`launches` over every member."""
        ...

    def repo_launches(self, member: str, key: str) -> int:
        """Launches of repository ``key`` sent to ``member`` within the session window."""
        ...

    def repo_counts(self, key: str) -> Mapping[str, int]:
        """Every member with launches of ``key`` in the session window, with their count."""
        ...

    def warm(self, key: str) -> Mapping[str, float]:
        """Every member sent ``key`` within the warm window, with the time of the last."""
        ...


class _NoLoad:
    def launches(self, member: str) -> int:
        return 0

    def total_launches(self) -> int:
        return 0

    def repo_launches(self, member: str, key: str) -> int:
        return 0

    def repo_counts(self, key: str) -> Mapping[str, int]:
        return _NOTHING

    def warm(self, key: str) -> Mapping[str, float]:
        return _NOTHING


_NOTHING: Mapping[str, int] = MappingProxyType({})
NO_LOAD: Loads = _NoLoad()


def load_of(member: MemberState, loads: Loads) -> int:
    """Pods ``member`` last reported plus launches sent to it since."""
    return (member.capacity.pods or 0) + loads.launches(member.name)


# The total load the bounds are computed from is at least this fraction of the candidates'
# combined limits: in a nearly idle federation a member three pods ahead of its share is not
# overloaded, and spilling its repositories would only cost cold starts.
IDLE_FRACTION = 0.1


def idle_floor(members: Sequence[MemberState]) -> float:
    """``IDLE_FRACTION`` x the sum of the known ``limit`` of ``members``."""
    return IDLE_FRACTION * sum(m.limit for m in members if m.limit is not None)


def bound_of(member: MemberState, snapshot: Snapshot, total_load: int) -> int:
    """The most load ``member`` may carry before new repositories spill past it."""
    weight_total = snapshot.candidate_weight
    share = member.weight / weight_total if weight_total > 0 else 0.0
    counted = max(total_load + 1, idle_floor(snapshot.candidates))
    bound = math.ceil(snapshot.params.balance_factor * counted * share)
    if member.limit is not None:
        bound = min(bound, member.limit)
    return bound


def repo_limit(per_repo_cap: int) -> int:
    """Launches of one repository in the session window at which it spills from a member:
    ``per_repo_cap - ceil(3 x sqrt(0.74 x per_repo_cap))``, at least 1 (module docstring)."""
    return max(1, per_repo_cap - math.ceil(3 * math.sqrt(0.74 * per_repo_cap)))


# -- memoised per member list (see "Costs" in the module docstring) -------------------------

# Each memo is cleared when full. A snapshot routes with up to three member lists (candidates,
# all members, fallback); a table holds its Ranker, and so its cached rankings, alive.
_TABLES = 8
_RANKERS = 4
_MEMO_SIZE = 64
_tables: dict[int, tuple[Sequence[MemberState], _Table]] = {}
_rankers: dict[tuple[tuple[str, ...], tuple[float, ...]], Ranker] = {}
_limits: dict[int, int] = {}
_cookies: dict[int, tuple[MemberState, Decision | None]] = {}


def _repo_limit(per_repo_cap: int) -> int:
    limit = _limits.get(per_repo_cap)
    if limit is None:
        if len(_limits) >= _MEMO_SIZE:
            _limits.clear()
        limit = _limits[per_repo_cap] = repo_limit(per_repo_cap)
    return limit


def _ranker(names: tuple[str, ...], weights: tuple[float, ...]) -> Ranker:
    # Shared by every snapshot with the same names and weights, so that a new snapshot that
    # changed only health details or pod counts keeps the cached rankings.
    signature = (names, weights)
    ranker = _rankers.get(signature)
    if ranker is None:
        if len(_rankers) >= _RANKERS:
            _rankers.clear()
        ranker = _rankers[signature] = Ranker(list(zip(names, weights, strict=True)))
    return ranker


class _Table:
    """What routing needs of one member list, computed once (members are immutable)."""

    __slots__ = (
        "_hash",
        "_others",
        "_random",
        "_share_total",
        "_shares",
        "_uniform",
        "_usable",
        "cum_weights",
        "idle_floor",
        "index",
        "limits",
        "members",
        "names",
        "pods",
        "ranker",
        "total_pods",
        "weights",
    )

    def __init__(self, members: Sequence[MemberState]) -> None:
        self.members = members
        self.names = tuple(m.name for m in members)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.pods = tuple(m.capacity.pods or 0 for m in members)
        self.total_pods = sum(self.pods)
        self.limits = tuple(m.limit for m in members)
        self.idle_floor = idle_floor(members)
        self.weights = tuple(m.weight for m in members)
        self.ranker = _ranker(self.names, self.weights)
        self.cum_weights: list[float] | None = None
        self._uniform: Ranker | None = None
        self._usable: _Table | None = None
        self._hash: list[Decision | None] = [None] * len(members)
        self._random: list[Decision | None] = [None] * len(members)
        self._share_total: float | None = None
        self._shares: tuple[float, ...] = ()
        self._others: tuple[str, ...] | None = None

    def others(self, snapshot: Snapshot) -> tuple[str, ...]:
        """The names of ``snapshot``'s members that are not in this table (its candidates
        table: a table is only ever built from one snapshot's candidates)."""
        if self._others is None:
            index = self.index
            self._others = tuple(m.name for m in snapshot.members if m.name not in index)
        return self._others

    def shares(self, weight_total: float) -> tuple[float, ...]:
        """Each member's ``weight / weight_total`` (0.0 if the total is not positive)."""
        if weight_total != self._share_total:
            self._shares = tuple(
                w / weight_total if weight_total > 0 else 0.0 for w in self.weights
            )
            self._share_total = weight_total
        return self._shares

    @property
    def uniform(self) -> Ranker:
        """Ranker with every weight 1.0 (fallback ranking)."""
        if self._uniform is None:
            self._uniform = _ranker(self.names, (1.0,) * len(self.names))
        return self._uniform

    @property
    def usable(self) -> _Table:
        """The ready, healthy members with weight > 0 (rule 3), as their own table."""
        if self._usable is None:
            self._usable = _Table(tuple(m for m in self.members if m.serving))
        return self._usable

    def hashed(self, index: int) -> Decision:
        """``Decision(members[index], HASH, 0)``, made once."""
        decision = self._hash[index]
        if decision is None:
            decision = self._hash[index] = Decision(self.members[index], DecisionReason.HASH, 0)
        return decision

    def drawn(self, index: int) -> Decision:
        """``Decision(members[index], RANDOM)``, made once."""
        decision = self._random[index]
        if decision is None:
            decision = self._random[index] = Decision(self.members[index], DecisionReason.RANDOM)
        return decision


def _table(members: Sequence[MemberState]) -> _Table:
    """The table of ``members``, memoised by identity for tuples (which cannot change)."""
    if type(members) is not tuple:
        return _Table(members)
    hit = _tables.get(id(members))
    if hit is not None and hit[0] is members:
        return hit[1]
    table = _Table(members)
    if len(_tables) >= _TABLES:
        _tables.clear()
    _tables[id(members)] = (members, table)  # holding ``members`` keeps its id unique
    return table


def _cookie_decision(held: MemberState) -> Decision | None:
    """``Decision(held, COOKIE)`` if ``held`` honours cookies, else None; made once."""
    hit = _cookies.get(id(held))
    if hit is not None and hit[0] is held:
        return hit[1]
    decision = Decision(held, DecisionReason.COOKIE) if held.honours_cookie else None
    if len(_cookies) >= _MEMO_SIZE:
        _cookies.clear()
    _cookies[id(held)] = (held, decision)
    return decision


# -- the rules ------------------------------------------------------------------------------


def _best(key: str, members: Sequence[MemberState], *, uniform: bool = False) -> MemberState:
    """The best of ``members`` by (score, name), the first of equals."""
    table = _table(members)
    ranker = table.uniform if uniform else table.ranker
    return members[ranker.order(key)[0]]


def ranked_candidates(snapshot: Snapshot, key: str) -> list[MemberState]:
    """The routable members in ``key``'s weighted rendezvous order, best first."""
    return _ranked(key, snapshot.candidates)


def _ranked(key: str, members: Sequence[MemberState]) -> list[MemberState]:
    table = _table(members)
    return [members[i] for i in table.ranker.order(key)]


def _overflow(snapshot: Snapshot, key: str, loads: Loads) -> Decision | None:
    """Rule 3 of the module docstring; None if no member is ready and healthy."""
    table = _table(snapshot.members).usable
    if not table.members:
        return None
    order = table.ranker.order(key)
    cap = _repo_limit(snapshot.params.per_repo_cap)
    members = table.members
    sent = loads.repo_counts(key)

    def room(i: int) -> tuple[bool, bool, float]:
        # A member with pods left by our estimate (an upper bound of its pods) can surely
        # start one; the per-repository count is only an estimate either way. A degraded
        # member comes last: its launches are failing, and the others' estimates are upper
        # bounds (their sessions end between reports).
        m = members[i]
        quota = m.capacity.quota if m.capacity.quota is not None else m.limit
        pods = math.inf if quota is None else quota - load_of(m, loads)
        return not m.degraded, pods > 0, min(pods, cap - sent.get(m.name, 0))

    chosen = max(order, key=room)  # max keeps the first of equals: the better ranked
    return Decision(members[chosen], DecisionReason.SATURATED, order.index(chosen))


def _bounded(snapshot: Snapshot, key: str, loads: Loads) -> Decision | None:
    """Rule 2 for ``bounded``; None when rule 3 applies.

    Lists are indexed like ``snapshot.candidates``; ``order`` is the ranking (indices, best
    first) and a member's rank is its position in it.
    """
    table = _table(snapshot.candidates)
    names = table.names
    params = snapshot.params
    cap = _repo_limit(params.per_repo_cap)
    launches = loads.launches
    # total load of the candidates: launches to members that are not candidates do not count
    total = table.total_pods + loads.total_launches()
    for name in table.others(snapshot):
        total -= launches(name)
    # bound of member i: ceil(balance_factor x max(total load + 1, idle floor) x share_i), at
    # most its limit; everything but the share is the same for all members
    scale = params.balance_factor * max(total + 1, table.idle_floor)
    shares = table.shares(snapshot.candidate_weight)
    pods = table.pods
    limits = table.limits
    sent = loads.repo_counts(key)
    order = table.ranker.order(key)
    warm = loads.warm(key)
    # The common case first, inline (it is every launch's hot path; _View.bound and
    # _View.load are the same computations): the first-ranked member has room, and the
    # repository is warm nowhere else and not spread (rules 2a and 2b would both choose it).
    first = order[0]
    name = names[first]
    if (not warm or name in warm) and len(sent) <= 1 and sent.get(name, 0) < cap:
        bound = math.ceil(scale * shares[first])
        limit = limits[first]
        if limit is not None and limit < bound:
            bound = limit
        if pods[first] + launches(name) < bound:
            return table.hashed(first)
    view = _View(table, order, loads, sent, warm, scale, shares, cap)
    if warm:
        decision = view.warm_choice(params.balance_factor)
        if decision is not None:
            return decision
    # rule 2b: the first member in ranking order that has room
    for rank, i in enumerate(order):
        if view.load(i) < view.bound(i) and sent.get(names[i], 0) < cap:
            return view.ranked(i, rank)
    return view.saturated()


class _View:
    """What one ``bounded`` decision for one repository sees: the candidates' table, the
    repository's ranking (``order``) and launch counts, and the common bound ``scale``."""

    __slots__ = ("cap", "loads", "order", "scale", "sent", "shares", "table", "warm")

    def __init__(
        self,
        table: _Table,
        order: tuple[int, ...],
        loads: Loads,
        sent: Mapping[str, int],
        warm: Mapping[str, float],
        scale: float,
        shares: Sequence[float],
        cap: int,
    ) -> None:
        self.table = table
        self.order = order
        self.loads = loads
        self.sent = sent
        self.warm = warm
        self.scale = scale
        self.shares = shares
        self.cap = cap

    def bound(self, i: int, factor: float = 1.0) -> int:
        """Member ``i``'s bound (times ``factor``), never past its limit."""
        bound = math.ceil(self.scale * self.shares[i])
        if factor != 1.0:
            bound = math.ceil(bound * factor)
        limit = self.table.limits[i]
        return bound if limit is None or bound <= limit else limit

    def load(self, i: int) -> int:
        return self.table.pods[i] + self.loads.launches(self.table.names[i])

    def ranked(self, i: int, rank: int) -> Decision:
        if rank == 0:
            return self.table.hashed(i)
        return Decision(self.table.members[i], DecisionReason.SPILL, rank)

    def warm_choice(self, factor: float) -> Decision | None:
        """Rule 2a: a warm member with room under ``factor`` x its bound, if any."""
        sent = self.sent
        index = self.table.index
        chosen: list[tuple[float, int, bool]] = []  # utilisation, index, sent in the window
        for name in self.warm:
            i = index.get(name)
            if i is None or sent.get(name, 0) >= self.cap:
                continue
            load = self.load(i)
            if load < self.bound(i, factor):
                chosen.append((load / max(self.bound(i), 1), i, sent.get(name, 0) > 0))
        if not chosen:
            return None
        rank = self.order.index
        spread = [c for c in chosen if c[2]]
        if len(spread) > 1:
            # sent to several members within the session window (a popular repository):
            # the least utilised of those, the first ranked of equals
            best = min(spread, key=lambda c: (c[0], rank(c[1])))[1]
        else:
            best = min(chosen, key=lambda c: rank(c[1]))[1]
        return self.ranked(best, rank(best))

    def saturated(self) -> Decision | None:
        """Rule 2c: every member is at its bound. The least utilised of those that can
        still take this repository and are under their limit, warm ones first; None if
        there is none (the caller looks further: rule 3)."""
        names = self.table.names
        limits = self.table.limits
        best: tuple[bool, float, int] | None = None
        for rank, i in enumerate(self.order):
            name = names[i]
            if self.sent.get(name, 0) >= self.cap:
                continue
            load = self.load(i)
            limit = limits[i]
            if limit is not None and load >= limit:
                continue
            candidate = (name not in self.warm, load / max(self.bound(i), 1), rank)
            if best is None or candidate < best:
                best = candidate
        if best is None:
            return None
        rank = best[2]
        return Decision(self.table.members[self.order[rank]], DecisionReason.SATURATED, rank)


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
        if held is not None:
            decision = _cookie_decision(held)
            if decision is not None and (
                strategy is not Strategy.BOUNDED
                or loads.repo_launches(held.name, key) < _repo_limit(snapshot.params.per_repo_cap)
            ):
                return decision
    candidates = snapshot.candidates
    if strategy is Strategy.BOUNDED:
        decision = (_bounded(snapshot, key, loads) if candidates else None) or _overflow(
            snapshot, key, loads
        )
        if decision is not None:
            return decision
    elif candidates:
        table = _table(candidates)
        if strategy is Strategy.RANDOM:
            if rng is None:
                raise ValueError("the random strategy needs an rng")
            if table.cum_weights is None:
                table.cum_weights = list(accumulate(table.weights))
            # the same draw as rng.choices(candidates, weights): one random() per launch
            chosen = rng.choices(range(len(candidates)), cum_weights=table.cum_weights)[0]
            return table.drawn(chosen)
        return table.hashed(table.ranker.order(key)[0])
    if snapshot.fallback:
        return Decision(_best(key, snapshot.fallback, uniform=True), DecisionReason.FALLBACK)
    return None


def ranking(snapshot: Snapshot, key: str) -> list[tuple[MemberState, float]]:
    """Every member with its rendezvous score for ``key``, best first (for display)."""
    scored = [(m, score(key, m.name, m.weight)) for m in snapshot.members]
    scored.sort(key=lambda ms: (ms[1], ms[0].name), reverse=True)
    return scored
