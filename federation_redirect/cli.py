"""The console commands: ``serve``, ``check-config``, ``route``, ``simulate`` and ``make-trace``.

``main(argv)`` parses ``argv`` (default ``sys.argv[1:]``), runs one command and returns its exit
status: 0 success; 1 ``route`` was given a URL that is not a launch URL; 2 the configuration is
invalid or unreadable (argparse also exits 2 on a usage error). Every configuration problem is
printed on its own line as ``error: <field.path>: <message>``.

``route`` builds its routing view with the server's own :class:`~.registry.Registry` and decides
with the server's own :func:`~.policy.route`, so what it prints is what ``serve`` would answer
with every member healthy.

``simulate`` replays a launch trace through that same routing code (:mod:`.simulate`);
``make-trace`` turns per-day launch counts into such a trace (:mod:`.trace`). Both exit with
status 2 when an input file or option is unusable, printing ``error: <problem>``.

The operator commands ``members``, ``set-weight``, ``drain``, ``undrain``, ``maint`` and
``audit`` are thin clients of a running redirector's operator API (:mod:`.admin`) at ``--url``
(default ``$FEDERATION_REDIRECT_URL``, else ``http://127.0.0.1:8080``); writes send the token
in ``$FEDERATION_REDIRECT_ADMIN_TOKEN``. They print tables (``--json``: the API's JSON) and
exit with status 0 on success, 1 when the redirector refused the request (401, 403, 404,
413, 422: the message says why), 2 on a usage error, 3 when it could not be reached or could
not do it (connection refused, timeout, 5xx such as 503 "shared store unavailable").
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
from datetime import UTC, date, datetime
from typing import Any, TypedDict
from urllib.parse import quote, urlsplit

import httpx
import uvicorn
import yaml
from pydantic import ValidationError

from . import __version__
from .app import CONFIG_ENV, DEFAULT_CONFIG, REDIS_ENV, create_app
from .config import Config, load_config
from .errors import ConfigError
from .keys import repo_key
from .models import HealthReport, HealthState, Snapshot
from .policy import ranking, route
from .protocol import front_door_http
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
# Largest request line plus headers read from a client (h11's default is 16 KiB, httptools has
# none). Launch URLs carry long queries (nbgitpuller, urlpath) and browsers send one stickiness
# cookie per recent repository; 64 KiB fits both and still bounds each connection: a larger
# head gets 431 (httplimits.py).
MAX_HEADER_BYTES = 64 * 1024
# A client has this long to send a request's line and headers, or gets 408: slow clients
# (slowloris) cannot hold connection slots. ingress-nginx sends a head at once.
HEADER_TIMEOUT_SECONDS = 10
# On SIGTERM, in-flight requests (a streamed home page) get this long to finish: well inside
# Kubernetes' default 30 s grace period, so the pod exits cleanly instead of being killed.
GRACEFUL_SHUTDOWN_SECONDS = 10


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv`` and return the process exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(simulation=_simulating(argv)).parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


def _simulating(argv: Sequence[str]) -> bool:
    """Whether the command in ``argv`` is ``simulate`` (or not known: none, or only options):
    only then are its options defined, which imports the simulator (2 MiB that a server does
    without; :mod:`.simulate` and :mod:`.trace` are imported by their commands only)."""
    command = next((word for word in argv if not word.startswith("-")), None)
    return command is None or command == "simulate"


# -- arguments ------------------------------------------------------------------------------


def _parser(*, simulation: bool = True) -> argparse.ArgumentParser:
    """The command line; with ``simulation=False`` the ``simulate`` command has no options
    (for any other command: it then cannot be the one parsed)."""
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
    serve.add_argument(
        "--redis-url",
        metavar="URL",
        help="share state with other replicas through this Redis (default: "
        "$FEDERATION_REDIRECT_REDIS_URL, else state.redis_url, else in memory)",
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
    explain.add_argument(
        "--degraded",
        action="append",
        default=[],
        metavar="MEMBER",
        help="assume launches on this member are failing: it is degraded, its weight scaled "
        "by outcomes.weight_factor (may repeat)",
    )
    explain.set_defaults(handler=_route)
    _add_simulation_commands(commands, simulation)
    _add_operator_commands(commands)
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
    redis_url = args.redis_url or os.environ.get(REDIS_ENV) or None
    try:
        config = config.with_redis_url(redis_url)
    except ValidationError:
        print("error: --redis-url: must be a redis://, rediss:// or unix:// URL", file=sys.stderr)
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
    # abuse.trusted_proxies, when set, are the proxies uvicorn believes too: both then take the
    # client from X-Forwarded-For the same way (with '*', uvicorn takes its leftmost address,
    # which a client can forge, and a ban or rate limit would follow the forgery)
    forwarded = ",".join(config.abuse.trusted_proxies) or args.forwarded_allow_ips
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
        forwarded_allow_ips=forwarded,
        loop="auto",  # uvloop when installed
        # httptools, request heads bounded, launches answered without ASGI's cycle
        http=front_door_http(MAX_HEADER_BYTES, HEADER_TIMEOUT_SECONDS),
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
    degraded: bool


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
    unknown = [name for name in args.degraded if name not in config.hosts]
    if unknown:
        print(f"error: --degraded {unknown[0]!r}: no such member", file=sys.stderr)
        return EXIT_CONFIG
    snapshot = _all_healthy(config, degraded=args.degraded)
    results = [_explain(snapshot, url) for url in args.urls]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("\n\n".join(_describe(result) for result in results))
    return EXIT_OK if all(r["launch"] for r in results) else EXIT_NOT_LAUNCH


def _all_healthy(config: Config, degraded: Sequence[str] = ()) -> Snapshot:
    """The routing view of ``config`` with every member healthy, built as the server builds it
    (the members in ``degraded`` are healthy but degraded)."""
    registry = Registry(config)
    for name in config.hosts:
        registry.report(
            name,
            HealthReport(
                state=HealthState.HEALTHY,
                detail="assumed healthy by `route`",
                degraded=name in degraded,
            ),
        )
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
        Ranked(
            member=m.name, weight=m.weight, score=score, routable=m.routable, degraded=m.degraded
        )
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
        if r["degraded"]:
            note += "  (degraded: launches failing, weight scaled down)"
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


# -- simulate and make-trace ----------------------------------------------------------------


def _add_simulation_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], simulation: bool
) -> None:
    sim = commands.add_parser(
        "simulate",
        help="replay a launch trace through the routing policies",
        description="Replay a launch trace (JSON lines in the mybinder.org events archive "
        "format) through the real routing code against simulated members, and report per "
        "policy: cache hits and misses, refusals, first-choice rate, each member's share "
        "and utilisation, failed launches under --degrade, and churn under --fail / --weight "
        "/ --degrade.",
    )
    sim.set_defaults(handler=_simulate)
    if simulation:
        _add_simulation_options(sim)

    make = commands.add_parser(
        "make-trace",
        help="make a launch trace from per-day launch counts",
        description="Spread the launches of one day of a per-day counts CSV (columns date, "
        "provider, spec, launches) over a daily load curve 1 + A cos(2 pi (t - peak) / 24 h), "
        "add workshop bursts, and write JSON lines in the events archive format.",
    )
    make.add_argument("--counts", required=True, metavar="CSV", help="per-day launch counts")
    make.add_argument("--date", required=True, metavar="YYYY-MM-DD", help="the day to use")
    make.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    make.add_argument(
        "--burst",
        action="append",
        default=[],
        metavar="SPEC,COUNT,START_MIN,DURATION_MIN",
        help="add COUNT launches of SPEC (e.g. gh/org/repo/HEAD) within DURATION_MIN minutes "
        "from START_MIN minutes after midnight UTC (may repeat)",
    )
    make.add_argument(
        "--amplitude", type=float, default=0.5, metavar="A", help="0..1 (default %(default)g)"
    )
    make.add_argument(
        "--peak-hour", type=float, default=14, metavar="H", help="UTC (default %(default)g)"
    )
    make.add_argument("--output", required=True, metavar="PATH", help="trace file ('-': stdout)")
    make.set_defaults(handler=_make_trace)


def _add_simulation_options(sim: argparse.ArgumentParser) -> None:
    from .simulate import DISTRIBUTIONS, POLICIES

    _add_config_option(sim)
    sim.add_argument("--trace", required=True, metavar="PATH", help="JSON-lines launch trace")
    sim.add_argument(
        "--policy",
        action="append",
        choices=POLICIES,
        metavar="NAME",
        help=f"policy to run, may repeat: {', '.join(POLICIES)} (default: all)",
    )
    sim.add_argument("--json", action="store_true", help="print one JSON document")
    sim.add_argument(
        "--session-minutes",
        type=float,
        default=20,
        metavar="M",
        help="mean session length (default %(default)g)",
    )
    sim.add_argument(
        "--session-distribution",
        choices=DISTRIBUTIONS,
        default="exponential",
        help="distribution of session lengths (default %(default)s)",
    )
    sim.add_argument(
        "--cache-hours",
        type=float,
        default=6,
        metavar="H",
        help="a member is warm for a repository this long after running it (default %(default)g)",
    )
    sim.add_argument(
        "--report-seconds",
        type=float,
        default=60,
        metavar="S",
        help="members report their pod count this often (default %(default)g)",
    )
    sim.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    sim.add_argument(
        "--fail",
        action="append",
        default=[],
        metavar="MEMBER@START_MIN-END_MIN",
        help="member is failed between these minutes after midnight UTC (may repeat)",
    )
    sim.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="MEMBER=W@MIN",
        help="member's weight becomes W at this minute after midnight UTC (may repeat)",
    )
    sim.add_argument(
        "--degrade",
        action="append",
        default=[],
        metavar="MEMBER@START_MIN-END_MIN[:RATIO]",
        help="launches on the member fail with this probability (default 1) between these "
        "minutes after midnight UTC while its health checks pass (may repeat)",
    )
    sim.add_argument(
        "--no-outcomes",
        action="store_true",
        help="turn outcome-aware health off: failing launches do not degrade a member",
    )
    sim.add_argument(
        "--demand-threshold",
        type=float,
        default=0.85,
        metavar="F",
        help="also count refusals while offered demand is under F x capacity (default 0.85)",
    )
    sim.add_argument(
        "--repo",
        action="append",
        default=[],
        metavar="SPEC",
        help="report this repository's launches separately, e.g. gh/org/repo/HEAD (may repeat)",
    )


def _simulate(args: argparse.Namespace) -> int:
    from .simulate import (
        POLICIES,
        Options,
        ScenarioError,
        format_report,
        parse_degradation,
        parse_outage,
        parse_weight_change,
        simulate,
    )
    from .trace import TraceError, read_trace

    config = _load(_config_path(args.config), _print_warning)
    if config is None:
        return EXIT_CONFIG
    try:
        options = Options(
            session_minutes=args.session_minutes,
            session_distribution=args.session_distribution,
            cache_hours=args.cache_hours,
            report_seconds=args.report_seconds,
            seed=args.seed,
            outages=tuple(parse_outage(text) for text in args.fail),
            weight_changes=tuple(parse_weight_change(text) for text in args.weight),
            degradations=tuple(parse_degradation(text) for text in args.degrade),
            outcomes=not args.no_outcomes,
            demand_threshold=args.demand_threshold,
            watch=tuple(args.repo),
        )
        launches = read_trace(args.trace)
        progress = _progress if sys.stderr.isatty() else None
        result = simulate(config, launches, args.policy or POLICIES, options, progress=progress)
    except (ScenarioError, TraceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        if sys.stderr.isatty():
            print("\r\033[K", end="", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(format_report(result))
    return EXIT_OK


def _progress(label: str, done: int, total: int) -> None:
    print(
        f"\r\033[K{label}: {done:,} of {total:,} launches ({100 * done // total}%)",
        end="",
        file=sys.stderr,
        flush=True,
    )


def _make_trace(args: argparse.Namespace) -> int:
    from .trace import TraceError, make_trace, parse_burst, read_counts, write_trace

    try:
        day = date.fromisoformat(args.date)
    except ValueError:
        print(f"error: --date {args.date!r}: expected YYYY-MM-DD", file=sys.stderr)
        return EXIT_CONFIG
    try:
        bursts = [parse_burst(text) for text in args.burst]
        counts = [row for row in read_counts(args.counts) if row.day == day]
        if not counts:
            raise TraceError(f"{args.counts}: no launches on {day.isoformat()}")
        events = make_trace(
            counts,
            day,
            seed=args.seed,
            bursts=bursts,
            amplitude=args.amplitude,
            peak_hour=args.peak_hour,
        )
    except TraceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.output == "-":
        written = write_trace(events, sys.stdout)
    else:
        try:
            with open(args.output, "w", encoding="utf-8") as stream:
                written = write_trace(events, stream)
        except OSError as exc:
            print(f"error: {args.output}: cannot write: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_CONFIG
    in_bursts = sum(b.count for b in bursts)
    print(
        f"{written:,} launches ({written - in_bursts:,} from counts, {in_bursts:,} in bursts)"
        f" on {day.isoformat()} -> {args.output}",
        file=sys.stderr,
    )
    return EXIT_OK


# -- operator commands: clients of the operator API ----------------------------------------

URL_ENV = "FEDERATION_REDIRECT_URL"
TOKEN_ENV = "FEDERATION_REDIRECT_ADMIN_TOKEN"  # noqa: S105 (a variable's name, not a secret)
DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_REFUSED = 1
EXIT_UNAVAILABLE = 3
CLIENT_TIMEOUT_SECONDS = 10.0


class _ApiFailed(Exception):
    """The request did not succeed: ``message`` for stderr, ``status`` the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _add_operator_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def client(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text, description=description)
        parser.add_argument(
            "--url",
            metavar="URL",
            help=f"the redirector (default: ${URL_ENV}, else {DEFAULT_URL})",
        )
        parser.add_argument("--json", action="store_true", help="print the API's JSON")
        return parser

    def member_change(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        parser = client(name, help_text, description + f" Needs ${TOKEN_ENV}.")
        parser.add_argument("name", metavar="NAME", help="the member")
        return parser

    members = client(
        "members",
        "show every member as the redirector routes it",
        "Show every member of a running redirector: state, health, weights, pods, load and "
        "its share of the redirects of the last 5 minutes.",
    )
    members.set_defaults(handler=_members)

    weight = member_change(
        "set-weight",
        "change a member's weight on every replica",
        "Set a member's weight: a number (the configuration's unit, replacing its configured "
        "weight), NN%% (a percentage of the configured weight), or 'reset' (back to the "
        "configured weight).",
    )
    weight.add_argument("weight", metavar="WEIGHT", help="number, NN%%, or reset")
    weight.add_argument("--reason", default="", help="why, for the audit log")
    weight.set_defaults(handler=_set_weight)

    for name, state, help_text, description in (
        (
            "drain",
            "drain",
            "stop sending new repositories to a member",
            "Drain a member: no new repositories; browsers holding its cookie still reach it "
            "and it stays health-checked.",
        ),
        (
            "undrain",
            "ready",
            "put a member back into rotation",
            "Put a drained (or in-maintenance) member back into normal rotation.",
        ),
        (
            "maint",
            "maint",
            "take a member out of all traffic",
            "Put a member in maintenance: no traffic at all, cookies naming it are ignored.",
        ),
    ):
        parser = member_change(name, help_text, description)
        parser.add_argument("--reason", default="", help="why, for the audit log")
        parser.set_defaults(handler=_set_state, state=state)

    audit = client(
        "audit",
        "show the operators' changes, newest first",
        "Show who changed which member, when, from what to what, and why.",
    )
    audit.add_argument(
        "--limit", type=int, default=50, metavar="N", help="most entries (default %(default)s)"
    )
    audit.set_defaults(handler=_audit)


def _call(args: argparse.Namespace, method: str, path: str, body: object = None) -> Any:
    """One request to the operator API; the decoded JSON answer, or _ApiFailed."""
    base = (args.url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
    headers = {"Accept": "application/json"}
    if method != "GET":
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise _ApiFailed(f"no operator token: set {TOKEN_ENV}", EXIT_REFUSED)
        headers["Authorization"] = f"Bearer {token}"
    url = base + "/api/v1" + path
    try:
        with httpx.Client(timeout=CLIENT_TIMEOUT_SECONDS, follow_redirects=False) as http:
            response = http.request(method, url, headers=headers, json=body)
    except httpx.ConnectError as exc:
        raise _ApiFailed(f"cannot connect to {base}: {exc}", EXIT_UNAVAILABLE) from None
    except httpx.TimeoutException:
        raise _ApiFailed(
            f"{base} did not answer within {CLIENT_TIMEOUT_SECONDS:g} s", EXIT_UNAVAILABLE
        ) from None
    except httpx.HTTPError as exc:
        raise _ApiFailed(f"request to {base} failed: {exc}", EXIT_UNAVAILABLE) from None
    try:
        document = response.json()
    except ValueError:
        document = None
    if response.is_success and document is not None:
        return document
    detail = document.get("detail") if isinstance(document, dict) else None
    if isinstance(detail, list):  # a validation error: one line per field
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'body'}: {e.get('msg')}"
            for e in detail
            if isinstance(e, dict)
        )
    what = detail or response.reason_phrase or "unexpected answer"
    refused = 400 <= response.status_code < 500
    status = EXIT_REFUSED if refused else EXIT_UNAVAILABLE
    raise _ApiFailed(f"{response.status_code}: {what}", status)


def _run(args: argparse.Namespace, method: str, path: str, body: object = None) -> Any:
    try:
        return _call(args, method, path, body)
    except _ApiFailed as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        raise


def _members(args: argparse.Namespace) -> int:
    try:
        document = _run(args, "GET", "/members")
    except _ApiFailed as exc:
        return exc.status
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(_members_table(document["members"]))
    return EXIT_OK


def _change(args: argparse.Namespace, body: dict[str, object]) -> int:
    if args.reason:
        body["reason"] = args.reason
    try:
        member = _run(args, "PATCH", "/members/" + quote(args.name, safe=""), body)
    except _ApiFailed as exc:
        return exc.status
    if args.json:
        print(json.dumps(member, indent=2))
    else:
        print(_member_line(member))
    return EXIT_OK


def _set_weight(args: argparse.Namespace) -> int:
    text: str = args.weight.strip()
    key = "weight"
    if text.lower() == "reset":
        return _change(args, {"weight": None})
    if text.endswith("%"):
        key, text = "weight_percent", text[:-1]
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and value != float("inf")):
        print(
            f"error: WEIGHT {args.weight!r}: expected a number >= 0, NN% or reset",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    return _change(args, {key: value})


def _set_state(args: argparse.Namespace) -> int:
    return _change(args, {"state": args.state})


def _audit(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000:
        print("error: --limit: must be between 1 and 1000", file=sys.stderr)
        return EXIT_CONFIG
    try:
        document = _run(args, "GET", f"/audit?limit={args.limit}")
    except _ApiFailed as exc:
        return exc.status
    if args.json:
        print(json.dumps(document, indent=2))
        return EXIT_OK
    entries = document["entries"]
    if not entries:
        print("no operator changes yet")
        return EXIT_OK
    rows = [
        [
            _utc(e["at"]),
            e["actor"],
            e["member"],
            "; ".join(
                f"{field} {_plain(c['from'])} -> {_plain(c['to'])}"
                for field, c in e["changes"].items()
            )
            or "(reason only)",
            e["reason"],
        ]
        for e in entries
    ]
    print(_table(["time (UTC)", "by", "member", "change", "reason"], rows))
    return EXIT_OK


def _members_table(members: list[dict[str, Any]]) -> str:
    rows = []
    for m in members:
        cap = m["capacity"]
        share = m["traffic"]["share"]
        notes = []
        health = m["health"]
        if health["state"] != "healthy" and health["reason"]:
            notes.append(health["reason"])
        if m["degraded"]:
            notes.append("degraded")
        if cap["full"]:
            notes.append("full")
        change = m["last_change"]
        if change:
            why = f": {change['reason']}" if change["reason"] else ""
            notes.append(f"by {change['by']}{why}")
        rows.append(
            [
                m["name"],
                m["state"],
                health["state"],
                _plain(m["weight"]),
                _plain(m["configured_weight"]),
                f"{m['effective_weight']:.4g}",
                f"{_plain(cap['pods'])}/{_plain(cap['quota'])}",
                f"{cap['load']}/{_plain(cap['bound'])}",
                "-" if share is None else f"{100 * share:.1f}%",
                ", ".join(notes),
            ]
        )
    headers = ["member", "state", "health", "weight", "config", "effective"]
    headers += ["pods/quota", "load/bound", "share 5m", "notes"]
    return _table(headers, rows)


def _member_line(m: dict[str, Any]) -> str:
    percent = m["weight_percent"]
    how = f" ({_plain(percent)}% of configured)" if percent is not None else ""
    if m["weight_override"] is None and percent is None:
        how = " (configured)"
    return (
        f"{m['name']}: state {m['state']}, weight {_plain(m['weight'])}{how}, "
        f"effective {m['effective_weight']:.4g}, health {m['health']['state']}"
    )


def _plain(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)
