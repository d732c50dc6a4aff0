"""Local endpoints served by FastAPI: Kubernetes probes, Prometheus metrics, ``/active_hosts``.

These are not on the launch hot path (the front door in :mod:`federation_redirect.web` answers
launches before a request ever reaches FastAPI's router).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

from . import __version__
from .metrics import CONTENT_TYPE, Metrics
from .registry import Registry

__all__ = ["build_api"]


def build_api(
    registry: Registry,
    metrics: Metrics,
    lifespan: Any = None,
) -> FastAPI:
    """The FastAPI app for the local endpoints. ``lifespan`` runs the background tasks."""
    app = FastAPI(
        title="federation-redirect",
        version=__version__,
        description="Front door of a federation of BinderHubs.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
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

    return app
