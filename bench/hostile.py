"""Hostile requests, counted: 100,000 generated requests and not one escape or 5xx.

Usage::

    python bench/hostile.py [--asgi 100000] [--raw 5000] [--seed 1] [--json out.json]

Uses the generators and the judge of ``tests/test_hostile.py`` (which runs a few hundred of
the same requests in CI): requests built by hypothesis from hostile pieces (CR/LF and NUL
bytes, percent-encoded line breaks, ``//evil.example``, ``@``, backslashes, absolute URLs,
non-ASCII bytes, overlong segments, forged ``Host``, ``X-Forwarded-*`` and stickiness cookies,
odd methods) against the complete redirector with every abuse control on:

* ``--asgi`` requests through the ASGI app directly (every byte reaches it as generated);
* ``--raw`` requests as bytes on a socket to a real uvicorn server configured exactly as
  ``federation-redirect serve`` configures it, with three real members behind it (httptools
  parses the requests; the home page is really proxied); then as many again to the same
  server without abuse controls, where launches are answered by the HTTP protocol itself
  (:mod:`federation_redirect.protocol`) instead of the ASGI app.

An answer *escapes* when it carries a ``Location`` outside the configured members and the
badge host (or one that does not end with the request's own path and query, byte for byte),
a header name or value that an injection produced, or a stickiness cookie that is not one.
Counted too: 5xx answers, requests that got no answer, and ERROR records in the log.

Prints the counts by status; exit status 1 unless there were 0 escapes, 0 5xx and 0 errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from federation_redirect.config import Config
from tests.test_hostile import (  # the repository root is on sys.path first
    Request,
    ThreadServer,
    allowed_locations,
    asgi_answer,
    error_log,
    fuzz_app,
    fuzz_config,
    hostile_requests,
    judge,
    live_config,
    live_config_without_abuse_controls,
    raw_exchange,
    wire,
)


@dataclass
class Counts:
    requests: int = 0
    escapes: int = 0
    server_errors: int = 0
    unanswered: int = 0
    errors_logged: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, request: Request, status: int | None, problems: list[str]) -> None:
        self.requests += 1
        if status is None:
            self.unanswered += 1
            return
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status >= 500:
            self.server_errors += 1
        escapes = [p for p in problems if not p.startswith("status")]
        if escapes:
            self.escapes += 1
        if problems and len(self.examples) < 10:
            self.examples.append(f"{request!r}: {problems}")


def _settings(n: int, at: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # count everything; do not stop to shrink
        suppress_health_check=list(HealthCheck),
    )


def run_asgi(n: int, at: int) -> Counts:
    counts = Counts()
    config = fuzz_config()
    allowed = allowed_locations(config)
    loop = asyncio.new_event_loop()
    app = fuzz_app(config)
    started = time.perf_counter()

    @seed(at)
    @_settings(n, at)
    @given(request=hostile_requests())
    def one(request: Request) -> None:
        with error_log() as errors:
            try:
                answer = loop.run_until_complete(asgi_answer(app, request))
            except Exception as exc:  # a server would log it and answer 500
                counts.errors_logged += 1
                counts.add(request, 500, [f"exception: {type(exc).__name__}: {exc}"])
                return
        counts.errors_logged += len(errors.records)
        counts.add(request, answer.status, judge(request, answer.status, answer.headers, allowed))

    try:
        one()
    finally:
        loop.close()
    counts.seconds = time.perf_counter() - started
    return counts


def run_raw(n: int, at: int, config_for: Callable[[dict[str, str]], Config]) -> Counts:
    counts = Counts()
    started = time.perf_counter()
    with ThreadServer(config_for) as server:
        assert server.config is not None
        allowed = allowed_locations(server.config)

        @seed(at)
        @_settings(n, at)
        @given(request=hostile_requests(printable_only=True))
        def one(request: Request) -> None:
            with error_log() as errors:
                try:
                    answer = raw_exchange(server.port, wire(request))
                except (OSError, AssertionError) as exc:
                    counts.add(request, None, [f"no answer: {exc}"])
                    return
            counts.errors_logged += len(errors.records)
            if answer is None:
                counts.add(request, None, ["no answer"])
                return
            problems = judge(request, answer.status, answer.headers, allowed)
            counts.add(request, answer.status, problems)

        one()
    counts.seconds = time.perf_counter() - started
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--asgi", type=int, default=100_000, help="requests through the app")
    parser.add_argument("--raw", type=int, default=5_000, help="requests over sockets")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    results = {"asgi": run_asgi(args.asgi, args.seed)}
    if args.raw:
        results["raw"] = run_raw(args.raw, args.seed, live_config)
        results["fast"] = run_raw(args.raw, args.seed, live_config_without_abuse_controls)
    ok = True
    for name, counts in results.items():
        print(
            f"{name:5} {counts.requests:>7} requests in {counts.seconds:6.1f} s: "
            f"{counts.escapes} escapes, {counts.server_errors} 5xx, "
            f"{counts.unanswered} unanswered, {counts.errors_logged} errors logged"
        )
        print(f"      statuses {dict(sorted(counts.statuses.items()))}")
        for example in counts.examples:
            print(f"      {example}")
        ok &= counts.escapes == counts.server_errors == counts.errors_logged == 0
    total = sum(c.requests for c in results.values())
    escapes = sum(c.escapes for c in results.values())
    fives = sum(c.server_errors for c in results.values())
    print(f"total {total} requests: {escapes} escapes, {fives} 5xx -> {'PASS' if ok else 'FAIL'}")
    if args.json:
        figures = {
            name: {**asdict(c), "statuses": {str(k): n for k, n in sorted(c.statuses.items())}}
            for name, c in results.items()
        }
        Path(args.json).write_text(json.dumps(figures | {"ok": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
