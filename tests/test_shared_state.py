"""Several replicas, one federation: state shared through a real Redis server.

Replicas here are complete redirector apps served by uvicorn (in this event loop, or as
separate processes where the point is two processes); members are fake BinderHubs on
127.0.0.1; Redis is a real redis-server the test starts, kills and restarts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
import yaml

from federation_redirect.app import FederationApp, create_app
from federation_redirect.config import Config, parse_config
from federation_redirect.localredis import LocalRedis
from federation_redirect.models import HealthState, OperatorState
from federation_redirect.state.base import OverrideChange, StoreUnavailable
from federation_redirect.state.redis import RedisStore
from federation_redirect.testing import RunningMember

from .conftest import StartFake
from .helpers import FAST_CHECKS, ServedApp

CHECKS = {**FAST_CHECKS, "period": 0.4}
NAMES = ("alpha", "beta", "gamma")


def federation_config(members: dict[str, RunningMember], redis_url: str | None) -> Config:
    return parse_config(
        {
            "hosts": {
                name: {"url": m.url, "weight": 1, "prime": name == "alpha"}
                for name, m in members.items()
            },
            "check": CHECKS,
            "state": {"redis_url": redis_url, "lock_seconds": 0.6} if redis_url else {},
        }
    )


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float, what: str
) -> float:
    """Wait until ``condition`` holds; return how long it took."""
    start = time.monotonic()
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.01)


@pytest.fixture
async def members(start_fake: StartFake) -> dict[str, RunningMember]:
    # quotas large enough that no load bound is active
    return {name: await start_fake(name, pods=5, quota=100_000) for name in NAMES}


class Replicas:
    def __init__(self, members: dict[str, RunningMember], redis: LocalRedis) -> None:
        self.members = members
        self.redis = redis
        self.stack = AsyncExitStack()
        self.apps: list[FederationApp] = []
        self.clients: list[httpx.AsyncClient] = []

    async def add(self) -> tuple[FederationApp, httpx.AsyncClient]:
        app = create_app(federation_config(self.members, self.redis.url))
        served = await self.stack.enter_async_context(ServedApp(app))
        client = await self.stack.enter_async_context(httpx.AsyncClient(base_url=served.url))
        self.apps.append(app)
        self.clients.append(client)
        return app, client

    async def all_healthy(self) -> None:
        for app in self.apps:
            for name in NAMES:
                await eventually(
                    lambda app=app, name=name: (
                        app.registry.snapshot.by_name[name].health is HealthState.HEALTHY
                    ),
                    10,
                    f"{name} healthy",
                )


@pytest.fixture
async def replicas(
    members: dict[str, RunningMember], redis_server: LocalRedis
) -> AsyncIterator[Replicas]:
    group = Replicas(members, redis_server)
    async with group.stack:
        yield group


def checkers(apps: list[FederationApp]) -> list[FederationApp]:
    return [a for a in apps if a.engine.running]


async def test_only_one_replica_probes_and_both_drop_an_unhealthy_member(
    replicas: Replicas,
) -> None:
    (a, _), (b, _) = await replicas.add(), await replicas.add()
    await replicas.all_healthy()
    await eventually(lambda: len(checkers([a, b])) == 1, 3, "exactly one checker")
    prober = checkers([a, b])[0]
    other = b if prober is a else a
    assert other.engine.stats["beta"].rounds_total == 0
    await replicas.members["beta"].set_mode("503")
    target = CHECKS["period"] * (1 + CHECKS["jitter"] / 2) + 1
    for app in (a, b):
        await eventually(
            lambda app=app: app.registry.snapshot.by_name["beta"].health is HealthState.UNHEALTHY,
            target,
            "beta out on both replicas",
        )
    assert other.engine.stats["beta"].rounds_total == 0


async def test_a_dead_checker_is_replaced_within_one_check_period(replicas: Replicas) -> None:
    (a, _), (b, _) = await replicas.add(), await replicas.add()
    await replicas.all_healthy()
    await eventually(lambda: len(checkers([a, b])) == 1, 3, "one checker")
    prober = checkers([a, b])[0]
    survivor = b if prober is a else a
    # The checker dies without releasing its lock: its engine stops, its lock must expire.
    assert isinstance(prober.store, RedisStore)
    task = prober.store._task
    assert task is not None
    task.cancel()
    await prober.engine.pause()
    took = await eventually(lambda: survivor.engine.running, 15, "survivor takes over")
    assert took <= max(CHECKS["period"], 0.6 * 4 / 3) + 0.5
    await replicas.members["gamma"].set_mode("503")
    await eventually(
        lambda: survivor.registry.snapshot.by_name["gamma"].health is HealthState.UNHEALTHY,
        3,
        "the new checker checks",
    )


async def test_a_weight_change_on_one_replica_is_in_effect_on_the_other_within_a_second(
    replicas: Replicas,
) -> None:
    (a, _), (b, _) = await replicas.add(), await replicas.add()
    await replicas.all_healthy()
    await a.store.update_member(
        "beta", OverrideChange(weight=0.0), actor="ops", reason="incident 42"
    )
    took = await eventually(
        lambda: b.registry.snapshot.by_name["beta"].weight == 0.0, 1.0, "weight on replica b"
    )
    assert took < 1.0
    entries = await b.store.audit()
    assert entries[0].member == "beta" and entries[0].actor == "ops"
    assert entries[0].reason == "incident 42"
    assert entries[0].changes["weight"] == (None, 0.0)


async def test_drain_reaches_every_replica(replicas: Replicas) -> None:
    (a, _), (b, client_b) = await replicas.add(), await replicas.add()
    await replicas.all_healthy()
    await a.store.update_member(
        "gamma", OverrideChange(state=OperatorState.DRAIN), actor="ops", reason="upgrade"
    )
    await eventually(
        lambda: b.registry.snapshot.by_name["gamma"].operator is OperatorState.DRAIN,
        1.0,
        "drain on b",
    )
    for i in range(200):
        r = await client_b.get(f"/v2/gh/o/r{i}/HEAD")
        assert not r.headers["location"].startswith(replicas.members["gamma"].url)
        client_b.cookies.clear()


async def test_launch_counts_are_shared_between_replicas(replicas: Replicas) -> None:
    (_, client_a), (b, _) = await replicas.add(), await replicas.add()
    await replicas.all_healthy()
    for i in range(30):
        await client_a.get(f"/v2/gh/o/r{i}/HEAD")
        client_a.cookies.clear()
    await eventually(
        lambda: sum(b.registry.loads.launches(n) for n in NAMES) == 30,
        1.0,
        "b counts a's launches",
    )


async def test_launch_counts_in_either_wire_format_are_read_and_bad_entries_ignored(
    replicas: Replicas,
) -> None:
    (b, _) = await replicas.add()
    await replicas.all_healthy()
    store = b.store
    assert isinstance(store, RedisStore)
    publisher = aioredis.from_url(replicas.redis.url, decode_responses=True)
    alpha, beta = NAMES[0], NAMES[1]
    current = {"kind": "load", "members": {alpha: {"gh:o/x": 3, "gh:o/bad": -1}, "nobody": {}}}
    legacy = {"kind": "load", "launches": [[beta, "gh:o/y", 2], ["nobody", "gh:o/z", 5], [beta]]}
    try:
        for event in (current, legacy):
            await publisher.publish(store.channel, "another-replica\n" + json.dumps(event))
    finally:
        await publisher.aclose()
    loads = b.registry.loads
    await eventually(
        lambda: (
            loads.repo_launches(alpha, "gh:o/x") == 3 and loads.repo_launches(beta, "gh:o/y") == 2
        ),
        2.0,
        "b reads both formats",
    )
    assert loads.repo_launches(alpha, "gh:o/bad") == 0
    assert loads.launches(alpha) == 3 and loads.launches(beta) == 2


async def test_redis_outage_costs_no_launch_and_replicas_converge_after_it(
    replicas: Replicas, caplog: pytest.LogCaptureFixture
) -> None:
    (a, client_a), (b, client_b) = await replicas.add(), await replicas.add()
    await replicas.all_healthy()
    caplog.set_level(logging.WARNING, logger="federation_redirect.state")
    answers: list[int] = []
    stop = asyncio.Event()

    async def launches() -> None:
        i = 0
        while not stop.is_set():
            for client in (client_a, client_b):
                r = await client.get(f"/v2/gh/org/repo-{i}/HEAD")
                answers.append(r.status_code)
                client.cookies.clear()
            i += 1

    stream = asyncio.create_task(launches())
    await asyncio.sleep(0.3)
    replicas.redis.stop()
    await eventually(lambda: not a.store.up and not b.store.up, 5, "both see the outage")
    # Health checks go on locally in each replica; a member that fails is still dropped.
    assert a.engine.running and b.engine.running
    await replicas.members["gamma"].set_mode("503")
    for app in (a, b):
        await eventually(
            lambda app=app: app.registry.snapshot.by_name["gamma"].health is HealthState.UNHEALTHY,
            3,
            "gamma out during the outage",
        )
    ready = await client_a.get("/readyz")
    assert ready.status_code == 200
    metrics = (await client_a.get("/metrics")).text
    assert 'federation_state_store_up{store="redis"} 0.0' in metrics
    with pytest.raises(StoreUnavailable):
        await a.store.update_member("beta", OverrideChange(weight=2.0), actor="ops", reason="")
    assert a.registry.snapshot.by_name["beta"].weight == b.registry.snapshot.by_name["beta"].weight
    await asyncio.sleep(1.0)
    replicas.redis.start()
    await eventually(lambda: a.store.up and b.store.up, 5, "both reconnect within 5 s")
    await eventually(lambda: len(checkers([a, b])) == 1, 5, "one checker again")
    stop.set()
    await stream
    assert answers and set(answers) == {307}, {s for s in answers if s != 307}
    outage_lines = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage_lines) == 2  # once per replica, not once per request or retry
    await a.store.update_member("beta", OverrideChange(weight=3.0), actor="ops", reason="back")
    took = await eventually(
        lambda: b.registry.snapshot.by_name["beta"].weight == 3.0 * 100_000,
        1.0,
        "weight reaches b after the outage",
    )
    assert took < 1.0


async def test_overrides_and_audit_survive_redis_restarting_empty(replicas: Replicas) -> None:
    (a, _), (b, _) = await replicas.add(), await replicas.add()
    await replicas.all_healthy()
    await a.store.update_member("beta", OverrideChange(weight=0.5), actor="ops", reason="one")
    await b.store.update_member(
        "gamma", OverrideChange(state=OperatorState.MAINT), actor="ops2", reason="two"
    )
    await eventually(lambda: a.store.version == b.store.version == 2, 1, "both at version 2")
    replicas.redis.stop()
    await eventually(lambda: not a.store.up and not b.store.up, 5, "outage seen")
    replicas.redis.start()  # empty: no persistence
    await eventually(lambda: a.store.up and b.store.up, 5, "reconnected")
    await eventually(lambda: a.store.version == b.store.version == 2, 2, "versions kept")
    assert dict(a.store.overrides) == dict(b.store.overrides)
    assert a.store.overrides["beta"].weight == 0.5
    assert a.store.overrides["gamma"].state is OperatorState.MAINT
    entries = await b.store.audit()
    assert [(e.member, e.reason) for e in entries] == [("gamma", "two"), ("beta", "one")]


async def test_overrides_survive_a_replica_restart(replicas: Replicas) -> None:
    a, _ = await replicas.add()
    await replicas.all_healthy()
    await a.store.update_member(
        "alpha", OverrideChange(weight_percent=50.0), actor="ops", reason="half"
    )
    later, _ = await replicas.add()
    await eventually(
        lambda: later.registry.overrides.get("alpha") is not None, 2, "override loaded"
    )
    assert later.registry.configured_weight("alpha") == 0.5


def test_without_redis_nothing_about_redis_is_loaded(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("hosts: {a: {url: 'http://127.0.0.1:9', prime: true}}\n")
    code = (
        "import sys\n"
        "from federation_redirect.app import create_app\n"
        "from federation_redirect.config import load_config\n"
        f"app = create_app(load_config({str(config)!r}))\n"
        "assert type(app.store).__name__ == 'MemoryStore'\n"
        "assert 'federation_redirect.state.redis' not in sys.modules\n"
        "assert 'redis' not in sys.modules, 'redis imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_two_redirector_processes_route_2000_repositories_identically(
    members: dict[str, RunningMember], redis_server: LocalRedis, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    doc = federation_config(members, redis_server.url).model_dump(mode="json")
    config.write_text(yaml.safe_dump(doc))
    ports = [_free_port(), _free_port()]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "federation_redirect", "serve",
            "--config", str(config), "--port", str(port), "--log-level", "warning",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for port in ports
    ]  # fmt: skip
    try:
        async with httpx.AsyncClient() as client:
            for port in ports:

                async def ready(port: int = port) -> bool:
                    try:
                        r = await client.get(f"http://127.0.0.1:{port}/readyz")
                    except httpx.TransportError:
                        return False
                    return r.status_code == 200 and len(r.json()["routable"]) == 3

                await eventually(ready, 30, f"replica on {port} ready")
            differ = 0
            for i in range(2000):
                path = f"/v2/gh/org-{i % 40}/repo-{i}/HEAD"
                first = await client.get(f"http://127.0.0.1:{ports[0]}{path}")
                second = await client.get(f"http://127.0.0.1:{ports[1]}{path}")
                client.cookies.clear()
                assert first.status_code == second.status_code == 307
                differ += first.headers["location"] != second.headers["location"]
            assert differ == 0
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), timeout=15)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
