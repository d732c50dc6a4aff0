"""The operator API under ``/api/v1``: read the routing view, change members' weights and states.

Endpoints (the app's OpenAPI schema at ``/openapi.json`` documents every field):

``GET /api/v1/members``, ``GET /api/v1/members/{name}``
    Every member (or one) as :class:`MemberView`: configured weight, operator override and
    multiplier, effective routing weight, operator state, health, capacity and load, and its
    share of the redirects of the last 5 minutes. Public.
``PATCH /api/v1/members/{name}``
    Body :data:`MEMBER_PATCH_SCHEMA`: any of ``weight`` (absolute, the unit of the
    configuration's ``weight``; ``null`` resets), ``weight_percent`` (of the configured
    weight; ``null`` resets), ``state`` (``ready``, ``drain``, ``maint``), ``reason``. Applied
    on every replica through the state store and recorded in the audit log with the
    operator's name. Idempotent: the same body again changes nothing and logs nothing.
    Needs ``Authorization: Bearer <token>`` (:mod:`federation_redirect.auth`).
``GET /api/v1/audit``
    The operator changes, newest first. Public.
``GET /api/v1/federation``
    The whole routing view in one document for status pages, with
    ``Access-Control-Allow-Origin: *``. Public.

A write is checked in this order, and nothing changes when any step refuses it:
writes disabled (no token configured) 403, missing or wrong token 401, body over
:data:`MAX_BODY_BYTES` (by ``Content-Length``, then by the bytes actually received) 413,
unknown member 404, invalid body 422 (FastAPI's validation error format, naming the field),
shared store unavailable 503. The body of an unauthenticated request is never read.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, NotRequired

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    with_config,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from .auth import TOKENS_ENV, AdminTokens
from .metrics import RedirectWindow
from .models import OperatorState, Strategy
from .policy import bound_of, load_of
from .registry import Registry
from .state.base import UNSET, AuditEntry, OverrideChange, StateStore, StoreUnavailable

__all__ = [
    "MAX_BODY_BYTES",
    "MEMBER_PATCH_SCHEMA",
    "AuditView",
    "FederationView",
    "MemberView",
    "MembersView",
    "build_admin_router",
]

log = logging.getLogger("federation_redirect.admin")

MAX_BODY_BYTES = 16 * 1024
MAX_WEIGHT = 1e9
MAX_PERCENT = 1e6
MAX_REASON = 500

StateName = Literal["ready", "drain", "maint"]

# -- response models ---------------------------------------------------------------------------


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Problem(_View):
    """An error: ``detail`` says what was wrong, for a person."""

    detail: str


class HealthView(_View):
    """What the health checks last concluded about a member."""

    state: Literal["unknown", "healthy", "unhealthy"]
    reason: str | None = Field(
        description="Why the last round failed (timeout, connect, http_status, bad_response, "
        "versions, full, error, service:<name>); null after a good round."
    )
    detail: str = Field(description="A sentence about the last round, for people.")
    checked_at: float | None = Field(
        description="Wall-clock time of the last completed round, seconds since the epoch."
    )
    latency_seconds: float | None = Field(description="Duration of the last round.")
    checks: dict[str, bool] = Field(
        description="Each BinderHub service check, and 'versions', with its last result."
    )
    versions: dict[str, Any] | None = Field(description="The member's /versions document.")
    versions_match: bool | None = Field(
        description="The versions agree with the reference (the prime's); null: not compared."
    )


class CapacityView(_View):
    """Pods and the bounded policy's load figures. Counts are pods or launches."""

    quota: int | None = Field(description="Pod quota (reported, else configured); null: none.")
    pods: int | None = Field(description="Pods the member last reported; null: not reported.")
    free_slots: int | None = Field(
        description="Pods it can still start before it counts as full; null: unbounded."
    )
    full: bool = Field(description="Within pod_headroom of its quota: no new repositories.")
    limit: int | None = Field(description="quota - pod_headroom; null: no limit.")
    load: int = Field(description="Reported pods plus launches sent to it since that report.")
    bound: int | None = Field(
        description="Load at which its new repositories spill to their next member "
        "(bounded strategy, routable members only)."
    )


class TrafficView(_View):
    """Redirects over the recent window (all reasons: hash, spill, cookie, fallback...)."""

    window_seconds: float
    redirects: int
    share: float | None = Field(
        description="Fraction of all redirects in the window; null when there were none."
    )


class WindowTraffic(_View):
    """All redirects over the recent window."""

    window_seconds: float
    redirects: int


class LastChange(_View):
    """The last operator change of a member."""

    by: str
    at: float = Field(description="Seconds since the epoch.")
    reason: str


class MemberView(_View):
    """One member as the redirector routes it now."""

    name: str
    url: str
    prime: bool
    pages: bool = Field(description="May serve the federation's home page.")
    state: StateName = Field(
        description="Operator state. ready: normal; drain: no new repositories, cookies "
        "honoured; maint: no traffic at all."
    )
    routable: bool = Field(description="Takes new repositories now.")
    honours_cookies: bool = Field(description="Browsers whose cookie names it still reach it.")
    configured_weight: float = Field(description="The configuration's weight.")
    weight: float = Field(
        description="Weight in force: the configured one after the operator override (same unit)."
    )
    weight_override: float | None = Field(description="Absolute operator weight; null: none.")
    weight_percent: float | None = Field(
        description="Operator weight as a percentage of the configured one; null: none."
    )
    operator_multiplier: float | None = Field(
        description="weight / configured_weight; null when the configured weight is 0."
    )
    effective_weight: float = Field(
        description="Weight the ranking uses: weight, times capacity for the bounded "
        "strategy, times the slow-start ramp and the degraded factor."
    )
    health: HealthView
    capacity: CapacityView
    traffic: TrafficView
    degraded: bool = Field(description="Launches on it are failing: weight scaled down.")
    launch_failure_ratio: float | None = Field(
        description="Failed launches / attempts over the outcome window; null: no signal."
    )
    last_change: LastChange | None = Field(description="Last operator change; null: none.")


class MembersView(_View):
    """Every member, in configuration order."""

    members: list[MemberView]


class StoreStatus(_View):
    """The shared state store as this replica sees it."""

    kind: Literal["memory", "redis"]
    up: bool
    replicas: int
    checker: bool = Field(description="This replica runs the health checks.")
    overrides_version: int


class FederationView(_View):
    """The whole routing view in one document (for status pages)."""

    generated_at: float = Field(description="Seconds since the epoch.")
    strategy: Literal["bounded", "rendezvous", "random"]
    ready: bool = Field(description="First health round done and a member routable.")
    fallback_active: bool = Field(
        description="No member is routable: launches go to the fallback members."
    )
    fallback: list[str] = Field(description="Members used when none is routable.")
    routable: list[str]
    reference_versions: dict[str, Any] | None
    store: StoreStatus
    traffic: WindowTraffic
    members: list[MemberView]


class AuditChange(_View):
    """One field's change."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    before: float | str | None = Field(alias="from")
    after: float | str | None = Field(alias="to")


class AuditEntryView(_View):
    """Who changed what, when, from what to what, and why."""

    id: str
    at: float = Field(description="Seconds since the epoch.")
    actor: str = Field(description="Name of the operator's token.")
    member: str
    changes: dict[str, AuditChange] = Field(
        description="weight, weight_percent and/or state; empty when only the reason changed."
    )
    reason: str


class AuditView(_View):
    """Operator changes, newest first."""

    entries: list[AuditEntryView]


# -- the request body --------------------------------------------------------------------------

_Weight = Annotated[float, Field(ge=0, le=MAX_WEIGHT, allow_inf_nan=False)]
_Percent = Annotated[float, Field(ge=0, le=MAX_PERCENT, allow_inf_nan=False)]
_Reason = Annotated[str, StringConstraints(max_length=MAX_REASON, pattern=r"^[^\x00-\x1f\x7f]*$")]


@with_config(ConfigDict(extra="forbid", strict=True))
class _Patch(TypedDict):
    weight: NotRequired[_Weight | None]
    weight_percent: NotRequired[_Percent | None]
    state: NotRequired[StateName]
    reason: NotRequired[_Reason]


def _coherent(patch: _Patch) -> _Patch:
    if not patch:
        raise PydanticCustomError(
            "empty_patch", "give at least one of weight, weight_percent, state, reason"
        )
    if "weight" in patch and "weight_percent" in patch:
        raise PydanticCustomError("both_weights", "give weight or weight_percent, not both")
    return patch


_PATCH = TypeAdapter(Annotated[_Patch, AfterValidator(_coherent)])

#: JSON Schema of the PATCH body, as published in the OpenAPI document.
MEMBER_PATCH_SCHEMA: Mapping[str, Any] = {
    **_PATCH.json_schema(),
    "title": "MemberPatch",
    "description": "Any of: weight (absolute, the configuration's unit; null resets), "
    "weight_percent (of the configured weight; null resets), state, reason (free text for the "
    "audit log). weight and weight_percent exclude each other; at least one field is needed.",
    "minProperties": 1,
    "not": {"required": ["weight", "weight_percent"]},
}


def _parse_patch(body: bytes) -> tuple[OverrideChange, str]:
    """The store change and reason for a PATCH body; RequestValidationError (422) if invalid."""
    try:
        patch = _PATCH.validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None
    return (
        OverrideChange(
            weight=patch.get("weight", UNSET),
            weight_percent=patch.get("weight_percent", UNSET),
            state=OperatorState(patch["state"]) if "state" in patch else UNSET,
        ),
        patch.get("reason", ""),
    )


# -- views -------------------------------------------------------------------------------------


class _Views:
    """Builds the response models from the registry, the store and the redirect window."""

    def __init__(
        self,
        registry: Registry,
        store: StateStore,
        recent: RedirectWindow,
        wall_clock: Callable[[], float],
    ) -> None:
        self.registry = registry
        self.store = store
        self.recent = recent
        self.wall_clock = wall_clock

    def members(self) -> list[MemberView]:
        reg = self.registry
        snap = reg.snapshot
        loads = {m.name: load_of(m, reg.loads) for m in snap.members}
        total = sum(loads[m.name] for m in snap.candidates)
        counts = self.recent.counts()
        redirects = sum(counts.values())
        headroom = reg.config.pod_headroom
        out = []
        for m in snap.members:
            host = reg.config.hosts[m.name]
            report = reg.health(m.name)
            override = reg.overrides.get(m.name)
            weight = reg.configured_weight(m.name)
            sent = counts.get(m.name, 0)
            bounded = snap.strategy is Strategy.BOUNDED and m.routable
            quota = m.capacity.quota if m.capacity.quota is not None else host.quota
            out.append(
                MemberView(
                    name=m.name,
                    url=m.url,
                    prime=m.prime,
                    pages=m.pages,
                    state=m.operator.value,
                    routable=m.routable,
                    honours_cookies=m.honours_cookie,
                    configured_weight=host.weight,
                    weight=weight,
                    weight_override=override.weight if override else None,
                    weight_percent=override.weight_percent if override else None,
                    operator_multiplier=weight / host.weight if host.weight > 0 else None,
                    effective_weight=m.weight,
                    health=HealthView(
                        state=report.state.value,
                        reason=report.reason,
                        detail=report.detail,
                        checked_at=report.checked_at,
                        latency_seconds=report.latency,
                        checks=dict(report.checks),
                        versions=None if report.versions is None else dict(report.versions),
                        versions_match=report.checks.get("versions"),
                    ),
                    capacity=CapacityView(
                        quota=quota,
                        pods=m.capacity.pods,
                        free_slots=None
                        if quota is None
                        else max(0, quota - headroom - (m.capacity.pods or 0)),
                        full=m.full,
                        limit=m.limit,
                        load=loads[m.name],
                        bound=bound_of(m, snap, total) if bounded else None,
                    ),
                    traffic=TrafficView(
                        window_seconds=self.recent.window,
                        redirects=sent,
                        share=sent / redirects if redirects else None,
                    ),
                    degraded=report.degraded or m.degraded,
                    launch_failure_ratio=_finite(report.launch_failure_ratio),
                    last_change=None
                    if override is None or not override.by
                    else LastChange(by=override.by, at=override.at, reason=override.reason),
                )
            )
        return out

    def member(self, name: str) -> MemberView:
        for view in self.members():
            if view.name == name:
                return view
        raise HTTPException(404, f"no member named {name!r}")

    def federation(self) -> FederationView:
        reg = self.registry
        snap = reg.snapshot
        store = self.store
        members = self.members()
        redirects = sum(v.traffic.redirects for v in members)
        reference = reg.reference_versions
        return FederationView(
            generated_at=self.wall_clock(),
            strategy=snap.strategy.value,
            ready=reg.ready,
            fallback_active=reg.first_round_done and not snap.candidates,
            fallback=[m.name for m in snap.fallback],
            routable=[m.name for m in snap.candidates],
            reference_versions=None if reference is None else dict(reference),
            store=StoreStatus(
                kind="redis" if store.shared else "memory",
                up=store.up,
                replicas=store.replicas,
                checker=store.checker,
                overrides_version=store.version,
            ),
            traffic=WindowTraffic(window_seconds=self.recent.window, redirects=redirects),
            members=members,
        )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _audit_view(entry: AuditEntry) -> AuditEntryView:
    return AuditEntryView(
        id=entry.id,
        at=entry.at,
        actor=entry.actor,
        member=entry.member,
        changes={
            field: AuditChange.model_validate({"from": before, "to": after})
            for field, (before, after) in entry.changes.items()
        },
        reason=entry.reason,
    )


# -- the router --------------------------------------------------------------------------------

_NO_STORE = {"Cache-Control": "no-store"}
_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="operatorToken",
    description=f"An operator token from ${TOKENS_ENV} or admin.tokens_file.",
)
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Missing or wrong bearer token"},
    403: {"model": Problem, "description": "Writes are disabled: no token is configured"},
    404: {"model": Problem, "description": "No such member"},
    413: {"model": Problem, "description": f"Body larger than {MAX_BODY_BYTES} bytes"},
    503: {"model": Problem, "description": "The shared state store is unavailable"},
}
_CONTENT_LENGTH = re.compile(r"^[0-9]{1,20}$")


async def _read_body(request: Request) -> bytes:
    """The request body, or 413 once it is known to exceed MAX_BODY_BYTES."""
    too_large = HTTPException(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    declared = request.headers.get("content-length", "")
    if _CONTENT_LENGTH.match(declared) and int(declared) > MAX_BODY_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_large
    return bytes(body)


def build_admin_router(
    registry: Registry,
    store: StateStore,
    recent: RedirectWindow,
    tokens: AdminTokens,
    *,
    wall_clock: Callable[[], float],
) -> APIRouter:
    """The ``/api/v1`` routes (mount with ``prefix="/api/v1"``); see the module docstring."""
    views = _Views(registry, store, recent, wall_clock)
    router = APIRouter(tags=["operator API"])

    async def operator(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> str:
        """The authenticated operator's name, or 403/401."""
        if tokens.path is not None:
            await asyncio.to_thread(tokens.refresh)
        if not tokens.enabled:
            raise HTTPException(
                403,
                f"writes are disabled: no operator token is configured (set {TOKENS_ENV} or "
                "admin.tokens_file)",
            )
        name = None if credentials is None else tokens.identify(credentials.credentials)
        if name is None:
            raise HTTPException(
                401,
                "missing or wrong operator token: send Authorization: Bearer <token>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return name

    @router.get(
        "/members",
        response_model=MembersView,
        summary="Every member: weights, state, health, capacity and recent traffic.",
    )
    async def list_members(response: Response) -> MembersView:
        response.headers.update(_NO_STORE)
        return MembersView(members=views.members())

    @router.get(
        "/members/{name}",
        response_model=MemberView,
        summary="One member.",
        responses={404: {"model": Problem, "description": "No such member"}},
    )
    async def get_member(name: str, response: Response) -> MemberView:
        response.headers.update(_NO_STORE)
        return views.member(name)

    @router.patch(
        "/members/{name}",
        response_model=MemberView,
        summary="Change a member's weight or state, on every replica.",
        description="Needs an operator token. The body is JSON with any of weight, "
        "weight_percent, state and reason (see MemberPatch). Answers the member as it is "
        "routed after the change. Idempotent.",
        responses=_WRITE_ERRORS,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": dict(MEMBER_PATCH_SCHEMA)}},
            }
        },
    )
    async def patch_member(
        name: str,
        request: Request,
        # A default, not Annotated: with postponed annotations FastAPI resolves names in the
        # module's globals, and ``operator`` is local to this function.
        actor: str = Depends(operator),
    ) -> MemberView:
        body = await _read_body(request)
        if name not in registry.config.hosts:
            raise HTTPException(404, f"no member named {name!r}")
        change, reason = _parse_patch(body)
        try:
            _, entry = await store.update_member(name, change, actor=actor, reason=reason)
        except StoreUnavailable as exc:
            raise HTTPException(503, f"nothing was changed: {exc}") from None
        except KeyError:  # the store's configuration differs from ours: should not happen
            raise HTTPException(404, f"no member named {name!r}") from None
        if entry.id:  # written (an identical request writes nothing and has no id)
            changes = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in entry.changes.items())
            log.warning(
                "operator %s changed %s: %s (reason: %r)",
                actor,
                name,
                changes or "reason only",
                reason,
            )
        return views.member(name)

    @router.get(
        "/audit",
        response_model=AuditView,
        summary="Operator changes, newest first.",
    )
    async def audit(
        response: Response,
        limit: Annotated[int, Query(ge=1, le=1000, description="Most entries returned.")] = 100,
    ) -> AuditView:
        response.headers.update(_NO_STORE)
        return AuditView(entries=[_audit_view(e) for e in await store.audit(limit)])

    @router.get(
        "/federation",
        response_model=FederationView,
        summary="The whole routing view for status pages (CORS: any origin).",
    )
    async def federation(response: Response) -> FederationView:
        response.headers.update({**_NO_STORE, "Access-Control-Allow-Origin": "*"})
        return views.federation()

    return router
