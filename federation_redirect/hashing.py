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
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from hashlib import blake2b

__all__ = ["rank", "score"]

_MAX = 0xFFFFFFFFFFFFFFFF
_U_MIN = 1.0 / _MAX
_U_MAX = 1.0 - 2.0**-53  # the largest float below 1.0


def score(key: str, member: str, weight: float) -> float:
    """The rendezvous score of ``member`` (with ``weight`` >= 0) for ``key``. Higher wins."""
    digest = blake2b(f"{key}-{member}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / _MAX
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
