"""The console commands: ``serve``, ``check-config`` and ``route``.

``main(argv)`` parses ``argv`` (default ``sys.argv[1:]``), runs one command and returns its exit
status: 0 success; 1 ``route`` was given a URL that is not a launch URL; 2 the configuration is
invalid or unreadable (argparse also exits 2 on a usage error). Every configuration problem is
printed on its own line as ``error: <field.path>: <message>``.

``route`` builds its routing view with the server's own :class:`~.registry.Registry` and decides
with the server's own :func:`~.policy.route`, so what it prints is what ``serve`` would answer
with every member healthy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import sys
from collections.abc import Callable, Sequence
from typing import TypedDict
from urllib.parse import urlsplit

import uvicorn
import yaml

from . import __version__
from .app import CONFIG_ENV, DEFAULT_CONFIG, create_app
from .config import Config, load_config
from .errors import ConfigError
from .keys import repo_key
from .models import HealthReport, HealthState, Snapshot
from .policy import ranking, route
from .registry import Registry

__all__ = ["main"]

log = logging.getLogger("federation_redirect.cli")

EXIT_OK = 0
EXIT_NOT_LAUNCH = 1
EXIT_CONFIG = 2

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# uvicorn settings, chosen for a redirector behind ingress-nginx in a small pod:
#
# Idle keep-alive connections are kept longer than ingress-nginx keeps its upstream connections
# (60 s), so the proxy, never we, closes an idle connection. With uvicorn's default of 5 s a
# request the proxy sends on a connection we are just closing fails with a 502.
KEEP_ALIVE_SECONDS = 75
# Connections plus in-flight requests before uvicorn itself answers 503. Far above mybinder.org's
# load (a redirect takes microseconds), but bounded, so a slow home-page member holding proxied
# requests open cannot grow memory past the pod's limit (250 MiB in the chart).
MAX_CONCURRENCY = 1000
# Largest request line plus headers h11 buffers (its default is 16 KiB). Launch URLs carry long
# queries (nbgitpuller, urlpath) and browsers send one stickiness cookie per recent repository;
# 64 KiB fits both and still bounds each connection. It applies when uvicorn uses h11;
# http="auto" prefers httptools when it is installed, which has its own parser limits.
MAX_HEADER_BYTES = 64 * 1024
# On SIGTERM, in-flight requests (a streamed home page) get this long to finish: well inside
# Kubernetes' default 30 s grace period, so the pod exits cleanly instead of being killed.
GRACEFUL_SHUTDOWN_SECONDS = 10


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv`` and return the process exit status."""
    args = _parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


# -- arguments ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="federation-redirect",
        description="Front door of a federation of BinderHubs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the redirector", description="Run the redirector (HTTP server)."
    )
    _add_config_option(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    serve.add_argument("--port", type=int, default=8080, help="port to bind (default %(default)s)")
    serve.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    serve.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="comma-separated addresses or networks ('*' for any) trusted to set "
        "X-Forwarded-For and X-Forwarded-Proto (default: $FORWARDED_ALLOW_IPS or 127.0.0.1)",
    )
    serve.set_defaults(handler=_serve)

    check = commands.add_parser(
        "check-config",
        help="validate a configuration file",
        description="Validate a configuration file and print the effective configuration "
        "with every default filled in. Exit status 2 if it is invalid.",
    )
    check.add_argument("path", metavar="PATH", help="YAML or JSON file (or Helm values)")
    check.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    check.set_defaults(handler=_check_config)

    explain = commands.add_parser(
        "route",
        help="show where launch URLs go",
        description="For each launch URL or path, print its repository key, the ranking of "
        "members and the member chosen, assuming every member is healthy. Exit status 1 if "
        "any URL is not a launch URL.",
    )
    _add_config_option(explain)
    explain.add_argument("urls", nargs="+", metavar="URL", help="full URL or path")
    explain.add_argument("--json", action="store_true", help="print JSON for scripts")
    explain.set_defaults(handler=_route)
    return parser


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"configuration file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
    )


def _config_path(option: str | None) -> str:
    return option or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def _load(path: str, warn: Callable[[str], None]) -> Config | None:
    """The validated config, or None after printing every problem to stderr."""
    warnings: list[str] = []
    try:
        config = load_config(path, warnings)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return None
    for warning in warnings:
        warn(warning)
    return config


def _print_warning(warning: str) -> None:
    print(f"warning: {warning}", file=sys.stderr)


# -- serve ----------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    path = _config_path(args.config)
    warnings: list[str] = []
    config = _load(path, warnings.append)
    if config is None:
        return EXIT_CONFIG
    _configure_logging(args.log_level)
    log.info("configuration from %s", path)
    for warning in warnings:
        log.warning("config: %s", warning)
    server = uvicorn.Server(_server_config(config, args))
    # uvicorn exits 3 itself if it cannot bind or the lifespan fails. After a graceful
    # shutdown it re-raises the signal that stopped it: Ctrl-C arrives here as
    # KeyboardInterrupt (a normal stop), SIGTERM ends the process as killed by SIGTERM.
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return EXIT_OK


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr, force=True)
    if level != "debug":
        # httpx logs every request at INFO: one line per health check and per proxied page
        logging.getLogger("httpx").setLevel(logging.WARNING)


def _server_config(config: Config, args: argparse.Namespace) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(config),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_config=None,  # keep the logging configured above; uvicorn's loggers propagate to it
        # No line per request: the production app spends 18% of its time writing access logs.
        # Redirects are counted in /metrics instead.
        access_log=False,
        proxy_headers=True,  # the scheme decides the cookie's Secure flag
        forwarded_allow_ips=args.forwarded_allow_ips,
        loop="auto",  # uvloop when installed
        http="auto",  # httptools when installed
        lifespan="on",  # health checks run in the lifespan: a failed startup must stop us
        server_header=False,
        limit_concurrency=MAX_CONCURRENCY,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )


# -- check-config ---------------------------------------------------------------------------


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args.path, _print_warning)
    if config is None:
        return EXIT_CONFIG
    effective = config.model_dump(mode="json")
    if args.json:
        print(json.dumps(effective, indent=2))
    else:
        print(yaml.safe_dump(effective, sort_keys=False), end="")
    return EXIT_OK


# -- route ----------------------------------------------------------------------------------


class Ranked(TypedDict):
    member: str
    weight: float
    score: float
    routable: bool


class Chosen(TypedDict):
    member: str
    reason: str
    location: str


class Routed(TypedDict):
    url: str
    path: str
    launch: bool
    key: str | None
    ranking: list[Ranked]
    chosen: Chosen | None


def _route(args: argparse.Namespace) -> int:
    config = _load(_config_path(args.config), _print_warning)
    if config is None:
        return EXIT_CONFIG
    snapshot = _all_healthy(config)
    results = [_explain(snapshot, url) for url in args.urls]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("\n\n".join(_describe(result) for result in results))
    return EXIT_OK if all(r["launch"] for r in results) else EXIT_NOT_LAUNCH


def _all_healthy(config: Config) -> Snapshot:
    """The routing view of ``config`` with every member healthy, built as the server builds it."""
    registry = Registry(config)
    healthy = HealthReport(state=HealthState.HEALTHY, detail="assumed healthy by `route`")
    for name in config.hosts:
        registry.report(name, healthy)
    return registry.snapshot


def _explain(snapshot: Snapshot, url: str) -> Routed:
    """Key, ranking and decision for one launch URL or path (raw, as the server sees it)."""
    parts = urlsplit(url)
    key = repo_key(parts.path)
    result = Routed(
        url=url, path=parts.path, launch=key is not None, key=key, ranking=[], chosen=None
    )
    if key is None:
        return result
    result["ranking"] = [
        Ranked(member=m.name, weight=m.weight, score=score, routable=m.routable)
        for m, score in ranking(snapshot, key)
    ]
    # the random strategy draws per request; seeding with the key makes the output repeatable
    decision = route(snapshot, key, rng=random.Random(key))
    if decision is not None:
        query = "?" + parts.query if parts.query else ""
        result["chosen"] = Chosen(
            member=decision.member.name,
            reason=str(decision.reason),
            location=decision.member.url + parts.path + query,
        )
    return result


def _describe(result: Routed) -> str:
    lines = [result["url"]]
    if result["key"] is None:
        lines.append(
            "  not a launch URL: only /v2/<provider>/<spec>, /build/<provider>/<spec> and "
            "/repo/<user>/<repo> are redirected"
        )
        return "\n".join(lines)
    lines.append(f"  key      {result['key']}")
    width = max(len("member"), *(len(r["member"]) for r in result["ranking"]))
    lines.append(f"  ranking  {'member':<{width}}  {'weight':>8}  {'score':>12}")
    for r in result["ranking"]:
        note = "  (weight 0: never chosen)" if r["weight"] == 0 else ""
        lines.append(
            f"           {r['member']:<{width}}  {r['weight']:>8g}  {r['score']:>12.6g}{note}"
        )
    chosen = result["chosen"]
    if chosen is None:
        lines.append("  chosen   none: every member is in maintenance")
    else:
        lines.append(f"  chosen   {chosen['member']} ({chosen['reason']}) -> {chosen['location']}")
        if chosen["reason"] == "random":
            lines.append("           (one weighted random draw: the server draws again per launch)")
    return "\n".join(lines)
