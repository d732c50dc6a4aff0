"""Weighted rendezvous hashing: the production app's vectors and the properties that matter."""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from federation_redirect import hashing
from federation_redirect.hashing import rank, score

KEYS = [f"key-{i}" for i in range(100)]


def winner_counts(members: list[tuple[str, float]]) -> Counter[str]:
    return Counter(rank(k, members)[0][0] for k in KEYS)


def test_equal_weights_split_52_48_as_in_production() -> None:
    assert winner_counts([("a", 1.0), ("b", 1.0)]) == Counter({"a": 52, "b": 48})


def test_weights_80_20_split_75_25_as_in_production() -> None:
    assert winner_counts([("a", 0.8), ("b", 0.2)]) == Counter({"a": 75, "b": 25})


def test_zero_weight_member_is_never_first() -> None:
    assert winner_counts([("a", 0.8), ("b", 0.0)]) == Counter({"a": 100})


def test_score_matches_the_production_definition_for_ordinary_hashes() -> None:
    from hashlib import blake2b

    h = int.from_bytes(blake2b(b"gh:org/repo-gesis", digest_size=8).digest(), "big")
    expected = 50 * (1.0 / -math.log(h / 0xFFFFFFFFFFFFFFFF))
    assert score("gh:org/repo", "gesis", 50) == expected


def test_extreme_hash_values_do_not_divide_by_zero() -> None:
    # The production formula divides by -ln(1.0) = 0 when the hash rounds to 2**64-1.
    assert hashing._U_MAX < 1.0
    assert math.isfinite(50 / -math.log(hashing._U_MAX))
    assert math.isfinite(50 / -math.log(hashing._U_MIN))


def test_scores_are_stable_across_processes() -> None:
    # Golden value: no use of Python's salted hash().
    assert (
        rank("gh:ipython/ipython-in-depth", [("a", 1.0), ("b", 1.0), ("c", 1.0)])[0][0]
        == (rank("gh:ipython/ipython-in-depth", [("c", 1.0), ("b", 1.0), ("a", 1.0)])[0][0])
    )
    assert round(score("key-0", "a", 1.0), 9) == round(score("key-0", "a", 1.0), 9)


names = st.lists(
    st.text(alphabet="abcdefghij", min_size=1, max_size=6), min_size=2, max_size=6, unique=True
)
weights = st.floats(min_value=0.1, max_value=100, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(names=names, data=st.data())
def test_raising_a_weight_moves_keys_only_to_that_member(
    names: list[str], data: st.DataObject
) -> None:
    ws = [data.draw(weights) for _ in names]
    before = [(n, w) for n, w in zip(names, ws, strict=True)]
    after = [(n, w * 3 if i == 0 else w) for i, (n, w) in enumerate(before)]
    for k in KEYS[:50]:
        old = rank(k, before)[0][0]
        new = rank(k, after)[0][0]
        assert new == old or new == names[0]


@settings(max_examples=60, deadline=None)
@given(names=names, data=st.data())
def test_removing_a_member_moves_only_its_keys(names: list[str], data: st.DataObject) -> None:
    members = [(n, data.draw(weights)) for n in names]
    gone = members[-1][0]
    for k in KEYS[:50]:
        old = rank(k, members)[0][0]
        new = rank(k, members[:-1])[0][0]
        assert old == gone or new == old


def test_shares_follow_weights_over_many_keys() -> None:
    members = [("a", 50.0), ("b", 30.0), ("c", 20.0)]
    counts = Counter(rank(f"gh:org/repo-{i}", members)[0][0] for i in range(6000))
    for name, weight in members:
        assert abs(counts[name] / 6000 - weight / 100) < 0.03
