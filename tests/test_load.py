"""The launch counters behind the bounded policy: windows, expiry, reports, memory."""

from __future__ import annotations

from federation_redirect.load import LoadTracker


def tracker() -> LoadTracker:
    return LoadTracker(session_seconds=1200, report_seconds=60, bucket_seconds=10)


def test_launches_count_per_member_until_the_member_reports() -> None:
    loads = tracker()
    for t in range(5):
        loads.record("a", f"gh:o/r{t}", float(t))
    loads.record("b", "gh:o/r0", 2.0)
    assert (loads.launches("a"), loads.launches("b"), loads.launches("c")) == (5, 1, 0)
    loads.reported("a")
    assert (loads.launches("a"), loads.launches("b")) == (0, 1)


def test_a_report_does_not_forget_the_per_repository_counts() -> None:
    loads = tracker()
    loads.record("a", "gh:o/r", 0.0)
    loads.record("a", "gh:o/r", 1.0)
    loads.reported("a")
    assert loads.repo_launches("a", "gh:o/r") == 2
    assert loads.repo_launches("b", "gh:o/r") == 0


def test_launches_since_a_report_are_forgotten_after_the_report_window() -> None:
    loads = tracker()
    loads.record("a", "gh:o/r", 0.0)
    loads.record("a", "gh:o/r", 45.0)
    loads.expire(65.0)  # 65 s old, but counted in 10 s buckets: the window rounds up
    assert loads.launches("a") == 2
    loads.expire(75.0)
    assert loads.launches("a") == 1
    loads.expire(120.0)
    assert loads.launches("a") == 0


def test_per_repository_counts_cover_one_session_window() -> None:
    loads = tracker()
    for t in range(0, 600, 60):  # ten launches over ten minutes
        loads.record("a", "gh:o/r", float(t))
    loads.expire(1199.0)
    assert loads.repo_launches("a", "gh:o/r") == 10
    loads.expire(1500.0)  # launches before 300 s are out of the 1200 s window
    assert loads.repo_launches("a", "gh:o/r") == 5
    loads.expire(1800.0 + 10)
    assert loads.repo_launches("a", "gh:o/r") == 0


def test_counts_are_kept_per_member_and_repository() -> None:
    loads = tracker()
    loads.record("a", "gh:o/x", 0.0)
    loads.record("a", "gh:o/y", 0.0)
    loads.record("b", "gh:o/x", 0.0)
    assert loads.repo_launches("a", "gh:o/x") == 1
    assert loads.repo_launches("a", "gh:o/y") == 1
    assert loads.repo_launches("b", "gh:o/y") == 0
    assert loads.tracked_repositories() == 3


def test_memory_is_bounded_by_the_session_window_after_expire() -> None:
    loads = tracker()
    for i in range(20000):  # a day of launches, each of a new repository
        t = i * 4.32
        loads.record(f"m{i % 3}", f"gh:o/r{i}", t)
        if i % 100 == 0:
            loads.expire(t)
    loads.expire(20000 * 4.32)
    # only the last 1200 s (about 280 launches) are still counted
    assert loads.tracked_repositories() <= 1200 / 4.32 + 10
    loads.expire(10**6)
    assert loads.tracked_repositories() == 0
    assert all(loads.launches(m) == 0 for m in ("m0", "m1", "m2"))


def test_members_a_repository_was_sent_to_stay_warm_for_the_warm_window() -> None:
    loads = LoadTracker(session_seconds=1200, warm_seconds=6 * 3600)
    loads.record("a", "gh:o/r", 0.0)
    loads.record("b", "gh:o/r", 3600.0)
    loads.expire(6 * 3600 - 700.0)
    assert set(loads.warm("gh:o/r")) == {"a", "b"}
    assert loads.repo_counts("gh:o/r") == {}  # out of the session window long ago
    loads.expire(6 * 3600 + 1200.0)  # a's launch is now older than the warm window
    assert set(loads.warm("gh:o/r")) == {"b"}
    loads.record("b", "gh:o/r", 7 * 3600.0)  # warmed again: counts from its last launch
    loads.expire(7 * 3600 + 2000.0)
    assert set(loads.warm("gh:o/r")) == {"b"}
    loads.expire(14 * 3600.0)
    assert loads.warm("gh:o/r") == {} and loads.warm_repositories() == 0


def test_warm_memory_is_bounded_under_a_flood_of_new_repositories() -> None:
    loads = LoadTracker(warm_seconds=6 * 3600, max_warm_keys=1000)
    for i in range(20000):
        loads.record("a", f"gh:o/r{i}", i * 1.0)
    assert loads.warm_repositories() <= 1000
    assert "a" in loads.warm("gh:o/r19999")


def test_the_total_is_the_sum_of_every_members_launches_since_its_report() -> None:
    loads = tracker()
    for t in range(30):
        loads.record("abc"[t % 3], f"gh:o/r{t}", float(t))
    loads.reported("b")
    assert loads.total_launches() == loads.launches("a") + loads.launches("c") == 20
    loads.expire(65.0)
    assert loads.total_launches() == loads.launches("a") + loads.launches("c")
    loads.expire(1000.0)
    assert loads.total_launches() == 0


def test_per_repository_counts_are_bounded_under_a_flood_of_new_repositories() -> None:
    loads = LoadTracker(session_seconds=1200, max_repo_keys=1000)
    for i in range(20000):  # 20,000 new repositories within one session window
        loads.record("a", f"gh:o/r{i}", i * 0.05)
    assert loads.tracked_repositories() <= 1000
    assert loads.repo_launches("a", "gh:o/r19999") == 1
    assert loads.launches("a") == 20000  # the member's own total is never cut short
    burst = LoadTracker(max_repo_keys=1000)
    for i in range(5000):  # all within one 10 s bucket
        burst.record("a", f"gh:o/r{i}", 0.0)
    assert burst.tracked_repositories() <= 1000
    burst.expire(10**5)
    assert burst.tracked_repositories() == 0


def test_expiring_at_the_warm_bound_keeps_repositories_warmed_again_since() -> None:
    loads = LoadTracker(warm_seconds=6 * 3600, max_warm_keys=2)
    loads.record("a", "gh:o/x", 0.0)
    loads.record("a", "gh:o/y", 0.0)  # the warm memory is now at its bound
    loads.record("b", "gh:o/x", 5 * 3600.0)  # x warmed again, on b
    loads.expire(7 * 3600.0)  # the first bucket is out of the window
    assert set(loads.warm("gh:o/x")) == {"b"} and loads.warm("gh:o/y") == {}


def test_per_repository_counts_expire_a_twentieth_of_the_session_window_at_a_time() -> None:
    loads = tracker()  # 1200 s window: 60 s buckets
    loads.record("a", "gh:o/r", 0.0)
    loads.record("a", "gh:o/r", 59.0)
    loads.record("a", "gh:o/r", 60.0)
    loads.expire(1259.0)
    assert loads.repo_launches("a", "gh:o/r") == 3
    loads.expire(1260.0)  # the first minute is out, both of its launches at once
    assert loads.repo_launches("a", "gh:o/r") == 1
