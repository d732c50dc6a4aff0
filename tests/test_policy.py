"""The pure routing core: which member a repository goes to, and why."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

from federation_redirect.models import (
    Decision,
    DecisionReason,
    HealthState,
    MemberState,
    OperatorState,
    Snapshot,
    Strategy,
)
from federation_redirect.policy import ranking, route


def member(name: str, weight: float = 1.0, **kw: object) -> MemberState:
    kw.setdefault("health", HealthState.HEALTHY)
    return MemberState(name=name, url=f"https://{name}.example", weight=weight, **kw)  # type: ignore[arg-type]


def snapshot(*members: MemberState, strategy: Strategy = Strategy.RENDEZVOUS) -> Snapshot:
    indexed = tuple(replace(m, index=i) for i, m in enumerate(members))
    return Snapshot.build(1, indexed, strategy)


def choose(snap: Snapshot, key: str, cookie: str | None = None) -> Decision:
    d = route(snap, key, cookie=cookie, rng=random.Random(1))
    assert d is not None
    return d


def test_same_snapshot_same_answer_for_every_repository() -> None:
    snap = snapshot(member("a", prime=True), member("b"), member("c"))
    again = snapshot(member("a", prime=True), member("b"), member("c"))
    for i in range(500):
        assert choose(snap, f"gh:o/r{i}").member.name == choose(again, f"gh:o/r{i}").member.name


def test_hash_decision_takes_the_best_ranked_routable_member() -> None:
    snap = snapshot(member("a", prime=True), member("b"), member("c"))
    for i in range(100):
        key = f"gh:o/r{i}"
        d = choose(snap, key)
        assert d.reason is DecisionReason.HASH
        assert d.member.name == ranking(snap, key)[0][0].name


def test_unhealthy_member_gets_no_new_repositories_and_only_its_keys_move() -> None:
    healthy = snapshot(member("a", prime=True), member("b"), member("c"))
    sick = snapshot(member("a", prime=True), member("b", health=HealthState.UNHEALTHY), member("c"))
    for i in range(300):
        key = f"gh:o/r{i}"
        before, after = choose(healthy, key).member.name, choose(sick, key).member.name
        assert after != "b"
        if before != "b":
            assert after == before


@pytest.mark.parametrize(
    "blocked",
    [
        {"health": HealthState.UNKNOWN},
        {"health": HealthState.UNHEALTHY},
        {"full": True},
        {"operator": OperatorState.DRAIN},
        {"operator": OperatorState.MAINT},
        {"weight": 0.0},
    ],
    ids=["unknown", "unhealthy", "full", "drain", "maint", "zero-weight"],
)
def test_member_that_is_not_routable_gets_no_new_repositories(blocked: dict[str, object]) -> None:
    snap = snapshot(member("a", prime=True), member("b", **blocked))
    assert all(choose(snap, f"gh:o/r{i}").member.name == "a" for i in range(200))


def test_cookie_for_a_candidate_is_honoured() -> None:
    snap = snapshot(member("a", prime=True), member("b"))
    d = choose(snap, "gh:o/r", cookie="b")
    assert (d.member.name, d.reason) == ("b", DecisionReason.COOKIE)


def test_drained_member_keeps_its_cookie_holders() -> None:
    snap = snapshot(member("a", prime=True), member("b", operator=OperatorState.DRAIN))
    assert choose(snap, "gh:o/r", cookie="b").member.name == "b"


@pytest.mark.parametrize(
    "state",
    [
        {"health": HealthState.UNHEALTHY},
        {"full": True},
        {"operator": OperatorState.MAINT},
    ],
    ids=["unhealthy", "full", "maint"],
)
def test_cookie_for_a_member_that_is_no_longer_a_candidate_is_ignored(
    state: dict[str, object],
) -> None:
    snap = snapshot(member("a", prime=True), member("b", **state))
    d = choose(snap, "gh:o/r", cookie="b")
    assert d.member.name == "a" and d.reason is DecisionReason.HASH


@pytest.mark.parametrize("value", ["nobody", "", "https://evil.example", "../a", "A"])
def test_cookie_naming_anything_else_is_ignored(value: str) -> None:
    snap = snapshot(member("a", prime=True), member("b"))
    assert choose(snap, "gh:o/r", cookie=value).reason is DecisionReason.HASH


def test_no_routable_member_falls_back_to_the_prime_even_when_unhealthy() -> None:
    snap = snapshot(
        member("a", prime=True, health=HealthState.UNHEALTHY),
        member("b", health=HealthState.UNHEALTHY),
    )
    d = choose(snap, "gh:o/r")
    assert (d.member.name, d.reason) == ("a", DecisionReason.FALLBACK)


def test_zero_weight_prime_still_serves_as_fallback() -> None:
    snap = snapshot(member("a", 0.0, prime=True), member("b", health=HealthState.UNHEALTHY))
    assert choose(snap, "gh:o/r").member.name == "a"


def test_every_member_in_maintenance_gives_no_decision() -> None:
    snap = snapshot(member("a", prime=True, operator=OperatorState.MAINT))
    assert route(snap, "gh:o/r") is None


def test_random_strategy_follows_weights_and_uses_the_injected_rng() -> None:
    snap = snapshot(member("a", 3.0, prime=True), member("b", 1.0), strategy=Strategy.RANDOM)
    rng = random.Random(42)
    counts = Counter(route(snap, "gh:o/r", rng=rng).member.name for _ in range(4000))  # type: ignore[union-attr]
    assert abs(counts["a"] / 4000 - 0.75) < 0.03
    again = random.Random(42)
    assert (
        route(snap, "gh:o/r", rng=again).member.name
        == route(  # type: ignore[union-attr]
            snap, "gh:o/r", rng=random.Random(42)
        ).member.name
    )


def test_random_strategy_without_rng_is_a_programming_error() -> None:
    snap = snapshot(member("a", prime=True), strategy=Strategy.RANDOM)
    with pytest.raises(ValueError, match="rng"):
        route(snap, "gh:o/r")


def test_ranking_lists_every_member_best_first() -> None:
    snap = snapshot(member("a", prime=True), member("b", 0.0), member("c"))
    ranked = ranking(snap, "gh:o/r")
    assert {m.name for m, _ in ranked} == {"a", "b", "c"}
    assert ranked[-1][0].name == "b" and ranked[-1][1] == 0.0
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
