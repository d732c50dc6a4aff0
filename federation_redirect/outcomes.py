"""Launch outcomes: what each member's own ``/metrics`` says about its launches, and the
*degraded* verdict drawn from it.

A member can pass every health check while its launches fail: on mybinder.org a ResourceQuota
bug, a DNS failure, failing image pushes and a build-token secret mismatch each did. BinderHub
counts launches and builds on its own ``/metrics`` (``binderhub/builder.py``)::

    BUILD_TIME = Histogram("binderhub_build_time_seconds", ..., ["status"])
    LAUNCH_TIME = Histogram("binderhub_launch_time_seconds", ..., ["status", "retries"])

A launch ends in exactly one observation: ``status="success"`` (``retries`` = failed attempts
before it) or, when its last attempt failed, ``status="failure"``. Every failed attempt before
the last is a ``status="retry"`` observation: an attempt, not a launch, so it is ignored here.
A build ends in ``success`` or ``failure``. The ``_count`` series of the two histograms are
therefore cumulative launch and build outcomes since the member's process started.

Scraping (:func:`scrape_metrics`)
---------------------------------
A member's ``/metrics`` also carries per-repository counters (``binderhub_launch_count_total``
and friends) and can be megabytes. The body is streamed through a :class:`MetricsFilter` that
keeps only the lines of the two histograms (their ``# TYPE`` and ``_count`` lines) and of their
``_created`` gauges, and stops reading as soon as those families are over (the text format keeps
a family's lines together; BinderHub registers the histograms before the per-repository
counters, so this is usually within the first few tens of kilobytes), or at ``max_bytes``. A
family cut by that cap is not used. The kept lines are parsed with prometheus-client's own text
parser. The whole exchange has one deadline. Failures are :class:`~.errors.CheckFailed` with
the health check's reasons: ``timeout``, ``connect``, ``http_status`` (anything but 200) and
``bad_response`` (unparsable, or no launch histogram in what was read).

The verdict (:class:`OutcomeTracker`)
-------------------------------------
Pure: no I/O, time from an injected clock (seconds). Per member it keeps the last sample of
the cumulative counters and, for each later scrape, the *increase* since the one before it,
stamped with the later scrape's time. A counter that went down, or a ``_created`` timestamp
that changed, is a reset (the member restarted): the increase is then the new value (what
happened since the restart). The first sample, and one more than a window after the previous,
is only a baseline. Over the last ``window`` seconds::

    launches = successes + failures         (increases within the window)
    ratio    = failures / launches          if launches >= min_attempts, else None
    recent   = the same over the newest scrapes of the window that hold >= min_attempts
               *failed* launches (None if the whole window holds fewer)

``ratio`` is the member's ``launch_failure_ratio``. ``recent`` only serves to notice a change
quickly: launches that start failing after a good spell reach ``degrade_ratio`` of ``recent``
at the first scrape after ``min_attempts`` of them have failed, where ``ratio`` would need
them to outnumber the window's earlier successes (half a window at a steady rate). The price,
measured over 30 simulated days of a scrape a minute, ``min_attempts`` 10 and
``degrade_ratio`` 0.5: a member failing 10 % of its launches as a matter of course is never
degraded by chance, one failing 20 % about once a day (counting ``min_attempts`` launches
instead of failures there would make it a dozen times a day, and 0.6 times at 10 %).

States, evaluated at every scrape:

* **normal** -> **degraded** when ``ratio >= degrade_ratio`` or ``recent >= degrade_ratio``.
* **degraded** -> **normal** once ``failures / max(launches, min_attempts) < recover_ratio``
  has held at every scrape for a full window (a scrape above it restarts the clock). Padding
  the denominator to ``min_attempts`` lets a degraded member that now gets few launches (its
  weight is scaled down) recover when they succeed, and keeps it degraded while they fail.
* **no signal**: before the first usable scrape, and after ``missing_after`` failed scrapes in
  a row (no ``/metrics``, a 404, garbage, no launch histogram, timeouts). The history is
  dropped and the member is *not* degraded: a missing signal never degrades anyone. One or two
  failed scrapes change nothing.

Build failures are measured the same way (``build_failure_ratio``) and reported in the
figures, but do not degrade a member: a failing build is usually the repository's fault.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .config import OutcomesConfig
from .errors import CheckFailed
from .models import HealthReason

__all__ = [
    "BUILD_FAMILY",
    "LAUNCH_FAMILY",
    "Change",
    "MetricsFilter",
    "OutcomeCounts",
    "OutcomeSettings",
    "OutcomeTracker",
    "Scrape",
    "Verdict",
    "parse_outcomes",
    "scrape_metrics",
    "transport_failure",
]

LAUNCH_FAMILY: Final = "binderhub_launch_time_seconds"
BUILD_FAMILY: Final = "binderhub_build_time_seconds"
_HISTOGRAMS: Final = (BUILD_FAMILY, LAUNCH_FAMILY)
_CREATED: Final = "_created"
_WANTED: Final = frozenset({*_HISTOGRAMS, *(h + _CREATED for h in _HISTOGRAMS)})
_SUFFIXES: Final = ("_bucket", "_count", "_sum", _CREATED)
_PREFIXES: Final = (b"binderhub_", b"# HELP binderhub_", b"# TYPE binderhub_")
_MAX_LINE: Final = 4096  # a longer line is skipped: none of the lines we keep is near this
_MAX_KEPT: Final = 64 * 1024  # bytes of kept lines; more is not a BinderHub's /metrics
_HEADERS: Final = {"Accept": "text/plain; version=0.0.4", "Accept-Encoding": "identity"}


# -- scraping -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutcomeCounts:
    """Cumulative outcomes of one histogram: ``success`` and ``failure`` observations since
    the member started, and ``created`` (epoch seconds, the earliest ``_created`` of its
    series; None when not exported), which changes when the member restarts."""

    success: float = 0.0
    failure: float = 0.0
    created: float | None = None


@dataclass(frozen=True, slots=True)
class Scrape:
    """One successful scrape: launch outcomes, build outcomes (None: no build histogram),
    the body bytes read, and whether reading stopped at the byte cap."""

    launches: OutcomeCounts
    builds: OutcomeCounts | None
    bytes_read: int
    capped: bool = False


class MetricsFilter:
    """Keeps the lines of the launch and build histograms from a streamed text exposition.

    Feed the body with :meth:`feed` (chunks split anywhere, lines included); it returns True
    once every wanted family is over, when the caller may stop reading. :meth:`text` returns
    the kept lines of the families that are complete: over, or still going when the body
    ended (``body_ended``). Holds at most one chunk, one partial line (<= 4 KiB) and the kept
    lines (<= 64 KiB: more raises ValueError).
    """

    def __init__(self) -> None:
        self.bytes_read = 0
        self._carry = b""
        self._skipping = False  # inside an over-long line: drop up to the next newline
        self._current: str | None = None  # wanted family of the last line; None: another
        self._kept: dict[str, list[bytes]] = {}
        self._kept_bytes = 0
        self._ended: set[str] = set()

    @property
    def done(self) -> bool:
        """Every wanted family is over (absent ``_created`` families count as over)."""
        return self._ended >= _WANTED

    def feed(self, chunk: bytes) -> bool:
        """Take the next piece of the body; True when nothing more is needed."""
        self.bytes_read += len(chunk)
        data = self._carry + chunk if self._carry else chunk
        lines = data.split(b"\n")
        self._carry = lines.pop()
        if self._skipping and lines:
            lines = lines[1:]  # the rest of the over-long line
            self._skipping = False
        for line in lines:
            self._line(line)
            if self.done:
                return True
        if len(self._carry) > _MAX_LINE:
            self._carry = b""
            self._skipping = True
        return False

    def text(self, body_ended: bool) -> str:
        """The kept lines of the complete families, in body order, as one string."""
        if body_ended:
            if self._carry and not self._skipping:
                self._line(self._carry)
                self._carry = b""
            self._end(None)
        complete = [f for f in self._kept if f in self._ended]
        return "".join(b"".join(self._kept[f]).decode("utf-8", "replace") for f in complete)

    def _line(self, raw: bytes) -> None:
        line = raw.rstrip(b"\r")
        if not line.startswith(_PREFIXES):
            if line.startswith(b"#") or not line.strip():
                return  # a comment or a blank line belongs to no family
            self._end(None)
            return
        family = self._family(line)
        if family is None:  # a comment about binderhub_ metrics that is not HELP or TYPE
            return
        if family != self._current:
            self._end(family)
        if family is not _OTHER and family not in self._ended and self._keep(family, line):
            self._kept_bytes += len(line) + 1
            if self._kept_bytes > _MAX_KEPT:
                raise ValueError(f"more than {_MAX_KEPT} bytes of launch and build samples")
            self._kept.setdefault(family, []).append(line + b"\n")

    def _family(self, line: bytes) -> str | None:
        if line.startswith(b"#"):
            parts = line.split(None, 3)
            if len(parts) < 3 or parts[1] not in (b"HELP", b"TYPE"):
                return None
            name = parts[2].decode("ascii", "replace")
            return name if name in _WANTED else _OTHER
        end = len(line)
        for stop in (b"{", b" ", b"\t"):
            at = line.find(stop)
            if 0 <= at < end:
                end = at
        name = line[:end].decode("ascii", "replace")
        for histogram in _HISTOGRAMS:
            if name.startswith(histogram) and name[len(histogram) :] in _SUFFIXES:
                if name.endswith(_CREATED) and self._current == name:
                    return name  # the _created gauge family of the 0.0.4 text format
                return histogram  # OpenMetrics keeps _created inside the histogram
        return _OTHER

    @staticmethod
    def _keep(family: str, line: bytes) -> bool:
        if line.startswith(b"#"):
            return line.startswith(b"# TYPE")
        if family.endswith(_CREATED):
            return True
        return line.startswith((family.encode() + b"_count", family.encode() + b"_created"))

    def _end(self, following: str | None) -> None:
        """The current family is over; ``following`` (None: another) comes next."""
        current = self._current
        if current is not None and current is not _OTHER and current != following:
            self._ended.add(current)
            if current in _HISTOGRAMS and following != current + _CREATED:
                self._ended.add(current + _CREATED)  # its _created gauge is not exported
        self._current = following


_OTHER: Final = "\x00other"  # family marker for lines of families we do not keep


def parse_outcomes(text: str) -> tuple[OutcomeCounts | None, OutcomeCounts | None]:
    """(launches, builds) from kept exposition text; None for a histogram that is absent.

    Sums the ``_count`` series by ``status`` (``success``, ``failure``; ``retry`` and other
    values are ignored); ``created`` is the smallest ``_created`` value. Raises ValueError
    for unparsable text or a count that is negative or not finite.
    """
    success: dict[str, float] = {}
    failure: dict[str, float] = {}
    created: dict[str, float] = {}
    present: set[str] = set()
    for family in text_string_to_metric_families(text):
        if family.name in _HISTOGRAMS:
            present.add(family.name)
        for sample in family.samples:
            for histogram in _HISTOGRAMS:
                if sample.name == histogram + "_count":
                    value = _count(sample.value)
                    status = sample.labels.get("status")
                    if status == "success":
                        success[histogram] = success.get(histogram, 0.0) + value
                    elif status == "failure":
                        failure[histogram] = failure.get(histogram, 0.0) + value
                    present.add(histogram)
                elif sample.name == histogram + _CREATED:
                    created[histogram] = min(created.get(histogram, math.inf), _count(sample.value))
    launch, build = (
        OutcomeCounts(success.get(h, 0.0), failure.get(h, 0.0), created.get(h))
        if h in present
        else None
        for h in (LAUNCH_FAMILY, BUILD_FAMILY)
    )
    return launch, build


def _count(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return float(value)


def transport_failure(what: str, exc: httpx.HTTPError) -> CheckFailed:
    """The failure for an httpx timeout (``timeout``) or transport error (``connect``) while
    fetching ``what`` from a member: both are transport failures, never explicit."""
    if isinstance(exc, httpx.TimeoutException):
        return CheckFailed(HealthReason.TIMEOUT, f"{what}: {type(exc).__name__}", explicit=False)
    return CheckFailed(HealthReason.CONNECT, f"{what}: {type(exc).__name__}: {exc}", explicit=False)


async def scrape_metrics(
    client: httpx.AsyncClient, url: str, *, time_limit: float, max_bytes: int
) -> Scrape:
    """GET ``url`` and return the launch and build outcomes it reports.

    Everything (connecting, the answer, reading) happens within ``time_limit`` seconds; at most
    ``max_bytes`` of the body are read. Raises :class:`~.errors.CheckFailed` with reason
    ``timeout``, ``connect``, ``http_status`` or ``bad_response`` (see the module docstring).
    """
    kept = MetricsFilter()
    capped = ended = False
    try:
        async with asyncio.timeout(time_limit):
            request = client.build_request(
                "GET", url, headers=_HEADERS, timeout=httpx.Timeout(time_limit)
            )
            response = await client.send(request, stream=True)
            try:
                if response.status_code != 200:
                    raise CheckFailed(
                        HealthReason.HTTP_STATUS,
                        f"metrics answered HTTP {response.status_code}",
                        explicit=True,
                    )
                ended = True
                async for chunk in response.aiter_bytes():
                    room = max_bytes - kept.bytes_read
                    if kept.feed(chunk[:room]):
                        ended = False
                        break
                    if len(chunk) >= room:
                        capped, ended = True, False
                        break
            finally:
                await response.aclose()
            text = kept.text(body_ended=ended)
    except TimeoutError:
        raise CheckFailed(
            HealthReason.TIMEOUT,
            f"metrics: no complete answer within {time_limit:g} s ({kept.bytes_read} bytes read)",
            explicit=False,
        ) from None
    except httpx.DecodingError:
        raise CheckFailed(
            HealthReason.BAD_RESPONSE, "metrics: body does not match its encoding", explicit=True
        ) from None
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        raise transport_failure("metrics", exc) from None
    except ValueError as exc:  # too many kept lines
        raise CheckFailed(HealthReason.BAD_RESPONSE, f"metrics: {exc}", explicit=True) from None
    try:
        launches, builds = parse_outcomes(text)
    except ValueError as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else "unparsable"
        raise CheckFailed(
            HealthReason.BAD_RESPONSE,
            f"metrics: launch samples unparsable: {detail}",
            explicit=True,
        ) from None
    if launches is None:
        where = f"the first {kept.bytes_read} bytes" if capped else "the body"
        raise CheckFailed(
            HealthReason.BAD_RESPONSE,
            f"metrics: no complete {LAUNCH_FAMILY} histogram in {where}",
            explicit=True,
        )
    return Scrape(launches, builds, kept.bytes_read, capped)


# -- the verdict ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutcomeSettings:
    """The tracker's knobs: ``window`` in seconds, ratios as fractions 0..1, and
    ``missing_after``: failed scrapes in a row after which the signal is gone."""

    window: float = 900.0
    min_attempts: int = 10
    degrade_ratio: float = 0.5
    recover_ratio: float = 0.25
    missing_after: int = 3

    @classmethod
    def from_config(cls, config: OutcomesConfig) -> OutcomeSettings:
        return cls(
            window=config.window_minutes * 60,
            min_attempts=config.min_attempts,
            degrade_ratio=config.degrade_ratio,
            recover_ratio=config.recover_ratio,
        )


Change: TypeAlias = Literal["degraded", "recovered", "lost"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """A member's outcomes over the window and its state after the latest scrape.

    ``launches`` and ``builds`` are attempts within the window, ``*_failures`` the failed ones;
    the ratios are None below ``min_attempts`` or without a signal. ``change`` is set when
    this scrape changed ``degraded`` (``lost``: because the signal is gone); ``detail`` states
    the figures in a sentence for logs.
    """

    degraded: bool = False
    launch_failure_ratio: float | None = None
    launches: float = 0.0
    launch_failures: float = 0.0
    build_failure_ratio: float | None = None
    builds: float = 0.0
    build_failures: float = 0.0
    signal: bool = False
    change: Change | None = None
    detail: str = "no launch outcomes yet"


@dataclass(frozen=True, slots=True)
class _Step:
    """What happened between two successive scrapes (``start`` and ``end``, seconds)."""

    start: float
    end: float
    ok: float
    failed: float
    built: float
    build_failed: float


@dataclass(slots=True)
class _Member:
    launches: OutcomeCounts | None = None  # last sample; None: no signal
    builds: OutcomeCounts | None = None
    at: float = 0.0
    steps: deque[_Step] = field(default_factory=deque)
    degraded: bool = False
    below_since: float | None = None  # degraded, and under recover_ratio since then
    failed_scrapes: int = 0
    verdict: Verdict = field(default_factory=Verdict)


def _increase(before: OutcomeCounts | None, after: OutcomeCounts | None) -> tuple[float, float]:
    if before is None or after is None:
        return 0.0, 0.0
    restarted = (
        after.success < before.success
        or after.failure < before.failure
        or (None not in (before.created, after.created) and before.created != after.created)
    )
    if restarted:
        return after.success, after.failure
    return after.success - before.success, after.failure - before.failure


class OutcomeTracker:
    """Launch failure ratios and the degraded state of each member (see module docstring).

    Call :meth:`observe` with every successful scrape and :meth:`fail` with every failed one;
    both return the member's new :class:`Verdict`. ``clock`` is in seconds (monotonic).
    """

    def __init__(
        self,
        settings: OutcomeSettings,
        members: Iterable[str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._members = {name: _Member() for name in members}

    def verdict(self, member: str) -> Verdict:
        """The member's verdict after its latest scrape (KeyError for an unknown member)."""
        return self._members[member].verdict

    def observe(
        self, member: str, launches: OutcomeCounts, builds: OutcomeCounts | None = None
    ) -> Verdict:
        """Fold in a scrape's cumulative counts, taken now."""
        state = self._members[member]
        now = self._clock()
        state.failed_scrapes = 0
        if state.launches is not None and now - state.at <= self.settings.window:
            launched = _increase(state.launches, launches)
            built = _increase(state.builds, builds)
            state.steps.append(_Step(state.at, now, *launched, *built))
        state.launches, state.builds, state.at = launches, builds, now
        return self._evaluate(state, now, None)

    def fail(self, member: str, reason: str) -> Verdict:
        """Record a failed scrape (``reason`` goes into the figures if the signal is lost)."""
        state = self._members[member]
        now = self._clock()
        state.failed_scrapes += 1
        if state.failed_scrapes < self.settings.missing_after:
            return self._evaluate(state, now, None)
        state.launches = state.builds = None
        state.steps.clear()
        lost = f"launch outcomes unavailable for {state.failed_scrapes} scrapes in a row ({reason})"
        return self._evaluate(state, now, lost)

    def adopt(self, member: str, degraded: bool) -> None:
        """Take over a degraded state decided elsewhere (the previous checker replica's).

        Adopted degradation clears like any other (a full window under ``recover_ratio``),
        or when this tracker's own scrapes lose the signal.
        """
        state = self._members[member]
        if state.degraded != degraded:
            state.degraded, state.below_since = degraded, None
            state.verdict = Verdict(
                degraded=degraded,
                signal=state.launches is not None,
                detail="adopted from the previous checker",
            )

    def _evaluate(self, state: _Member, now: float, lost: str | None) -> Verdict:
        s = self.settings
        steps = state.steps
        while steps and steps[0].end <= now - s.window:
            steps.popleft()
        ok = sum(step.ok for step in steps)
        failed = sum(step.failed for step in steps)
        built = sum(step.built for step in steps)
        build_failed = sum(step.build_failed for step in steps)
        launches, builds = ok + failed, built + build_failed
        signal = state.launches is not None
        ratio = failed / launches if signal and launches >= s.min_attempts else None
        build_ratio = build_failed / builds if signal and builds >= s.min_attempts else None
        figures = (
            f"{_share(failed, launches)} in the last {_span(s.window)}"
            f" ({_share(build_failed, builds, 'builds')})"
        )
        change: Change | None = None
        detail = figures
        if lost is not None:
            change = "lost" if state.degraded else None
            detail = lost
            state.degraded, state.below_since = False, None
        elif not state.degraded:
            recent_ok = recent_failed = 0.0
            since = now
            for step in reversed(steps):  # the newest scrapes holding min_attempts failures
                recent_ok, recent_failed = recent_ok + step.ok, recent_failed + step.failed
                since = step.start
                if recent_failed >= s.min_attempts:
                    break
            recent = (
                recent_failed / (recent_ok + recent_failed)
                if recent_failed >= s.min_attempts
                else 0.0
            )
            if ratio is not None and max(ratio, recent) >= s.degrade_ratio:
                state.degraded, state.below_since = True, None
                change = "degraded"
                detail = f"{figures}; degrade_ratio is {s.degrade_ratio:.0%}"
                if recent > ratio:
                    newest = _share(recent_failed, recent_ok + recent_failed)
                    detail = f"{newest} in the last {_span(now - since)}, {detail}"
        elif failed / max(launches, s.min_attempts) < s.recover_ratio:
            if state.below_since is None:
                state.below_since = now
            if now - state.below_since >= s.window:
                state.degraded, state.below_since = False, None
                change = "recovered"
                detail = f"under recover_ratio {s.recover_ratio:.0%} for {_span(s.window)}: "
                detail += figures
        else:
            state.below_since = None
        state.verdict = Verdict(
            degraded=state.degraded,
            launch_failure_ratio=ratio,
            launches=launches,
            launch_failures=failed,
            build_failure_ratio=build_ratio,
            builds=builds,
            build_failures=build_failed,
            signal=signal,
            change=change,
            detail=detail,
        )
        return state.verdict


def _share(failed: float, total: float, what: str = "launches") -> str:
    if not total:
        return f"no {what}"
    return f"{failed:g} of {total:g} {what} failed ({failed / total:.0%})"


def _span(seconds: float) -> str:
    return f"{seconds / 60:.3g} min" if seconds >= 120 else f"{seconds:.3g} s"
