"""A fake BinderHub member: a test double that speaks BinderHub's protocol over real HTTP.

This is **not** production code. Tests, the benchmarks under ``bench/`` and the chaos run use
it to stand in for member BinderHubs, so it lives in the package rather than in ``tests/``.
It answers the paths federation-redirect touches, with the shapes described in BinderHub's
``health.py`` and ``main.py`` (see ``providers.md`` §4 and §5):

* ``GET /health``: ``{"ok": bool, "checks": [{"service": "Docker registry", "ok": bool},
  {"service": "JupyterHub API", "ok": bool}, {"service": "Pod quota", "total_pods": int,
  "build_pods": int, "user_pods": int, "quota": int | null, "ok": bool,
  "_ignore_failure": true}]}``, status 200, or 503 when a check without ``_ignore_failure``
  failed.
* ``GET /versions``: ``{"builder_info": {"build_image": ...}, "binderhub": ..., "builder": ...}``.
* launch paths ``/v2/...`` and ``/build/...``: 200 with a short text naming the member, so a
  test can follow a redirect and see where it landed.
* ``GET /metrics``: BinderHub's Prometheus text (see :class:`FakeOutcomes`): a little process
  noise, then ``binderhub_build_time_seconds`` and ``binderhub_launch_time_seconds`` (with
  their ``_created`` gauges) whose counts grow at configurable rates, then the bulky
  per-repository counters. ``metrics_mode`` makes it misbehave (see :data:`METRICS_MODES`).
* any other path (the home page): an HTML page naming the member, echoing request headers
  (``X-Echo-Host``, ``X-Echo-X-Forwarded-For``, ``X-Echo-X-Forwarded-Host``,
  ``X-Echo-Origin``, ``X-Echo-Path``, ``X-Echo-Method``) and setting two cookies; a POST gets
  the length of its body back (``X-Echo-Body-Length``).

How it misbehaves is chosen with a *mode* (see :data:`MODES`). In process (the primary API)::

    async with await start_member("gesis", quota=300) as m:
        m.url                    # "http://127.0.0.1:PORT"
        await m.set_mode("503")  # /health answers 503, "JupyterHub API" ok: false
        m.member.set_mode("hang")  # the same, synchronously, for every mode but "refuse"
        await m.refuse()         # the port really stops listening: connections are refused
        await m.resume()         # listening again, on the same port
        m.set_pods(295, 300)     # the Pod quota check: 295 pods of a quota of 300
        m.outcomes.set_rates(success=20, failure=20)  # launches per second, from now on
        m.member.metrics_mode = "404"  # or "garbage", "huge" (20 MiB), "hang"
        m.counts["health"]       # requests received per kind of path

In a separate process (for benchmarks)::

    python -m federation_redirect.testing --name a --port 0 --quota 300 --control

prints its URL as the first line of stdout and serves until SIGTERM or SIGINT
(``--metrics-mode``, ``--noise-repos`` and ``--launch-rates SUCCESS FAILURE`` shape its
``/metrics``). With
``--control`` it accepts ``POST /_control`` with JSON ``{"mode": ..., "pods": [total, quota],
"versions": {...}, "delay": seconds, "resume_after": seconds, "metrics_mode": ...,
"launch_rates": [successes, failures]}`` (per second; ``GET /_control`` returns the state and
counters); SIGUSR1 resumes listening after a ``refuse``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Mapping,
    MutableMapping,
)
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias, cast, get_args

import uvicorn

__all__ = [
    "DEFAULT_VERSIONS",
    "HUGE_METRICS_BYTES",
    "METRICS_MODES",
    "MODES",
    "FakeMember",
    "FakeOutcomes",
    "MetricsMode",
    "Mode",
    "RequestRecord",
    "RunningMember",
    "main",
    "start_member",
]

Mode: TypeAlias = Literal[
    "ok",  # 200, every check ok
    "503",  # 503, "JupyterHub API" ok: false
    "registry_down",  # 503, "Docker registry" ok: false
    "hang",  # /health and /versions never answer until the mode changes or the server stops
    "html",  # /health and /versions answer 200 with an HTML page
    "bad_json",  # /health and /versions answer 200 with truncated JSON
    "huge",  # /health and /versions answer 200 with ~1 MiB of valid JSON, chunked
    "500",  # /health and /versions answer 500 with a text body
    "redirect",  # /health and /versions answer 302 to /hub/login
    "refuse",  # the port stops listening (RunningMember only)
]
#: Every mode, in the order of :data:`Mode`.
MODES: Final[tuple[str, ...]] = get_args(Mode)

MetricsMode: TypeAlias = Literal[
    "ok",  # BinderHub's exposition: histograms first, then the per-repository counters
    "404",  # 404 Not Found (a hub that does not expose /metrics, or an ingress hiding it)
    "garbage",  # 200 with binary noise and launch lines whose values are not numbers
    "huge",  # 200, 20 MiB of per-repository counters, chunked, the histograms at the very end
    "hang",  # no answer until the mode changes or the server stops
]
#: Every metrics mode, in the order of :data:`MetricsMode`.
METRICS_MODES: Final[tuple[str, ...]] = get_args(MetricsMode)
HUGE_METRICS_BYTES: Final = 20 << 20

#: What ``/versions`` answers unless told otherwise (a current BinderHub on Kubernetes).
DEFAULT_VERSIONS: Final[Mapping[str, object]] = {
    "builder_info": {"build_image": "quay.io/jupyterhub/repo2docker:2024.07.0"},
    "binderhub": "1.0.0+42.gabc",
    "builder": "quay.io/jupyterhub/repo2docker:2024.07.0",
}

HUGE_BODY_BYTES: Final = 1 << 20
_CHUNK: Final = 64 * 1024
_CONTROL_PATH: Final = "/_control"
_MAX_CONTROL_BODY: Final = 1 << 16

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
Headers: TypeAlias = list[tuple[bytes, bytes]]

# request headers echoed back as X-Echo-<name> on page responses
_ECHOED: Final = ("host", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "origin")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the member received. ``at`` is ``time.monotonic()`` on arrival."""

    at: float
    kind: str  # "health", "versions", "metrics", "launch", "page" or "control"
    method: str
    path: str


_LAUNCH_BUCKETS: Final = ("2.0", "5.0", "10.0", "20.0", "30.0", "60.0", "120.0", "300.0", "600.0")
_BUILD_BUCKETS: Final = ("60.0", "120.0", "300.0", "600.0", "1800.0", "3600.0", "7200.0")
_PROCESS_NOISE: Final = (
    b"# HELP python_info Python platform information\n"
    b"# TYPE python_info gauge\n"
    b'python_info{implementation="CPython",major="3",minor="11",patchlevel="9",version="3.11.9"}'
    b" 1.0\n"
    b"# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
    b"# TYPE process_resident_memory_bytes gauge\n"
    b"process_resident_memory_bytes 2.0e+08\n"
)


class FakeOutcomes:
    """A BinderHub's launch and build counters, as ``binderhub/builder.py`` keeps them.

    Counts grow at the rates of :meth:`set_rates` (per second, by ``clock``) plus whatever
    :meth:`add` adds; each failed launch also counts 3 ``retry`` attempts (BinderHub's default
    of 4 attempts). :meth:`restart` zeroes everything with a new ``_created`` time, like a
    restarted hub. :meth:`chunks` renders the exposition lazily (``noise_repos`` repositories
    of per-repository counters after the histograms), so a huge body is never held in memory.
    """

    def __init__(self, *, noise_repos: int = 100, clock: Callable[[], float] = time.monotonic):
        self.noise_repos = noise_repos
        self._clock = clock
        self.counts: Counter[str] = Counter()  # success, failure, retry, build_success, ...
        self._rates: dict[str, float] = {}
        self._carry: dict[str, float] = {}
        self._at = clock()
        self.created = time.time()

    def set_rates(
        self,
        *,
        success: float = 0.0,
        failure: float = 0.0,
        build_success: float = 0.0,
        build_failure: float = 0.0,
    ) -> None:
        """Launch and build outcomes per second from now on."""
        self._advance()
        self._rates = {
            "success": success,
            "failure": failure,
            "build_success": build_success,
            "build_failure": build_failure,
        }

    def add(
        self,
        *,
        success: int = 0,
        failure: int = 0,
        build_success: int = 0,
        build_failure: int = 0,
    ) -> None:
        """Count outcomes now."""
        self._advance()
        self._count("success", success)
        self._count("failure", failure)
        self._count("build_success", build_success)
        self._count("build_failure", build_failure)

    def restart(self) -> None:
        """The hub restarted: every count is zero again, with a later ``_created``."""
        self._advance()
        self.counts.clear()
        self.created = max(time.time(), self.created + 0.001)

    def _count(self, kind: str, n: int) -> None:
        self.counts[kind] += n
        if kind == "failure":
            self.counts["retry"] += 3 * n

    def _advance(self) -> None:
        now = self._clock()
        elapsed, self._at = now - self._at, now
        for kind, rate in self._rates.items():
            due = self._carry.get(kind, 0.0) + rate * elapsed
            whole = int(due)
            self._carry[kind] = due - whole
            if whole:
                self._count(kind, whole)

    def histograms(self) -> bytes:
        """The two histograms and their ``_created`` gauges, as prometheus-client writes them."""
        self._advance()
        c = self.counts
        build = [(f'status="{s}"', c["build_" + s]) for s in ("success", "failure")]
        launch = [
            ('retries="0",status="success"', c["success"]),
            ('retries="-1",status="failure"', c["failure"]),
            ('retries="-1",status="retry"', c["retry"]),
        ]
        return _histogram(
            "binderhub_build_time_seconds", "build", _BUILD_BUCKETS, build, self.created
        ) + _histogram(
            "binderhub_launch_time_seconds", "launch", _LAUNCH_BUCKETS, launch, self.created
        )

    def chunks(self, mode: MetricsMode = "ok") -> Iterator[bytes]:
        """The body of ``/metrics`` in ``mode`` (``ok`` or ``huge``), in pieces of ~64 KiB."""
        if mode == "huge":
            block = _noise(range(400))
            sent = 0
            while sent < HUGE_METRICS_BYTES:
                yield block
                sent += len(block)
            yield self.histograms()
            return
        yield _PROCESS_NOISE + self.histograms()
        step = 400
        for start in range(0, self.noise_repos, step):
            yield _noise(range(start, min(start + step, self.noise_repos)))


def _histogram(
    name: str, what: str, bounds: tuple[str, ...], series: list[tuple[str, int]], created: float
) -> bytes:
    lines = [f"# HELP {name} Histogram of {what} times", f"# TYPE {name} histogram"]
    stamps = []
    for labels, count in series:
        if not count:
            continue  # prometheus-client shows a label set once it has been observed
        for bound in (*bounds, "+Inf"):
            filled = count if float(bound) >= 7.5 else 0  # every observation took 7.5 s
            lines.append(f'{name}_bucket{{le="{bound}",{labels}}} {float(filled)}')
        lines.append(f"{name}_count{{{labels}}} {float(count)}")
        lines.append(f"{name}_sum{{{labels}}} {7.5 * count}")
        stamps.append(f"{name}_created{{{labels}}} {created:.17g}")
    lines += [f"# HELP {name}_created Histogram of {what} times", f"# TYPE {name}_created gauge"]
    return ("\n".join(lines + stamps) + "\n").encode()


def _noise(repos: range) -> bytes:
    """Per-repository counters of ``repos`` (what makes a real /metrics megabytes)."""
    lines = []
    for kind in ("build", "launch"):
        lines.append(f"# HELP binderhub_{kind}_count_total Counter of {kind}s by repo")
        lines.append(f"# TYPE binderhub_{kind}_count_total counter")
        for i in repos:
            lines.append(
                f'binderhub_{kind}_count_total{{provider="GitHub",'
                f'repo="https://github.com/org-{i}/repository-{i}",status="success"}} {i % 7 + 1}.0'
            )
    return ("\n".join(lines) + "\n").encode()


class FakeMember:
    """The ASGI app of a fake BinderHub member plus the knobs that control it.

    Every attribute may be changed at any time from the event loop serving it; a change of
    mode releases requests held by ``hang`` (they then answer as the new mode says).
    ``counts`` counts requests per kind (``health``, ``versions``, ``launch``, ``page``,
    ``control``); ``log`` keeps the last 10,000 :class:`RequestRecord`. ``delay`` (seconds)
    is waited before answering ``/health`` and ``/versions``. ``prefix`` (e.g. ``/binder``)
    puts the hub under a path prefix, like some real members. ``outcomes`` holds the launch
    counters ``/metrics`` shows; ``metrics_mode`` says how ``/metrics`` answers.
    """

    def __init__(
        self,
        name: str,
        *,
        mode: Mode = "ok",
        pods: int | None = 0,
        quota: int | None = None,
        versions: Mapping[str, object] | None = None,
        registry_check: bool = True,
        prefix: str = "",
        control: bool = False,
        metrics_mode: MetricsMode = "ok",
        noise_repos: int = 100,
    ) -> None:
        self.name = name
        self.prefix = prefix.rstrip("/")
        self.control = control
        self.registry_check = registry_check
        self.delay = 0.0
        self.counts: Counter[str] = Counter()
        self.log: deque[RequestRecord] = deque(maxlen=10_000)
        self.last_headers: dict[str, str] = {}
        self.versions: dict[str, object] = dict(DEFAULT_VERSIONS if versions is None else versions)
        self.pods: int | None = pods
        self.quota: int | None = quota
        self.outcomes = FakeOutcomes(noise_repos=noise_repos)
        self.metrics_mode: MetricsMode = metrics_mode
        # set by RunningMember: how a "refuse" that arrives over /_control is carried out
        self.on_refuse: Callable[[float | None], None] | None = None
        self._mode: Mode = "ok"
        self._closing = False
        self._wake = asyncio.Event()
        self.set_mode(mode)

    # -- control ------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        """The current HTTP-level mode."""
        return self._mode

    def set_mode(self, mode: Mode) -> None:
        """Switch mode; releases held (``hang``) requests. ``refuse`` needs a RunningMember."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        if mode == "refuse":
            raise ValueError("'refuse' stops the listener: use RunningMember.set_mode or refuse")
        self._mode = mode
        self._wake_all()

    def set_pods(self, total: int | None, quota: int | None = None) -> None:
        """Report ``total`` pods against ``quota`` (None: unlimited). ``total`` None: no check."""
        self.pods = total
        self.quota = quota

    def set_versions(self, versions: Mapping[str, object]) -> None:
        """What ``/versions`` answers from now on."""
        self.versions = dict(versions)

    def set_metrics_mode(self, mode: MetricsMode) -> None:
        """How ``/metrics`` answers from now on; releases requests held by ``hang``."""
        if mode not in METRICS_MODES:
            raise ValueError(f"unknown metrics mode {mode!r}; one of {', '.join(METRICS_MODES)}")
        self.metrics_mode = mode
        self._wake_all()

    def close(self) -> None:
        """Release every held request at once (the server is stopping)."""
        self._closing = True
        self._wake_all()

    def reopen(self) -> None:
        """Undo :meth:`close` (the server is listening again)."""
        self._closing = False

    def first_request(self, kind: str, since: float) -> float | None:
        """Arrival time of the first request of ``kind`` at or after ``since`` (monotonic)."""
        for record in self.log:
            if record.kind == kind and record.at >= since:
                return record.at
        return None

    def health_document(self) -> tuple[int, dict[str, object]]:
        """The status and JSON body ``/health`` answers in the modes that answer JSON."""
        checks: list[dict[str, object]] = []
        if self.registry_check:
            checks.append({"service": "Docker registry", "ok": self._mode != "registry_down"})
        checks.append({"service": "JupyterHub API", "ok": self._mode != "503"})
        if self.pods is not None:
            build = self.pods // 10
            checks.append(
                {
                    "service": "Pod quota",
                    "total_pods": self.pods,
                    "build_pods": build,
                    "user_pods": self.pods - build,
                    "quota": self.quota,
                    "ok": self.quota is None or self.pods <= self.quota,
                    "_ignore_failure": True,
                }
            )
        ok = all(c["ok"] for c in checks if not c.get("_ignore_failure"))
        return (200 if ok else 503), {"ok": ok, "checks": checks}

    def state(self) -> dict[str, object]:
        """Mode, capacity, versions and counters, as ``GET /_control`` returns them."""
        return {
            "name": self.name,
            "mode": self._mode,
            "pods": [self.pods, self.quota],
            "versions": self.versions,
            "delay": self.delay,
            "counts": dict(self.counts),
            "metrics_mode": self.metrics_mode,
            "outcomes": dict(self.outcomes.counts),
        }

    def _wake_all(self) -> None:
        old, self._wake = self._wake, asyncio.Event()
        old.set()

    # -- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope (``http`` only; ``lifespan`` is acknowledged)."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        full_path: str = scope["path"]
        path = full_path
        if self.prefix and (path == self.prefix or path.startswith(self.prefix + "/")):
            path = path[len(self.prefix) :] or "/"
        kind = _kind(path, self.control)
        self.counts[kind] += 1
        self.log.append(RequestRecord(time.monotonic(), kind, method, full_path))
        if kind in ("health", "versions"):
            await self._checked_endpoint(kind, send)
        elif kind == "metrics":
            await self._metrics(send)
        elif kind == "control":
            await self._control(method, receive, send)
        elif kind == "launch":
            self.last_headers = _headers(scope)
            body = f"launch at member {self.name}: {full_path}\n".encode()
            await _respond(send, 200, body, "text/plain; charset=utf-8", self._tag())
        else:
            await self._page(scope, method, receive, send)

    async def _checked_endpoint(self, kind: str, send: Send) -> None:
        if await self._hold():
            await _respond(send, 503, b"shutting down\n", "text/plain", self._tag())
            return
        mode = self._mode
        if mode == "html":
            await _respond(send, 200, _page_html(self.name), "text/html", self._tag())
        elif mode == "bad_json":
            await _respond(send, 200, b'{"ok": true, "checks": [', "application/json", self._tag())
        elif mode == "huge":
            await _respond_huge(send, self._tag())
        elif mode == "500":
            await _respond(send, 500, b"Internal Server Error\n", "text/plain", self._tag())
        elif mode == "redirect":
            headers = [*self._tag(), (b"location", b"/hub/login")]
            await _respond(send, 302, b"", "text/plain", headers)
        elif mode == "refuse":  # only while a refuse is being set up
            await _respond(send, 503, b"going away\n", "text/plain", self._tag())
        elif kind == "versions":
            await _respond_json(send, 200, self.versions, self._tag())
        else:
            status, document = self.health_document()
            await _respond_json(send, status, document, self._tag())

    async def _metrics(self, send: Send) -> None:
        while self.metrics_mode == "hang" and not self._closing:
            await self._wake.wait()
        mode = self.metrics_mode
        if self._closing:
            await _respond(send, 503, b"shutting down\n", "text/plain", self._tag())
        elif mode == "404":
            await _respond(send, 404, b"404: Not Found\n", "text/html", self._tag())
        elif mode == "garbage":
            body = (
                b"\x00\xff\xfe not an exposition \x01\n" * 64
                + b'binderhub_launch_time_seconds_count{status="success"} many\n'
                + b'binderhub_launch_time_seconds_count{status="failure" 3\n'
            )
            await _respond(send, 200, body, "text/plain", self._tag())
        else:
            chunks = self.outcomes.chunks("huge" if mode == "huge" else "ok")
            content_type = b"text/plain; version=0.0.4; charset=utf-8"
            headers = [(b"content-type", content_type), *self._tag()]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _hold(self) -> bool:
        """Wait out ``delay`` and any ``hang``; True if the member is closing meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.delay
        while not self._closing and (left := deadline - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._wake.wait()
        while self._mode == "hang" and not self._closing:
            await self._wake.wait()
        return self._closing

    async def _page(self, scope: Scope, method: str, receive: Receive, send: Send) -> None:
        self.last_headers = request_headers = _headers(scope)
        headers = self._tag()
        for name in _ECHOED:
            if name in request_headers:
                headers.append((b"x-echo-" + name.encode(), request_headers[name].encode()))
        query = scope.get("query_string", b"")
        echo_path = scope["path"] + ("?" + query.decode("latin-1") if query else "")
        headers += [
            (b"x-echo-path", echo_path.encode()),
            (b"x-echo-method", method.encode()),
            (b"set-cookie", f"member={self.name}; Path=/".encode()),
            (b"set-cookie", b"session=fake; Path=/; HttpOnly; SameSite=Lax"),
        ]
        if method == "POST":
            length = 0
            async for chunk in _body_chunks(receive):
                length += len(chunk)
            headers.append((b"x-echo-body-length", str(length).encode()))
            body = f"member {self.name} received {length} bytes\n".encode()
            await _respond(send, 200, body, "text/plain; charset=utf-8", headers)
            return
        await _respond(send, 200, _page_html(self.name), "text/html; charset=utf-8", headers)

    async def _control(self, method: str, receive: Receive, send: Send) -> None:
        if method == "POST":
            data = bytearray()
            async for chunk in _body_chunks(receive):
                data += chunk
                if len(data) > _MAX_CONTROL_BODY:
                    await _respond(send, 413, b"too large\n", "text/plain", self._tag())
                    return
            try:
                self._apply_control(json.loads(data or b"{}"))
            except (ValueError, TypeError) as exc:
                body = f"bad control request: {exc}\n".encode()
                await _respond(send, 400, body, "text/plain", self._tag())
                return
        await _respond_json(send, 200, self.state(), self._tag())

    def _apply_control(self, request: object) -> None:
        if not isinstance(request, dict):
            raise ValueError("expected a JSON object")
        if "versions" in request:
            if not isinstance(request["versions"], dict):
                raise ValueError("versions must be an object")
            self.set_versions(request["versions"])
        if "pods" in request:
            pods = request["pods"]
            if not (isinstance(pods, list) and len(pods) == 2):
                raise ValueError("pods must be [total, quota]")
            total, quota = pods
            if not all(v is None or type(v) is int for v in (total, quota)):
                raise ValueError("pods must be integers or null")
            self.set_pods(total, quota)
        if "metrics_mode" in request:
            self.set_metrics_mode(request["metrics_mode"])
        if "launch_rates" in request:
            rates = request["launch_rates"]
            if not (
                isinstance(rates, list)
                and len(rates) == 2
                and all(type(r) in (int, float) and r >= 0 for r in rates)
            ):
                raise ValueError("launch_rates must be [successes, failures] per second")
            self.outcomes.set_rates(success=float(rates[0]), failure=float(rates[1]))
        if "delay" in request:
            delay = request["delay"]
            if type(delay) not in (int, float) or delay < 0:
                raise ValueError("delay must be a number >= 0")
            self.delay = float(delay)
        if "mode" in request:
            mode = request["mode"]
            if mode not in MODES:
                raise ValueError(f"mode must be one of {', '.join(MODES)}")
            if mode == "refuse":
                resume_after = request.get("resume_after")
                if resume_after is not None and type(resume_after) not in (int, float):
                    raise ValueError("resume_after must be a number")
                if self.on_refuse is None:
                    raise ValueError("refuse needs a RunningMember")
                self.on_refuse(None if resume_after is None else float(resume_after))
            else:
                self.set_mode(cast(Mode, mode))

    def _tag(self) -> Headers:
        return [(b"x-member", self.name.encode())]


def _kind(path: str, control: bool) -> str:
    if path in ("/health", "/health/"):
        return "health"
    if path in ("/versions", "/versions/"):
        return "versions"
    if path == "/metrics":
        return "metrics"
    if path.startswith(("/v2/", "/build/")):
        return "launch"
    if control and path == _CONTROL_PATH:
        return "control"
    return "page"


def _headers(scope: Scope) -> dict[str, str]:
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}


def _page_html(name: str) -> bytes:
    return (
        "<!DOCTYPE html>\n<html><head><title>Binder</title></head><body>"
        f'<div id="root"></div> member {name}</body></html>\n'
    ).encode()


async def _body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def _respond(
    send: Send, status: int, body: bytes, content_type: str, headers: Headers
) -> None:
    all_headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


async def _respond_json(send: Send, status: int, document: object, headers: Headers) -> None:
    await _respond(send, status, json.dumps(document).encode(), "application/json", headers)


async def _respond_huge(send: Send, headers: Headers) -> None:
    # valid JSON, no Content-Length (chunked): a reader must cap what it reads itself
    all_headers = [(b"content-type", b"application/json"), *headers]
    await send({"type": "http.response.start", "status": 200, "headers": all_headers})
    await send(
        {
            "type": "http.response.body",
            "body": b'{"ok": true, "checks": [], "pad": "',
            "more_body": True,
        }
    )
    for _ in range(HUGE_BODY_BYTES // _CHUNK):
        await send({"type": "http.response.body", "body": b"x" * _CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b'"}', "more_body": False})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host (tests, benchmarks).

    uvicorn replaces the SIGINT/SIGTERM handlers while it serves and restores them when it
    stops; with several servers starting and stopping in any order that would leave a stale
    handler installed, so embedded servers do not touch signals at all. They also stop as
    soon as asked instead of at uvicorn's next 0.1 s poll.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def main_loop(self) -> None:
        # uvicorn polls should_exit every 0.1 s; wake at once instead, so that stopping and
        # refusing are quick (on_tick still refreshes the Date header about once a second)
        counter = 0
        while not await self.on_tick(counter):
            counter += 10
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await self._exit.wait()

    def exit(self) -> None:
        """Ask the server to shut down now."""
        self.should_exit = True
        self._exit.set()


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class RunningMember:
    """A :class:`FakeMember` served by a real uvicorn server on ``host`` (127.0.0.1).

    The server runs in the current event loop. ``port`` is chosen by the OS on the first
    :meth:`start` (unless given) and kept across :meth:`refuse` / :meth:`resume`. Stopping
    takes about 0.2 s and never waits on held requests. Use as ``async with``.
    """

    def __init__(self, member: FakeMember, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.member = member
        self.host = host
        self.port = port
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._started = False
        member.on_refuse = self._refuse_later

    # -- the member's knobs, for convenience ---------------------------------------------

    @property
    def name(self) -> str:
        return self.member.name

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` plus the member's prefix, without a trailing slash."""
        return f"http://{self.host}:{self.port}{self.member.prefix}"

    @property
    def counts(self) -> Counter[str]:
        return self.member.counts

    @property
    def refused(self) -> bool:
        """True while the port is not listening (after :meth:`refuse` or :meth:`stop`)."""
        return self._server is None

    @property
    def mode(self) -> Mode:
        """The member's mode, ``refuse`` while not listening."""
        return "refuse" if self._started and self._server is None else self.member.mode

    def set_pods(self, total: int | None, quota: int | None = None) -> None:
        self.member.set_pods(total, quota)

    def set_versions(self, versions: Mapping[str, object]) -> None:
        self.member.set_versions(versions)

    @property
    def outcomes(self) -> FakeOutcomes:
        """The launch counters ``/metrics`` shows."""
        return self.member.outcomes

    async def set_mode(self, mode: Mode) -> None:
        """Any mode: ``refuse`` stops listening, any other mode resumes if needed."""
        if mode == "refuse":
            await self.refuse()
            return
        self.member.set_mode(mode)
        await self.resume()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind (``port`` 0: a free port) and serve until :meth:`stop`."""
        async with self._lock:
            if self._started:
                raise RuntimeError(f"member {self.name} already started")
            await self._serve()
            self._started = True

    async def refuse(self) -> None:
        """Stop listening: new connections are refused, held requests are released."""
        async with self._lock:
            await self._shutdown()

    async def resume(self) -> None:
        """Listen again on the same port (no-op if listening). OSError if it was taken."""
        async with self._lock:
            if self._server is None and self._started:
                self.member.reopen()
                await self._serve()

    async def stop(self) -> None:
        """Stop serving for good (idempotent)."""
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self._lock:
            await self._shutdown()

    async def __aenter__(self) -> RunningMember:
        if not self._started:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- internals ---------------------------------------------------------------------------

    async def _serve(self) -> None:
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.member,
            lifespan="off",
            access_log=False,
            log_config=None,
            log_level="warning",
            ws="none",
            proxy_headers=False,
            timeout_graceful_shutdown=1,
        )
        server = _EmbeddedServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name=f"fake-member-{self.name}")
        while not server.started:
            if task.done():
                sock.close()
                task.result()  # raises what made it fail
                raise RuntimeError(f"fake member {self.name} stopped while starting")
            await asyncio.sleep(0.005)
        self._server, self._task = server, task

    async def _shutdown(self) -> None:
        server, task = self._server, self._task
        if server is None or task is None:
            return
        self._server = self._task = None
        self.member.close()  # held requests answer now, so connections can close
        server.exit()
        done, _ = await asyncio.wait({task}, timeout=3)
        if not done:
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        else:
            task.result()

    def _refuse_later(self, resume_after: float | None) -> None:
        # a refuse requested over /_control: answer the request first, then stop listening
        task = asyncio.create_task(self._refuse_task(resume_after))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refuse_task(self, resume_after: float | None) -> None:
        await asyncio.sleep(0.05)
        await asyncio.shield(self.refuse())
        if resume_after is not None:
            await asyncio.sleep(resume_after)
            await asyncio.shield(self.resume())


async def start_member(
    name: str = "member",
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    mode: Mode = "ok",
    pods: int | None = 0,
    quota: int | None = None,
    versions: Mapping[str, object] | None = None,
    registry_check: bool = True,
    prefix: str = "",
    control: bool = False,
    metrics_mode: MetricsMode = "ok",
    noise_repos: int = 100,
) -> RunningMember:
    """Start a fake member on ``host`` (a free port unless ``port``) and return it, serving.

    Stop it with ``await member.stop()`` or use ``async with await start_member(...) as m``.
    """
    member = FakeMember(
        name,
        pods=pods,
        quota=quota,
        versions=versions,
        registry_check=registry_check,
        prefix=prefix,
        control=control,
        metrics_mode=metrics_mode,
        noise_repos=noise_repos,
    )
    running = RunningMember(member, host=host, port=port)
    await running.start()
    if mode != "ok":
        await running.set_mode(mode)
    return running


# -- separate process -------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m federation_redirect.testing",
        description="Serve a fake BinderHub member (a test double) until SIGTERM/SIGINT.",
    )
    parser.add_argument("--name", default="member")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (default)")
    parser.add_argument("--mode", choices=[m for m in MODES if m != "refuse"], default="ok")
    parser.add_argument("--pods", type=int, default=0, help="total pods reported")
    parser.add_argument("--quota", type=int, default=None, help="pod quota (default: none)")
    parser.add_argument("--no-pod-check", action="store_true", help="omit the Pod quota check")
    parser.add_argument("--versions", type=json.loads, default=None, help="/versions JSON")
    parser.add_argument("--prefix", default="", help="serve under this path prefix")
    parser.add_argument("--control", action="store_true", help="enable /_control")
    parser.add_argument(
        "--metrics-mode", choices=METRICS_MODES, default="ok", help="how /metrics answers"
    )
    parser.add_argument(
        "--noise-repos", type=int, default=100, help="repositories of per-repo counters"
    )
    parser.add_argument(
        "--launch-rates",
        type=float,
        nargs=2,
        default=(0.0, 0.0),
        metavar=("SUCCESS", "FAILURE"),
        help="launch outcomes per second in /metrics",
    )
    return parser.parse_args(argv)


async def _serve_forever(args: argparse.Namespace) -> None:
    running = await start_member(
        args.name,
        host=args.host,
        port=args.port,
        mode=args.mode,
        pods=None if args.no_pod_check else args.pods,
        quota=args.quota,
        versions=args.versions,
        prefix=args.prefix,
        control=args.control,
        metrics_mode=args.metrics_mode,
        noise_repos=args.noise_repos,
    )
    success, failure = args.launch_rates
    running.outcomes.set_rates(success=success, failure=failure)
    print(running.url, flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    resumes: set[asyncio.Task[None]] = set()

    def resume() -> None:
        task = loop.create_task(running.resume())
        resumes.add(task)
        task.add_done_callback(resumes.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, resume)
    try:
        await stop.wait()
    finally:
        for task in list(resumes):
            await task
        await running.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m federation_redirect.testing``."""
    args = _parse_args(argv)
    asyncio.run(_serve_forever(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
