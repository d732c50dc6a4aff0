"""Local endpoints served by FastAPI: probes, metrics, ``/active_hosts``, the operator API
(``/api/v1``, :mod:`federation_redirect.admin`) and the status page (``/status``,
:mod:`federation_redirect.status`).

These are not on the launch hot path (the front door in :mod:`federation_redirect.web` answers
launches before a request ever reaches FastAPI's router). Nor is this app on the probe and
scrape path: :class:`federation_redirect.local.LocalEndpoints` answers the ``GET`` of probes,
metrics, ``/active_hosts`` and ``/status`` itself, exactly as this app would, and imports this
module (and FastAPI) only for the rest.
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
from .local import active_hosts_document, ready_document
from .metrics import CONTENT_TYPE, Metrics
from .registry import Registry
from .state.base import StateStore
from .status import StatusPage, load_status_page

__all__ = ["build_api"]


def build_api(
    registry: Registry,
    metrics: Metrics,
    lifespan: Any = None,
    *,
    store: StateStore,
    tokens: AdminTokens,
    wall_clock: Callable[[], float] = time.time,
    status_page: StatusPage | None = None,
) -> FastAPI:
    """The FastAPI app for the local endpoints. ``lifespan`` runs the background tasks.

    ``store`` takes the operator API's writes; ``tokens`` authenticates them; ``status_page``
    is served at ``/status`` (default: :func:`load_status_page`).
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
        body, status = ready_document(registry)
        return JSONResponse(body, status_code=status)

    @app.get(
        "/active_hosts",
        summary="Members currently in rotation (same shape as the production redirector).",
    )
    async def active_hosts() -> dict[str, dict[str, dict[str, Any]]]:
        return active_hosts_document(registry)

    @app.get("/metrics", summary="Prometheus metrics.", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(
        build_admin_router(registry, store, metrics.recent, tokens, wall_clock=wall_clock),
        prefix="/api/v1",
    )

    page = status_page or load_status_page()

    @app.get("/status", include_in_schema=False, response_class=HTMLResponse)
    async def status() -> HTMLResponse:
        return HTMLResponse(page.body, headers=page.headers)

    return app
