"""Weighted rendezvous hashing: the score definition, pinned values, and the properties that
matter (shares, minimal disruption, determinism), for the scalar and the packed paths."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections import Counter
from hashlib import blake2b

from hypothesis import given, settings
from hypothesis import strategies as st

from federation_redirect.hashing import Ranker, rank, score


def reference_u(key: str, member: str) -> float:
    """The module docstring's u, written out plainly (independent of the module's code)."""
    h = int.from_bytes(blake2b(key.encode(), digest_size=4).digest(), "little")
    s = int.from_bytes(
        blake2b(member.encode(), digest_size=4, person=b"fr-member").digest(), "little"
    )
    x = h ^ s
    x ^= x >> 16
    x = (x * 0x7FEB352D) % 2**32
    x ^= x >> 15
    x = (x * 0x846CA68B) % 2**32
    x ^= x >> 16
    return (2 * x + 1) / 2**33


def names_of(members: list[tuple[str, float]], order: tuple[int, ...]) -> list[str]:
    return [members[i][0] for i in order]


# -- the definition, pinned ------------------------------------------------------------------


def test_scores_follow_the_documented_definition() -> None:
    rng = random.Random(5)
    members = [(f"member-{i}", rng.choice([0.0, 0.3, 1.0, 50.0, 2500.0])) for i in range(40)]
    ranker = Ranker(members)
    for k in range(50):
        key = f"gh:org-{k}/repo"
        expected = [w / -math.log2(reference_u(key, m)) for m, w in members]
        assert [score(key, m, w) for m, w in members] == expected
        assert ranker.scores(key) == expected


def test_pinned_variates_scores_and_rankings() -> None:
    # Integer parts exactly; scores to 13 digits (one libm log2 each).
    assert reference_u("gh:org/repo", "gke") * 2**33 == 198929527
    assert reference_u("gh:ipython/ipython-in-depth", "gesis") * 2**33 == 5774597525
    assert reference_u("", "") * 2**33 == 906807345
    assert math.isclose(
        score("gh:ipython/ipython-in-depth", "gesis", 50), 87.271191571516, rel_tol=1e-12
    )
    assert math.isclose(score("gh:org/repo", "gke", 1.0), 0.184083486073731, rel_tol=1e-12)
    federation = [("gke", 2500.0), ("ovh", 180.0), ("gesis", 260.0), ("curvenote", 100.0)]
    ranked = [name for name, _ in rank("gh:ipython/ipython-in-depth", federation)]
    assert ranked == ["gke", "gesis", "curvenote", "ovh"]
    equal = [("a", 1.0), ("b", 1.0), ("c", 1.0)]
    assert [n for n, _ in rank("gh:jupyterlab/jupyterlab-demo", equal)] == ["c", "a", "b"]
    assert names_of(equal, Ranker(equal).order("gh:jupyterlab/jupyterlab-demo")) == ["c", "a", "b"]


def test_scores_are_the_same_in_another_process_with_another_hash_seed() -> None:
    keys = [f"gh:org/repo-{i}" for i in range(20)]
    members = [(f"m{i}", float(i + 1)) for i in range(7)]
    program = (
        "import json, sys\n"
        "from federation_redirect.hashing import Ranker\n"
        "keys, members = json.loads(sys.stdin.read())\n"
        "r = Ranker([tuple(m) for m in members])\n"
        "print(json.dumps([[r.scores(k), list(r.order(k))] for k in keys]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    out = subprocess.run(
        [sys.executable, "-c", program],
        input=json.dumps([keys, members]),
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    ranker = Ranker(members)
    assert json.loads(out) == [[ranker.scores(k), list(ranker.order(k))] for k in keys]


# -- sizes -----------------------------------------------------------------------------------


def test_no_member_and_one_member() -> None:
    assert Ranker([]).order("gh:a/b") == ()
    assert Ranker([]).scores("gh:a/b") == []
    one = Ranker([("solo", 3.0)])
    assert one.order("gh:a/b") == (0,)
    assert one.best("gh:a/b") == 0
    assert one.scores("gh:a/b") == [score("gh:a/b", "solo", 3.0)] and one.scores("gh:a/b")[0] > 0


def test_a_thousand_members_rank_as_the_scalar_score_and_share_evenly() -> None:
    members = [(f"member-{i:04d}", 1.0) for i in range(1000)]
    ranker = Ranker(members)
    for key in ("gh:a/b", "gl:group/sub/project", ""):
        assert ranker.scores(key) == [score(key, m, w) for m, w in members]
        order = ranker.order(key)
        assert sorted(order) == list(range(1000))
        assert names_of(members, order) == [n for n, _ in rank(key, members)]
    # 8,000 keys over 1,000 equal members: 8 expected each; the chi-square statistic has
    # mean 999 and standard deviation about 45
    counts = Counter(ranker.best(f"gh:org/repo-{k}") for k in range(8000))
    chi2 = sum((counts.get(i, 0) - 8) ** 2 / 8 for i in range(1000))
    assert 999 - 6 * 45 < chi2 < 999 + 6 * 45


# -- shares ----------------------------------------------------------------------------------


def test_first_and_second_choices_follow_unequal_weights() -> None:
    """Each member is first with probability w / W, and second after i with probability
    w / (W - w_i) (sampling without replacement in proportion to weight)."""
    weights = [50.0, 30.0, 15.0, 4.0, 1.0]
    members = [(f"m{i}", w) for i, w in enumerate(weights)]
    ranker = Ranker(members)
    n = 40_000
    orders = [ranker.order(f"gh:org-{k % 97}/repo-{k}") for k in range(n)]
    total = sum(weights)
    first = Counter(o[0] for o in orders)
    for i, w in enumerate(weights):
        p = w / total
        assert abs(first[i] - n * p) < 4.5 * math.sqrt(n * p * (1 - p)), (i, first)
    pairs = Counter(o[:2] for o in orders)
    chi2 = 0.0
    for i, wi in enumerate(weights):
        for j, wj in enumerate(weights):
            if i != j:
                expected = n * wi / total * wj / (total - wi)
                chi2 += (pairs.get((i, j), 0) - expected) ** 2 / expected
    df = 19  # 20 cells, one constraint
    assert chi2 < df + 6 * math.sqrt(2 * df)


def test_slow_start_and_degraded_weights_keep_their_share() -> None:
    # 5 % of a capacity weight, and that x 0.1: small but not negligible shares
    weights = [3000.0, 2000.0, 0.05 * 3000.0, 0.05 * 0.1 * 3000.0]
    members = [(f"m{i}", w) for i, w in enumerate(weights)]
    ranker = Ranker(members)
    n = 40_000
    first = Counter(ranker.best(f"gh:o/r{k}") for k in range(n))
    total = sum(weights)
    for i, w in enumerate(weights):
        p = w / total
        assert abs(first[i] - n * p) < 4.5 * math.sqrt(n * p * (1 - p)), (i, first)


# -- tiny, huge and zero weights -------------------------------------------------------------


def test_scaling_every_weight_by_a_power_of_two_changes_no_ranking() -> None:
    # Scaling by 2**k is exact, so only an underflow or overflow could change an order.
    rng = random.Random(11)
    members = [(f"m{i}", rng.uniform(0.01, 100.0)) for i in range(30)]
    base = Ranker(members)
    for scale in (2.0**-990, 2.0**-500, 2.0**500, 2.0**1000):
        scaled = Ranker([(m, w * scale) for m, w in members])
        for k in range(200):
            key = f"gh:o/r{k}"
            assert scaled.order(key) == base.order(key), scale
            assert all(math.isfinite(s) and s > 0 for s in scaled.scores(key))


def test_a_tiny_weight_ranks_low_but_keeps_its_own_variate() -> None:
    members = [("big-1", 1.0), ("big-2", 1.0), ("tiny-1", 1e-12), ("tiny-2", 1e-12)]
    ranker = Ranker(members)
    firsts = Counter()
    tiny_orders = Counter()
    for k in range(4000):
        order = ranker.order(f"gh:o/r{k}")
        firsts[members[order[0]][0]] += 1
        assert {members[i][0] for i in order[2:]} == {"tiny-1", "tiny-2"}
        tiny_orders[members[order[2]][0]] += 1
    assert set(firsts) == {"big-1", "big-2"}
    # between the two tiny ones, the order is still a fair coin
    assert abs(tiny_orders["tiny-1"] - 2000) < 4.5 * math.sqrt(1000)


def test_weight_zero_scores_zero_and_is_never_first_unless_all_are_zero() -> None:
    members = [("a", 0.0), ("b", 1.0), ("c", 0.0), ("d", 2.0)]
    ranker = Ranker(members)
    for k in range(300):
        key = f"gh:o/r{k}"
        assert ranker.scores(key)[0] == 0.0 and score(key, "a", 0.0) == 0.0
        order = ranker.order(key)
        assert names_of(members, order)[2:] == ["c", "a"]  # equal scores: name, descending
    zeros = [("b", 0.0), ("a", 0.0), ("c", 0.0), ("a", 0.0)]
    # all equal: name descending, then list order
    assert Ranker(zeros).order("gh:o/r") == (2, 0, 1, 3)
    assert [n for n, _ in rank("gh:o/r", zeros)] == ["c", "b", "a", "a"]


# -- minimal disruption ----------------------------------------------------------------------

names = st.lists(
    st.text(alphabet="abcdefghij", min_size=1, max_size=6), min_size=2, max_size=8, unique=True
)
weights = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)
KEYS = [f"gh:org/repo-{i}" for i in range(60)]


def others_order(members: list[tuple[str, float]], key: str, without: str) -> list[str]:
    ranked = names_of(members, Ranker(members).order(key))
    return [n for n in ranked if n != without]


@settings(max_examples=60, deadline=None)
@given(names=names, data=st.data())
def test_reweighting_a_member_moves_keys_only_to_or_from_it(
    names: list[str], data: st.DataObject
) -> None:
    ws = [data.draw(weights) for _ in names]
    factor = data.draw(st.sampled_from([0.1, 0.5, 3.0, 1000.0]))
    changed = data.draw(st.sampled_from(names))
    before = list(zip(names, ws, strict=True))
    after = [(n, w * factor if n == changed else w) for n, w in before]
    rb, ra = Ranker(before), Ranker(after)
    for k in KEYS:
        old = names[rb.best(k)]
        new = names[ra.best(k)]
        if factor > 1:
            assert new in (old, changed)
        else:
            assert new == old or old == changed
        # the others keep their order among themselves
        assert others_order(before, k, changed) == others_order(after, k, changed)


@settings(max_examples=60, deadline=None)
@given(names=names, data=st.data())
def test_adding_or_removing_a_member_moves_only_its_keys(
    names: list[str], data: st.DataObject
) -> None:
    members = [(n, data.draw(weights)) for n in names]
    gone = data.draw(st.sampled_from(names))
    rest = [m for m in members if m[0] != gone]
    full, partial = Ranker(members), Ranker(rest)
    for k in KEYS:
        with_it = names_of(members, full.order(k))
        without = names_of(rest, partial.order(k))
        assert [n for n in with_it if n != gone] == without
        assert with_it[0] == gone or with_it[0] == without[0]


@settings(max_examples=40, deadline=None)
@given(names=names, data=st.data())
def test_the_place_in_the_list_does_not_matter(names: list[str], data: st.DataObject) -> None:
    members = [(n, data.draw(weights)) for n in names]
    shuffled = data.draw(st.permutations(members))
    for k in KEYS[:20]:
        assert names_of(members, Ranker(members).order(k)) == names_of(
            shuffled, Ranker(shuffled).order(k)
        )
