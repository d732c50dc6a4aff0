"""The simulator: member model, accounting and churn on small traces built here.

Each trace is a handful of launches at chosen seconds after midnight; sessions have a fixed
length unless a test says otherwise, so every outcome can be worked out by hand.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml

from federation_redirect.cli import main
from federation_redirect.config import Config, parse_config
from federation_redirect.simulate import (
    POLICIES,
    Degradation,
    Options,
    Outage,
    ScenarioError,
    WeightChange,
    Workload,
    _churn,
    format_report,
    parse_degradation,
    parse_outage,
    parse_weight_change,
    prepare,
    simulate,
)
from federation_redirect.trace import Launch, make_trace, read_counts, read_trace_lines, write_trace

MIDNIGHT = datetime(2021, 11, 1, tzinfo=UTC).timestamp()
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "launches"
FIXED = Options(session_distribution="fixed", session_minutes=20)


def federation(**quotas: int) -> Config:
    """Members with these quotas (the first is the prime), weights 50, no pod headroom."""
    hosts = {
        name: {"url": f"https://{name}.example", "weight": 50, "quota": quota, "prime": i == 0}
        for i, (name, quota) in enumerate(quotas.items())
    }
    return parse_config({"hosts": hosts, "pod_headroom": 0, "routing": {"slow_start_seconds": 0}})


def trace(*launches: tuple[float, str]) -> list[Launch]:
    """Launches at (seconds after midnight, 'provider/spec')."""
    out = []
    for t, spec in launches:
        provider, _, rest = spec.partition("/")
        out.append(Launch(MIDNIGHT + t, provider, rest))
    return out


def many(n: int, repos: int, seconds: float) -> list[Launch]:
    """``n`` launches of ``repos`` repositories in turn, evenly over ``seconds``."""
    return trace(*((1 + i * seconds / n, f"gh/org/repo-{i % repos}/HEAD") for i in range(n)))


# -- member model -------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_a_launch_past_the_quota_is_refused_and_counts_as_a_miss(policy: str) -> None:
    config = federation(solo=2)
    launches = trace((1, "gh/a/x/HEAD"), (2, "gh/a/y/HEAD"), (3, "gh/a/z/HEAD"))
    result = simulate(config, launches, [policy], FIXED).policies[policy]
    assert (result.launches, result.rejected_quota, result.rejected_repo_cap) == (3, 1, 0)
    assert (result.cache_hits, result.misses) == (0, 3)
    solo = result.members["solo"]
    assert (solo.launches, solo.accepted, solo.share, solo.peak_utilization) == (3, 2, 1.0, 1.0)


def test_sessions_end_and_free_their_pods() -> None:
    config = federation(solo=1)
    # 20-minute sessions: the second launch finds the pod busy, the third finds it free
    launches = trace((1, "gh/a/x/HEAD"), (600, "gh/a/y/HEAD"), (1300, "gh/a/y/HEAD"))
    result = simulate(config, launches, ["rendezvous"], FIXED).policies["rendezvous"]
    assert result.rejected_quota == 1
    assert result.members["solo"].accepted == 2


def test_cache_hits_need_an_accepted_launch_on_that_member_within_the_warm_window() -> None:
    config = federation(solo=1)
    launches = trace(
        (0.5, "gh/a/x/HEAD"),  # miss: cold
        (10, "gh/a/y/HEAD"),  # refused (x holds the only pod): a miss that warms nothing
        (1300, "gh/a/y/HEAD"),  # miss: y never ran here
        (2600, "gh/a/x/HEAD"),  # hit: x ran here 43 minutes ago
        (2600 + 6 * 3600 + 60, "gh/a/x/HEAD"),  # miss: more than 6 hours since x last ran
    )
    result = simulate(config, launches, ["rendezvous"], FIXED).policies["rendezvous"]
    assert (result.launches, result.cache_hits, result.misses, result.rejected) == (5, 1, 4, 1)
    longer = Options(session_distribution="fixed", cache_hours=7)
    again = simulate(config, launches, ["rendezvous"], longer).policies["rendezvous"]
    assert again.cache_hits == 2


def test_rendezvous_piles_a_workshop_onto_one_member_and_bounded_spills_it() -> None:
    config = federation(big=400, mid=400)
    workshop = trace(*((1 + i * 0.5, "gh/workshop/intro/HEAD") for i in range(120)))
    options = Options(session_distribution="fixed", watch=("gh/workshop/intro/HEAD",))
    result = simulate(config, workshop, ["rendezvous", "bounded"], options).policies
    piled = result["rendezvous"]
    assert piled.rejected_repo_cap == 20  # BinderHub's per_repo_quota: 100 running sessions
    assert len(piled.repositories["gh/workshop/intro/HEAD"].members) == 1
    spilled = result["bounded"]
    assert spilled.rejected == 0
    members = spilled.repositories["gh/workshop/intro/HEAD"].members
    assert set(members) == {"big", "mid"} and max(members.values()) <= 74
    assert spilled.repositories["gh/workshop/intro/HEAD"].cache_hits == 118


def test_between_reports_the_policy_knows_only_its_own_redirects() -> None:
    # b reports 0 pods at the start and then only every 60 s; the random policy keeps
    # sending it launches it cannot take, bounded counts its own redirects and does not
    config = federation(a=100, b=3)
    launches = many(40, 40, 30)
    random_run = simulate(config, launches, ["random"], FIXED).policies["random"]
    assert random_run.rejected_quota > 0
    bounded = simulate(config, launches, ["bounded"], FIXED).policies["bounded"]
    assert bounded.rejected_quota == 0


def test_timestamps_rounded_to_the_minute_are_spread_within_their_minute() -> None:
    launches = trace(*((60.0 * (i // 10), f"gh/o/r{i}/HEAD") for i in range(50)))
    one = prepare(launches, Options(seed=1))
    assert one.minute_rounded
    assert list(one.times) == sorted(one.times)
    assert all(0 <= t < 300 for t in one.times) and len(set(one.times)) == 50
    minute_of = {launch.key: (launch.time - MIDNIGHT) // 60 for launch in launches}
    assert all(t // 60 == minute_of[k] for t, k in zip(one.times, one.keys, strict=True))
    assert prepare(launches, Options(seed=1)) == one
    assert prepare(launches, Options(seed=2)).times != one.times
    assert not prepare(trace((1, "gh/o/r/HEAD")), Options()).minute_rounded


def test_session_lengths_are_drawn_once_for_every_policy() -> None:
    workload = prepare(many(2000, 50, 3600), Options(seed=4))
    mean = sum(workload.durations) / len(workload.durations)
    assert mean == pytest.approx(1200, rel=0.08)
    fixed = prepare(many(10, 5, 60), FIXED)
    assert set(fixed.durations) == {1200.0}


# -- churn ------------------------------------------------------------------------------------


def test_moved_fraction_counts_only_the_failed_members_repositories_while_it_is_out() -> None:
    config = federation(a=1000, b=1000, c=1000)
    launches = many(900, 150, 3600)  # over one hour, far below any quota
    outage = Options(session_distribution="fixed", outages=(Outage("b", 20, 40),))
    for policy in ("rendezvous", "rendezvous-capacity"):
        base = simulate(config, launches, [policy], FIXED).policies[policy]
        assert base.churn is None
        hit = simulate(config, launches, [policy], outage).policies[policy]
        churn = hit.churn
        assert churn is not None
        window = [t for t in prepare(launches, FIXED).times if t >= 20 * 60]
        on_b = [
            i
            for i, t in enumerate(prepare(launches, FIXED).times)
            if 20 * 60 <= t < 40 * 60 and base.chosen[i] == "b"
        ]
        assert churn.window_launches == len(window)
        assert churn.moved == churn.expected == len(on_b) > 0
        assert churn.slow_start == churn.other_homed == churn.other_spread == 0
        assert churn.moved_fraction == pytest.approx(len(on_b) / len(window))
        assert hit.members["b"].launches < base.members["b"].launches


def test_knock_on_moves_of_sticky_repositories_are_split_at_the_end_of_the_outage() -> None:
    minutes = (10, 25, 30, 50, 55)
    workload = Workload(
        midnight=0.0,
        times=tuple(m * 60.0 for m in minutes),
        keys=("gh:o/k",) * 5,
        durations=(60.0,) * 5,
        demand=(1,) * 5,
        minute_rounded=False,
    )
    options = Options(outages=(Outage("b", 20, 40),))
    baseline = ("a",) * 5  # k lives on a; b, the failed member, never had it
    changed = ("a", "c", "a", "c", "c")  # moved once while b was out, twice after
    churn = _churn(workload, options, 0.0, baseline, changed)
    assert (churn.expected, churn.other_homed, churn.homed_while_out) == (0, 3, 1)


def test_slow_start_moves_are_counted_apart() -> None:
    config = parse_config(
        {
            "hosts": {
                "a": {"url": "https://a.example", "quota": 1000, "prime": True},
                "b": {"url": "https://b.example", "quota": 1000},
            },
            "load_balancer": "rendezvous",
            "routing": {"slow_start_seconds": 300},
        }
    )
    launches = many(600, 100, 3600)
    options = Options(session_distribution="fixed", outages=(Outage("b", 10, 20),))
    churn = simulate(config, launches, ["rendezvous"], options).policies["rendezvous"].churn
    assert churn is not None and churn.slow_start > 0
    assert churn.moved == churn.expected + churn.slow_start


def test_a_weight_change_moves_repositories_only_to_the_reweighted_member() -> None:
    config = federation(a=1000, b=1000, c=1000)
    launches = many(900, 150, 3600)
    options = Options(session_distribution="fixed", weight_changes=(WeightChange("c", 150, 30),))
    result = simulate(config, launches, ["rendezvous"], options).policies["rendezvous"]
    assert result.churn is not None and result.churn.moved > 0
    assert result.churn.moved == result.churn.expected
    workload = prepare(launches, options)
    base = simulate(config, launches, ["rendezvous"], FIXED).policies["rendezvous"]
    for i, t in enumerate(workload.times):
        if result.chosen[i] != base.chosen[i]:
            assert t >= 30 * 60 and result.chosen[i] == "c"


def test_scenario_options_are_parsed_and_checked() -> None:
    assert parse_outage("hetzner-gesis@600-660.5") == Outage("hetzner-gesis", 600, 660.5)
    assert parse_weight_change("bids-ovh=100@720") == WeightChange("bids-ovh", 100, 720)
    for bad in ("gesis@60", "gesis@60-30", "@1-2", "gesis@a-b"):
        with pytest.raises(ScenarioError):
            parse_outage(bad)
    with pytest.raises(ScenarioError):
        parse_weight_change("gesis@60")
    with pytest.raises(ScenarioError, match="no member 'nobody'"):
        simulate(
            federation(a=1), many(3, 3, 10), ["bounded"], Options(outages=(Outage("nobody", 1, 2),))
        )
    with pytest.raises(ScenarioError, match="unknown policy"):
        simulate(federation(a=1), many(3, 3, 10), ["roundrobin"])


# -- output -----------------------------------------------------------------------------------


def test_json_document_keeps_the_documented_names_and_fractions() -> None:
    config = federation(a=30, b=20)
    doc = simulate(config, many(300, 40, 1800), options=FIXED).to_json()
    assert set(doc["policies"]) == set(POLICIES)
    for result in doc["policies"].values():
        assert set(result) >= {
            "launches",
            "cache_hits",
            "cache_hit_rate",
            "rejected_quota",
            "rejected_repo_cap",
            "first_choice_rate",
            "moved_fraction",
            "members",
        }
        assert result["moved_fraction"] is None
        assert 0 <= result["cache_hit_rate"] <= 1 and 0 <= result["first_choice_rate"] <= 1
        assert result["launches"] == 300
        for m in result["members"].values():
            assert set(m) >= {"launches", "share", "peak_utilization", "mean_utilization"}
            assert 0 <= m["share"] <= 1
        assert sum(m["share"] for m in result["members"].values()) == pytest.approx(1)
    json.dumps(doc)


def test_progress_is_reported_up_to_the_last_launch() -> None:
    seen: Counter[str] = Counter()
    last: dict[str, int] = {}

    def progress(label: str, done: int, total: int) -> None:
        seen[label] += 1
        last[label] = done
        assert total == 500

    simulate(federation(a=100), many(500, 50, 600), ["bounded", "random"], progress=progress)
    assert last == {"bounded": 500, "random": 500}
    assert all(n > 10 for n in seen.values())


def test_simulate_command_prints_json_for_a_tiny_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "federation.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hosts": {
                    "a": {"url": "https://a.example", "weight": 50, "quota": 10, "prime": True},
                    "b": {"url": "https://b.example", "weight": 50, "quota": 5},
                }
            }
        ),
        encoding="utf-8",
    )
    lines = [
        json.dumps(
            {
                "timestamp": f"2021-11-01T00:{m:02d}:00+00:00",
                "schema": "binderhub.jupyter.org/launch",
                "version": 3,
                "provider": "GitHub",
                "spec": f"org/repo-{m % 4}/HEAD",
                "status": "success",
            }
        )
        for m in range(30)
    ]
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = ["simulate", "--config", str(config), "--trace", str(path), "--json"]
    assert main([*argv, "--fail", "b@10-20"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert set(doc["policies"]) == set(POLICIES) and err == ""
    assert all(p["launches"] == 30 for p in doc["policies"].values())
    assert doc["trace"]["minute_rounded"] is True
    assert doc["policies"]["bounded"]["moved_fraction"] is not None
    assert main([*argv, "--policy", "bounded", "--policy", "random"]) == 0
    assert set(json.loads(capsys.readouterr()[0])["policies"]) == {"bounded", "random"}
    assert main([*argv[:-1], "--policy", "bounded"]) == 0
    assert "bounded" in capsys.readouterr()[0]
    assert main([*argv, "--fail", "nobody@1-2"]) == 2
    assert "error: no member 'nobody'" in capsys.readouterr()[1]
    assert main([*argv[:4], str(tmp_path / "missing.jsonl")]) == 2


# -- failing launches and outcome-aware health ------------------------------------------------


def test_degrade_options_are_parsed_and_checked() -> None:
    assert parse_degradation("hetzner-2i2c@600-720") == Degradation("hetzner-2i2c", 600, 720, 1.0)
    assert parse_degradation("a@1-2.5:0.25") == Degradation("a", 1, 2.5, 0.25)
    for bad in ("a@60", "a@60-30", "@1-2", "a@1-2:1.5", "a@1-2:x", "a@1-2:-0.5"):
        with pytest.raises(ScenarioError, match="--degrade"):
            parse_degradation(bad)
    options = Options(degradations=(Degradation("nobody", 1, 2),))
    with pytest.raises(ScenarioError, match="no member 'nobody'"):
        simulate(federation(a=1), many(3, 3, 10), ["bounded"], options)


def test_failing_launches_hold_no_pod_and_warm_no_cache() -> None:
    config = federation(a=100)
    launches = trace(*((60 * m, "gh/org/same/HEAD") for m in range(1, 31)))
    options = Options(
        session_distribution="fixed", degradations=(Degradation("a", 10, 20),), outcomes=False
    )
    result = simulate(config, launches, ["rendezvous"], options).policies["rendezvous"]
    assert result.failed_launches == 10  # minutes 10..19
    assert result.members["a"].accepted == 20 and result.rejected == 0
    # hits: minutes 2-9 (after minute 1's miss) and 20-30 (warm since minute 9: within 6 h)
    assert result.cache_hits == 8 + 11
    assert result.degraded_periods == ()


def test_outcome_aware_health_sends_launches_away_from_a_member_whose_launches_fail() -> None:
    config = federation(a=300, b=300)
    launches = many(900, 100, 5400)  # 10 a minute for 90 minutes, far below the quotas
    failing = (Degradation("a", 10, 40),)
    aware = Options(session_distribution="fixed", degradations=failing)
    blind = Options(session_distribution="fixed", degradations=failing, outcomes=False)
    for policy in ("bounded", "rendezvous", "random"):
        with_outcomes = simulate(config, launches, [policy], aware).policies[policy]
        without = simulate(config, launches, [policy], blind).policies[policy]
        assert without.failed_launches > 100, policy
        # bounded: no new repositories while b has room; the others: a tenth of its weight
        cut = 0.1 if policy == "bounded" else 0.3
        assert with_outcomes.failed_launches <= cut * without.failed_launches, policy
        assert without.degraded_periods == ()
        (period,) = with_outcomes.degraded_periods
        # about 5 launches a minute on a: min_attempts (10) failed by minute 12, then at most
        # two scrapes (a minute apart)
        assert period.member == "a" and 10 * 60 < period.start <= 14 * 60, policy
        assert period.end is not None and period.end - period.start >= 15 * 60
        if policy != "bounded":
            # a tenth of its share still fails there until minute 40; then the failures leave
            # the 15-minute window, and it recovers a window after the ratio is under 25 %
            assert 40 * 60 + 15 * 60 <= period.end <= 40 * 60 + 32 * 60, policy
        churn = with_outcomes.churn
        assert churn is not None and churn.expected > 0


def test_failed_launches_and_degraded_periods_are_in_the_json_and_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = federation(a=300, b=300)
    options = Options(session_distribution="fixed", degradations=(Degradation("a", 10, 40, 0.8),))
    result = simulate(config, many(900, 100, 5400), ["rendezvous"], options)
    doc = result.to_json()
    assert doc["model"]["degrade"] == ["a@10-40:0.8"] and doc["model"]["outcomes"] is True
    policy = doc["policies"]["rendezvous"]
    assert policy["failed_launches"] == result.policies["rendezvous"].failed_launches > 0
    (period,) = policy["degraded"]
    assert period["member"] == "a" and 10 < period["from_min"] < 14 and period["to_min"] > 40
    table = format_report(result)
    assert "degrade a@10-40:0.8" in table and "failed" in table.splitlines()[3]
    off = simulate(config, many(900, 100, 5400), ["rendezvous"], replace(options, outcomes=False))
    assert "outcome-aware health off" in format_report(off)
    path = tmp_path / "trace.jsonl"
    with path.open("w", encoding="utf-8") as stream:
        write_trace(
            [
                {
                    "timestamp": datetime.fromtimestamp(launch.time, UTC).isoformat(),
                    "schema": "binderhub.jupyter.org/launch",
                    "version": 3,
                    "provider": "GitHub",
                    "spec": launch.spec,
                    "status": "success",
                }
                for launch in many(300, 30, 3600)
            ],
            stream,
        )
    federation_file = tmp_path / "federation.yaml"
    federation_file.write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
    argv = ["simulate", "--config", str(federation_file), "--trace", str(path), "--json"]
    argv += ["--policy", "rendezvous", "--degrade", "a@10-40"]
    assert main(argv) == 0
    aware = json.loads(capsys.readouterr().out)["policies"]["rendezvous"]
    assert main([*argv, "--no-outcomes"]) == 0
    blind = json.loads(capsys.readouterr().out)["policies"]["rendezvous"]
    assert aware["failed_launches"] < blind["failed_launches"] and blind["degraded"] == []
    assert main([*argv, "--degrade", "a@1"]) == 2
    assert "error: --degrade 'a@1'" in capsys.readouterr().err


# -- the real day, subsampled -------------------------------------------------------------------


def test_on_real_launch_counts_bounded_beats_random_on_misses_without_refusals() -> None:
    path = SHARED / "daily_launches_by_spec.csv"
    if not path.exists():
        pytest.skip("shared data not present")
    events = make_trace(read_counts(path), date(2021, 11, 1), seed=1)
    stream = io.StringIO()
    write_trace(events, stream)
    # the first six hours: quiet enough that no policy needs to refuse anything
    launches = [
        launch
        for launch in read_trace_lines(stream.getvalue().splitlines())
        if launch.time < MIDNIGHT + 6 * 3600
    ]
    config = parse_config(
        {
            "hosts": {
                "hetzner-2i2c": {
                    "url": "https://a.example",
                    "weight": 50,
                    "quota": 300,
                    "prime": True,
                },
                "hetzner-gesis": {"url": "https://b.example", "weight": 50, "quota": 180},
                "bids-ovh": {"url": "https://c.example", "weight": 50, "quota": 60},
            }
        }
    )
    result = simulate(config, launches, ["bounded", "random"], Options(seed=1)).policies
    bounded, random_ = result["bounded"], result["random"]
    assert bounded.rejected == 0 and bounded.rejected_below_threshold == 0
    assert bounded.misses < 0.8 * random_.misses
    assert bounded.members["hetzner-2i2c"].share > bounded.members["bids-ovh"].share
