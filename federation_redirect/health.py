"""The health engine: one supervised asyncio loop per member, with hysteresis.

A *round* fetches a member's ``/versions`` and ``/health`` concurrently under one deadline
(``check.timeout`` for the whole round, retries included) and turns the answers into a
:class:`RoundResult`: pass, or fail with a reason (the metric label) and whether the failure
is *explicit* or *transport*:

=================================================  ==============  =========
what happened                                      reason          kind
=================================================  ==============  =========
/health names a failed check (usually with 503)    service:<name>  explicit
/health says ``ok: false`` but names no check      service:other   explicit
/versions differs from the prime's                 versions        explicit
a 200 whose body is not BinderHub's JSON (HTML,    bad_response    explicit
invalid JSON, wrong types or shape, too big)
3xx (redirects are not followed), 4xx, other 2xx   http_status     explicit
5xx, 408, 429; a 503 whose body is not BinderHub's http_status     transport
JSON (an ingress or load balancer page)
no complete answer before the round's deadline     timeout         transport
connection refused, reset or closed                connect         transport
an exception inside our own check code (a bug)     error           transport
=================================================  ==============  =========

Explicit failures mean the member itself (or its configuration) says it cannot serve: they
remove a healthy member at once. Transport failures may be a blip on the way: they remove it
after ``check.fall`` consecutive failed rounds, and a member with a failure streak is
re-checked every ``check.fast_period`` meanwhile. Connection errors are retried within the
round (``check.retries`` attempts) as long as the deadline allows; a hang costs one timeout.

States: ``unknown`` until the first round, whose result applies at once (good: ``healthy``,
failed: ``unhealthy``). An unhealthy member is re-admitted after ``check.rise`` consecutive
good rounds, checked ``check.fast_period`` apart; while failing it is re-checked after
``min_backoff``, doubling each failed round up to ``min(max_backoff, failed_period)``. A
healthy member is re-checked every ``period * (1 ± jitter/2)``. A member within
``pod_headroom`` of its quota is still healthy; its report says ``full``.

With the production settings (period 15, timeout 5, jitter 0.1, fast_period 1,
min_backoff 2, max_backoff 25) this gives: a member answering 503 is out at its next check,
<= 15.75 s; a hanging member is out 5 + 1 + 5 = 11 s after the first check that meets the
hang; a healed member is back within 25 + 1 s plus two round trips.

Version policy: a successful ``/versions`` fetch from a prime member becomes the registry's
reference, even when that prime's ``/health`` fails. Other members are compared with it as
``check.versions`` says (``exact``, ``binderhub``: the BinderHub version before ``+``,
``off``); no reference yet means accept. Primes are never compared (with several primes they
would flap against each other).

Launch outcomes: when ``outcomes.enabled``, each member with a ``metrics`` URL also gets its
own supervised scrape loop, every ``outcomes.scrape_period`` seconds (member *i* of *n* first
after ``(i + 1) / n`` of a period), bounded by ``outcomes.scrape_timeout`` and
``outcomes.max_bytes``. Each scrape feeds an :class:`~.outcomes.OutcomeTracker`; its verdict
(``launch_failure_ratio``, ``degraded``) rides in every :class:`HealthReport` of the member,
and a change of either is reported at once (once the member has had a health round). A change
of ``degraded`` is logged with the figures that caused it; a member whose ``/metrics`` cannot
be used is logged once, when that starts and when it ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from types import MappingProxyType
from typing import Final

import httpx

from . import __version__
from .config import Config, HostConfig
from .errors import CheckFailed
from .models import Capacity, HealthReason, HealthReport, HealthState, service_reason
from .outcomes import (
    OutcomeSettings,
    OutcomeTracker,
    Verdict,
    scrape_metrics,
    transport_failure,
)
from .registry import Registry
from .versions import VersionPolicy

__all__ = ["HealthEngine", "MemberCheckStats", "RoundResult", "versions_match"]

log = logging.getLogger("federation_redirect.health")
outcomes_log = logging.getLogger("federation_redirect.outcomes")

_RETRY_DELAY: Final = 0.25  # seconds between attempts after a connection error
_MAX_CHECKS: Final = 64  # more service checks than this is not a BinderHub answer
_MAX_NAME: Final = 64  # service names are cut to this length in reports and logs
_DEADLINE_GRACE: Final = 0.5  # safety net around the round's deadline, should never fire
_POD_QUOTA: Final = "Pod quota"
_EMPTY: Final[Mapping[str, bool]] = MappingProxyType({})


@dataclass(slots=True)
class MemberCheckStats:
    """Counters of one member's health loop, read by the metrics collector.

    ``failures_total`` maps a failure reason to the number of failed rounds with it.
    ``exceptions_total`` counts unexpected exceptions (bugs) caught by the loop.
    ``last_duration_seconds`` is the duration of the last round (None before the first).
    """

    rounds_total: int = 0
    failures_total: dict[str, int] = field(default_factory=dict)
    exceptions_total: int = 0
    last_duration_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class RoundResult:
    """The outcome of one round for one member; the engine's state is not in it.

    ``reason`` is None when the round passed. ``explicit`` tells an explicit failure from a
    transport one (see the module docstring). ``latency`` is in seconds. ``versions`` is the
    fetched ``/versions`` document and ``capacity``/``full``/``checks`` come from ``/health``;
    each is None (or empty) when that part of the round failed.
    """

    reason: str | None
    detail: str
    explicit: bool
    latency: float
    versions: Mapping[str, object] | None = None
    capacity: Capacity | None = None
    full: bool = False
    checks: Mapping[str, bool] = field(default_factory=lambda: _EMPTY)

    @property
    def ok(self) -> bool:
        """The round passed."""
        return self.reason is None


def versions_match(
    mode: str, member: Mapping[str, object], reference: Mapping[str, object] | None
) -> bool:
    """Whether a member's ``/versions`` is acceptable against the reference.

    ``mode`` is ``check.versions``: ``off`` accepts anything; ``exact`` wants equal
    documents; ``binderhub`` compares only the ``binderhub`` field before any ``+`` (a
    reference without that field accepts anything). No reference (None) accepts anything.
    """
    if mode == "off" or reference is None:
        return True
    if mode == "exact":
        return dict(member) == dict(reference)
    wanted = _release(reference.get("binderhub"))
    return wanted is None or _release(member.get("binderhub")) == wanted


def _release(version: object) -> str | None:
    if not isinstance(version, str):
        return None
    return version.split("+", 1)[0].strip()


def _difference(member: Mapping[str, object], reference: Mapping[str, object]) -> str:
    """A short, bounded description of how two /versions documents differ (for logs)."""
    keys = sorted(k for k in member.keys() | reference.keys() if member.get(k) != reference.get(k))
    parts = [
        f"{k[:_MAX_NAME]}={_short(member.get(k))} (prime: {_short(reference.get(k))})"
        for k in keys[:3]
    ]
    return ", ".join(parts) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _short(value: object) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


# -- one HTTP exchange ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes | None  # None when the status says the body is not worth reading
    content_type: str


@dataclass(frozen=True, slots=True)
class _Health:
    ok: bool
    failed: tuple[str, ...]  # services of failed checks that do not ignore failure
    checks: Mapping[str, bool]
    has_pod_check: bool
    pods: int | None
    quota: int | None


def _bad(what: str, detail: str) -> CheckFailed:
    return CheckFailed(HealthReason.BAD_RESPONSE, f"{what}: {detail}", explicit=True)


def _status_failure(what: str, status: int) -> CheckFailed:
    # 5xx, 408 and 429 may be a restarting pod or an ingress between us and the hub: retry
    # over rounds. Anything else (3xx, 4xx, other 2xx) is a hub or URL that will not answer.
    transient = status >= 500 or status in (408, 429)
    return CheckFailed(
        HealthReason.HTTP_STATUS, f"{what} answered HTTP {status}", explicit=not transient
    )


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _decode(answer: _Answer, what: str) -> object:
    assert answer.body is not None
    try:
        return json.loads(answer.body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        kind = answer.content_type.split(";", 1)[0].strip() or "no content type"
        raise _bad(what, f"body is not valid JSON ({kind})") from None


def _count(entry: Mapping[str, object], key: str, what: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise _bad(what, f'Pod quota "{key}" is not a count')
    return value


def _parse_health(document: object) -> _Health:
    """Validate a decoded ``/health`` document by hand; CheckFailed(bad_response) if odd."""
    what = "health"
    if not isinstance(document, dict):
        raise _bad(what, "not a JSON object")
    ok = document.get("ok")
    if not isinstance(ok, bool):
        raise _bad(what, '"ok" is not true or false')
    entries = document.get("checks")
    if not isinstance(entries, list):
        raise _bad(what, '"checks" is not a list')
    if len(entries) > _MAX_CHECKS:
        raise _bad(what, f"more than {_MAX_CHECKS} checks")
    checks: dict[str, bool] = {}
    failed: list[str] = []
    has_pod_check = False
    pods = quota = None
    for entry in entries:
        if not isinstance(entry, dict):
            raise _bad(what, "a check is not a JSON object")
        service, entry_ok = entry.get("service"), entry.get("ok")
        ignore = entry.get("_ignore_failure", False)
        if not isinstance(service, str) or not service:
            raise _bad(what, '"service" of a check is not a name')
        if not isinstance(entry_ok, bool) or not isinstance(ignore, bool):
            raise _bad(what, f'"ok" of check {service[:_MAX_NAME]!r} is not true or false')
        checks[service[:_MAX_NAME]] = entry_ok
        if service == _POD_QUOTA:
            has_pod_check = True
            pods = _count(entry, "total_pods", what)
            quota = _count(entry, "quota", what)
        if not entry_ok and not ignore:
            failed.append(service)
    return _Health(ok, tuple(failed), MappingProxyType(checks), has_pod_check, pods, quota)


def _health_failure(status: int, health: _Health) -> CheckFailed | None:
    """The explicit failure a valid /health document declares, if any."""
    if health.failed:
        names = ", ".join(repr(s[:_MAX_NAME]) for s in health.failed)
        return CheckFailed(
            service_reason(health.failed[0]),
            f"health: failed check {names} (HTTP {status})",
            explicit=True,
        )
    if not health.ok:
        return CheckFailed("service:other", "health: ok is false, no check failed", explicit=True)
    if status != 200:
        return _status_failure("health", status)
    return None


# -- the engine -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Track:
    """The state machine's memory for one member."""

    state: HealthState = HealthState.UNKNOWN
    fail_streak: int = 0
    good_streak: int = 0
    backoff: float = 0.0
    capacity: Capacity = field(default_factory=Capacity)
    full: bool = False
    versions: Mapping[str, object] | None = None
    checks: Mapping[str, bool] = field(default_factory=lambda: _EMPTY)
    report: HealthReport | None = None  # the last one made from a round


class HealthEngine:
    """Checks every member in its own supervised task and reports to the registry.

    ``client`` is the HTTP client for checks; by default the engine makes its own (no
    redirects, explicit timeouts and limits, no proxies from the environment; ``tls``, if
    given, as its TLS context, else the certifi bundle) and closes it in :meth:`stop`; an
    injected client is left open. ``clock`` (monotonic seconds) times
    rounds and stamps capacity; ``wall_clock`` (epoch seconds) stamps reports; ``rng`` draws
    the jitter. Sleeping uses the event loop's own time. ``start`` and ``pause`` may alternate
    (a replica that gains or loses the checker role); ``stop`` ends it.
    """

    def __init__(
        self,
        config: Config,
        registry: Registry,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self._owns_client = client is None
        self.client = client if client is not None else self._make_client(config, tls)
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng if rng is not None else random.Random()
        self._timeout = httpx.Timeout(config.check.timeout)
        self._headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        self._tracks: dict[str, _Track] = {name: _Track() for name in config.hosts}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.outcomes = OutcomeTracker(
            OutcomeSettings.from_config(config.outcomes), config.hosts, clock=clock
        )
        self._scrapes: dict[str, asyncio.Task[None]] = {}
        self._scrape_failing: dict[str, bool] = {}  # for logging a failing /metrics once
        self.stats: dict[str, MemberCheckStats] = {
            name: MemberCheckStats() for name in config.hosts
        }
        # the prime's previous /versions stay acceptable for a while (rolling upgrades)
        self.version_policy = VersionPolicy(
            partial(versions_match, config.check.versions),
            grace_seconds=config.check.version_grace_seconds,
        )

    @staticmethod
    def _make_client(config: Config, tls: ssl.SSLContext | None = None) -> httpx.AsyncClient:
        members = max(1, len(config.hosts))
        return httpx.AsyncClient(
            verify=True if tls is None else tls,
            follow_redirects=False,
            timeout=httpx.Timeout(config.check.timeout),
            limits=httpx.Limits(max_connections=4 * members, max_keepalive_connections=2 * members),
            headers={"User-Agent": f"federation-redirect/{__version__} health-check"},
            trust_env=False,
        )

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def tasks(self) -> Mapping[str, asyncio.Task[None]]:
        """The running loop task of each member (empty before start and after stop)."""
        return MappingProxyType(self._tasks)

    async def start(self) -> None:
        """Start one loop per member; each first check waits a random [0, jitter*period].

        The state machines start from what the registry believes now, so an engine that
        takes over from another replica's checker (or resumes after :meth:`pause`) carries
        on instead of treating every member as unknown.
        """
        if self._tasks:
            raise RuntimeError("health engine already started")
        check = self.config.check
        for name in self.config.hosts:
            believed = self.registry.health(name).state
            if self._tracks[name].state is not believed:
                self._tracks[name] = _Track(state=believed)
            self._tracks[name].report = None  # another replica may have reported since
            self.outcomes.adopt(name, self.registry.reported(name).degraded)
        for name in self.config.hosts:
            spread = self._rng.uniform(0, check.jitter * check.period)
            task = asyncio.create_task(self._loop(name, spread), name=f"health-check:{name}")
            task.add_done_callback(self._loop_ended)
            self._tasks[name] = task
        outcomes = self.config.outcomes
        scraped = [n for n, h in self.config.hosts.items() if h.metrics] if outcomes.enabled else []
        for i, name in enumerate(scraped):
            first = outcomes.scrape_period * (i + 1) / len(scraped)
            task = asyncio.create_task(self._scrape_loop(name, first), name=f"scrape:{name}")
            task.add_done_callback(self._loop_ended)
            self._scrapes[name] = task

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    async def pause(self) -> None:
        """Cancel every loop and wait for them; :meth:`start` may follow again."""
        tasks = [*self._tasks.values(), *self._scrapes.values()]
        self._tasks.clear()
        self._scrapes.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Pause for good and close the client if the engine made it."""
        await self.pause()
        if self._owns_client:
            await self.client.aclose()

    @staticmethod
    def _loop_ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # cannot happen by construction (the loop catches everything); say so loudly
            log.error("%s ended unexpectedly", task.get_name(), exc_info=task.exception())

    # -- the loop ------------------------------------------------------------------------------

    async def _loop(self, name: str, first_delay: float) -> None:
        await asyncio.sleep(first_delay)
        while True:
            try:
                delay = await self._step(name)
            except Exception:
                # a bug outside the round itself (state update, registry, a listener)
                self.stats[name].exceptions_total += 1
                delay = self.config.check.period
                log.exception("health loop of member %s failed; next check in %.1f s", name, delay)
            await asyncio.sleep(delay)

    async def _step(self, name: str) -> float:
        """One round and its consequences; returns the delay until the next round."""
        started = self._clock()
        try:
            result = await self.check_round(name)
        except Exception as exc:
            # a bug inside the check: a failed round like any other, and the loop goes on
            self.stats[name].exceptions_total += 1
            log.exception("health check of member %s raised", name)
            result = RoundResult(
                reason=HealthReason.ERROR,
                detail=f"internal error: {type(exc).__name__}",
                explicit=False,
                latency=self._clock() - started,
            )
        return self._apply(name, result)

    async def check_round(self, name: str) -> RoundResult:
        """Run one round against member ``name`` and return its result.

        Changes nothing: no state, no stats, no report, no reference versions (it reads the
        current reference to compare). Raises KeyError for an unknown member; anything else
        raised is a bug.
        """
        host = self.config.hosts[name]
        loop = asyncio.get_running_loop()
        started = self._clock()
        deadline = loop.time() + self.config.check.timeout
        try:
            async with asyncio.timeout_at(deadline + _DEADLINE_GRACE), asyncio.TaskGroup() as tg:
                versions_task = tg.create_task(self._versions(host, deadline))
                health_task = tg.create_task(self._health(host, deadline))
        except TimeoutError:
            return RoundResult(
                reason=HealthReason.TIMEOUT,
                detail=f"round did not end within {self.config.check.timeout:g} s",
                explicit=False,
                latency=self._clock() - started,
            )
        return self._judge(host, versions_task.result(), health_task.result(), started)

    def _judge(
        self,
        host: HostConfig,
        versions: Mapping[str, object] | CheckFailed,
        health: tuple[int, _Health] | CheckFailed,
        started: float,
    ) -> RoundResult:
        failures: list[CheckFailed] = []
        capacity: Capacity | None = None
        full = False
        checks: dict[str, bool] = {}
        if isinstance(health, CheckFailed):
            failures.append(health)
        else:
            status, document = health
            checks.update(document.checks)
            failure = _health_failure(status, document)
            if failure is not None:
                failures.append(failure)
            capacity = Capacity(
                quota=document.quota if document.quota is not None else host.quota,
                pods=document.pods,
                reported_at=self._clock() if document.has_pod_check else None,
            )
            full = capacity.is_full(self.config.pod_headroom)
        fetched: Mapping[str, object] | None = None
        if isinstance(versions, CheckFailed):
            failures.append(versions)
        else:
            fetched = versions
            mode = self.config.check.versions
            now = self._clock()
            self.version_policy.observe(self.registry.reference_versions, now)
            matches = host.prime or self.version_policy.acceptable(versions, now)
            checks["versions"] = matches
            if not matches:
                difference = _difference(versions, self.registry.reference_versions or {})
                failures.append(
                    CheckFailed(
                        HealthReason.VERSIONS,
                        f"versions differ from the prime's ({mode}): {difference}",
                        explicit=True,
                    )
                )
        if not failures:
            reason, explicit, detail = None, False, "ok"
            if full and capacity is not None:
                detail = (
                    f"ok, full: {capacity.pods} pods + headroom {self.config.pod_headroom}"
                    f" >= quota {capacity.quota}"
                )
        else:
            # the member's own word beats what the network did; /health before /versions
            chosen = next((f for f in failures if f.explicit), failures[0])
            reason, explicit = chosen.reason, chosen.explicit
            detail = "; ".join(f.detail for f in failures)
        return RoundResult(
            reason=reason,
            detail=detail,
            explicit=explicit,
            latency=self._clock() - started,
            versions=fetched,
            capacity=capacity,
            full=full,
            checks=MappingProxyType(checks) if checks else _EMPTY,
        )

    # -- fetching -----------------------------------------------------------------------------

    async def _versions(
        self, host: HostConfig, deadline: float
    ) -> Mapping[str, object] | CheckFailed:
        try:
            answer = await self._fetch(host.versions_url, "versions", deadline, (200,))
            if answer.status != 200:
                raise _status_failure("versions", answer.status)
            document = _decode(answer, "versions")
            if not isinstance(document, dict):
                raise _bad("versions", "not a JSON object")
            return MappingProxyType(document)
        except CheckFailed as failed:
            return failed

    async def _health(self, host: HostConfig, deadline: float) -> tuple[int, _Health] | CheckFailed:
        try:
            answer = await self._fetch(host.health_url, "health", deadline, (200, 503))
            if answer.status not in (200, 503):
                raise _status_failure("health", answer.status)
            try:
                document = _parse_health(_decode(answer, "health"))
            except CheckFailed:
                if answer.status == 503:  # an ingress or proxy page, not the hub's verdict
                    raise _status_failure("health", 503) from None
                raise
            return answer.status, document
        except CheckFailed as failed:
            return failed

    async def _fetch(self, url: str, what: str, deadline: float, read: tuple[int, ...]) -> _Answer:
        """GET ``url`` by ``deadline`` (loop time), retrying connection errors.

        Reads at most ``check.max_response_bytes`` of the body, and only for the statuses in
        ``read``. Raises CheckFailed: timeout, connect, or bad_response (body too big).
        """
        check = self.config.check
        # short enough that the attempts fit in the round, long enough for a restart
        retry_delay = min(_RETRY_DELAY, check.timeout / (2 * check.retries))
        attempts = 0
        last: Exception | None = None
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    attempts += 1
                    try:
                        return await self._get(url, what, read)
                    except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                        # refused, reset, or a kept-alive connection the member closed
                        last = exc
                    if attempts >= check.retries:
                        break
                    await asyncio.sleep(retry_delay)
        except TimeoutError:
            if last is None:
                raise CheckFailed(
                    HealthReason.TIMEOUT,
                    f"{what}: no answer within {check.timeout:g} s",
                    explicit=False,
                ) from None
        # timeouts, and proxy, protocol and URL problems: no retry
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise transport_failure(what, exc) from None
        raise CheckFailed(
            HealthReason.CONNECT,
            f"{what}: {type(last).__name__} after {attempts} attempt(s): {last}",
            explicit=False,
        )

    async def _get(self, url: str, what: str, read: tuple[int, ...]) -> _Answer:
        cap = self.config.check.max_response_bytes
        request = self.client.build_request(
            "GET", url, headers=self._headers, timeout=self._timeout
        )
        response = await self.client.send(request, stream=True)
        try:
            content_type = response.headers.get("content-type", "")
            if response.status_code not in read:
                return _Answer(response.status_code, None, content_type)
            declared = response.headers.get("content-length", "")
            numeric = declared.isascii() and declared.isdigit()
            if numeric and (len(declared) > 15 or int(declared) > cap):
                raise _bad(what, f"declared body is over the {cap} byte limit")
            body = bytearray()
            try:
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > cap:
                        raise _bad(what, f"body is over the {cap} byte limit")
            except httpx.DecodingError:  # a Content-Encoding it does not actually use
                raise _bad(what, "body does not match its Content-Encoding") from None
            return _Answer(response.status_code, bytes(body), content_type)
        finally:
            await response.aclose()

    # -- state ----------------------------------------------------------------------------------

    def _apply(self, name: str, result: RoundResult) -> float:
        """Fold a round into the member's state, report it; return the next delay."""
        host = self.config.hosts[name]
        track = self._tracks[name]
        stats = self.stats[name]
        stats.rounds_total += 1
        stats.last_duration_seconds = result.latency
        if result.reason is not None:
            reason = str(result.reason)
            stats.failures_total[reason] = stats.failures_total.get(reason, 0) + 1
        if result.versions is not None:
            track.versions = result.versions
            if host.prime:
                self.registry.set_reference_versions(result.versions)
        if result.capacity is not None:
            track.capacity, track.full = result.capacity, result.full
        if result.checks:
            track.checks = result.checks
        old = track.state
        new, delay, detail = self._advance(track, result)
        track.state = new
        if new is not old:
            # the first good round at start is routine; every other change is news
            routine = old is HealthState.UNKNOWN and new is HealthState.HEALTHY
            level = logging.INFO if routine else logging.WARNING
            why = detail if result.reason is None else f"{result.reason}: {detail}"
            log.log(level, "member %s: %s -> %s (%s)", name, old.value, new.value, why)
        verdict = self.outcomes.verdict(name)
        track.report = HealthReport(
            state=new,
            reason=result.reason,
            detail=detail,
            checked_at=self._wall_clock(),
            latency=result.latency,
            versions=track.versions,
            capacity=track.capacity,
            full=track.full,
            checks=track.checks,
            launch_failure_ratio=verdict.launch_failure_ratio,
            degraded=verdict.degraded,
        )
        self.registry.report(name, track.report)
        return delay

    def _advance(self, track: _Track, result: RoundResult) -> tuple[HealthState, float, str]:
        """The hysteresis: (new state, delay until the next round, detail for the report)."""
        check = self.config.check
        cap = min(check.max_backoff, check.failed_period)
        if result.ok:
            track.fail_streak = 0
            if track.state is HealthState.UNHEALTHY:
                track.good_streak += 1
                if track.good_streak < check.rise:
                    detail = f"{result.detail}; good round {track.good_streak} of {check.rise}"
                    return HealthState.UNHEALTHY, check.fast_period, detail
            track.good_streak = 0
            track.backoff = 0.0
            return HealthState.HEALTHY, self._period(), result.detail
        track.good_streak = 0
        track.fail_streak += 1
        if track.state is HealthState.HEALTHY:
            if not result.explicit and track.fail_streak < check.fall:
                detail = f"{result.detail}; failed round {track.fail_streak} of {check.fall}"
                return HealthState.HEALTHY, check.fast_period, detail
            track.backoff = min(check.min_backoff, cap)
        elif track.state is HealthState.UNKNOWN:
            track.backoff = min(check.min_backoff, cap)
        else:
            track.backoff = min(max(track.backoff, check.min_backoff) * 2, cap)
        return HealthState.UNHEALTHY, track.backoff, result.detail

    def _period(self) -> float:
        check = self.config.check
        return check.period * (1 + check.jitter * (self._rng.random() - 0.5))

    # -- launch outcomes ------------------------------------------------------------------------

    async def _scrape_loop(self, name: str, first_delay: float) -> None:
        await asyncio.sleep(first_delay)
        while True:
            try:
                await self.scrape(name)
            except Exception:
                # a bug: the loop carries on, the member keeps its last verdict meanwhile
                self.stats[name].exceptions_total += 1
                log.exception("metrics scrape of member %s failed", name)
            await asyncio.sleep(self.config.outcomes.scrape_period)

    async def scrape(self, name: str) -> Verdict:
        """Scrape member ``name``'s /metrics once, fold it in and report; the new verdict."""
        url = self.config.hosts[name].metrics
        outcomes = self.config.outcomes
        if url is None:
            raise KeyError(f"member {name} has no metrics URL")
        try:
            scraped = await scrape_metrics(
                self.client, url, time_limit=outcomes.scrape_timeout, max_bytes=outcomes.max_bytes
            )
        except CheckFailed as failed:
            if not self._scrape_failing.get(name):
                outcomes_log.info(
                    "member %s: no launch outcomes from %s (%s: %s); not degraded on them",
                    name,
                    url,
                    failed.reason,
                    failed.detail,
                )
            self._scrape_failing[name] = True
            verdict = self.outcomes.fail(name, str(failed.reason))
        else:
            if self._scrape_failing.get(name):
                outcomes_log.info("member %s: launch outcomes readable again at %s", name, url)
            self._scrape_failing[name] = False
            verdict = self.outcomes.observe(name, scraped.launches, scraped.builds)
        self._publish_outcome(name, verdict)
        return verdict

    def _publish_outcome(self, name: str, verdict: Verdict) -> None:
        if verdict.change == "degraded":
            outcomes_log.warning(
                "member %s: degraded, weight x%g: %s",
                name,
                self.config.outcomes.weight_factor,
                verdict.detail,
            )
        elif verdict.change is not None:
            outcomes_log.warning("member %s: no longer degraded: %s", name, verdict.detail)
        track = self._tracks[name]
        report = track.report
        if report is None:  # no round yet: the first round's report will carry the verdict
            return
        if (report.degraded, report.launch_failure_ratio) != (
            verdict.degraded,
            verdict.launch_failure_ratio,
        ):
            track.report = replace(
                report,
                degraded=verdict.degraded,
                launch_failure_ratio=verdict.launch_failure_ratio,
            )
            self.registry.report(name, track.report)
