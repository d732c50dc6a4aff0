"""The benchmarks run (a few iterations, no timing asserted), and the fast paths they measure
give exactly the answers of the reference definitions.

The HTTP benchmark itself (``bench/http_bench.py``, minutes, needs two CPUs) is not run here.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from email.utils import formatdate
from pathlib import Path
from types import ModuleType

from hypothesis import given, settings
from hypothesis import strategies as st

from federation_redirect.cookies import SetCookie, read_cookie
from federation_redirect.hashing import RANK_CACHE_MAX_KEYS, Ranker, rank, score

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_decision_bench_runs_a_few_iterations() -> None:
    bench = load("decision_bench")
    rows = bench.run([3, 10], [0, 50], calls=5, rounds=1)
    assert [(r.members, r.seen) for r in rows] == [(3, 0), (10, 0), (3, 50), (10, 50)]
    assert all(r.repeat_mean_us > 0 and r.first_mean_us > 0 for r in rows)
    assert rows[-1].tracker_pairs >= 50
    assert "members" in bench.table(rows)
    assert all(isinstance(ok, bool) for _, ok, _ in bench.verdicts(rows))


def test_loadgen_frames_answers_by_length_and_by_chunks() -> None:
    complete = load("loadgen")._complete
    redirect = b"HTTP/1.1 307 Temporary Redirect\r\nlocation: /x\r\ncontent-length: 0\r\n\r\n"
    assert complete(bytearray(redirect + b"HTTP/1.1")) == len(redirect)
    page = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    assert complete(bytearray(page[:-1])) == 0
    assert complete(bytearray(page)) == len(page)
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert complete(bytearray(chunked)) == len(chunked)


members = st.lists(
    st.tuples(
        st.text(alphabet="abcxyz-", min_size=1, max_size=4),
        st.sampled_from([0.0, 0.5, 1.0, 1.0, 3.0, 50.0]),
    ),
    min_size=1,
    max_size=9,
)


@settings(max_examples=200, deadline=None)
@given(members=members, keys=st.lists(st.text(max_size=12), min_size=1, max_size=5))
def test_ranker_gives_the_order_and_scores_of_rank(
    members: list[tuple[str, float]], keys: list[str]
) -> None:
    ranker = Ranker(members)
    for key in keys:
        assert ranker.scores(key) == [score(key, n, w) for n, w in members]
        order = ranker.order(key)
        assert [members[i][0] for i in order] == [n for n, _ in rank(key, members)]
        assert ranker.order(key) is order  # memoised


def test_ranker_cache_is_bounded_whatever_the_number_of_keys() -> None:
    ranker = Ranker([("a", 1.0), ("b", 2.0), ("c", 3.0)], max_keys=100)
    for i in range(1000):
        ranker.order(f"gh:org/repo-{i}")
    assert len(ranker._young) + len(ranker._old) <= 200
    wide = Ranker([(f"m{i}", 1.0) for i in range(1000)])
    assert wide._max_keys < RANK_CACHE_MAX_KEYS


@settings(max_examples=300, deadline=None)
@given(now=st.floats(min_value=0, max_value=4e9), step=st.floats(min_value=0, max_value=2))
def test_set_cookie_formats_the_expiry_as_formatdate_does(now: float, step: float) -> None:
    writer = SetCookie(14400)
    for at in (now, now + step, math.floor(now) + 0.9999996, math.floor(now) + 0.999999):
        expected = formatdate(at + 14400, usegmt=True)
        header = writer.header("fr-00", "a", now=at, secure=False).decode()
        assert f"Expires={expected};" in header


def reference_read_cookie(header: bytes, name: str) -> str | None:
    for part in header.split(b";"):
        k, sep, v = part.strip().partition(b"=")
        if sep and k == name.encode():
            try:
                return v.strip().strip(b'"').decode("ascii")
            except UnicodeDecodeError:
                return None
    return None


@settings(max_examples=500, deadline=None)
@given(
    parts=st.lists(st.sampled_from([b";", b"=", b" ", b'"', b"fr-ab", b"fr-a", b"x", b"\xff"])),
    name=st.sampled_from(["fr-ab", "fr-a", "", "x", ";x", "="]),
)
def test_read_cookie_answers_as_a_split_of_the_header_would(parts: list[bytes], name: str) -> None:
    header = b"".join(parts)
    assert read_cookie(header, name) == reference_read_cookie(header, name)
