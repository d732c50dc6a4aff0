"""Local endpoints served by FastAPI: probes, metrics, ``/active_hosts``, the operator API
(``/api/v1``, :mod:`federation_redirect.admin`) and the status page (``/status``,
:mod:`federation_redirect.status`).

These are not on the launch hot path (the front door in :mod:`federation_redirect.web` answers
launches before a request ever reaches FastAPI's router).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import HTMLResponse, JSONResponse

from . import __version__
from .admin import build_admin_router
from .auth import AdminTokens
from .metrics import CONTENT_TYPE, Metrics
from .registry import Registry
from .state.base import StateStore
from .status import load_status_page

__all__ = ["build_api"]


def build_api(
    registry: Registry,
    metrics: Metrics,
    lifespan: Any = None,
    *,
    store: StateStore,
    tokens: AdminTokens,
    wall_clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The FastAPI app for the local endpoints. ``lifespan`` runs the background tasks.

    ``store`` takes the operator API's writes; ``tokens`` authenticates them.
    """
    app = FastAPI(
        title="federation-redirect",
        version=__version__,
        description="Front door of a federation of BinderHubs.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        # No trailing-slash redirects: Starlette builds them from the Host header, which
        # would let a request redirect a browser anywhere.
        redirect_slashes=False,
    )

    @app.get("/healthz", summary="Liveness: the process is serving requests.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Readiness: first health round done and at least one member routable.",
        responses={503: {"description": "Not ready yet"}},
    )
    async def readyz() -> JSONResponse:
        snap = registry.snapshot
        body = {
            "ready": registry.ready,
            "first_round_done": registry.first_round_done,
            "routable": [m.name for m in snap.candidates],
        }
        return JSONResponse(body, status_code=200 if registry.ready else 503)

    @app.get(
        "/active_hosts",
        summary="Members currently in rotation (same shape as the production redirector).",
    )
    async def active_hosts() -> dict[str, dict[str, dict[str, Any]]]:
        hosts = registry.config.hosts
        return {
            "active_hosts": {
                m.name: {
                    "url": hosts[m.name].url,
                    "weight": hosts[m.name].weight,
                    "health": hosts[m.name].health,
                    "versions": hosts[m.name].versions,
                    "prime": hosts[m.name].prime,
                }
                for m in registry.snapshot.candidates
            }
        }

    @app.get("/metrics", summary="Prometheus metrics.", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(
        build_admin_router(registry, store, metrics.recent, tokens, wall_clock=wall_clock),
        prefix="/api/v1",
    )

    page = load_status_page()

    @app.get("/status", include_in_schema=False, response_class=HTMLResponse)
    async def status() -> HTMLResponse:
        return HTMLResponse(page.body, headers=page.headers)

    return app
