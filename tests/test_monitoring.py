"""The Grafana dashboard and the Prometheus alert rules of ``k8s/monitoring``.

Every metric a panel or an alert names must be one the running app exports: a real redirector
(``create_app``) in front of fake members on 127.0.0.1 is made to check, redirect, proxy and
fail a little, its ``/metrics`` is scraped, and each PromQL expression's metric names are
compared with the series names that exposition implies (a counter ``x`` is the series
``x_total``; a histogram ``h`` is ``h_bucket``, ``h_sum`` and ``h_count``; a gauge is its own
name). Prometheus's own ``up`` and ``ALERTS`` are the only other names allowed.

The alert rules also pass ``promtool test rules`` with the fixtures of
``k8s/monitoring/alerts.test.yaml``, and every query of both files parses with ``promtool``:
promtool is taken from PATH, else from Debian's ``prometheus`` package (``apt-get download``,
only ``usr/bin/promtool`` extracted into a temporary directory). Without either the promtool
tests are skipped with the reason; the structural checks here run regardless.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from federation_redirect.app import create_app
from federation_redirect.config import parse_config
from federation_redirect.testing import RunningMember, start_member

from .helpers import FAST_CHECKS, ServedApp

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "k8s" / "monitoring"
DASHBOARD = MONITORING / "dashboard.json"
RULES = MONITORING / "alerts.rules.yaml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
RULE_TESTS = MONITORING / "alerts.test.yaml"

# Series Prometheus makes itself; the dashboard and rules may name these besides the app's.
PROMETHEUS_OWN = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})

# Alerts issue 7 asks for, with their `for` where it names one.
REQUIRED_ALERTS = {
    "FederationMemberDown": "5m",
    "FederationNoRoutableMember": None,
    "FederationFallbackInUse": None,
    "FederationMemberVersionMismatch": "30m",
    "FederationStateStoreDown": None,
    "FederationRedirectLatencyHigh": None,
    "FederationMemberFull": "15m",
}

Query = tuple[str, str]  # (where it is, PromQL expression)


# -- metric names in PromQL ------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([^"]+)"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")  # ranges and subqueries: [5m], [$__rate_interval], [1h:5m]
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
     "group_right", "inf", "nan"}
)  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    names = set(_NAME_MATCHER.findall(expr))
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call is None and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


# -- what the app exports ----------------------------------------------------------------------

_SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}


def series_names(exposition: str) -> set[str]:
    """Every series name Prometheus stores from this exposition, by each family's type.

    A family is listed (``# TYPE``) even before it has a sample, so a counter nobody has
    incremented yet still counts as exported.
    """
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        for suffix in _SERIES_SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def unknown_metrics(queries: list[Query], exported: set[str]) -> list[str]:
    """``where: name`` for each metric a query names that is neither exported nor Prometheus's."""
    return [
        f"{where}: {name}"
        for where, expr in queries
        for name in sorted(metric_names(expr))
        if name not in exported and name not in PROMETHEUS_OWN
    ]


def check_metrics(queries: list[Query], exported: set[str]) -> None:
    """The check the dashboard and the rules must pass (AssertionError naming each offender)."""
    assert queries, "no queries found"
    unknown = unknown_metrics(queries, exported)
    assert not unknown, "metrics the app does not export:\n" + "\n".join(unknown)
    empty = [where for where, expr in queries if not metric_names(expr)]
    assert not empty, f"queries that name no metric: {empty}"


# -- where the queries are -------------------------------------------------------------------

_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*[A-Za-z_]\w*\s*\)\s*$")
_QUERY_RESULT = re.compile(r"^\s*query_result\((.*)\)\s*$")


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # rows hold their panels when collapsed


def dashboard_queries(dashboard: dict[str, Any]) -> list[Query]:
    queries: list[Query] = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text) or _QUERY_RESULT.match(text)
        assert match, f"variable {variable['name']}: unrecognised query {text!r}"
        queries.append((f"variable ${variable['name']}", match.group(1)))
    return queries


def rule_queries(rules: dict[str, Any]) -> list[Query]:
    return [
        (f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def load_dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def load_rules() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return document


# -- a live redirector -------------------------------------------------------------------------

CHECKS = {**FAST_CHECKS, "period": 0.2, "retries": 1}


async def _scrape_after_traffic() -> str:
    """``/metrics`` of a redirector that checked, redirected, proxied and saw failures."""
    members: list[RunningMember] = []
    try:
        members += [
            await start_member("alpha", pods=5, quota=100),
            await start_member("beta", pods=45, quota=50),  # full: 45 + pod_headroom >= 50
            await start_member("gamma", mode="503"),
            await start_member("delta", versions={"binderhub": "0.0.1"}),  # not the prime's
        ]
        config = parse_config(
            {
                "hosts": {
                    m.name: {"url": m.url, "weight": 1, "prime": m.name == "alpha"} for m in members
                },
                "check": CHECKS,
            }
        )
        app = create_app(config)
        async with ServedApp(app) as served, httpx.AsyncClient(base_url=served.url) as client:
            deadline = time.monotonic() + 10
            while (await client.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "the redirector never became ready"
                await asyncio.sleep(0.02)
            # delta is compared with the prime's versions only once the prime has answered
            while app.registry.health("delta").reason != "versions":
                assert time.monotonic() < deadline, "delta was never found on other versions"
                await asyncio.sleep(0.02)
            for i in range(20):
                assert (await client.get(f"/v2/gh/org/repo-{i}/HEAD")).status_code == 307
            assert (await client.get("/build/gh/org/repo-0/HEAD")).status_code == 307
            first = await client.get("/v2/gh/org/sticky/HEAD")
            cookie = first.headers["set-cookie"].split(";", 1)[0]  # the stickiness cookie
            again = await client.get("/v2/gh/org/sticky/HEAD", headers={"Cookie": cookie})
            assert again.status_code == 307
            preflight = await client.options(
                "/build/gh/org/repo-0/HEAD",
                headers={"Origin": "https://x.example", "Access-Control-Request-Method": "GET"},
            )
            assert preflight.status_code == 204
            assert (await client.get("/badge.svg")).status_code == 301
            assert (await client.get("/")).status_code == 200  # proxied from alpha
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            return metrics.text
    finally:
        await asyncio.gather(*(m.stop() for m in members))


@pytest.fixture(scope="module")
def exposition() -> str:
    return asyncio.run(_scrape_after_traffic())


@pytest.fixture(scope="module")
def exported(exposition: str) -> set[str]:
    return series_names(exposition)


# -- the metric names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("federation_ready", {"federation_ready"}),
        ('max by (member) (federation_member_state{state="healthy"})', {"federation_member_state"}),
        (
            "histogram_quantile(0.99, sum by (le, route) "
            "(rate(federation_request_duration_seconds_bucket[$__rate_interval])))",
            {"federation_request_duration_seconds_bucket"},
        ),
        (
            'sum(rate(a_total{reason=~"spill|x"}[5m])) / ignoring (reason) group_left (member) '
            "sum(rate(b_total[5m] offset 1h)) and on (member) c == bool 1",
            {"a_total", "b_total", "c"},
        ),
        ('label_replace(up, "dst", "$1", "instance", "(.*)") or vector(0)', {"up"}),
        ("sum(x) without (pod) unless y", {"x", "y"}),
        ('{__name__="named_by_matcher", job="x"}', {"named_by_matcher"}),
        ("time() - max(last_seconds:recorded)", {"last_seconds:recorded"}),
        ("max_over_time(g[1h:5m]) > 1e3 or absent(h)", {"g", "h"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_series_names_follow_each_familys_type() -> None:
    exposition = (
        "# TYPE c_total counter\nc_total 1\n"
        "# TYPE h_seconds histogram\n"
        'h_seconds_bucket{le="+Inf"} 1\nh_seconds_sum 1\nh_seconds_count 1\n'
        "# TYPE g gauge\ng 1\n"
        "# TYPE quiet_total counter\n"
    )
    assert series_names(exposition) == {
        "c_total",
        "h_seconds_bucket",
        "h_seconds_sum",
        "h_seconds_count",
        "g",
        "quiet_total",
    }


def test_the_live_app_exported_what_the_traffic_should_produce(exposition: str) -> None:
    samples = {
        sample.name
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }
    for name in (
        "federation_redirects_total",
        "federation_request_duration_seconds_bucket",
        "federation_proxy_requests_total",
        "federation_health_check_failures_total",
        "federation_member_full",
        "federation_member_free_slots",
        "federation_state_store_up",
    ):
        assert name in samples, name
    assert 'federation_health_check{check="versions",member="delta"} 0.0' in exposition
    assert 'reason="cookie"' in exposition


def test_dashboard_uses_only_metrics_the_app_exports(exported: set[str]) -> None:
    check_metrics(dashboard_queries(load_dashboard()), exported)


def test_alert_rules_use_only_metrics_the_app_exports(exported: set[str]) -> None:
    check_metrics(rule_queries(load_rules()), exported)


@pytest.mark.parametrize(
    "bogus",
    [
        "sum(rate(federation_launches_total[5m]))",  # no such metric
        "federation_member_up == 0",  # plausible, not exported
        "rate(federation_redirects[5m])",  # a counter without its _total
        "federation_member_state_total",  # a gauge with a counter's suffix
        "federation_request_duration_seconds",  # a histogram without _bucket/_sum/_count
        "sum(rate(federation_redirect_count_total[5m]))",  # legacy gauge as a counter
    ],
)
def test_a_panel_or_alert_naming_a_metric_the_app_lacks_fails_the_check(
    exported: set[str], bogus: str
) -> None:
    dashboard = copy.deepcopy(load_dashboard())
    dashboard["panels"][-1]["targets"].append(
        {"refId": "Z", "expr": f"max({bogus})", "legendFormat": ""}
    )
    with pytest.raises(AssertionError, match="metrics the app does not export"):
        check_metrics(dashboard_queries(dashboard), exported)
    rules = copy.deepcopy(load_rules())
    rules["groups"][0]["rules"].append({"alert": "Bogus", "expr": bogus, "for": "5m"})
    with pytest.raises(AssertionError, match="rule Bogus"):
        check_metrics(rule_queries(rules), exported)


# -- the dashboard -----------------------------------------------------------------------------


def test_dashboard_is_well_formed() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "member"} <= variables
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$(?:\{)?(\w+)", target["expr"]))
            assert used <= variables | {"__rate_interval"}, (panel["title"], used)


def test_dashboard_shows_what_operators_need() -> None:
    queries = [expr for _, expr in dashboard_queries(load_dashboard())]
    names = set().union(*(metric_names(e) for e in queries))
    assert names >= {
        "federation_member_state",  # health
        "federation_member_routable",
        "federation_member_operator_state",  # state
        "federation_health",  # why not healthy
        "federation_member_weight",  # effective weight
        "federation_member_pods",  # load ...
        "federation_member_quota_pods",  # ... against capacity
        "federation_member_free_slots",  # ... and the bound
        "federation_member_full",
        "federation_redirects_total",  # per member and reason
        "federation_fallback_active",
        "federation_request_duration_seconds_bucket",  # latency percentiles
        "federation_state_store_up",  # state store
    }
    text = "\n".join(queries)
    assert 'reason=~"spill|saturated"' in text and 'reason="fallback"' in text
    assert "sum by (member)" in text and "sum by (reason)" in text
    for quantile in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({quantile}," in text


# -- the alert rules ---------------------------------------------------------------------------


def test_alert_rules_cover_the_issue_and_are_complete() -> None:
    rules = {r["alert"]: r for g in load_rules()["groups"] for r in g["rules"] if "alert" in r}
    for name, duration in REQUIRED_ALERTS.items():
        assert name in rules, name
        if duration is not None:
            assert rules[name]["for"] == duration, name
    for name, rule in rules.items():
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_prometheus_rule_object_carries_the_same_rules() -> None:
    document = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert document["apiVersion"] == "monitoring.coreos.com/v1"
    assert document["kind"] == "PrometheusRule"
    assert document["metadata"]["name"] == "federation-redirect"
    assert document["spec"] == load_rules()


def test_rule_fixtures_cover_every_alert() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    tested = {
        case["alertname"]
        for group in tests["tests"]
        for case in group["alert_rule_test"]
        if case["exp_alerts"]
    }
    alerts = {r["alert"] for g in load_rules()["groups"] for r in g["rules"] if "alert" in r}
    assert tested == alerts, "each alert has a fixture in which it fires"


# -- promtool ----------------------------------------------------------------------------------


def _fetch_promtool(directory: Path) -> tuple[str | None, str]:
    """promtool from PATH, else extracted from Debian's prometheus package; (path, why not)."""
    found = shutil.which("promtool")
    if found is not None:
        return found, ""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return None, "promtool is not on PATH and there is no apt-get to fetch it"
    for attempt in range(2):
        subprocess.run(
            ["apt-get", "download", "-qq", "prometheus"],
            cwd=directory,
            capture_output=True,
            timeout=90,
            check=False,
        )
        debs = sorted(directory.glob("prometheus_*.deb"))
        if debs:
            break
        if attempt == 0 and os.geteuid() == 0:  # no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=90)
    else:
        return None, "promtool is not on PATH and `apt-get download prometheus` failed"
    data = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(debs[0])], capture_output=True, check=True, timeout=60
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        member = archive.extractfile("./usr/bin/promtool")
        assert member is not None
        target = directory / "promtool"
        target.write_bytes(member.read())
    target.chmod(0o755)
    return str(target), ""


@pytest.fixture(scope="session")
def promtool(tmp_path_factory: pytest.TempPathFactory) -> str:
    path, why = _fetch_promtool(tmp_path_factory.mktemp("promtool"))
    if path is None:
        pytest.skip(f"{why}: alert rules checked structurally only")
    return path


def _promtool(promtool: str, *args: str) -> None:
    done = subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_pass_promtool_unit_tests(promtool: str) -> None:
    _promtool(promtool, "check", "rules", str(RULES))
    _promtool(promtool, "test", "rules", str(RULE_TESTS))


def test_promtool_unit_tests_fail_when_an_alert_misbehaves(promtool: str, tmp_path: Path) -> None:
    rules = load_rules()
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "FederationMemberFull":
                rule["for"] = "20m"  # the fixture expects it at 16 minutes
    (tmp_path / RULES.name).write_text(yaml.safe_dump(rules))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    with pytest.raises(AssertionError, match="FederationMemberFull"):
        _promtool(promtool, "test", "rules", str(tmp_path / RULE_TESTS.name))


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    rules = []
    for number, (where, expr) in enumerate(dashboard_queries(load_dashboard())):
        concrete = expr.replace("$__rate_interval", "5m").replace("$member", ".*")
        assert "$" not in concrete, where
        rules.append({"record": f"dashboard:query_{number}", "expr": concrete})
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _promtool(promtool, "check", "rules", str(path))
