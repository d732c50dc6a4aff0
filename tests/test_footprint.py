"""What a serving process loads: not the simulator, not FastAPI or the operator API until asked,
not the Redis client without Redis (each checked in a fresh interpreter); and one TLS context
for its two HTTP clients."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import certifi
import httpx
import pytest

from federation_redirect import cli
from federation_redirect.app import create_app
from federation_redirect.config import load_config

CONFIG = Path(__file__).resolve().parent.parent / "config" / "mybinder.yaml"


def run(program: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    ).stdout


def test_serve_loads_neither_the_simulator_nor_fastapi_nor_redis() -> None:
    program = f"""
import sys
from federation_redirect import cli
args = cli._parser(simulation=cli._simulating(["serve", "--config", {str(CONFIG)!r}])).parse_args(
    ["serve", "--config", {str(CONFIG)!r}, "--port", "0"])
config = cli._load(cli._config_path(args.config), print)
uvicorn_config = cli._server_config(config, args)
uvicorn_config.load()
loaded = {{m.split(".")[0] for m in sys.modules}} | set(sys.modules)
print(sorted(m for m in ("federation_redirect.simulate", "federation_redirect.trace",
      "federation_redirect.admin", "federation_redirect.api", "fastapi", "redis", "rich",
      "pygments") if m in loaded))
"""
    assert run(program).split() == ["[]"]


def test_httpx_still_works_without_its_command_line_client() -> None:
    program = """
import federation_redirect, httpx, sys
print(sys.modules.get("httpx._main", "absent"), callable(httpx.main))
with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(204))) as client:
    print(client.get("http://member.example/health").status_code)
"""
    assert run(program).split() == ["None", "True", "204"]


def test_the_simulate_command_still_has_all_its_options() -> None:
    assert cli._simulating(["simulate", "--trace", "t"])
    assert cli._simulating(["--help"]) and cli._simulating([])
    assert not cli._simulating(["serve", "--port", "8080"])
    assert not cli._simulating(["--version", "route", "https://mybinder.org/v2/gh/a/b/HEAD"])
    full = cli._parser(simulation=True)
    lean = cli._parser(simulation=False)
    assert lean.format_help() == full.format_help()  # both list every command
    usage = subprocess.run(
        [sys.executable, "-m", "federation_redirect", "simulate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in ("--trace", "--policy", "--session-distribution", "--degrade", "--repo"):
        assert option in usage


def test_a_redis_store_loads_the_redis_client() -> None:
    program = f"""
import sys
from federation_redirect.app import create_app
from federation_redirect.config import load_config
config = load_config({str(CONFIG)!r}).with_redis_url("redis://127.0.0.1:1/0")
create_app(config, run_health_checks=False)
print("redis" in sys.modules, "fastapi" in sys.modules)
"""
    assert run(program).split() == ["True", "False"]


def test_the_health_checks_and_the_proxy_share_one_tls_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = load_config(CONFIG)

    def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
        app = create_app(config, run_health_checks=False)
        engine_transport = app.engine.client._transport
        proxy_transport = app.proxy.client._transport  # type: ignore[attr-defined]
        assert isinstance(engine_transport, httpx.AsyncHTTPTransport)
        assert isinstance(proxy_transport, httpx.AsyncHTTPTransport)
        return engine_transport._pool._ssl_context, proxy_transport._pool._ssl_context

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    checks, proxy = contexts()
    assert checks is proxy
    assert checks.verify_mode is ssl.CERT_REQUIRED and checks.check_hostname
    # The proxy's client honours the environment's CA bundle, the checks' never did.
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    checks, proxy = contexts()
    assert checks is not proxy
    assert proxy.verify_mode is ssl.CERT_REQUIRED
