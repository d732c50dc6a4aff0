"""The in-memory state store: one process, nothing to install. The default.

This replica is the only one: it always runs the health checks, and overrides and the audit
log live as long as the process does.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType

from ..health import HealthEngine
from ..registry import Registry
from .base import AuditEntry, Override, OverrideChange, apply_change

__all__ = ["MemoryStore"]


class MemoryStore:
    """Implements :class:`federation_redirect.state.base.StateStore` for one process."""

    shared = False
    up = True
    checker = True
    replicas = 1

    def __init__(
        self,
        registry: Registry,
        engine: HealthEngine,
        *,
        wall_clock: Callable[[], float] = time.time,
        audit_size: int = 1000,
    ) -> None:
        self.registry = registry
        self.engine = engine
        self.wall_clock = wall_clock
        self._overrides: dict[str, Override] = {}
        self._version = 0
        self._audit: deque[AuditEntry] = deque(maxlen=audit_size)

    @property
    def overrides(self) -> Mapping[str, Override]:
        return MappingProxyType(self._overrides)

    @property
    def version(self) -> int:
        return self._version

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.pause()

    async def update_member(
        self, member: str, change: OverrideChange, *, actor: str, reason: str
    ) -> tuple[Override, AuditEntry]:
        if member not in self.registry.config.hosts:
            raise KeyError(member)
        old = self._overrides.get(member, Override())
        new, entry = apply_change(
            old, change, actor=actor, reason=reason, at=self.wall_clock(), member=member
        )
        if new is old:
            return old, entry
        self._version += 1
        entry = replace(entry, id=str(self._version))
        self._overrides[member] = new
        self._audit.appendleft(entry)
        self.registry.set_overrides(self._overrides)
        return new, entry

    async def audit(self, limit: int = 100) -> list[AuditEntry]:
        return list(self._audit)[:limit]
