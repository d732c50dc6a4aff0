"""How fast the health engine takes a failing member out of rotation and a healed one back.

Usage::

    python bench/detection.py [--json out.json] [--short-outage 30] [--long-outage 120]

Three fake BinderHubs (:mod:`federation_redirect.testing`, real HTTP servers on 127.0.0.1)
and a :class:`~federation_redirect.health.HealthEngine` with the PRODUCTION settings (period
15, timeout 5, jitter 0.1, failed_period 90, and the other check defaults) run in this
process. ``prime`` stays healthy (it is the version reference). Concurrently:

* ``b``: answers 503 ("JupyterHub API" down) for a short outage, heals; then refuses
  connections for a short outage, heals.
* ``c``: hangs (accepts, never answers) for a long outage, heals.

Each fault is injected just after one of the member's checks ends, and each heal just after a
failed check ends once the outage (counted from the fault, default 30 s and 120 s) is over:
the worst phase, so the figures are close to the worst case rather than an average.
"Out"/"back" are the instants the registry's snapshot drops/adds the member as a routing
candidate; "first failing check" is when the engine sent its first /health request after the
fault (seen through an httpx request hook on the engine's own client); round ends come from
the engine's per-member stats.

Targets: a 503 is out within period + 1 s of the fault; a hang (or refused connection) is out
within timeout * 2 + 3 s of the first check that meets it; a healed member is back within
30 s. The "bound" column is what the design predicts at the worst phase. Exit status 1 if a
target is missed. Takes about 3 minutes with the default outages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from federation_redirect.config import Config, parse_config
from federation_redirect.health import HealthEngine
from federation_redirect.models import HealthState, Snapshot
from federation_redirect.registry import Registry
from federation_redirect.testing import RunningMember, start_member

PRODUCTION_CHECK = {"period": 15, "timeout": 5, "jitter": 0.1, "failed_period": 90}


@dataclass
class Row:
    scenario: str
    metric: str
    measured_s: float
    target_s: float | None  # None: no target, shown for information
    bound_s: float | None  # what the design predicts at the worst phase

    @property
    def ok(self) -> bool:
        return self.target_s is None or self.measured_s <= self.target_s


class Watch:
    """Timestamps of every check sent, every round finished and every routing change."""

    def __init__(self, engine: HealthEngine, registry: Registry) -> None:
        self.engine = engine
        self.registry = registry
        self.rounds: dict[str, list[tuple[float, float, str | None]]] = {
            name: [] for name in engine.stats
        }
        self.checks: dict[str, list[float]] = {name: [] for name in engine.stats}
        self.changes: list[tuple[float, str, bool]] = []
        self._routable = {m.name: m.routable for m in registry.snapshot.members}
        self._seen = dict.fromkeys(engine.stats, 0)
        self._by_url = {h.health_url: name for name, h in registry.config.hosts.items()}
        registry.subscribe(self._on_snapshot)
        # the engine's own client, observed through httpx's public request hook
        hooks = engine.client.event_hooks
        hooks["request"] = [*hooks.get("request", []), self._on_request]
        engine.client.event_hooks = hooks

    async def _on_request(self, request: httpx.Request) -> None:
        name = self._by_url.get(str(request.url))
        if name is not None:
            self.checks[name].append(time.monotonic())

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        candidates = {m.name for m in snapshot.candidates}
        for name, before in self._routable.items():
            if (name in candidates) != before:
                self._routable[name] = not before
                self.changes.append((now, name, not before))

    async def poll(self) -> None:
        """Record rounds as they finish (every 5 ms) until cancelled."""
        while True:
            now = time.monotonic()
            for name, stats in self.engine.stats.items():
                if stats.rounds_total > self._seen[name]:
                    self._seen[name] = stats.rounds_total
                    duration = stats.last_duration_seconds or 0.0
                    reason = self.registry.health(name).reason
                    self.rounds[name].append((now - duration, now, reason))
            await asyncio.sleep(0.005)

    async def round_end(self, name: str, after: float) -> float:
        """Wait for a round of ``name`` to end after ``after``; return its end."""
        while True:
            ends = [end for _, end, _ in self.rounds[name] if end > after]
            if ends:
                return ends[0]
            await asyncio.sleep(0.005)

    def first_check(self, name: str, after: float) -> float:
        """When the first /health request of ``name`` after ``after`` was sent."""
        return min(t for t in self.checks[name] if t >= after)

    async def change(self, name: str, routable: bool, after: float) -> float:
        """Wait for ``name`` to become (non-)routable after ``after``; return when."""
        while True:
            for at, n, now_routable in self.changes:
                if n == name and now_routable is routable and at > after:
                    return at
            await asyncio.sleep(0.005)


async def worst_phase(watch: Watch, name: str) -> float:
    """Wait until just after ``name``'s next round ends."""
    await watch.round_end(name, time.monotonic())
    return time.monotonic()


def bounds(config: Config) -> dict[str, float]:
    c = config.check
    return {
        "period": c.period * (1 + c.jitter / 2),
        "transport": c.timeout + c.fast_period + c.timeout,
        "heal": min(c.max_backoff, c.failed_period) + c.fast_period,
    }


async def scenario_b(watch: Watch, b: RunningMember, config: Config, short: float) -> list[Row]:
    c, bound = config.check, bounds(config)
    rows: list[Row] = []
    # 503
    fault = await worst_phase(watch, "b")
    b.member.set_mode("503")
    out = await watch.change("b", False, fault)
    rows.append(Row("503", "fault -> out", out - fault, c.period + 1, bound["period"]))
    await asyncio.sleep(max(0.0, fault + short - time.monotonic()))
    heal = await worst_phase(watch, "b")
    b.member.set_mode("ok")
    back = await watch.change("b", True, heal)
    label = f"503, outage of {heal - fault:.0f} s"
    rows.append(Row(label, "heal -> back", back - heal, 30.0, bound["heal"]))
    # connection refused
    fault = await worst_phase(watch, "b")
    await b.refuse()
    out = await watch.change("b", False, fault)
    first = watch.first_check("b", fault)
    transport = 2 * c.timeout + 3
    rows.append(Row("refuse", "first failing check -> out", out - first, transport, None))
    rows.append(Row("refuse", "fault -> out", out - fault, None, None))
    await asyncio.sleep(max(0.0, fault + short - time.monotonic()))
    heal = await worst_phase(watch, "b")
    await b.resume()
    back = await watch.change("b", True, heal)
    label = f"refuse, outage of {heal - fault:.0f} s"
    rows.append(Row(label, "heal -> back", back - heal, 30.0, bound["heal"]))
    return rows


async def scenario_c(
    watch: Watch, c_member: RunningMember, config: Config, long: float
) -> list[Row]:
    c, bound = config.check, bounds(config)
    rows: list[Row] = []
    fault = await worst_phase(watch, "c")
    c_member.member.set_mode("hang")
    out = await watch.change("c", False, fault)
    first = watch.first_check("c", fault)
    target = 2 * c.timeout + 3
    rows.append(Row("hang", "first failing check -> out", out - first, target, bound["transport"]))
    rows.append(
        Row("hang", "fault -> out", out - fault, None, bound["period"] + bound["transport"])
    )
    await asyncio.sleep(max(0.0, fault + long - time.monotonic()))
    heal = await worst_phase(watch, "c")
    c_member.member.set_mode("ok")
    back = await watch.change("c", True, heal)
    label = f"hang, outage of {heal - fault:.0f} s"
    rows.append(Row(label, "heal -> back", back - heal, 30.0, bound["heal"]))
    return rows


async def run(short: float, long: float) -> tuple[Config, list[Row]]:
    members = [await start_member(name) for name in ("prime", "b", "c")]
    prime, b, c_member = members
    config = parse_config(
        {
            "hosts": {m.name: {"url": m.url, "prime": m is prime} for m in members},
            "check": PRODUCTION_CHECK,
        }
    )
    registry = Registry(config)
    engine = HealthEngine(config, registry)
    watch = Watch(engine, registry)
    poller = asyncio.create_task(watch.poll())
    try:
        await engine.start()
        deadline = time.monotonic() + 10
        while any(m.health is not HealthState.HEALTHY for m in registry.snapshot.members):
            if time.monotonic() > deadline:
                raise RuntimeError("members did not all become healthy")
            await asyncio.sleep(0.01)
        print("all members healthy; running scenarios concurrently", file=sys.stderr)
        b_rows, c_rows = await asyncio.gather(
            scenario_b(watch, b, config, short), scenario_c(watch, c_member, config, long)
        )
        return config, b_rows + c_rows
    finally:
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)
        await engine.stop()
        await asyncio.gather(*(m.stop() for m in members))


def table(rows: list[Row]) -> str:
    header = f"{'scenario':<32} {'metric':<28} {'measured':>9} {'target':>8} {'bound':>7}  ok"
    lines = [header, "-" * len(header)]
    for r in rows:
        target = "-" if r.target_s is None else f"{r.target_s:.1f}"
        bound = "-" if r.bound_s is None else f"{r.bound_s:.2f}"
        verdict = "" if r.target_s is None else ("yes" if r.ok else "NO")
        lines.append(
            f"{r.scenario:<32} {r.metric:<28} {r.measured_s:>8.2f}s {target:>8} {bound:>7}"
            f"  {verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--short-outage", type=float, default=30.0, help="seconds (b)")
    parser.add_argument("--long-outage", type=float, default=120.0, help="seconds (c)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    started = time.monotonic()
    config, rows = asyncio.run(run(args.short_outage, args.long_outage))
    runtime = time.monotonic() - started
    print(table(rows))
    print(f"\nruntime {runtime:.0f} s; settings: {config.check.model_dump()}")
    ok = all(r.ok for r in rows)
    if args.json:
        document = {
            "settings": config.check.model_dump(),
            "pod_headroom": config.pod_headroom,
            "runtime_seconds": round(runtime, 1),
            "all_targets_met": ok,
            "rows": [{**asdict(r), "ok": r.ok} for r in rows],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
