"""Weighted rendezvous (highest-random-weight) hashing. Pure.

Each member ``m`` with weight ``w`` scores a key ``k`` as ``w / -ln(u)`` where ``u`` is a
uniform variate in (0, 1) derived from ``blake2b("{k}-{m}", digest_size=8)`` read as a
big-endian unsigned integer and divided by ``2**64 - 1``. The member with the highest score
wins. This is the weighted form of rendezvous hashing (Thaler and Ravishankar, 1998; the
``-1/ln(u)`` weighting is from Schindelhauer and Schomaker, 2005): a member holds a
``w / sum(w)`` share of the keys, and adding, removing or reweighting one member only moves
keys to or from that member.

The score definition is exactly the one mybinder.org's Tornado redirector uses (so the same key
and the same members give the same ranking as there; our keys name repositories, not URL paths,
so they differ from the ones it hashed), with one fix: there ``u`` could round to 1.0 (a division
by zero) or be 0 (a domain error). Here ``u`` is clamped into ``[2**-64, 1 - 2**-53]``; every
hash value the old code could score gets the same score here. No use of Python's ``hash()``:
scores are the same in every process, on every machine, after every restart.

:class:`Ranker` is the fast path for one fixed member list (what a routing snapshot holds): the
same scores and the same order as :func:`rank`, computed by hashing the key once and copying
the hash state per member, and memoised per key in a cache of bounded size, so that its memory
does not grow with the number of distinct keys seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from hashlib import blake2b

__all__ = ["Ranker", "rank", "score"]

_MAX = 0xFFFFFFFFFFFFFFFF
_U_MIN = 1.0 / _MAX
_U_MAX = 1.0 - 2.0**-53  # the largest float below 1.0
# An empty 8-byte blake2b state: copying it is cheaper than a new hash object with options.
_EMPTY_HASH = blake2b(digest_size=8)

# Rankings kept by one Ranker: at most RANK_CACHE_MAX_KEYS keys per generation (a day of
# mybinder.org launches about 1,600 distinct repositories: 1,576 on 2021-11-01), and at most
# RANK_CACHE_BUDGET member indices per generation (2 MiB of tuples): fewer keys for long
# member lists.
RANK_CACHE_BUDGET = 1 << 18
RANK_CACHE_MAX_KEYS = 1 << 14
# Up to this many members, orders are shared between keys (at most 720 distinct tuples), so
# a cached key costs only its dict slot.
_SHARED_ORDERS_UP_TO = 6


def score(key: str, member: str, weight: float) -> float:
    """The rendezvous score of ``member`` (with ``weight`` >= 0) for ``key``. Higher wins."""
    h = _EMPTY_HASH.copy()
    h.update(f"{key}-{member}".encode())
    u = int.from_bytes(h.digest(), "big") / _MAX
    if u < _U_MIN:
        u = _U_MIN
    elif u > _U_MAX:
        u = _U_MAX
    return weight / -math.log(u)


def rank(key: str, members: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """Every ``(name, weight)`` of ``members`` as ``(name, score)``, best first.

    Ties (only possible between equal weights and equal hashes, or weight 0) are broken by
    name, descending, as the production app does.
    """
    scored = [(score(key, name, weight), name) for name, weight in members]
    scored.sort(reverse=True)
    return [(name, s) for s, name in scored]


class Ranker:
    """Rendezvous scores and rankings of keys over one fixed list of ``(name, weight)``.

    ``scores(key)[i]`` is exactly ``score(key, names[i], weights[i])``. ``order(key)`` is the
    tuple of member indices best first: by score, then name, descending, then list order
    (the order :func:`rank` gives). Orders are memoised per key in two generations of at most
    ``max_keys`` keys each (fewer for long member lists: at most ``RANK_CACHE_BUDGET`` member
    indices per generation): a key looked up in the current or the previous generation is a
    hit, and when the current one is full it becomes the previous one. Memory is bounded
    whatever the number of distinct keys. Nothing is locked: callers in several threads could
    only lose cached entries, never get a wrong order.
    """

    __slots__ = ("_max_keys", "_old", "_orders", "_pairs", "_young", "names", "weights")

    def __init__(
        self, members: Sequence[tuple[str, float]], *, max_keys: int = RANK_CACHE_MAX_KEYS
    ) -> None:
        self.names: tuple[str, ...] = tuple(name for name, _ in members)
        self.weights: tuple[float, ...] = tuple(weight for _, weight in members)
        # blake2b("{key}-{name}") is the key's hash state continued with "-{name}"
        suffixes = (f"-{name}".encode() for name in self.names)
        self._pairs = tuple(zip(suffixes, self.weights, strict=True))
        self._max_keys = max(16, min(max_keys, RANK_CACHE_BUDGET // max(1, len(self.names))))
        self._young: dict[str, tuple[int, ...]] = {}
        self._old: dict[str, tuple[int, ...]] = {}
        self._orders: dict[tuple[int, ...], tuple[int, ...]] | None = (
            {} if len(self.names) <= _SHARED_ORDERS_UP_TO else None
        )

    def scores(self, key: str) -> list[float]:
        """Every member's score for ``key``, in list order (not memoised)."""
        base = _EMPTY_HASH.copy()
        base.update(key.encode())
        from_bytes = int.from_bytes
        log = math.log
        out = []
        for suffix, weight in self._pairs:
            h = base.copy()
            h.update(suffix)
            u = from_bytes(h.digest(), "big") / _MAX
            if not _U_MIN <= u <= _U_MAX:
                u = _U_MIN if u < _U_MIN else _U_MAX
            out.append(weight / -log(u))
        return out

    def order(self, key: str) -> tuple[int, ...]:
        """Member indices for ``key``, best first (memoised)."""
        found = self._young.get(key)
        if found is not None:
            return found
        found = self._old.get(key)
        if found is None:
            found = self._order(key)
        young = self._young
        if len(young) >= self._max_keys:
            self._old = young
            young = self._young = {}
        young[key] = found
        return found

    def _order(self, key: str) -> tuple[int, ...]:
        scores = self.scores(key)
        indices = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)
        # Equal scores (equal weights and equal 64-bit hashes, or weight 0) are ordered by
        # name, descending, then list order: sort again with the full key, only then.
        if len(set(scores)) < len(scores):
            names = self.names
            indices = sorted(range(len(scores)), key=lambda i: (scores[i], names[i], -i))
            indices.reverse()
        order = tuple(indices)
        if self._orders is not None:
            order = self._orders.setdefault(order, order)
        return order

    def best(self, key: str) -> int:
        """Index of the best member for ``key`` (``order(key)[0]``)."""
        return self.order(key)[0]
