"""The Redis state store: several replicas, one federation.

Keys (all under ``state.key_prefix``, default ``federation-redirect``)::

    <p>:overrides   hash    member -> Override JSON
    <p>:version     string  version of the overrides, INCR on every write
    <p>:audit       stream  operator changes, capped (MAXLEN ~ audit_size)
    <p>:health      hash    member -> last health report JSON; "__reference__" -> versions
    <p>:checker     string  id of the replica running the health checks (SET NX PX, renewed)
    <p>:replicas    zset    replica id -> last heartbeat (epoch seconds)
    <p>:events      pub/sub {"kind": "overrides" | "health" | "load", "from": replica id, ...}

How replicas agree:

* **Overrides** are written in one MULTI/EXEC (hash, version, audit entry, event) under WATCH,
  applied at once by the writer, and by every other replica when the event arrives; a full
  refresh every ``refresh_seconds`` is the safety net for a lost message.
* **Health**: one replica holds the checker lock (TTL ``lock_seconds``, renewed every third of
  it) and runs the health engine; every report it makes is stored and published, and the
  others apply it to their registries. If it dies, the lock expires and the next replica to
  try (every third of the TTL) takes over, its engine starting from the shared state.
* **Load**: each replica publishes the launches it sent since the last flush (at most every
  ``flush_seconds``) as ``{"kind": "load", "members": {member: {repository: count}}}``, the
  shape its tracker's outbox already has, so publishing runs no loop per launch; the others
  add them to their load trackers (and still read the ``"launches": [[member, repository,
  count], ...]`` of replicas from before 2026-11). The hot path only counts into the local
  tracker.

When Redis is down or unreachable: routing goes on from the last snapshot; every replica runs
the health checks itself; each local launch counts as many times as there were replicas last
seen; operator writes raise :class:`StoreUnavailable` and change nothing; ``up`` is False and
the log says so once. When Redis answers again the replicas reconnect within
``reconnect_seconds``, elect one checker, and converge; if Redis came back empty (no
persistence), the first replica to notice writes back the overrides and the audit entries it
last knew.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from ..health import HealthEngine
from ..models import HealthReport
from ..registry import Registry
from .base import (
    AuditEntry,
    Override,
    OverrideChange,
    StoreUnavailable,
    apply_change,
    report_from_json,
    report_to_json,
)

__all__ = ["RedisStore"]

log = logging.getLogger("federation_redirect.state")

_REFERENCE = "__reference__"
# Renew the lock only if we still hold it.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


async def _cancel(tasks: list[asyncio.Task[None]], patience: float = 5.0) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again if a library swallowed it."""
    deadline = time.monotonic() + patience
    pending = {t for t in tasks if not t.done()}
    while pending and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: it is logged or re-raised by the caller


def _replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class RedisStore:
    """Implements :class:`federation_redirect.state.base.StateStore` over Redis."""

    shared = True

    def __init__(
        self,
        url: str,
        registry: Registry,
        engine: HealthEngine,
        *,
        prefix: str = "federation-redirect",
        lock_seconds: float = 5.0,
        flush_seconds: float = 0.2,
        refresh_seconds: float = 5.0,
        reconnect_seconds: float = 0.5,
        audit_size: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        replica_id: str | None = None,
    ) -> None:
        self.registry = registry
        self.engine = engine
        self.id = replica_id or _replica_id()
        self.clock = clock
        self.wall_clock = wall_clock
        self.lock_ms = int(lock_seconds * 1000)
        self.flush_seconds = flush_seconds
        self.refresh_seconds = refresh_seconds
        self.reconnect_seconds = reconnect_seconds
        self.audit_size = audit_size
        # redis-py's own annotations are loose (bytes | str | None everywhere); everything
        # read back is parsed and checked here, so the client is typed as Any at this edge.
        self._redis: Any = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            retry_on_timeout=False,
        )
        self.k_overrides = f"{prefix}:overrides"
        self.k_version = f"{prefix}:version"
        self.k_audit = f"{prefix}:audit"
        self.k_health = f"{prefix}:health"
        self.k_checker = f"{prefix}:checker"
        self.k_replicas = f"{prefix}:replicas"
        self.channel = f"{prefix}:events"
        self._overrides: dict[str, Override] = {}
        self._version = 0
        self._audit: deque[AuditEntry] = deque(maxlen=audit_size)
        self._up = False
        self._ever_up = False
        self._checker = False
        self._replicas = 1
        self._outgoing: dict[str, HealthReport] = {}
        self._reference_dirty = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        registry.on_report(self._reported)
        self.loads = registry.loads

    # -- StateStore --------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self._up

    @property
    def checker(self) -> bool:
        return self._checker or not self._up

    @property
    def replicas(self) -> int:
        return self._replicas

    @property
    def overrides(self) -> Mapping[str, Override]:
        return MappingProxyType(self._overrides)

    @property
    def version(self) -> int:
        return self._version

    async def start(self) -> None:
        """Connect (or start in outage mode: local checks) and sync in the background."""
        try:
            await self._connect()
        except (RedisError, OSError) as exc:
            await self._down(exc)
        self._task = asyncio.create_task(self._supervise(), name="state-store")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await _cancel([task])
        await self.engine.pause()
        if self._up and self._checker:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.eval(_RELEASE, 1, self.k_checker, self.id)
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    async def update_member(
        self, member: str, change: OverrideChange, *, actor: str, reason: str
    ) -> tuple[Override, AuditEntry]:
        if member not in self.registry.config.hosts:
            raise KeyError(member)
        if not self._up:
            raise StoreUnavailable("the shared state store (Redis) is unreachable")
        try:
            for _ in range(5):
                try:
                    return await self._write(member, change, actor=actor, reason=reason)
                except WatchError:
                    continue  # another replica wrote this member meanwhile: redo on its value
            raise StoreUnavailable("too many concurrent writes to this member; try again")
        except (RedisError, OSError) as exc:
            await self._down(exc)
            raise StoreUnavailable("the shared state store (Redis) is unreachable") from exc

    async def audit(self, limit: int = 100) -> list[AuditEntry]:
        if self._up:
            try:
                rows = await self._redis.xrevrange(self.k_audit, count=limit)
                return [AuditEntry.from_fields(i, f) for i, f in rows]
            except (RedisError, OSError) as exc:
                await self._down(exc)
        return list(self._audit)[:limit]

    # -- writes --------------------------------------------------------------------------------

    async def _write(
        self, member: str, change: OverrideChange, *, actor: str, reason: str
    ) -> tuple[Override, AuditEntry]:
        async with self._redis.pipeline(transaction=True) as pipe:
            await pipe.watch(self.k_overrides)
            raw = await pipe.hget(self.k_overrides, member)
            old = Override.from_json(raw) if raw else Override()
            new, entry = apply_change(
                old, change, actor=actor, reason=reason, at=self.wall_clock(), member=member
            )
            if new is old:
                await pipe.unwatch()
                return old, entry
            pipe.multi()
            pipe.hset(self.k_overrides, member, new.to_json())
            pipe.incr(self.k_version)
            pipe.xadd(self.k_audit, entry.to_fields(), maxlen=self.audit_size, approximate=True)
            results = await pipe.execute()
        version, entry_id = int(results[1]), str(results[2])
        entry = replace(entry, id=entry_id)
        self._audit.appendleft(entry)
        self._overrides[member] = new
        self._version = version
        self.registry.set_overrides(self._overrides)
        await self._publish({"kind": "overrides", "version": version})
        return new, entry

    def _frame(self, message: dict[str, Any]) -> str:
        # "<sender id>\n<json>": a replica skips its own messages without decoding them
        message["from"] = self.id
        return f"{self.id}\n{json.dumps(message)}"

    async def _publish(self, message: dict[str, Any]) -> None:
        await self._redis.publish(self.channel, self._frame(message))

    # -- connection life -----------------------------------------------------------------------

    async def _supervise(self) -> None:
        while True:
            try:
                if not self._up:
                    await self._connect()
                await self._sync()
            except (RedisError, OSError) as exc:
                await self._down(exc)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug: log it, keep the replica serving
                log.exception("state store loop failed; retrying")
                await self._down(None)
            await asyncio.sleep(self.reconnect_seconds)

    async def _connect(self) -> None:
        if self._ever_up:
            # Pooled connections from before an outage are dead: drop them all rather than
            # find out one command at a time.
            await self._redis.connection_pool.disconnect()
        await self._redis.ping()
        await self._reconcile_overrides()
        if not self._up:
            self._up = True
            self.loads.scale = 1
            self.loads.sharing = True
            if self._ever_up:
                log.warning("state store reachable again: replicas sync through Redis")
            self._ever_up = True
        await self._elect()
        if not self._checker:
            await self._load_health()

    async def _down(self, exc: BaseException | None) -> None:
        if self._up or not self._ever_up:
            what = f"{type(exc).__name__}: {exc}" if exc is not None else "internal error"
            log.warning(
                "state store unreachable (%s): routing on the last snapshot, checking health "
                "locally, refusing operator writes until it is back",
                what,
            )
            self._ever_up = True  # log the outage once, not on every retry
        self._up = False
        self._checker = False
        self.loads.sharing = False
        self.loads.scale = max(1, self._replicas)
        if not self.engine.running:
            await self.engine.start()

    # -- the sync loop -------------------------------------------------------------------------

    async def _sync(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        tasks: list[asyncio.Task[None]] = []
        try:
            await pubsub.subscribe(self.channel)
            # Anything written between our first load and the subscription.
            await self._refresh()
            tasks = [
                asyncio.create_task(self._listen(pubsub), name="state-store-listen"),
                asyncio.create_task(self._tick(), name="state-store-tick"),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # raises what ended it
        finally:
            await _cancel(tasks)
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    async def _listen(self, pubsub: Any) -> None:
        while True:
            # below the socket timeout, so an idle channel is not mistaken for a dead Redis
            message = await pubsub.get_message(timeout=0.5)
            if message is None or message.get("type") != "message":
                continue
            data = message["data"]
            if not isinstance(data, str):
                continue
            sender, _, body = data.partition("\n")
            if sender == self.id:
                continue
            try:
                event = json.loads(body)
            except ValueError:
                continue
            if isinstance(event, dict):
                await self._handle(event)

    async def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "overrides":
            version = event.get("version")
            if isinstance(version, int) and version != self._version:
                await self._adopt_overrides()
        elif kind == "health" and not self._checker:
            name = event.get("member")
            if name in self.registry.config.hosts:
                report = report_from_json(json.dumps(event["report"]), self.clock())
                self.registry.report(name, report)
            reference = event.get("reference")
            if isinstance(reference, dict):
                self.registry.set_reference_versions(reference)
        elif kind == "load":
            now = self.clock()
            hosts = self.registry.config.hosts
            members = event.get("members")
            if isinstance(members, dict):
                for member, counts in members.items():
                    if member in hosts and isinstance(counts, dict):
                        for key, n in counts.items():
                            if type(n) is int and n > 0:
                                self.loads.add(member, key, now, n)
            # [[member, repository, count], ...]: what replicas before 2026-11 publish
            for item in event.get("launches", ()):
                if (
                    isinstance(item, list)
                    and len(item) == 3
                    and item[0] in hosts
                    and type(item[2]) is int
                    and item[2] > 0
                ):
                    self.loads.add(item[0], str(item[1]), now, item[2])

    async def _tick(self) -> None:
        renew_every = self.lock_ms / 3000
        last_elect = last_refresh = last_beat = self.clock()
        await self._heartbeat()
        while True:
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a
            # cancellation that arrives as it times out, and then stop() would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_seconds):
                    await self._wake.wait()
            self._wake.clear()
            await self._flush()
            now = self.clock()
            if now - last_elect >= renew_every:
                last_elect = now
                await self._elect()
            if now - last_beat >= 1.0:
                last_beat = now
                await self._heartbeat()
            if now - last_refresh >= self.refresh_seconds:
                last_refresh = now
                await self._refresh()

    async def _flush(self) -> None:
        """Publish health reports (checker only) and the launches counted since last time."""
        if self._outgoing and self._checker:
            reports, self._outgoing = self._outgoing, {}
            reference = self.registry.reference_versions
            async with self._redis.pipeline(transaction=False) as pipe:
                for name, report in reports.items():
                    text = report_to_json(report)
                    pipe.hset(self.k_health, name, text)
                    event: dict[str, Any] = {
                        "kind": "health",
                        "member": name,
                        "report": json.loads(text),
                    }
                    if reference is not None:
                        event["reference"] = dict(reference)
                    pipe.publish(self.channel, self._frame(event))
                if reference is not None:
                    pipe.hset(self.k_health, _REFERENCE, json.dumps(dict(reference)))
                await pipe.execute()
        launches = self.loads.drain()
        if launches:
            # member -> repository -> count, encoded as it is (no per-launch Python loop)
            await self._publish({"kind": "load", "members": launches})

    def _reported(self, name: str, report: HealthReport) -> None:
        # Registry listener: runs for our own engine's reports and for applied remote ones;
        # only the checker's own are shared.
        if self._checker and self._up:
            self._outgoing[name] = report
            self._wake.set()

    async def _elect(self) -> None:
        if self._checker:
            held = await self._redis.eval(_RENEW, 1, self.k_checker, self.id, self.lock_ms)
            if not held:
                log.warning("replica %s lost the health-checker role", self.id)
                self._checker = False
                await self.engine.pause()
            return
        won = await self._redis.set(self.k_checker, self.id, nx=True, px=self.lock_ms)
        if not won:
            # Still ours from before an outage? Then keep it rather than wait for it to expire.
            won = bool(await self._redis.eval(_RENEW, 1, self.k_checker, self.id, self.lock_ms))
        if won:
            log.info("replica %s runs the health checks", self.id)
            self._checker = True
            if not self.engine.running:
                await self.engine.start()
        elif self.engine.running:
            await self.engine.pause()  # another replica checks; we read its results

    async def _heartbeat(self) -> None:
        now = self.wall_clock()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.k_replicas, {self.id: now})
            pipe.zremrangebyscore(self.k_replicas, "-inf", now - 10)
            pipe.zcard(self.k_replicas)
            results = await pipe.execute()
        self._replicas = max(1, int(results[2]))

    async def _refresh(self) -> None:
        remote = await self._redis.get(self.k_version)
        if remote is None or int(remote) != self._version:
            await self._reconcile_overrides()
        if not self._checker:
            await self._load_health()

    async def _load_health(self) -> None:
        rows = await self._redis.hgetall(self.k_health)
        now = self.clock()
        for name, text in rows.items():
            if name == _REFERENCE:
                with contextlib.suppress(ValueError):
                    reference = json.loads(text)
                    if isinstance(reference, dict):
                        self.registry.set_reference_versions(reference)
            elif name in self.registry.config.hosts:
                try:
                    report = report_from_json(text, now)
                except (ValueError, KeyError):
                    continue
                if report != self.registry.health(name):
                    self.registry.report(name, report)

    # -- overrides: adopt, or restore after Redis lost them ---------------------------------

    async def _reconcile_overrides(self) -> None:
        remote = await self._redis.get(self.k_version)
        if remote is None and self._version > 0:
            await self._restore()
        else:
            await self._adopt_overrides()

    async def _restore(self) -> None:
        # Version, overrides and audit entries in one transaction, and only while no other
        # replica has restored (WATCH on the version key): a replica adopting meanwhile never
        # sees the version without the overrides.
        async with self._redis.pipeline(transaction=True) as pipe:
            await pipe.watch(self.k_version)
            if await pipe.exists(self.k_version):
                await pipe.unwatch()
                restored = False
            else:
                pipe.multi()
                pipe.set(self.k_version, self._version)
                for member, override in self._overrides.items():
                    pipe.hset(self.k_overrides, member, override.to_json())
                for entry in reversed(self._audit):  # oldest first: stream ids must increase
                    pipe.xadd(self.k_audit, entry.to_fields(), id=entry.id or "*")
                try:
                    await pipe.execute()
                    restored = True
                except WatchError:
                    restored = False
        if not restored:
            await self._adopt_overrides()
            return
        log.warning(
            "state store came back empty: restored %d overrides (version %d) and %d audit "
            "entries from this replica",
            len(self._overrides),
            self._version,
            len(self._audit),
        )
        await self._publish({"kind": "overrides", "version": self._version})

    async def _adopt_overrides(self) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(self.k_version)
            pipe.hgetall(self.k_overrides)
            results = await pipe.execute()
        version = int(results[0] or 0)
        overrides: dict[str, Override] = {}
        for member, text in results[1].items():
            try:
                overrides[member] = Override.from_json(text)
            except (ValueError, TypeError):
                log.warning("ignoring a malformed override of %s in the state store", member)
        self._overrides = overrides
        self._version = version
        self.registry.set_overrides(overrides)
        await self._sync_audit()

    async def _sync_audit(self) -> None:
        # Operator changes are rare: take the whole capped log, so that entries written by
        # others while we wrote our own are never skipped.
        rows = await self._redis.xrevrange(self.k_audit, count=self.audit_size)
        self._audit.clear()
        self._audit.extend(AuditEntry.from_fields(i, f) for i, f in rows)
