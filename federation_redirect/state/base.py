"""What replicas share, and the interface of the stores that share it.

A :class:`StateStore` owns everything that must be the same on every replica of the
redirector:

* operator overrides of each member (weight, drain/maintenance state), versioned, with an
  audit log of every change;
* which replica runs the health checks, and their results (the other replicas apply them);
* the launch counters of the bounded policy.

Two implementations: :class:`~federation_redirect.state.memory.MemoryStore` (the default:
one process, nothing to install) and :class:`~federation_redirect.state.redis.RedisStore`.
The hot path never calls a store: it reads the registry's snapshot and counts into the
registry's :class:`~federation_redirect.load.LoadTracker`; stores sync in the background.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Protocol

from ..errors import FederationRedirectError
from ..models import Capacity, HealthReport, HealthState, OperatorState

__all__ = [
    "EMPTY_OVERRIDES",
    "UNSET",
    "AuditEntry",
    "Override",
    "OverrideChange",
    "StateStore",
    "StoreUnavailable",
    "apply_change",
    "report_from_json",
    "report_to_json",
]


class StoreUnavailable(FederationRedirectError):
    """The shared store cannot take a write now (Redis is down). Nothing was changed."""


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


@dataclass(frozen=True, slots=True)
class Override:
    """The operators' settings for one member. The default changes nothing.

    ``weight`` replaces the configured weight (same unit); ``weight_percent`` scales the
    configured weight instead (at most one of the two is set). ``state`` is ready, drain or
    maint. ``reason``, ``by`` and ``at`` (epoch seconds) describe the last change.
    """

    weight: float | None = None
    weight_percent: float | None = None
    state: OperatorState = OperatorState.READY
    reason: str = ""
    by: str = ""
    at: float = 0.0

    def effective_weight(self, configured: float) -> float:
        if self.weight is not None:
            return self.weight
        if self.weight_percent is not None:
            return configured * self.weight_percent / 100.0
        return configured

    def to_json(self) -> str:
        return json.dumps(
            {
                "weight": self.weight,
                "weight_percent": self.weight_percent,
                "state": str(self.state),
                "reason": self.reason,
                "by": self.by,
                "at": self.at,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Override:
        """Parse what :meth:`to_json` wrote; ValueError on anything else."""
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("override is not an object")

        def number(value: object) -> float | None:
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError("weight is not a number")
            if not math.isfinite(value) or value < 0:
                raise ValueError("weight out of range")
            return float(value)

        return cls(
            weight=number(doc.get("weight")),
            weight_percent=number(doc.get("weight_percent")),
            state=OperatorState(doc.get("state", "ready")),
            reason=str(doc.get("reason", "")),
            by=str(doc.get("by", "")),
            at=float(doc.get("at", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class OverrideChange:
    """A requested change. ``UNSET`` fields stay as they are; ``None`` weight resets it."""

    weight: float | _Unset | None = UNSET
    weight_percent: float | _Unset | None = UNSET
    state: OperatorState | _Unset = UNSET


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One operator change: who, when (epoch seconds), which member, from what to what, why."""

    at: float
    actor: str
    member: str
    changes: Mapping[str, tuple[object, object]]
    reason: str
    id: str = ""

    def to_fields(self) -> dict[str, str]:
        return {
            "at": repr(self.at),
            "actor": self.actor,
            "member": self.member,
            "changes": json.dumps({k: list(v) for k, v in self.changes.items()}),
            "reason": self.reason,
        }

    @classmethod
    def from_fields(cls, entry_id: str, fields: Mapping[str, str]) -> AuditEntry:
        changes = json.loads(fields.get("changes", "{}"))
        return cls(
            at=float(fields.get("at", "0")),
            actor=fields.get("actor", ""),
            member=fields.get("member", ""),
            changes=MappingProxyType({k: (v[0], v[1]) for k, v in changes.items()}),
            reason=fields.get("reason", ""),
            id=entry_id,
        )


def apply_change(
    old: Override, change: OverrideChange, *, actor: str, reason: str, at: float, member: str
) -> tuple[Override, AuditEntry]:
    """The new override and the audit entry describing the difference.

    When nothing would change (same fields, same reason) the result is ``old`` itself and an
    entry with no changes: callers write nothing then, which makes updates idempotent.
    """
    new = old
    if not isinstance(change.weight, _Unset):
        new = replace(new, weight=change.weight, weight_percent=None)
    if not isinstance(change.weight_percent, _Unset):
        new = replace(new, weight_percent=change.weight_percent, weight=None)
    if not isinstance(change.state, _Unset):
        new = replace(new, state=change.state)
    changes: dict[str, tuple[object, object]] = {}
    for name in ("weight", "weight_percent", "state"):
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            changes[name] = (_plain(before), _plain(after))
    entry = AuditEntry(
        at=at, actor=actor, member=member, changes=MappingProxyType(changes), reason=reason
    )
    if not changes and reason == old.reason:
        return old, entry
    return replace(new, reason=reason, by=actor, at=at), entry


def _plain(value: object) -> object:
    return str(value) if isinstance(value, OperatorState) else value


class StateStore(Protocol):
    """Shares overrides, health and load between replicas (see module docstring)."""

    @property
    def shared(self) -> bool:
        """True when other replicas may exist (the store is not process-local)."""
        ...

    @property
    def up(self) -> bool:
        """The store answers now (always true for the memory store)."""
        ...

    @property
    def checker(self) -> bool:
        """This replica runs the health checks now."""
        ...

    @property
    def replicas(self) -> int:
        """Replicas seen recently (1 for the memory store)."""
        ...

    @property
    def overrides(self) -> Mapping[str, Override]:
        """The overrides this replica applies now."""
        ...

    @property
    def version(self) -> int:
        """Version of ``overrides``; increases with every write."""
        ...

    async def start(self) -> None:
        """Load shared state and begin syncing in the background."""
        ...

    async def stop(self) -> None:
        """Stop syncing; cancel and await every background task."""
        ...

    async def update_member(
        self, member: str, change: OverrideChange, *, actor: str, reason: str
    ) -> tuple[Override, AuditEntry]:
        """Apply ``change`` on every replica; StoreUnavailable if it cannot be shared now."""
        ...

    async def audit(self, limit: int = 100) -> list[AuditEntry]:
        """The newest ``limit`` audit entries, newest first."""
        ...


EMPTY_OVERRIDES: Mapping[str, Override] = MappingProxyType({})


def report_to_json(report: HealthReport) -> str:
    """Serialise a health report for other replicas (clock-relative fields dropped)."""
    return json.dumps(
        {
            "state": str(report.state),
            "reason": report.reason,
            "detail": report.detail,
            "checked_at": report.checked_at,
            "latency": report.latency,
            "versions": dict(report.versions) if report.versions is not None else None,
            "quota": report.capacity.quota,
            "pods": report.capacity.pods,
            "full": report.full,
            "checks": dict(report.checks),
            "launch_failure_ratio": report.launch_failure_ratio,
            "degraded": report.degraded,
        },
        sort_keys=True,
    )


def report_from_json(text: str | bytes, now: float) -> HealthReport:
    """Parse :func:`report_to_json`; ``now`` (this replica's clock) stamps the capacity."""
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("report is not an object")
    versions = doc.get("versions")
    checks = doc.get("checks") or {}
    quota, pods = doc.get("quota"), doc.get("pods")
    ratio = doc.get("launch_failure_ratio")
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
        ratio = None  # absent (an older replica) or not a fraction
    return HealthReport(
        state=HealthState(doc["state"]),
        reason=doc.get("reason"),
        detail=str(doc.get("detail", "")),
        checked_at=doc.get("checked_at"),
        latency=doc.get("latency"),
        versions=MappingProxyType(dict(versions)) if isinstance(versions, dict) else None,
        capacity=Capacity(
            quota=quota if isinstance(quota, int) else None,
            pods=pods if isinstance(pods, int) else None,
            reported_at=now if isinstance(pods, int) else None,
        ),
        full=bool(doc.get("full", False)),
        checks=MappingProxyType({str(k): bool(v) for k, v in dict(checks).items()}),
        launch_failure_ratio=None if ratio is None else float(ratio),
        degraded=doc.get("degraded") is True,
    )
