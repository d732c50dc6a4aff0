"""The configuration model: production values accepted as they are, every problem named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from federation_redirect.config import load_config, parse_config
from federation_redirect.errors import ConfigError
from federation_redirect.models import Strategy

# The production values as the Helm chart renders them (chart defaults merged with prod.yaml).
PRODUCTION: dict[str, Any] = {
    "enabled": True,
    "host": "mybinder.org",
    "resources": {"requests": {"cpu": "10m", "memory": "50Mi"}, "limits": {"cpu": "100m"}},
    "image": {"name": "jupyterhub/mybinder.org-federation-redirect", "tag": "set-by-chartpress"},
    "check": {"period": 15, "jitter": 0.1, "retries": 5, "timeout": 5, "failed_period": 90},
    "load_balancer": "random",
    "pod_headroom": 10,
    "nodeSelector": {},
    "hosts": {
        "hetzner-2i2c": {
            "prime": True,
            "url": "https://2i2c.mybinder.org/",
            "weight": 50,
            "health": "https://2i2c.mybinder.org/health",
            "versions": "https://2i2c.mybinder.org/versions",
        },
        "hetzner-gesis": {"prime": False, "url": "https://gesis.mybinder.org", "weight": 50},
        "bids-ovh": {"url": "https://bids.mybinder.org", "weight": 50},
        "old-ovh": None,
    },
}


def problems_of(doc: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    return info.value.problems


def host(**kw: Any) -> dict[str, Any]:
    return {"url": "https://a.example", "prime": True, **kw}


def test_production_helm_values_are_accepted_as_they_are() -> None:
    warnings: list[str] = []
    config = parse_config(PRODUCTION, warnings)
    assert list(config.hosts) == ["hetzner-2i2c", "hetzner-gesis", "bids-ovh"]
    assert config.load_balancer is Strategy.RANDOM
    assert config.check.period == 15 and config.check.failed_period == 90
    assert "hosts.old-ovh: null entry, member dropped" in warnings
    assert any(w.startswith("image:") for w in warnings)
    assert any(w.startswith("nodeSelector:") for w in warnings)


def test_values_file_with_the_federation_redirect_key_is_unwrapped() -> None:
    assert parse_config({"federationRedirect": PRODUCTION}).hosts["bids-ovh"].weight == 50


def test_trailing_slashes_are_stripped_and_check_urls_default_under_the_member() -> None:
    gesis = parse_config(PRODUCTION).hosts["hetzner-2i2c"]
    assert gesis.url == "https://2i2c.mybinder.org"
    bids = parse_config(PRODUCTION).hosts["bids-ovh"]
    assert bids.health == "https://bids.mybinder.org/health"
    assert bids.versions == "https://bids.mybinder.org/versions"


def test_zero_weight_prime_is_kept_checked_and_warned_about() -> None:
    warnings: list[str] = []
    config = parse_config(
        {"hosts": {"a": host(weight=0), "b": {"url": "https://b.example"}}}, warnings
    )
    assert config.hosts["a"].weight == 0 and config.hosts["a"].prime
    assert any("hosts.a.weight: 0" in w for w in warnings)


def test_defaults_are_filled_in() -> None:
    config = parse_config({"hosts": {"a": host()}})
    assert config.load_balancer is Strategy.BOUNDED
    assert config.pod_headroom == 10 and config.host_cookie_age_hours == 4
    assert (config.check.fall, config.check.rise, config.check.versions) == (2, 2, "exact")
    assert config.hosts["a"].pages is True  # the prime serves the home page by default


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"hosts": {"gesis": host(weight=-1)}}, "hosts.gesis.weight: must be >= 0"),
        ({"hosts": {"gesis": host(weight=float("nan"))}}, "hosts.gesis.weight: must be a finite number"),
        ({"hosts": {"gesis": host(weight="50")}}, "hosts.gesis.weight: must be a number"),
        ({"hosts": {"gesis": host(url="ftp://x.example")}}, "hosts.gesis.url: must be an http:// or https:// URL"),
        ({"hosts": {"gesis": host(url="https://")}}, "hosts.gesis.url: must include a host name"),
        ({"hosts": {"gesis": host(wieght=3)}}, "hosts.gesis.wieght: unknown key"),
        ({"hosts": {"gesis": host(prime="yes")}}, "hosts.gesis.prime: must be true or false"),
        (
            {"hosts": {"a": host(), "b": {"url": "https://A.example/"}}},
            "hosts.b.url: same URL as hosts.a",
        ),
        ({"hosts": {"a": {"url": "https://a.example"}}}, "hosts: at least one member must have prime: true"),
        ({"hosts": {}}, "hosts: at least one member is required"),
        ({"hosts": {"a": host()}, "check": {"period": 0}}, "check.period: must be > 0"),
        ({"hosts": {"a": host()}, "load_balancer": "roundrobin"}, "load_balancer: must be one of 'bounded', 'rendezvous' or 'random'"),
        ({"hosts": {"a": host()}, "pod_headroom": -1}, "pod_headroom: must be >= 0"),
        ({"hosts": {"a": host()}, "surprise": 1}, "surprise: unknown key"),
        ({"hosts": {"a b": host()}}, "hosts.a b: member names must be"),
        ({}, "hosts: is required"),
    ],
    ids=[
        "negative-weight", "nan-weight", "string-weight", "ftp-url", "no-host", "unknown-host-key",
        "string-bool", "duplicate-url", "no-prime", "no-members", "zero-period", "bad-strategy",
        "negative-headroom", "unknown-top-level-key", "bad-member-name", "no-hosts-key",
    ],
)  # fmt: skip
def test_invalid_config_names_the_field(doc: dict[str, Any], expected: str) -> None:
    assert any(p.startswith(expected) for p in problems_of(doc)), problems_of(doc)


def test_every_problem_is_reported_not_just_the_first() -> None:
    found = problems_of({"hosts": {"g": host(weight=-1, extra=1)}, "check": {"timeout": -2}})
    assert len(found) == 3


def test_yaml_nan_is_rejected_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("hosts:\n  a: {url: 'https://a.example', prime: true, weight: .nan}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["hosts.a.weight: must be a finite number"]


def test_json_and_yaml_files_load_the_same(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps(PRODUCTION))
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(PRODUCTION))
    assert load_config(tmp_path / "c.json") == load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read"),
        ("hosts: [unclosed", "not valid YAML or JSON"),
        ("- a\n", "must be a mapping"),
    ],
    ids=["missing-file", "syntax-error", "not-a-mapping"],
)
def test_unreadable_documents_are_clear_errors(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert expected in info.value.problems[0]
