"""The console commands, run in process through ``main`` and as real processes.

No test reaches the internet: every member URL in a test configuration is on 127.0.0.1 (the
shipped configurations are only validated, never contacted).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import BaseModel

from federation_redirect.app import CONFIG_ENV, create_app
from federation_redirect.cli import main
from federation_redirect.config import Config, HostConfig, parse_config
from federation_redirect.models import HealthReport, HealthState

ROOT = Path(__file__).resolve().parents[1]
SERVE = [sys.executable, "-m", "federation_redirect", "serve"]
SHIPPED = ["config/mybinder.yaml", "config/example.yaml", "config/helm-values.json"]

FEDERATION = {
    "hosts": {
        "alpha": {"url": "http://127.0.0.1:9101", "weight": 50, "prime": True},
        "beta": {"url": "http://127.0.0.1:9102", "weight": 50},
        "gamma": {"url": "http://127.0.0.1:9103", "weight": 50},
    }
}


@pytest.fixture(autouse=True)
def _no_config_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)


def write(tmp_path: Path, doc: object, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False), encoding="utf-8"
    )
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def host(**fields: object) -> dict[str, object]:
    return {"url": "http://127.0.0.1:9101", "prime": True, **fields}


# -- check-config ---------------------------------------------------------------------------


def test_check_config_prints_the_effective_config_with_every_default_filled_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, {"hosts": {"alpha": {"url": "http://127.0.0.1:9101/", "prime": True}}})
    status, out, err = run(capsys, "check-config", str(path))
    assert (status, err) == (0, "")
    effective = yaml.safe_load(out)
    assert effective["hosts"]["alpha"] == {
        "url": "http://127.0.0.1:9101",
        "weight": 1.0,
        "health": "http://127.0.0.1:9101/health",
        "versions": "http://127.0.0.1:9101/versions",
        "prime": True,
        "pages": True,
        "quota": None,
        "metrics": "http://127.0.0.1:9101/metrics",
    }
    assert effective["check"]["period"] == 15
    assert effective["check"]["fall"] == 2
    assert effective["load_balancer"] == "bounded"
    assert effective["proxy"]["timeout"] == 30


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_check_config_output_is_itself_a_valid_config_equal_to_the_input(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, FEDERATION)
    status, out, _ = run(capsys, "check-config", str(path), *(["--json"] if fmt == "json" else []))
    assert status == 0
    printed = json.loads(out) if fmt == "json" else yaml.safe_load(out)
    assert parse_config(printed) == parse_config(FEDERATION)


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        pytest.param(
            {"hosts": {"gesis": host(weight=-1)}},
            "hosts.gesis.weight: must be >= 0",
            id="negative-weight",
        ),
        pytest.param(
            "hosts:\n  gesis: {url: 'http://127.0.0.1:9101', prime: true, weight: .nan}\n",
            "hosts.gesis.weight: must be a finite number",
            id="nan-weight",
        ),
        pytest.param(
            {"hosts": {"gesis": host(url="ftp://127.0.0.1:9101")}},
            "hosts.gesis.url: must be an http:// or https:// URL",
            id="non-http-url",
        ),
        pytest.param(
            {"hosts": {"gesis": host(), "bids": {"url": "http://127.0.0.1:9101/"}}},
            "hosts.bids.url: same URL as hosts.gesis",
            id="duplicate-url",
        ),
        pytest.param(
            {"hosts": {"gesis": host(colour="red")}},
            "hosts.gesis.colour: unknown key",
            id="unknown-host-key",
        ),
    ],
)
def test_check_config_rejects_an_invalid_config_naming_the_field(
    doc: object, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "check-config", str(write(tmp_path, doc)))
    assert status == 2
    assert out == ""
    assert f"error: {problem}\n" in err


def test_check_config_reports_every_problem_each_on_its_own_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = {"hosts": {"gesis": host(weight=-1, colour="red")}, "pod_headroom": -5}
    status, _, err = run(capsys, "check-config", str(write(tmp_path, doc)))
    assert status == 2
    assert sorted(err.splitlines()) == [
        "error: hosts.gesis.colour: unknown key",
        "error: hosts.gesis.weight: must be >= 0",
        "error: pod_headroom: must be >= 0",
    ]


def test_check_config_of_a_missing_file_exits_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    status, out, err = run(capsys, "check-config", str(missing))
    assert (status, out) == (2, "")
    assert err.startswith(f"error: {missing}: cannot read")


def test_check_config_of_a_yaml_syntax_error_exits_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "hosts: {alpha: [unclosed\n")
    status, out, err = run(capsys, "check-config", str(path))
    assert (status, out) == (2, "")
    assert err.startswith(f"error: {path}: not valid YAML or JSON")


def test_check_config_as_a_real_process_exits_2_with_the_field_path_on_stderr(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, {"hosts": {"gesis": host(weight=-1)}})
    proc = subprocess.run(
        [sys.executable, "-m", "federation_redirect", "check-config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == "error: hosts.gesis.weight: must be >= 0\n"


@pytest.mark.parametrize("path", SHIPPED)
def test_every_shipped_config_is_valid(path: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "check-config", str(ROOT / path))
    assert status == 0, err
    assert "error:" not in err
    assert yaml.safe_load(out)["hosts"]


def test_the_default_config_is_the_public_mybinder_federation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = run(capsys, "check-config", str(ROOT / "config/mybinder.yaml"))
    effective = yaml.safe_load(out)
    assert {name: h["url"] for name, h in effective["hosts"].items()} == {
        "hetzner-2i2c": "https://2i2c.mybinder.org",
        "hetzner-gesis": "https://gesis.mybinder.org",
        "bids-ovh": "https://bids.mybinder.org",
    }
    assert [n for n, h in effective["hosts"].items() if h["prime"]] == ["hetzner-2i2c"]
    assert {h["weight"] for h in effective["hosts"].values()} == {50}
    assert effective["load_balancer"] == "bounded"


def test_production_helm_values_with_a_null_host_are_accepted_with_warnings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = run(capsys, "check-config", str(ROOT / "config/helm-values.json"))
    assert status == 0
    effective = yaml.safe_load(out)
    assert sorted(effective["hosts"]) == ["bids-ovh", "hetzner-2i2c", "hetzner-gesis"]
    assert effective["check"]["failed_period"] == 90  # from the values
    assert effective["check"]["rise"] == 2  # a default filled in
    assert effective["load_balancer"] == "random"
    assert "enabled" not in effective
    assert "warning: hosts.null-host: null entry, member dropped\n" in err
    for chart_key in ("enabled", "host", "image", "nodeSelector", "resources"):
        assert f"warning: {chart_key}: " in err


def test_helm_values_with_a_zero_weight_prime_are_accepted_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = json.loads((ROOT / "config/helm-values.json").read_text())
    values["hosts"]["hetzner-2i2c"]["weight"] = 0
    path = write(tmp_path, json.dumps(values), "config.json")
    status, out, err = run(capsys, "check-config", str(path))
    assert status == 0
    assert yaml.safe_load(out)["hosts"]["hetzner-2i2c"]["weight"] == 0
    assert "warning: hosts.hetzner-2i2c.weight: 0, prime member" in err


def test_a_values_file_with_the_section_under_federationRedirect_is_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, {"federationRedirect": FEDERATION})
    status, out, _ = run(capsys, "check-config", str(path))
    assert status == 0
    assert sorted(yaml.safe_load(out)["hosts"]) == ["alpha", "beta", "gamma"]


# -- route ----------------------------------------------------------------------------------


def route_json(capsys: pytest.CaptureFixture[str], config: Path, *urls: str) -> list[Any]:
    status, out, err = run(capsys, "route", "--config", str(config), "--json", *urls)
    assert status == 0, err
    results: list[Any] = json.loads(out)
    return results


def test_route_prints_the_key_the_ranking_and_the_chosen_member(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, FEDERATION)
    url = "https://mybinder.org/v2/gh/Org/Repo/HEAD?urlpath=lab"
    status, out, err = run(capsys, "route", "--config", str(config), url)
    assert (status, err) == (0, "")
    [result] = route_json(capsys, config, url)
    best = result["ranking"][0]["member"]
    lines = out.splitlines()
    assert lines[0] == url
    assert lines[1].split() == ["key", "gh:org/repo"]
    ranked = [line.split()[0] for line in lines[3:6]]
    assert ranked == [r["member"] for r in result["ranking"]]
    assert sorted(ranked) == ["alpha", "beta", "gamma"]
    assert lines[6].split()[:3] == ["chosen", best, "(hash)"]


def test_route_ranks_members_by_score_and_chooses_the_best(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [result] = route_json(capsys, write(tmp_path, FEDERATION), "/v2/gh/org/repo/HEAD")
    scores = [r["score"] for r in result["ranking"]]
    assert scores == sorted(scores, reverse=True)
    assert all(r["weight"] == 50 and r["routable"] for r in result["ranking"])
    assert result["key"] == "gh:org/repo"
    assert result["chosen"]["member"] == result["ranking"][0]["member"]
    assert result["chosen"]["reason"] == "hash"


def test_every_ref_and_entry_point_of_a_repository_goes_to_the_same_member(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, FEDERATION)
    results = route_json(
        capsys,
        config,
        "/v2/gh/Org/Repo/main",
        "/build/gh/org/repo.git/abc",
        "https://mybinder.org/v2/gh/ORG/repo/HEAD?filepath=index.ipynb",
    )
    assert {r["key"] for r in results} == {"gh:org/repo"}
    assert len({r["chosen"]["member"] for r in results}) == 1


def test_route_location_is_the_member_url_plus_the_raw_path_and_query(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "https://mybinder.org/v2/gl/group%2Fproject/HEAD?urlpath=lab%2Ftree%2Fa.ipynb"
    [result] = route_json(capsys, write(tmp_path, FEDERATION), url)
    assert result["path"] == "/v2/gl/group%2Fproject/HEAD"
    member = FEDERATION["hosts"][result["chosen"]["member"]]
    assert result["chosen"]["location"] == (
        f"{member['url']}/v2/gl/group%2Fproject/HEAD?urlpath=lab%2Ftree%2Fa.ipynb"
    )


def test_route_shows_a_zero_weight_member_but_never_chooses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    drained = {"url": "http://127.0.0.1:9104", "weight": 0}
    doc = {"hosts": {**FEDERATION["hosts"], "drained": drained}}
    urls = [f"/v2/gh/org/repo-{i}/HEAD" for i in range(40)]
    results = route_json(capsys, write(tmp_path, doc), *urls)
    for result in results:
        drained = [r for r in result["ranking"] if r["member"] == "drained"]
        assert drained == [
            {"member": "drained", "weight": 0, "score": 0, "routable": False, "degraded": False}
        ]
        assert result["chosen"]["member"] != "drained"
    status, out, _ = run(capsys, "route", "--config", str(write(tmp_path, doc)), urls[0])
    assert status == 0
    assert re.search(r"drained\s+0\s+0\s+\(weight 0: never chosen\)", out)


def test_route_says_which_urls_are_not_launch_urls_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(write(tmp_path, FEDERATION))
    status, out, _ = run(
        capsys, "route", "--config", config, "https://mybinder.org/about", "/v2/gh/a/b/HEAD"
    )
    assert status == 1
    first, second = out.split("\n\n")
    assert first.splitlines() == [
        "https://mybinder.org/about",
        "  not a launch URL: only /v2/<provider>/<spec>, /build/<provider>/<spec> and "
        "/repo/<user>/<repo> are redirected",
    ]
    assert "chosen" in second
    status, out, _ = run(capsys, "route", "--config", config, "--json", "/v2/", "/badge.svg")
    assert status == 1
    assert [(r["launch"], r["key"], r["chosen"]) for r in json.loads(out)] == [
        (False, None, None),
        (False, None, None),
    ]


def test_route_reads_the_config_path_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(write(tmp_path, FEDERATION)))
    status, out, _ = run(capsys, "route", "--json", "/v2/gh/a/b/HEAD")
    assert status == 0
    assert json.loads(out)[0]["chosen"]["member"] in FEDERATION["hosts"]


def test_route_with_an_invalid_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, {"hosts": {"gesis": host(weight=-1)}})
    status, out, err = run(capsys, "route", "--config", str(path), "/v2/gh/a/b/HEAD")
    assert (status, out) == (2, "")
    assert err == "error: hosts.gesis.weight: must be >= 0\n"


async def test_route_predicts_the_servers_redirect_when_every_member_is_healthy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [f"/v2/gh/org/repo-{i}/HEAD?urlpath=lab" for i in range(20)]
    predicted = [
        r["chosen"]["location"] for r in route_json(capsys, write(tmp_path, FEDERATION), *paths)
    ]
    config = parse_config(FEDERATION)
    answered = []
    async with httpx.AsyncClient() as proxy_client:
        for path in paths:
            # a fresh server per launch: `route` predicts for a federation with no load yet
            app = create_app(config, proxy_client=proxy_client, run_health_checks=False)
            for name in config.hosts:
                app.registry.report(name, HealthReport(state=HealthState.HEALTHY))
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://mybinder.test") as c:
                answered.append((await c.get(path)).headers["location"])
    assert answered == predicted


# -- serve ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def refusing_ports() -> Iterator[tuple[int, int]]:
    """Two ports that refuse connections: bound (so nobody else takes them), not listening."""
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        yield a.getsockname()[1], b.getsockname()[1]


def test_serve_runs_a_real_server_that_falls_back_to_the_prime_and_stops_promptly(
    tmp_path: Path, refusing_ports: tuple[int, int]
) -> None:
    prime_port, other_port = refusing_ports
    config = write(
        tmp_path,
        {
            "hosts": {
                "prime": {"url": f"http://127.0.0.1:{prime_port}", "prime": True},
                "other": {"url": f"http://127.0.0.1:{other_port}", "weight": 100},
            },
            "check": {"timeout": 0.5, "retries": 1, "period": 1},
        },
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*SERVE, "--config", str(config), "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=base, trust_env=False, timeout=5) as client:
            wait_until_live(client, proc, log_path)
            launch = client.get("/v2/gh/a/b/HEAD?urlpath=lab")
            assert launch.status_code == 307
            assert launch.headers["location"] == (
                f"http://127.0.0.1:{prime_port}/v2/gh/a/b/HEAD?urlpath=lab"
            )
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["routable"] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        returncode = proc.wait(timeout=15)
    assert time.monotonic() - started < 10
    assert returncode in (0, -signal.SIGTERM)
    logged = log_path.read_text()
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO ", logged, re.MULTILINE)
    assert "/v2/gh/a/b/HEAD" not in logged, "no access log line per request"


def wait_until_live(client: httpx.Client, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"/healthz did not answer 200 within 15 s:\n{log.read_text()}")


def test_serve_with_an_invalid_config_exits_2_before_binding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, {"hosts": {"gesis": host(url="gesis.mybinder.org")}})
    status, out, err = run(capsys, "serve", "--config", str(path), "--port", "1")
    assert (status, out) == (2, "")
    assert err == "error: hosts.gesis.url: must be an http:// or https:// URL\n"


def test_serve_reads_the_config_path_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "from-env.yaml"))
    status, _, err = run(capsys, "serve", "--port", "1")
    assert status == 2
    assert f"{tmp_path / 'from-env.yaml'}: cannot read" in err


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


# -- README ---------------------------------------------------------------------------------


def config_keys() -> dict[str, object]:
    """Every configuration key as its README name, with its default (... when required)."""
    keys: dict[str, object] = {"hosts": ...}
    models: list[tuple[str, type[Any]]] = [("hosts.<name>.", HostConfig), ("", Config)]
    for name, field in Config.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            models.append((name + ".", field.annotation))
    sections = {prefix.rstrip(".") for prefix, _ in models}
    for prefix, model in models:
        for name, field in model.model_fields.items():
            if model is Config and name in sections:
                continue
            keys[prefix + name] = field.get_default() if not field.is_required() else ...
    return keys


def test_the_readme_reference_lists_every_config_key_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = {
        m.group(1): m.group(2).strip()
        for m in re.finditer(r"^\| `([^`]+)` \| ([^|]*) \|", readme, re.MULTILINE)
    }
    for key, default in config_keys().items():
        assert key in rows, f"README.md configuration reference lacks `{key}`"
        if isinstance(default, bool) or default is None or default is ...:
            continue
        shown = f"`{default:g}`" if isinstance(default, float) else f"`{default}`"
        assert rows[key] == shown, f"README.md gives {rows[key]} as default of {key}, not {shown}"
