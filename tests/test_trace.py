"""Launch traces: reading the events archive format, and making traces from per-day counts."""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from federation_redirect.cli import main
from federation_redirect.trace import (
    SCHEMA,
    Burst,
    DailyCount,
    TraceError,
    daily_rate,
    make_trace,
    parse_burst,
    read_counts,
    read_trace,
    read_trace_lines,
    write_trace,
)

DAY = date(2021, 11, 1)
MIDNIGHT = datetime(2021, 11, 1, tzinfo=UTC).timestamp()
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "launches"

# two lines of the real archive (schema versions 1 and 4), verbatim
ARCHIVE = [
    '{"timestamp": "2018-11-03T00:00:00+00:00", "schema": "binderhub.jupyter.org/launch", '
    '"version": 1, "provider": "GitHub", "spec": "ipython/ipython-in-depth/master", '
    '"status": "success"}',
    '{"timestamp": "2020-06-18T16:49:00+00:00", "schema": "binderhub.jupyter.org/launch", '
    '"version": 4, "provider": "Git", "spec": '
    '"https:%2F%2Fbitbucket.org%2Ffsmeraldi%2Fjupytermarking%2Fsrc%2Fmaster/master", '
    '"ref": "d22a4b0a494b25ad9e0397b44d9abc3461eb6309", "status": "success", '
    '"origin": "gke.mybinder.org"}',
]


def counts(*rows: tuple[str, str, int]) -> list[DailyCount]:
    return [DailyCount(DAY, provider, spec, n) for provider, spec, n in rows]


SAMPLE = counts(
    ("GitHub", "ipython/ipython-in-depth/master", 300),
    ("GitHub", "jupyterlab/jupyterlab-demo/HEAD", 120),
    ("GitLab", "gromacs%2Fonline-tutorials%2Fmd-intro-tutorial/main", 7),
    ("Zenodo", "10.5281/zenodo.4783007", 1),
)


def times(events: list[dict[str, object]]) -> list[float]:
    return [datetime.fromisoformat(str(e["timestamp"])).timestamp() - MIDNIGHT for e in events]


# -- reading ----------------------------------------------------------------------------------


def test_archive_lines_become_launches_keyed_as_the_server_keys_them() -> None:
    launches = read_trace_lines(ARCHIVE)
    assert [(x.provider, x.key) for x in launches] == [
        ("gh", "gh:ipython/ipython-in-depth"),
        ("git", "git:https%3A%2F%2Fbitbucket.org%2Ffsmeraldi%2Fjupytermarking%2Fsrc%2Fmaster"),
    ]
    assert launches[0].time == datetime(2018, 11, 3, tzinfo=UTC).timestamp()
    assert launches[1].path.startswith("/v2/git/https:%2F%2Fbitbucket.org")


def test_failed_events_and_blank_lines_are_skipped() -> None:
    failed = ARCHIVE[0].replace('"success"', '"failure"')
    assert len(read_trace_lines([ARCHIVE[0], "", failed, "  "])) == 1


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"timestamp": "yesterday", "provider": "GitHub", "spec": "a/b/c"}', "ISO 8601"),
        ('{"timestamp": "2021-11-01T00:00:00", "spec": "a/b/c"}', "provider"),
        ('{"timestamp": "2021-11-01T00:00:00", "provider": "GitHub"}', "spec"),
    ],
)
def test_a_malformed_line_is_reported_with_its_number(line: str, problem: str) -> None:
    with pytest.raises(TraceError, match=rf"trace:2: .*{problem}"):
        read_trace_lines([ARCHIVE[0], line], "trace")


def test_the_shared_archive_examples_parse() -> None:
    path = SHARED / "raw_event_examples.jsonl"
    if not path.exists():
        pytest.skip("shared data not present")
    launches = read_trace(path)
    assert len(launches) == 8
    assert {x.provider for x in launches} >= {"gh", "gist", "gl", "git", "hydroshare", "zenodo"}


# -- making -----------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_trace_and_another_seed_another() -> None:
    one = make_trace(SAMPLE, DAY, seed=7)
    assert make_trace(SAMPLE, DAY, seed=7) == one
    assert make_trace(SAMPLE, DAY, seed=8) != one


def test_every_spec_keeps_exactly_its_daily_count() -> None:
    rows = [*SAMPLE, DailyCount(date(2021, 11, 2), "GitHub", "other/day/HEAD", 50)]
    events = make_trace(rows, DAY, seed=1)
    got = Counter((e["provider"], e["spec"]) for e in events)
    assert got == Counter({(r.provider, r.spec): r.launches for r in SAMPLE})


def test_launches_follow_the_daily_curve_not_a_uniform_spread() -> None:
    events = make_trace(counts(("GitHub", "o/r/HEAD", 24000)), DAY, seed=3)
    per_hour = Counter(int(t // 3600) for t in times(events))
    expected = {h: 24000 * daily_rate(h * 3600 + 1800) / 24 for h in range(24)}
    # peak at 14:00 UTC, trough at 02:00, three times as many (amplitude 0.5)
    assert per_hour[14] > 2.5 * per_hour[2]
    for hour in range(24):
        assert per_hour[hour] == pytest.approx(expected[hour], rel=0.12)


def test_amplitude_zero_spreads_launches_evenly() -> None:
    events = make_trace(counts(("GitHub", "o/r/HEAD", 24000)), DAY, seed=3, amplitude=0)
    per_hour = Counter(int(t // 3600) for t in times(events))
    assert max(per_hour.values()) < 1.12 * 1000 and min(per_hour.values()) > 0.88 * 1000


def test_trace_is_in_time_order_within_the_day() -> None:
    ts = times(make_trace(SAMPLE, DAY, seed=2))
    assert ts == sorted(ts) and ts[0] >= 0 and ts[-1] < 86400


def test_bursts_add_their_launches_within_their_window() -> None:
    burst = parse_burst("gh/workshop/intro/HEAD,150,540.5,10")
    assert burst == Burst("gh/workshop/intro/HEAD", 150, 540.5, 10.0)
    events = make_trace(SAMPLE, DAY, seed=4, bursts=[burst])
    mine = [e for e in events if e["spec"] == "workshop/intro/HEAD"]
    assert len(mine) == 150 and all(e["provider"] == "GitHub" for e in mine)
    at = times(mine)
    # timestamps have whole seconds: the window's start rounds down
    assert min(at) >= 540 * 60 and max(at) < 550.5 * 60
    assert len(events) == sum(r.launches for r in SAMPLE) + 150


@pytest.mark.parametrize(
    "text",
    [
        "gh/o/r/HEAD,10,5",
        "gh/o/r/HEAD,ten,5,10",
        "ghonly,10,5,10",
        "gh/o/r,10,-1,10",
        "gh/o/r,1,0,-2",
    ],
)
def test_malformed_bursts_are_refused(text: str) -> None:
    with pytest.raises(TraceError, match="burst"):
        parse_burst(text)


def test_written_trace_parses_back_as_the_archive_format() -> None:
    events = make_trace(SAMPLE, DAY, seed=5, bursts=[parse_burst("gl/a%2Fb/main,3,0,1")])
    out = io.StringIO()
    assert write_trace(events, out) == len(events)
    lines = out.getvalue().splitlines()
    first = json.loads(lines[0])
    assert set(first) >= {"timestamp", "schema", "version", "provider", "spec", "status"}
    assert first["schema"] == SCHEMA and first["status"] == "success"
    assert first["timestamp"].endswith("+00:00")
    launches = read_trace_lines(lines)
    assert len(launches) == len(events)
    assert Counter(x.key for x in launches)["gl:a%2Fb"] == 3


def test_counts_csv_is_read_with_its_origin(tmp_path: Path) -> None:
    path = tmp_path / "counts.csv"
    path.write_text(
        "date,origin,provider,spec,launches\n"
        "2021-11-01,gke.mybinder.org,GitHub,o/r/HEAD,3\n"
        "2021-11-02,ovh.mybinder.org,Gist,u/abc/master,1\n",
        encoding="utf-8",
    )
    rows = read_counts(path)
    assert rows[0] == DailyCount(DAY, "GitHub", "o/r/HEAD", 3, "gke.mybinder.org")
    events = make_trace(rows, DAY)
    assert [e.get("origin") for e in events] == ["gke.mybinder.org"] * 3


def test_make_trace_command_writes_a_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "counts.csv"
    path.write_text("date,provider,spec,launches\n2021-11-01,GitHub,o/r/HEAD,40\n", "utf-8")
    out = tmp_path / "trace.jsonl"
    argv = ["make-trace", "--counts", str(path), "--date", "2021-11-01", "--seed", "9"]
    argv += ["--burst", "gh/w/s/HEAD,20,600,10", "--output", str(out)]
    assert main(argv) == 0
    assert "60 launches (40 from counts, 20 in bursts)" in capsys.readouterr().err
    first = out.read_text("utf-8")
    assert len(read_trace(out)) == 60
    assert main(argv) == 0 and out.read_text("utf-8") == first
    assert main([*argv[:4], "2021-11-05", *argv[5:]]) == 2
    assert "no launches on 2021-11-05" in capsys.readouterr().err
