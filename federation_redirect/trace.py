"""Launch traces in the mybinder.org events archive format: reading them and making them.

A trace is JSON lines, one launch event per line, as in ``events-YYYY-MM-DD.jsonl`` of
archive.analytics.mybinder.org (schema ``binderhub.jupyter.org/launch``)::

    {"timestamp": "2021-11-01T14:03:00+00:00", "schema": "binderhub.jupyter.org/launch",
     "version": 3, "provider": "GitHub", "spec": "ipython/ipython-in-depth/master",
     "status": "success", "origin": "gke.mybinder.org"}

:func:`read_trace` needs only ``timestamp``, ``provider``, ``spec`` and ``status``; lines with a
``status`` other than ``success`` are skipped (the archive records only successes), blank
lines are skipped, and anything else malformed raises :class:`TraceError` naming the line.
Provider names are the archive's (``GitHub``, ``Gist``, ``GitLab``, ``Git``, ``Zenodo``,
``Figshare``, ``Hydroshare``, ``Dataverse``, ``CKAN``); each becomes the provider id of a launch
URL, so a launch is keyed exactly as the server keys ``/v2/<id>/<spec>``
(:attr:`Launch.key`). An unknown provider name is used lower-cased as the id.

Arrival model of :func:`make_trace`
-----------------------------------
The archive's per-day counts (``daily_launches_by_spec.csv``: one row per date, origin,
provider and spec) say how many launches each spec had in a UTC day, not when. Each launch of
a row is placed independently at a time drawn from one daily load curve::

    rate(t) proportional to 1 + amplitude x cos(2 pi (t - peak) / 24 h)

with ``amplitude`` 0.5 and ``peak`` 14:00 UTC by default: the busiest hour carries three
times the launches of the quietest (02:00 UTC), and the curve peaks when Europe's afternoon
overlaps America's morning. The shared data has no hourly counts, so this shape is an
assumption, not a measurement; both numbers are options. Every row's count is preserved
exactly (a Poisson process conditioned on its daily total). Workshop bursts (:class:`Burst`)
add ``count`` launches of one spec at times drawn uniformly within their window.

Timestamps are written with second precision (the archive rounds down to the minute), in
time order: the order of launches within one second is that of their exact drawn times.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TextIO

from .errors import FederationRedirectError
from .keys import launch_key

__all__ = [
    "PROVIDER_IDS",
    "PROVIDER_NAMES",
    "SCHEMA",
    "Burst",
    "DailyCount",
    "Launch",
    "TraceError",
    "daily_rate",
    "make_trace",
    "parse_burst",
    "parse_event",
    "provider_id",
    "provider_name",
    "read_counts",
    "read_trace",
    "read_trace_lines",
    "write_trace",
]

SCHEMA = "binderhub.jupyter.org/launch"

#: Archive provider name -> provider id in a launch URL (BinderHub's repo provider ids).
PROVIDER_IDS: Mapping[str, str] = {
    "GitHub": "gh",
    "Gist": "gist",
    "GitLab": "gl",
    "Git": "git",
    "Zenodo": "zenodo",
    "Figshare": "figshare",
    "Hydroshare": "hydroshare",
    "Dataverse": "dataverse",
    "CKAN": "ckan",
}
#: Provider id -> archive provider name.
PROVIDER_NAMES: Mapping[str, str] = {v: k for k, v in PROVIDER_IDS.items()}

DAY_SECONDS = 86400.0
DEFAULT_AMPLITUDE = 0.5
DEFAULT_PEAK_HOUR = 14.0


class TraceError(FederationRedirectError):
    """A trace, counts file or burst specification is malformed (the message says where)."""


@dataclass(frozen=True, slots=True)
class Launch:
    """One launch: when (``time``, seconds since the Unix epoch), and what (provider id, spec)."""

    time: float
    provider: str
    spec: str

    @property
    def path(self) -> str:
        """The launch path the front door would see: ``/v2/<provider>/<spec>``."""
        return f"/v2/{self.provider}/{self.spec}"

    @property
    def key(self) -> str:
        """The routing key, exactly as the server computes it for :attr:`path`."""
        return launch_key(self.path)


def provider_id(name: str) -> str:
    """The launch-URL provider id of an archive provider name (unknown: lower-cased)."""
    return PROVIDER_IDS.get(name, name.lower())


def provider_name(pid: str) -> str:
    """The archive provider name of a launch-URL provider id (unknown: the id itself)."""
    return PROVIDER_NAMES.get(pid.lower(), pid)


# -- reading --------------------------------------------------------------------------------


def _timestamp(value: object, where: str) -> float:
    if not isinstance(value, str):
        raise TraceError(f"{where}: timestamp must be a string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise TraceError(f"{where}: timestamp {value!r} is not ISO 8601") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the archive's times are UTC
    return moment.timestamp()


def parse_event(line: str, where: str = "event") -> Launch | None:
    """One archive line as a :class:`Launch`; None for a non-success event or a blank line."""
    if not line.strip():
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TraceError(f"{where}: not JSON: {exc.msg}") from None
    if not isinstance(event, dict):
        raise TraceError(f"{where}: not a JSON object")
    status = event.get("status", "success")
    if status != "success":
        return None
    provider, spec = event.get("provider"), event.get("spec")
    if not isinstance(provider, str) or not provider:
        raise TraceError(f"{where}: provider must be a non-empty string")
    if not isinstance(spec, str) or not spec:
        raise TraceError(f"{where}: spec must be a non-empty string")
    return Launch(_timestamp(event.get("timestamp"), where), provider_id(provider), spec)


def read_trace(source: str | Path | TextIO) -> list[Launch]:
    """Every successful launch of a trace file (or open text stream), in file order."""
    if isinstance(source, str | Path):
        try:
            with Path(source).open(encoding="utf-8") as stream:
                return read_trace_lines(stream, str(source))
        except OSError as exc:
            raise TraceError(f"{source}: cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise TraceError(f"{source}: not UTF-8 text") from None
    return read_trace_lines(source, getattr(source, "name", "trace"))


def read_trace_lines(lines: Iterable[str], name: str = "trace") -> list[Launch]:
    """:func:`read_trace` over lines; errors name ``name:line``."""
    launches = []
    for number, line in enumerate(lines, 1):
        launch = parse_event(line, f"{name}:{number}")
        if launch is not None:
            launches.append(launch)
    return launches


# -- making ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DailyCount:
    """One row of a per-day counts file: ``launches`` of ``spec`` on ``day``."""

    day: date
    provider: str  # archive provider name, e.g. GitHub
    spec: str
    launches: int
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class Burst:
    """A workshop: ``count`` launches of ``spec`` (``<provider id>/<spec>``, as in a launch
    URL after ``/v2/``) within ``duration_min`` minutes from ``start_min`` minutes after
    midnight UTC."""

    spec: str
    count: int
    start_min: float
    duration_min: float

    @property
    def provider(self) -> str:
        """The archive provider name of the spec's provider id."""
        return provider_name(self.spec.partition("/")[0])

    @property
    def provider_spec(self) -> str:
        """The spec without its provider id, as the archive logs it."""
        return self.spec.partition("/")[2]


def parse_burst(text: str) -> Burst:
    """``SPEC,COUNT,START_MIN,DURATION_MIN`` (numbers may be fractional, COUNT an integer)."""
    parts = text.rsplit(",", 3)
    if len(parts) != 4:
        raise TraceError(f"burst {text!r}: expected SPEC,COUNT,START_MIN,DURATION_MIN")
    spec, count_text, start_text, duration_text = parts
    if "/" not in spec.strip("/"):
        raise TraceError(f"burst {text!r}: SPEC must be <provider>/<spec>, e.g. gh/org/repo/HEAD")
    try:
        count, start, duration = int(count_text), float(start_text), float(duration_text)
    except ValueError:
        raise TraceError(f"burst {text!r}: COUNT, START_MIN and DURATION_MIN are numbers") from None
    if count < 0 or not (math.isfinite(start) and math.isfinite(duration)) or duration < 0:
        raise TraceError(f"burst {text!r}: COUNT and DURATION_MIN must not be negative")
    if not 0 <= start < DAY_SECONDS / 60:
        raise TraceError(f"burst {text!r}: START_MIN must be within the day (0 to 1440)")
    return Burst(spec.strip("/"), count, start, duration)


def read_counts(path: str | Path) -> list[DailyCount]:
    """The rows of a per-day counts CSV (columns ``date``, ``provider``, ``spec``,
    ``launches``; ``origin`` optional), in file order."""
    rows = []
    try:
        with Path(path).open(encoding="utf-8", newline="") as stream:
            reader = csv.DictReader(stream)
            missing = {"date", "provider", "spec", "launches"} - set(reader.fieldnames or ())
            if missing:
                raise TraceError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
            for number, row in enumerate(reader, 2):
                try:
                    day = date.fromisoformat(row["date"])
                    launches = int(row["launches"])
                except (TypeError, ValueError):
                    raise TraceError(f"{path}:{number}: bad date or launch count") from None
                if launches < 0 or not row["spec"] or not row["provider"]:
                    raise TraceError(f"{path}:{number}: empty spec/provider or negative count")
                origin = row.get("origin") or None
                rows.append(DailyCount(day, row["provider"], row["spec"], launches, origin))
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return rows


def daily_rate(
    seconds: float, *, amplitude: float = DEFAULT_AMPLITUDE, peak_hour: float = DEFAULT_PEAK_HOUR
) -> float:
    """Relative launch rate at ``seconds`` after midnight UTC (mean 1 over the day)."""
    phase = 2 * math.pi * (seconds - peak_hour * 3600) / DAY_SECONDS
    return 1.0 + amplitude * math.cos(phase)


def _draw_time(rng: random.Random, amplitude: float, peak_hour: float) -> float:
    # rejection sampling from the daily curve: exact, and deterministic for a seeded rng
    top = 1.0 + amplitude
    while True:
        t = rng.random() * DAY_SECONDS
        if rng.random() * top <= daily_rate(t, amplitude=amplitude, peak_hour=peak_hour):
            return t


def make_trace(
    counts: Iterable[DailyCount],
    day: date,
    *,
    seed: int = 0,
    bursts: Iterable[Burst] = (),
    amplitude: float = DEFAULT_AMPLITUDE,
    peak_hour: float = DEFAULT_PEAK_HOUR,
) -> list[dict[str, object]]:
    """Archive events for ``day``: each count row of that day spread over the daily curve,
    plus the bursts, sorted by time (see the module docstring for the model).

    Deterministic for a given ``seed`` and input order. ``amplitude`` must be in [0, 1].
    """
    if not 0 <= amplitude <= 1:
        raise TraceError("amplitude must be between 0 and 1")
    rng = random.Random(seed)
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    drawn: list[tuple[float, int, dict[str, object]]] = []
    for row in counts:
        if row.day != day:
            continue
        for _ in range(row.launches):
            event: dict[str, object] = {"provider": row.provider, "spec": row.spec}
            if row.origin:
                event["origin"] = row.origin
            drawn.append((_draw_time(rng, amplitude, peak_hour), len(drawn), event))
    for burst in bursts:
        start = burst.start_min * 60
        for _ in range(burst.count):
            t = min(start + rng.random() * burst.duration_min * 60, DAY_SECONDS - 1e-3)
            event = {"provider": burst.provider, "spec": burst.provider_spec}
            drawn.append((t, len(drawn), event))
    drawn.sort(key=lambda d: (d[0], d[1]))
    return [_event(midnight + timedelta(seconds=math.floor(t)), ev) for t, _, ev in drawn]


def _event(moment: datetime, fields: dict[str, object]) -> dict[str, object]:
    event: dict[str, object] = {
        "timestamp": moment.isoformat(timespec="seconds"),
        "schema": SCHEMA,
        "version": 3,
        "provider": fields["provider"],
        "spec": fields["spec"],
        "status": "success",
    }
    if "origin" in fields:
        event["origin"] = fields["origin"]
    return event


def write_trace(events: Iterable[Mapping[str, object]], stream: TextIO) -> int:
    """Write events as JSON lines; returns how many."""
    n = 0
    for event in events:
        stream.write(json.dumps(event, separators=(", ", ": ")) + "\n")
        n += 1
    return n
