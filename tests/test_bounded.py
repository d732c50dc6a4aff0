"""The bounded policy, as a pure function of a snapshot and launch counts.

Snapshots are built by hand (or, where capacity weights and slow start matter, by the real
Registry with an injected clock); launch counts come from a small fake of the ``Loads`` seam.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

from federation_redirect.config import Config, parse_config
from federation_redirect.models import (
    Capacity,
    Decision,
    DecisionReason,
    HealthReport,
    HealthState,
    MemberState,
    OperatorState,
    RoutingParams,
    Snapshot,
    Strategy,
)
from federation_redirect.policy import (
    NO_LOAD,
    bound_of,
    load_of,
    ranked_candidates,
    repo_limit,
    route,
)
from federation_redirect.registry import Registry

KEYS = [f"gh:org/repo-{i}" for i in range(400)]


class Loads:
    """Launch counts as the LoadTracker would report them."""

    def __init__(
        self, since: dict[str, int] | None = None, repo: dict[tuple[str, str], int] | None = None
    ) -> None:
        self.since = since or {}
        self.repo = repo or {}

    def launches(self, member: str) -> int:
        return self.since.get(member, 0)

    def total_launches(self) -> int:
        return sum(self.since.values())

    def repo_launches(self, member: str, key: str) -> int:
        return self.repo.get((member, key), 0)

    def repo_counts(self, key: str) -> dict[str, int]:
        return {m: n for (m, k), n in self.repo.items() if k == key and n}

    def warm(self, key: str) -> dict[str, float]:
        return {m: 0.0 for (m, k), n in self.repo.items() if k == key and n}


def member(
    name: str,
    weight: float,
    *,
    quota: int | None = None,
    pods: int = 0,
    headroom: int = 10,
    **kw: object,
) -> MemberState:
    kw.setdefault("health", HealthState.HEALTHY)
    capacity = Capacity(quota=quota, pods=pods, reported_at=0.0)
    limit = None if quota is None else quota - headroom
    full = capacity.is_full(headroom)
    return MemberState(
        name=name,
        url=f"https://{name}.example",
        weight=weight,
        capacity=capacity,
        limit=limit,
        full=full,
        **kw,  # type: ignore[arg-type]
    )


def snapshot(*members: MemberState, per_repo_cap: int = 100, balance: float = 1.25) -> Snapshot:
    indexed = tuple(replace(m, index=i, prime=i == 0) for i, m in enumerate(members))
    params = RoutingParams(balance_factor=balance, per_repo_cap=per_repo_cap)
    return Snapshot.build(1, indexed, Strategy.BOUNDED, params)


def decide(
    snap: Snapshot, key: str, loads: Loads | None = None, cookie: str | None = None
) -> Decision:
    decision = route(snap, key, cookie=cookie, loads=loads or Loads())
    assert decision is not None
    return decision


def three(**pods: int) -> Snapshot:
    return snapshot(
        member("a", 300 * 50, quota=300, pods=pods.get("a", 0)),
        member("b", 180 * 50, quota=180, pods=pods.get("b", 0)),
        member("c", 60 * 50, quota=60, pods=pods.get("c", 0)),
    )


def config(**routing: object) -> Config:
    return parse_config(
        {
            "hosts": {
                "big": {"url": "https://big.example", "weight": 50, "quota": 300, "prime": True},
                "mid": {"url": "https://mid.example", "weight": 50, "quota": 180},
                "small": {"url": "https://small.example", "weight": 50, "quota": 60},
            },
            "routing": routing,
        }
    )


def healthy_registry(cfg: Config, clock: list[float]) -> Registry:
    registry = Registry(cfg, clock=lambda: clock[0])
    for name, host in cfg.hosts.items():
        capacity = Capacity(quota=host.quota, pods=0, reported_at=clock[0])
        registry.report(name, HealthReport(state=HealthState.HEALTHY, capacity=capacity))
    return registry


# -- the rendezvous answer when nothing is loaded -------------------------------------------


def test_with_no_bound_active_every_repository_gets_its_rendezvous_member() -> None:
    snap = three(a=20, b=10, c=3)
    for key in KEYS:
        d = decide(snap, key, Loads(repo={(ranked_candidates(snap, key)[0].name, key): 5}))
        assert (d.member.name, d.reason, d.rank) == (
            ranked_candidates(snap, key)[0].name,
            DecisionReason.HASH,
            0,
        )


def test_with_no_load_known_bounded_is_rendezvous_over_capacity_weights() -> None:
    snap = three()
    rendezvous = Snapshot.build(2, snap.members, Strategy.RENDEZVOUS, snap.params)
    for key in KEYS:
        bounded = route(snap, key, loads=NO_LOAD)
        plain = route(rendezvous, key)
        assert bounded is not None and plain is not None
        assert bounded.member.name == plain.member.name


# -- bounds -----------------------------------------------------------------------------------


def test_member_over_its_bound_spills_new_repositories_to_their_second_choice() -> None:
    snap = three(a=100, b=10, c=2)
    total = 112
    for key in KEYS:
        first, second, _ = ranked_candidates(snap, key)
        d = decide(snap, key)
        if first.name == "a":  # 100 pods > 1.25 x 113 x 300/540 = 79
            assert load_of(first, NO_LOAD) >= bound_of(first, snap, total)
            assert (d.member.name, d.reason, d.rank) == (second.name, DecisionReason.SPILL, 1)
        else:
            assert (d.member.name, d.reason) == (first.name, DecisionReason.HASH)


def test_launches_since_the_last_report_count_towards_the_bound() -> None:
    snap = three(a=0, b=0, c=0)
    key = next(k for k in KEYS if ranked_candidates(snap, k)[0].name == "c")
    assert decide(snap, key).member.name == "c"
    # c reported 0 pods but was sent 20 launches since: 20 > 1.25 x 21 x 60/540
    d = decide(snap, key, Loads(since={"c": 20}))
    assert d.member.name != "c" and d.reason is DecisionReason.SPILL


def test_bound_never_exceeds_quota_minus_headroom() -> None:
    # a carries nearly all the weight, so only its limit can stop it
    snap = snapshot(
        member("a", 1000.0, quota=100, pods=0, headroom=10), member("b", 1.0, quota=100)
    )
    a = snap.by_name["a"]
    assert bound_of(a, snap, total_load=1000) == 90
    key = next(k for k in KEYS if ranked_candidates(snap, k)[0].name == "a")
    assert decide(snap, key, Loads(since={"a": 89})).member.name == "a"
    assert decide(snap, key, Loads(since={"a": 90})).member.name == "b"


def test_when_no_member_has_room_the_least_utilised_one_takes_it() -> None:
    snap = three(a=10, b=100, c=40)  # bounds at total 150: a 105, b 63, c 21
    key = next(k for k in KEYS if ranked_candidates(snap, k)[0].name == "a")
    loads = Loads(repo={("a", key): repo_limit(100)})  # a is closed to this repository
    bounds = {m.name: bound_of(m, snap, 150) for m in snap.candidates}
    assert load_of(snap.by_name["b"], loads) >= bounds["b"]
    assert load_of(snap.by_name["c"], loads) >= bounds["c"]
    d = decide(snap, key, loads)  # utilisation b 100/63, c 40/21
    assert (d.member.name, d.reason) == ("b", DecisionReason.SATURATED)


# -- the per-repository cap -------------------------------------------------------------------


def test_per_repository_limit_keeps_a_margin_below_binderhubs_per_repo_quota() -> None:
    assert repo_limit(100) == 74
    assert repo_limit(250) == 209
    assert repo_limit(1) == repo_limit(5) == 1
    assert all(1 <= repo_limit(cap) < cap or cap == 1 for cap in range(1, 500))


def test_repository_at_its_per_repository_limit_spills_to_its_next_member() -> None:
    snap = three()
    key = KEYS[0]
    first, second, _ = ranked_candidates(snap, key)
    below = Loads(repo={(first.name, key): repo_limit(100) - 1})
    assert decide(snap, key, below).member.name == first.name
    at = Loads(repo={(first.name, key): repo_limit(100)})
    d = decide(snap, key, at)
    assert (d.member.name, d.reason, d.rank) == (second.name, DecisionReason.SPILL, 1)


def test_cookie_is_ignored_once_its_member_holds_the_repositorys_limit() -> None:
    snap = three()
    key = next(k for k in KEYS if ranked_candidates(snap, k)[0].name != "b")
    held = Loads(repo={("b", key): repo_limit(100) - 1})
    assert decide(snap, key, held, cookie="b").reason is DecisionReason.COOKIE
    capped = Loads(repo={("b", key): repo_limit(100)})
    d = decide(snap, key, capped, cookie="b")
    assert d.reason is not DecisionReason.COOKIE and d.member.name != "b"


def test_repository_warm_on_several_members_goes_to_the_least_utilised_of_them() -> None:
    snap = three(a=30, b=10, c=6)  # utilisation a 30/33, b 10/20, c 6/7
    key = next(k for k in KEYS if [m.name for m in ranked_candidates(snap, k)][:2] == ["a", "c"])
    # warm on a only: the ordinary walk, a has room
    assert decide(snap, key, Loads(repo={("a", key): 3})).member.name == "a"
    # warm on a and b: the less utilised of those two, although a has room and c is emptier
    d = decide(snap, key, Loads(repo={("a", key): 3, ("b", key): 1}))
    assert (d.member.name, d.reason, d.rank) == ("b", DecisionReason.SPILL, 2)
    # a warm member without room is passed over
    d = decide(snap, key, Loads(repo={("a", key): 3, ("b", key): 1}, since={"b": 20}))
    assert d.member.name == "a"


class WarmLoads(Loads):
    """Counts as above, and where each repository is warm (sent within the warm window)."""

    def __init__(self, warm: dict[str, set[str]], **counts: dict[object, int]) -> None:
        super().__init__(**counts)  # type: ignore[arg-type]
        self.warm_on = warm

    def warm(self, key: str) -> dict[str, float]:
        return dict.fromkeys(self.warm_on.get(key, ()), 0.0)


def test_repository_warm_on_a_busy_member_stays_there_while_new_ones_spill() -> None:
    # total 112: a's bound is 1.25 x 113 x 300/540 = 79, its warm bound 1.25 x 79 = 99
    snap = three(a=90, b=20, c=2)
    key = next(k for k in KEYS if ranked_candidates(snap, k)[0].name == "a")
    new = decide(snap, key)
    assert new.member.name != "a" and new.reason is DecisionReason.SPILL
    warm = decide(snap, key, WarmLoads({key: {"a"}}))
    assert (warm.member.name, warm.reason, warm.rank) == ("a", DecisionReason.HASH, 0)


def test_a_warm_member_past_balance_factor_times_its_bound_is_left() -> None:
    snap = three(a=100, b=10, c=2)  # total 112: a's warm bound 99
    key = next(k for k in KEYS if ranked_candidates(snap, k)[0].name == "a")
    d = decide(snap, key, WarmLoads({key: {"a"}}))
    assert d.member.name != "a" and d.reason is DecisionReason.SPILL


def test_repository_warm_on_a_later_choice_keeps_going_there() -> None:
    # spilled earlier (a was busy): while b holds its image, a's room does not pull it back
    snap = three(a=10, b=10, c=2)
    key = next(k for k in KEYS if [m.name for m in ranked_candidates(snap, k)][:2] == ["a", "b"])
    d = decide(snap, key, WarmLoads({key: {"b"}}))
    assert (d.member.name, d.reason, d.rank) == ("b", DecisionReason.SPILL, 1)
    # warm on both: the better ranked
    assert decide(snap, key, WarmLoads({key: {"a", "b"}})).member.name == "a"


def test_warm_on_a_member_that_is_no_candidate_counts_for_nothing() -> None:
    snap = three(a=10, b=10, c=2)
    drained = snapshot(
        *(replace(m, operator=OperatorState.DRAIN) if m.name == "b" else m for m in snap.members)
    )
    key = next(k for k in KEYS if [m.name for m in ranked_candidates(snap, k)][:2] == ["a", "b"])
    d = decide(drained, key, WarmLoads({key: {"b", "gone"}}))
    assert (d.member.name, d.reason) == ("a", DecisionReason.HASH)


def test_launches_to_members_that_are_not_candidates_do_not_count_towards_the_bounds() -> None:
    # b is unhealthy; the 400 launches sent to it before it failed do not raise a's bound
    snap = snapshot(
        member("a", 100.0, quota=300, pods=40),
        member("b", 100.0, quota=300, pods=0, health=HealthState.UNHEALTHY),
        member("c", 100.0, quota=300, pods=0),
    )
    key = next(k for k in KEYS if ranked_candidates(snap, k)[0].name == "a")
    # a: 40 + 20 = 60 > 1.25 x 61 x 1/2 = 39: spills; with b's 400 counted it would not
    d = decide(snap, key, Loads(since={"a": 20, "b": 400}))
    assert (d.member.name, d.reason) == ("c", DecisionReason.SPILL)


# -- who may be chosen --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [{"operator": OperatorState.DRAIN}, {"health": HealthState.UNHEALTHY}, {"weight": 0.0}],
    ids=["drained", "unhealthy", "weight-0"],
)
def test_drained_or_unhealthy_members_get_no_new_repositories_even_when_all_others_are_full(
    state: dict[str, object],
) -> None:
    snap = snapshot(
        member("a", 300.0, quota=300, pods=295),  # full
        replace(member("b", 180.0, quota=180, pods=0), **state),  # type: ignore[arg-type]
        member("c", 60.0, quota=60, pods=55),  # full
    )
    assert not snap.candidates
    for key in KEYS[:100]:
        d = decide(snap, key)
        assert d.member.name != "b"
        assert d.reason is DecisionReason.SATURATED


def test_a_degraded_member_is_the_last_resort_when_every_other_is_full() -> None:
    snap = snapshot(
        member("a", 300.0, quota=300, pods=299),  # full, 1 pod left
        replace(member("b", 18.0, quota=180, pods=0), limit=0, degraded=True),
    )
    for key in KEYS[:50]:
        assert decide(snap, key).member.name == "a"


def test_when_every_member_is_full_the_one_with_most_room_left_takes_it_not_the_prime() -> None:
    snap = snapshot(
        member("a", 300.0, quota=300, pods=295),  # prime, 5 left
        member("b", 180.0, quota=180, pods=172),  # 8 left
        member("c", 60.0, quota=60, pods=51),  # 9 left, but sent 3 since its report
    )
    assert not snap.candidates and all(m.full for m in snap.members)
    loads = Loads(since={"c": 3})
    for key in KEYS[:50]:
        assert decide(snap, key, loads).member.name == "b"


def test_with_every_member_unhealthy_launches_fall_back_to_the_prime() -> None:
    sick = {"health": HealthState.UNHEALTHY}
    snap = snapshot(member("a", 1.0, **sick), member("b", 1.0, **sick))
    d = decide(snap, "gh:o/r")
    assert (d.member.name, d.reason) == ("a", DecisionReason.FALLBACK)


# -- capacity weights and slow start, through the real registry -----------------------------------


def test_capacity_weights_300_180_60_with_equal_multipliers_share_repositories_56_33_11() -> None:
    clock = [0.0]
    registry = healthy_registry(config(), clock)
    counts = Counter(decide(registry.snapshot, f"gh:o/r{i}").member.name for i in range(20000))
    shares = {name: counts[name] / 20000 for name in ("big", "mid", "small")}
    assert shares["big"] == pytest.approx(300 / 540, abs=0.015)
    assert shares["mid"] == pytest.approx(180 / 540, abs=0.015)
    assert shares["small"] == pytest.approx(60 / 540, abs=0.01)


def test_slow_start_moves_a_recovered_members_repositories_back_gradually() -> None:
    clock = [0.0]
    registry = healthy_registry(config(slow_start_seconds=120), clock)
    keys = [f"gh:o/r{i}" for i in range(3000)]
    home = {k for k in keys if decide(registry.snapshot, k).member.name == "mid"}
    assert len(home) > 500
    registry.report("mid", HealthReport(state=HealthState.UNHEALTHY))
    assert not any(decide(registry.snapshot, k).member.name == "mid" for k in keys)
    clock[0] = 1000.0
    capacity = Capacity(quota=180, pods=0, reported_at=clock[0])
    registry.report("mid", HealthReport(state=HealthState.HEALTHY, capacity=capacity))
    back = []
    for t in (0, 30, 60, 90, 119, 121):
        clock[0] = 1000.0 + t
        registry.tick()
        at_mid = {k for k in keys if decide(registry.snapshot, k).member.name == "mid"}
        assert at_mid <= home  # a ramping member only takes back its own repositories
        back.append(len(at_mid))
    assert back == sorted(back) and back[0] < len(home) * 0.2 and back[-1] == len(home)
    assert 0.3 * len(home) < back[2] < 0.8 * len(home)


def test_random_strategy_is_unaffected_by_loads() -> None:
    snap = replace(three(), strategy=Strategy.RANDOM)
    a = route(snap, "gh:o/r", rng=random.Random(3), loads=Loads(since={"a": 10**6}))
    b = route(snap, "gh:o/r", rng=random.Random(3))
    assert a is not None and b is not None and a.member.name == b.member.name


def test_a_nearly_idle_federation_spills_nothing() -> None:
    # 8 pods in a federation of 510 usable: the first-ranked member a few pods ahead of its
    # share is not overloaded (bounds count at least 10 % of the combined limits).
    for i in range(300):
        key = f"gh:o/r{i}"
        first = ranked_candidates(three(), key)[0].name
        snap = three(**{first: 6}, **{n: 1 for n in "abc" if n != first})
        assert decide(snap, key).reason is DecisionReason.HASH


def test_the_idle_floor_does_not_hide_a_real_imbalance() -> None:
    # c (limit 50) already holds 45 pods while the others are empty: c's bound is below 45.
    snap = three(c=45)
    spilled = [
        decide(snap, f"gh:o/r{i}")
        for i in range(300)
        if ranked_candidates(snap, f"gh:o/r{i}")[0].name == "c"
    ]
    assert spilled and all(d.member.name != "c" for d in spilled)
