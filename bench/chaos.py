"""The chaos run: two redirector replicas, a shared Redis, three members, and everything failing.

Usage::

    python bench/chaos.py [--short] [--rate 150] [--policy bounded] [--seed 1] [--json out.json]

Everything runs on 127.0.0.1 as separate processes: a ``redis-server``
(:class:`~federation_redirect.localredis.LocalRedis`), three fake BinderHubs
(``python -m federation_redirect.testing --control``: ``alpha`` the prime, ``beta``,
``gamma``) and two replicas of the redirector (``python -m federation_redirect serve
--redis-url ...``). A load generator sends a steady stream of cookie-less launches
(``/v2/gh/chaos/repo-<i>/HEAD``, ``i`` drawn from 3,000 repositories, ``--rate`` a second,
spread over the live replicas) while this schedule runs (seconds from the start of the load;
``--short`` halves every hold, about 40 s instead of 80 s):

=====  ==============================================================================
  5    beta answers 503 (a failed "JupyterHub API" check); healed at 10
 12    gamma hangs (accepts, never answers /health or /versions); healed at 18
 20    beta flaps: 503 and healthy in turn every 5 s, until 40
 42    gamma fills up to its quota (within pod_headroom); back to 5 pods at 47
 49    Redis is killed; restarted empty at 54
 57    the replica running the health checks is killed (SIGKILL); restarted at 62
 67    rolling upgrade, prime first: alpha's /versions change; beta at 70, gamma at 73
 78    end
=====  ==============================================================================

Health checks are fast so that the run is short (``CHECK`` below): period 1 s, jitter 0.1,
timeout 0.5 s, retries 2, fall 2, rise 2, fast_period 0.25 s, backoff 0.25 to 1 s,
``versions: exact`` with ``version_grace_seconds`` 600, the checker lock's TTL 1 s, and slow
start over 8 s (``routing.slow_start_seconds``, scaled down from 120 s like the period).

Figures:

* **requests sent**, **non-307 answers** from the redirector (target 0), and connection errors
  per replica, counted apart: a killed process cannot answer. The load generator stops sending
  to a replica just before killing it and sends to it again once its ``/readyz`` says its first
  round of checks is done (what a Kubernetes readiness probe waits for).
* **late redirects** (target 0): 307s to a member sent after it was detectably down: later than
  period + 1 s after it started answering 503, timeout x 2 + 3 s after it started hanging (and,
  counted apart, after it filled up), and before it was healed.
* **agreement** (target: within 1 s after every event): both replicas' ``/active_hosts`` are
  polled every 50 ms; for each event, the longest time their answers differed (to within the
  poll interval) and when the event first showed.
* **repositories whose member changed** between two of their launches, and how many of those
  changes happened outside any disturbance of the two members involved (a fault, or the
  ``RECOVERY`` seconds after it).
* members ejected during the rolling upgrade (target 0), and ERROR lines in the replicas' logs.

Exit status 1 if a target is missed. Needs a ``redis-server`` (the ``test`` extra installs one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import yaml

from federation_redirect.localredis import LocalRedis
from federation_redirect.testing import DEFAULT_VERSIONS

CHECK: dict[str, Any] = {
    "period": 1,
    "jitter": 0.1,
    "timeout": 0.5,
    "retries": 2,
    "fall": 2,
    "rise": 2,
    "fast_period": 0.25,
    "min_backoff": 0.25,
    "max_backoff": 1,
    "failed_period": 2,
    "versions": "exact",
    "version_grace_seconds": 600,
}
LOCK_SECONDS = 1.0
SLOW_START = 8.0  # routing.slow_start_seconds, scaled down like the check period (120 / 15)
QUOTA = 10_000
NAMES = ("alpha", "beta", "gamma")
REPOSITORIES = 3000
POLL = 0.05  # seconds between /active_hosts polls of each replica
# seconds after a heal during which a member may still be out (backoff, rise) or ramping up
RECOVERY = SLOW_START + 3.0
V2 = {**DEFAULT_VERSIONS, "binderhub": "1.1.0+3.gdef"}
DETECT_503 = CHECK["period"] + 1.0
DETECT_HANG = CHECK["timeout"] * 2 + 3.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the processes --------------------------------------------------------------------------


@dataclass
class Member:
    name: str
    process: asyncio.subprocess.Process
    url: str


async def start_member(name: str) -> Member:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "federation_redirect.testing",
        "--name", name, "--port", "0", "--pods", "5", "--quota", str(QUOTA), "--control",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    return Member(name, process, line.decode().strip())


class Replica:
    """One ``federation-redirect serve`` process; killed with SIGKILL, restarted on its port."""

    def __init__(self, index: int, config: Path, redis_url: str, logs: Path) -> None:
        self.index = index
        self.config = config
        self.redis_url = redis_url
        self.port = _free_port()
        self.log = logs / f"replica-{index}.log"
        self.process: asyncio.subprocess.Process | None = None
        self.live = False  # the load generator may send to it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "federation_redirect", "serve",
                "--config", str(self.config), "--port", str(self.port),
                "--redis-url", self.redis_url, "--log-level", "warning",
                stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip

    async def ready(self, client: httpx.AsyncClient, patience: float = 30) -> None:
        """Wait until it has checked every member once (its readiness probe)."""
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError, ValueError):
                r = await client.get(f"{self.url}/readyz", timeout=1)
                if r.json().get("first_round_done"):
                    return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"replica {self.index} not ready within {patience} s")

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                await self.kill()

    def errors_logged(self) -> int:
        if not self.log.exists():
            return 0
        lines = self.log.read_text(errors="replace").splitlines()
        return sum(1 for line in lines if " ERROR " in line or line.startswith("Traceback"))


class Connection:
    """A keep-alive HTTP/1.1 connection for launches: a few dozen microseconds per request
    where an httpx request costs a millisecond of this small machine's CPU."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None

    async def get(self, path: str) -> tuple[int, str]:
        """(status, Location). A kept-alive connection the server closed is retried once on a
        fresh one, as browsers do; any other failure raises OSError or TimeoutError."""
        fresh = self._streams is None
        try:
            return await self._get(path)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            self.close()
            if fresh:
                raise
        return await self._get(path)

    async def _get(self, path: str) -> tuple[int, str]:
        if self._streams is None:
            self._streams = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), 5
            )
        reader, writer = self._streams
        writer.write(f"GET {path} HTTP/1.1\r\nHost: chaos.test\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if length:
            await asyncio.wait_for(reader.readexactly(length), 5)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers.get("location", "")


# -- what happened --------------------------------------------------------------------------


@dataclass
class Launch:
    at: float  # monotonic time the request was sent
    replica: int
    repo: int
    status: int | None = None
    member: str | None = None
    error: str | None = None


@dataclass
class Fault:
    """A member detectably down (or full) from ``start`` to ``end``; redirects to it later
    than ``start + bound`` and before ``end`` are late."""

    member: str
    kind: str  # 503, hang, full
    start: float
    bound: float
    end: float = float("inf")


@dataclass
class Event:
    name: str
    at: float


@dataclass
class EventFigures:
    event: str
    at_s: float
    first_change_s: float | None
    max_disagreement_s: float


@dataclass
class Figures:
    duration_s: float
    rate_target: float
    requests: int
    answers: int
    non_307: int
    statuses: dict[str, int]
    connection_errors: dict[str, int]
    late_redirects: int
    late_redirects_to_full: int
    late_examples: list[str]
    events: list[EventFigures]
    max_disagreement_s: float
    repositories_launched_twice: int
    repositories_moved: int
    repositories_moved_undisturbed: int
    ejected_during_upgrade: list[str]
    errors_logged: int
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.non_307 == 0
            and self.late_redirects == 0
            and self.late_redirects_to_full == 0
            and self.max_disagreement_s <= 1.0
            and not self.ejected_during_upgrade
            and self.answers > 0
        )


# -- the run --------------------------------------------------------------------------------


class Chaos:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.scale = 0.5 if args.short else 1.0
        self.rng = random.Random(args.seed)
        self.members: dict[str, Member] = {}
        self.replicas: list[Replica] = []
        self.launches: list[Launch] = []
        self.views: list[list[tuple[float, frozenset[str] | None]]] = [[], []]
        self.faults: list[Fault] = []
        self.events: list[Event] = []
        self.upgrade: tuple[float, float] | None = None
        self.client = httpx.AsyncClient(
            timeout=5, limits=httpx.Limits(max_connections=64, max_keepalive_connections=32)
        )
        self._stop = asyncio.Event()

    # -- setup and teardown

    async def setup(self, redis: LocalRedis) -> None:
        for name in NAMES:
            self.members[name] = await start_member(name)
        config = {
            "hosts": {
                name: {"url": m.url, "prime": name == "alpha", "metrics": None}
                for name, m in self.members.items()
            },
            "load_balancer": self.args.policy,
            "check": CHECK,
            "state": {"lock_seconds": LOCK_SECONDS},
            "routing": {"slow_start_seconds": SLOW_START},
            "outcomes": {"enabled": False},
        }
        path = self.workdir / "chaos.yaml"
        path.write_text(yaml.safe_dump(config))
        self.replicas = [Replica(i, path, redis.url, self.workdir) for i in (0, 1)]
        for replica in self.replicas:
            await replica.start()
        for replica in self.replicas:
            await replica.ready(self.client)
            replica.live = True
        # every member routable on both before the load starts
        while True:
            views = [await self._view(r) for r in self.replicas]
            if all(v == frozenset(NAMES) for v in views):
                break
            await asyncio.sleep(0.05)

    async def teardown(self) -> None:
        for replica in self.replicas:
            await replica.stop()
        for member in self.members.values():
            if member.process.returncode is None:
                member.process.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(member.process.wait(), 10)
        await self.client.aclose()

    # -- control

    async def control(self, name: str, **body: Any) -> None:
        url = f"{self.members[name].url}/_control"
        try:
            r = await self.client.post(url, json=body)
        except httpx.TransportError:
            # a kept-alive connection the member closed meanwhile: a control is idempotent
            r = await self.client.post(url, json=body)
        r.raise_for_status()

    def event(self, name: str) -> float:
        now = time.monotonic()
        self.events.append(Event(name, now))
        return now

    def fault(self, member: str, kind: str, bound: float) -> Fault:
        fault = Fault(member, kind, self.event(f"{member}: {kind}"), bound)
        self.faults.append(fault)
        return fault

    def heal(self, fault: Fault, what: str) -> None:
        fault.end = self.event(f"{fault.member}: {what}")

    # -- background: load and views

    async def _view(self, replica: Replica) -> frozenset[str] | None:
        try:
            r = await self.client.get(f"{replica.url}/active_hosts", timeout=1)
            return frozenset(r.json()["active_hosts"])
        except (httpx.TransportError, ValueError, KeyError):
            return None

    async def watch(self, replica: Replica) -> None:
        while not self._stop.is_set():
            if replica.live:
                view = await self._view(replica)
                self.views[replica.index].append((time.monotonic(), view))
            else:
                self.views[replica.index].append((time.monotonic(), None))
            await asyncio.sleep(POLL)

    async def load(self, worker: int, workers: int) -> None:
        interval = workers / self.args.rate
        next_at = time.monotonic() + self.rng.random() * interval
        turn = worker
        connections = {r.index: Connection(r.port) for r in self.replicas}
        try:
            while not self._stop.is_set():
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at + interval, time.monotonic() - interval)
                live = [r for r in self.replicas if r.live]
                if not live:
                    continue
                replica = live[turn % len(live)]
                turn += 1
                repo = self.rng.randrange(REPOSITORIES)
                launch = Launch(time.monotonic(), replica.index, repo)
                self.launches.append(launch)
                try:
                    status, location = await connections[replica.index].get(
                        f"/v2/gh/chaos/repo-{repo}/HEAD"
                    )
                except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                    launch.error = type(exc).__name__
                    continue
                launch.status = status
                launch.member = next(
                    (n for n, m in self.members.items() if location.startswith(m.url + "/")),
                    None,
                )
        finally:
            for connection in connections.values():
                connection.close()

    # -- the schedule

    async def until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, self.start + at * self.scale - time.monotonic()))

    async def schedule(self) -> None:
        await self.until(5)
        down = self.fault("beta", "503", DETECT_503)
        await self.control("beta", mode="503")
        await self.until(10)
        await self.control("beta", mode="ok")
        self.heal(down, "healed")

        await self.until(12)
        down = self.fault("gamma", "hang", DETECT_HANG)
        await self.control("gamma", mode="hang")
        await self.until(18)
        await self.control("gamma", mode="ok")
        self.heal(down, "healed")

        flap_at = 20.0
        while flap_at < 40:
            await self.until(flap_at)
            down = self.fault("beta", "503", DETECT_503)
            await self.control("beta", mode="503")
            await self.until(flap_at + 5)
            await self.control("beta", mode="ok")
            self.heal(down, "flap: healthy")
            flap_at += 10

        await self.until(42)
        full = self.fault("gamma", "full", DETECT_503)
        await self.control("gamma", pods=[QUOTA - 5, QUOTA])
        await self.until(47)
        await self.control("gamma", pods=[5, QUOTA])
        self.heal(full, "has room again")

        await self.until(49)
        self.event("redis: killed")
        await asyncio.to_thread(self.redis.stop)
        await self.until(54)
        await asyncio.to_thread(self.redis.start)
        self.event("redis: restarted (empty)")

        await self.until(57)
        victim = await self._checker()
        victim.live = False
        await asyncio.sleep(0.2)  # let requests in flight to it finish
        self.event(f"replica {victim.index}: killed (the checker)")
        await victim.kill()
        await self.until(62)
        await victim.start()
        self.event(f"replica {victim.index}: restarted")
        await victim.ready(self.client)
        victim.live = True
        self.event(f"replica {victim.index}: ready, gets traffic again")

        await self.until(67)
        upgrade_start = self.event("upgrade: alpha (prime)")
        await self.control("alpha", versions=V2)
        await self.until(70)
        self.event("upgrade: beta")
        await self.control("beta", versions=V2)
        await self.until(73)
        self.event("upgrade: gamma")
        await self.control("gamma", versions=V2)
        await self.until(78)
        self.upgrade = (upgrade_start, time.monotonic())
        self.event("end")

    async def _checker(self) -> Replica:
        for replica in self.replicas:
            text = (await self.client.get(f"{replica.url}/metrics")).text
            if "federation_state_store_checker 1.0" in text:
                return replica
        return self.replicas[0]

    async def run(self, redis: LocalRedis) -> Figures:
        self.redis = redis
        await self.setup(redis)
        self.start = time.monotonic()
        workers = 8
        background = [asyncio.create_task(self.watch(r)) for r in self.replicas]
        background += [asyncio.create_task(self.load(i, workers)) for i in range(workers)]
        try:
            await self.schedule()
        finally:
            self._stop.set()
            await asyncio.gather(*background, return_exceptions=True)
        return self.figures(time.monotonic() - self.start)

    # -- the figures

    def figures(self, duration: float) -> Figures:
        statuses: dict[str, int] = defaultdict(int)
        errors: dict[str, int] = defaultdict(int)
        answered = [launch for launch in self.launches if launch.status is not None]
        for launch in self.launches:
            if launch.status is None:
                errors[f"replica {launch.replica}: {launch.error}"] += 1
            else:
                statuses[str(launch.status)] += 1
        late, late_full, examples = 0, 0, []
        for launch in answered:
            for fault in self.faults:
                if (
                    launch.member == fault.member
                    and fault.start + fault.bound <= launch.at < fault.end
                ):
                    if fault.kind == "full":
                        late_full += 1
                    else:
                        late += 1
                    if len(examples) < 10:
                        examples.append(
                            f"{launch.member} ({fault.kind}) at +{launch.at - fault.start:.2f} s"
                            f" via replica {launch.replica}"
                        )
        events = self._agreement()
        moved, undisturbed, twice = self._moves(answered)
        return Figures(
            duration_s=round(duration, 1),
            rate_target=self.args.rate,
            requests=len(self.launches),
            answers=len(answered),
            non_307=sum(1 for launch in answered if launch.status != 307),
            statuses=dict(statuses),
            connection_errors=dict(errors),
            late_redirects=late,
            late_redirects_to_full=late_full,
            late_examples=examples,
            events=events,
            max_disagreement_s=max((e.max_disagreement_s for e in events), default=0.0),
            repositories_launched_twice=twice,
            repositories_moved=moved,
            repositories_moved_undisturbed=undisturbed,
            ejected_during_upgrade=self._ejected_during_upgrade(),
            errors_logged=sum(r.errors_logged() for r in self.replicas),
            config={"check": CHECK, "lock_seconds": LOCK_SECONDS, "policy": self.args.policy},
        )

    def _agreement(self) -> list[EventFigures]:
        """Per event window: the longest run of differing answers, and the first change."""
        samples = sorted((t, i, view) for i, views in enumerate(self.views) for t, view in views)
        out = []
        bounds = [e.at for e in self.events[1:]] + [float("inf")]
        for event, end in zip(self.events, bounds, strict=True):
            current: list[frozenset[str] | None] = [None, None]
            before: list[frozenset[str] | None] = [None, None]
            differ_since: float | None = None
            longest = 0.0
            first_change: float | None = None
            for t, i, view in samples:
                if t < event.at:
                    current[i] = view
                    before[i] = view
                    continue
                if t >= end:
                    break
                current[i] = view
                changed = view is not None and before[i] is not None and view != before[i]
                if changed and first_change is None:
                    first_change = t - event.at
                a, b = current
                if a is not None and b is not None and a != b:
                    differ_since = t if differ_since is None else differ_since
                    longest = max(longest, t - differ_since + POLL)
                elif a is not None and b is not None:
                    differ_since = None
            out.append(
                EventFigures(
                    event.name,
                    round(event.at - self.start, 2),
                    None if first_change is None else round(first_change, 2),
                    round(longest, 2),
                )
            )
        return out

    def _moves(self, answered: list[Launch]) -> tuple[int, int, int]:
        """(repositories moved, moved outside any disturbance, launched at least twice)."""
        by_repo: dict[int, list[Launch]] = defaultdict(list)
        for launch in sorted(answered, key=lambda launch: launch.at):
            if launch.member is not None:
                by_repo[launch.repo].append(launch)
        disturbed: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for fault in self.faults:
            disturbed[fault.member].append((fault.start, fault.end + RECOVERY))

        def calm(member: str, a: float, b: float) -> bool:
            return not any(s <= b and a <= e for s, e in disturbed[member])

        moved = undisturbed = twice = 0
        for launches in by_repo.values():
            if len(launches) < 2:
                continue
            twice += 1
            changes = [(x, y) for x, y in pairwise(launches) if x.member != y.member]
            if changes:
                moved += 1
                assert all(x.member and y.member for x, y in changes)
                if any(
                    calm(x.member or "", x.at, y.at) and calm(y.member or "", x.at, y.at)
                    for x, y in changes
                ):
                    undisturbed += 1
        return moved, undisturbed, twice

    def _ejected_during_upgrade(self) -> list[str]:
        if self.upgrade is None:
            return []
        start, end = self.upgrade
        ejected = set()
        for views in self.views:
            for t, view in views:
                if start <= t <= end and view is not None:
                    ejected |= set(NAMES) - view
        return sorted(ejected)


def report(figures: Figures) -> str:
    lines = [
        f"chaos run: {figures.duration_s} s, {figures.requests} launches sent "
        f"(target rate {figures.rate_target:g}/s), policy {figures.config['policy']}",
        f"  answers                 {figures.answers}  statuses {figures.statuses}",
        f"  non-307 answers         {figures.non_307}  (target 0)",
        f"  connection errors       {figures.connection_errors or 0}  (counted apart)",
        f"  late redirects          {figures.late_redirects}  (target 0; 503: > {DETECT_503:g} s,"
        f" hang: > {DETECT_HANG:g} s after the fault)",
        f"  late redirects to full  {figures.late_redirects_to_full}  (target 0)",
        f"  replicas disagree, max  {figures.max_disagreement_s:.2f} s  (target <= 1 s)",
        f"  repositories moved      {figures.repositories_moved} of "
        f"{figures.repositories_launched_twice} launched twice or more; outside any "
        f"disturbance: {figures.repositories_moved_undisturbed}",
        f"  ejected during upgrade  {figures.ejected_during_upgrade or 'none'}  (target none)",
        f"  ERROR lines in logs     {figures.errors_logged}",
        "",
        f"  {'at (s)':>7}  {'event':<40} {'first change (s)':>17} {'disagreement (s)':>17}",
    ]
    for e in figures.events:
        change = "-" if e.first_change_s is None else f"{e.first_change_s:.2f}"
        lines.append(f"  {e.at_s:>7.2f}  {e.event:<40} {change:>17} {e.max_disagreement_s:>17.2f}")
    for example in figures.late_examples:
        lines.append(f"  late: {example}")
    lines.append("")
    lines.append("PASS" if figures.ok else "FAIL")
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> Figures:
    with tempfile.TemporaryDirectory(prefix="federation-chaos-") as tmp, LocalRedis() as redis:
        chaos = Chaos(args, Path(tmp))
        try:
            figures = await chaos.run(redis)
        finally:
            await chaos.teardown()
        if args.logs:
            for replica in chaos.replicas:
                print(f"--- {replica.log.name}", file=sys.stderr)
                print(replica.log.read_text(errors="replace")[-5000:], file=sys.stderr)
        return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="half the holds (CI: about 40 s)")
    parser.add_argument("--rate", type=float, default=150.0, help="launches a second")
    parser.add_argument("--policy", default="bounded", choices=["bounded", "rendezvous", "random"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--logs", action="store_true", help="print the replicas' log tails")
    args = parser.parse_args(argv)
    figures = asyncio.run(amain(args))
    print(report(figures))
    if args.json:
        Path(args.json).write_text(json.dumps({**asdict(figures), "ok": figures.ok}, indent=2))
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
