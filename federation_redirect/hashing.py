"""Weighted rendezvous (highest-random-weight) hashing. Pure.

Each member ``m`` with weight ``w`` scores a key ``k`` as ``w / -log2(u)``, where ``u`` is a
uniform variate in (0, 1) that depends only on ``k`` and ``m``; the member with the highest
score wins. This is the weighted form of rendezvous hashing (Thaler and Ravishankar, 1998;
the ``-1/ln(u)`` weighting is from Schindelhauer and Schomaker, 2005): ``-log2(u)`` is an
exponential variate (``-ln(u) / ln 2``), the smallest of the ``-log2(u_i) / w_i`` falls to
member ``i`` with probability ``w_i / sum(w)``, so a member holds that share of the keys; and
since each member's variate depends on nothing but the key and that member's name (not its
place in the list, nor the other members), adding, removing or reweighting one member only
moves keys to or from that member.

The variate::

    h   = blake2b(k, digest_size=4)                          (little-endian, once per key)
    s_m = blake2b(m, digest_size=4, person=b"fr-member")     (once per member list)
    v   = lowbias32(h XOR s_m)      (Wellons's 32-bit integer hash: two multiply-xorshifts)
    u   = (2 v + 1) / 2**33

``u`` lies in ``[2**-33, 1 - 2**-33]``, so ``-log2(u)`` is never 0 (no division by zero) and
at most 33. Weight 0 scores 0. Everything up to ``u`` is exact integer arithmetic and the
score is one ``log2`` and one division of floats, so scores are the same in every process and
after every restart (no use of Python's salted ``hash()``). Equal scores (equal weights and
equal variates, about one pair of members in 2**32 per key, or weight 0) are ordered by
name, descending, then by list order.

This is not the production (mybinder.org Tornado) app's score, ``w / -ln(u)`` with ``u`` from
``blake2b("{k}-{m}")``: matching it was worthless, since our keys name repositories where it
hashed URL paths (so the rankings differed anyway) and production routes by weighted random
choice; and it cost one blake2b per member, 60 to 90 us per ranking at 100 members.

:class:`Ranker` is the fast path for one fixed member list (what a routing snapshot holds):
the same scores as :func:`score` (bit for bit) and the order of :func:`rank`. It computes the
variates of all members at once: each member's 32-bit value sits in the low half of its own
64-bit lane of one Python integer, so that a lane's product with a 32-bit constant never
carries into the next, and each step of the hash (xor, shift, multiply, mask) acts on every
lane in one integer operation; ``v`` then goes to the top of a double's mantissa, and the
lanes' bytes read as the doubles ``1 + v / 2**32``. A ranking is then three passes of C-level
``map`` (``u``, ``log2``, the division) and one sort. Rankings are memoised per key in a cache
of bounded size, so that its memory does not grow with the number of distinct keys seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from hashlib import blake2b
from itertools import repeat
from operator import sub, truediv

__all__ = ["Ranker", "rank", "score"]

_M32 = (1 << 32) - 1
_C1 = 0x7FEB352D  # lowbias32's multipliers
_C2 = 0x846CA68B
_LANE = 64  # bits per member in the packed integers
_ONE_BITS = 0x3FF0000000000000  # the bits of 1.0: (those | v << 20) is the double 1 + v / 2**32
# (1 + v / 2**32) - _U_SHIFT == (2 v + 1) / 2**33 exactly: the difference is representable
_U_SHIFT = 1.0 - 2.0**-33
_U_SCALE = 2.0**-33
# Empty blake2b states: copying one is cheaper than a new hash object with options.
_KEY_HASH = blake2b(digest_size=4)
_MEMBER_HASH = blake2b(digest_size=4, person=b"fr-member")

# Rankings kept by one Ranker: at most RANK_CACHE_MAX_KEYS keys per generation (a day of
# mybinder.org launches about 1,600 distinct repositories: 1,576 on 2021-11-01), and at most
# RANK_CACHE_BUDGET member indices per generation (2 MiB of tuples): fewer keys for long
# member lists.
RANK_CACHE_BUDGET = 1 << 18
RANK_CACHE_MAX_KEYS = 1 << 14
# Up to this many members, orders are shared between keys (at most 720 distinct tuples), so
# a cached key costs only its dict slot.
_SHARED_ORDERS_UP_TO = 6


def _key_hash(key: str) -> int:
    h = _KEY_HASH.copy()
    h.update(key.encode())
    return int.from_bytes(h.digest(), "little")


@lru_cache(maxsize=4096)  # score() and rank() are called with the same few members
def _member_seed(name: str) -> int:
    h = _MEMBER_HASH.copy()
    h.update(name.encode())
    return int.from_bytes(h.digest(), "little")


def _variate(h: int, seed: int) -> float:
    """``u`` of the module docstring for key hash ``h`` and member seed ``seed``."""
    z = h ^ seed
    z = ((z ^ (z >> 16)) * _C1) & _M32
    z = ((z ^ (z >> 15)) * _C2) & _M32
    return (2 * (z ^ (z >> 16)) + 1) * _U_SCALE


def score(key: str, member: str, weight: float) -> float:
    """The rendezvous score of ``member`` (with ``weight`` >= 0) for ``key``. Higher wins."""
    return weight / -math.log2(_variate(_key_hash(key), _member_seed(member)))


def rank(key: str, members: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """Every ``(name, weight)`` of ``members`` as ``(name, score)``, best first.

    Ties (only possible between equal weights and equal variates, or weight 0) are broken by
    name, descending.
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

    __slots__ = (
        "_by_name",
        "_mask",
        "_max_keys",
        "_nbytes",
        "_neg_weights",
        "_old",
        "_one",
        "_orders",
        "_rep",
        "_seeds",
        "_young",
        "names",
        "weights",
    )

    def __init__(
        self, members: Sequence[tuple[str, float]], *, max_keys: int = RANK_CACHE_MAX_KEYS
    ) -> None:
        self.names: tuple[str, ...] = tuple(name for name, _ in members)
        self.weights: tuple[float, ...] = tuple(weight for _, weight in members)
        n = len(self.names)
        # Packed integers: member i's value in bits [64 i, 64 i + 32).
        rep = sum(1 << (_LANE * i) for i in range(n))
        self._rep = rep
        self._mask = _M32 * rep
        self._one = _ONE_BITS * rep
        # The hash's first step, z ^ (z >> 16), is linear in z = h ^ seed: its seed half is
        # done here, its key half once per key (in _doubles).
        seeds = (_member_seed(name) for name in self.names)
        self._seeds = sum((s ^ (s >> 16)) << (_LANE * i) for i, s in enumerate(seeds))
        self._nbytes = n * _LANE // 8
        # -w / log2(u) == w / -log2(u), the score, exactly
        self._neg_weights = [-w for w in self.weights]
        # Sorting these by score keeps equals in this order: name, descending, then index.
        names = self.names
        self._by_name = sorted(range(n), key=lambda i: (names[i], -i), reverse=True)
        self._max_keys = max(16, min(max_keys, RANK_CACHE_BUDGET // max(1, n)))
        self._young: dict[str, tuple[int, ...]] = {}
        self._old: dict[str, tuple[int, ...]] = {}
        self._orders: dict[tuple[int, ...], tuple[int, ...]] | None = (
            {} if n <= _SHARED_ORDERS_UP_TO else None
        )

    def _doubles(self, key: str) -> memoryview[float]:
        """``1 + v_i / 2**32`` for every member ``i`` (``v_i``: the module docstring's ``v``),
        as a memoryview of doubles."""
        h = _key_hash(key)
        mask = self._mask
        z = ((h ^ (h >> 16)) * self._rep ^ self._seeds) * _C1 & mask
        z = ((z ^ (z >> 15)) & mask) * _C2 & mask
        z = ((z ^ (z >> 16)) & mask) << 20 | self._one
        return memoryview(z.to_bytes(self._nbytes, "little")).cast("d")

    def scores(self, key: str) -> list[float]:
        """Every member's score for ``key``, in list order (not memoised)."""
        if not self.names:
            return []
        u = map(sub, self._doubles(key), repeat(_U_SHIFT))
        return list(map(truediv, self._neg_weights, map(math.log2, u)))

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
        # stable, also in reverse: equal scores keep the _by_name order
        order = tuple(sorted(self._by_name, key=scores.__getitem__, reverse=True))
        if self._orders is not None:
            order = self._orders.setdefault(order, order)
        return order

    def best(self, key: str) -> int:
        """Index of the best member for ``key`` (``order(key)[0]``)."""
        return self.order(key)[0]
