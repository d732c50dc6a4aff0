"""The application factory: wires configuration, registry, health engine and web layers.

``create_app(config)`` returns the ASGI app; nothing is built at import time. Run it with
``federation-redirect serve`` or ``uvicorn --factory federation_redirect.app:create_app_from_env``
(which reads the config path from ``FEDERATION_REDIRECT_CONFIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any

import httpx

from .auth import AdminTokens
from .config import Config, load_config
from .health import HealthEngine
from .local import LocalEndpoints
from .metrics import Metrics
from .proxy import HomeProxy
from .registry import Registry
from .state.base import StateStore
from .state.memory import MemoryStore
from .web import FrontDoor

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "REDIS_ENV",
    "FederationApp",
    "build_store",
    "create_app",
    "create_app_from_env",
]

log = logging.getLogger("federation_redirect")

CONFIG_ENV = "FEDERATION_REDIRECT_CONFIG"
REDIS_ENV = "FEDERATION_REDIRECT_REDIS_URL"
DEFAULT_CONFIG = "config/mybinder.yaml"


class FederationApp(FrontDoor):
    """The ASGI app, with handles on its parts for tests and the CLI."""

    config: Config
    engine: HealthEngine
    store: StateStore
    local: LocalEndpoints

    @property
    def api(self) -> FastAPI:
        """The FastAPI app of the local endpoints (built, and FastAPI imported, on first use)."""
        return self.local.fastapi


def build_store(
    config: Config,
    registry: Registry,
    engine: HealthEngine,
    *,
    clock: Callable[[], float],
    wall_clock: Callable[[], float],
) -> StateStore:
    """The Redis store when ``state.redis_url`` is set, else the in-memory one."""
    state = config.state
    if state.redis_url is None:
        return MemoryStore(registry, engine, wall_clock=wall_clock)
    # Imported here so that a deployment without Redis never loads the Redis client.
    from .state.redis import RedisStore

    return RedisStore(
        state.redis_url,
        registry,
        engine,
        prefix=state.key_prefix,
        lock_seconds=state.lock_seconds,
        flush_seconds=state.flush_seconds,
        clock=clock,
        wall_clock=wall_clock,
    )


def create_app(
    config: Config,
    *,
    health_client: httpx.AsyncClient | None = None,
    proxy_client: httpx.AsyncClient | None = None,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    run_health_checks: bool = True,
    store: StateStore | None = None,
    admin_tokens: AdminTokens | None = None,
) -> FederationApp:
    """Build the redirector for ``config``.

    Seams: ``health_client`` (the health engine's HTTP client), ``proxy_client`` (the home-page
    proxy's), ``rng`` (random strategy and check jitter), ``clock``/``wall_clock``. With
    ``run_health_checks=False`` no background checks or state sync run (the ``route`` command
    and some tests drive the registry themselves). ``store`` replaces the state store made
    from ``config.state``. ``admin_tokens`` authenticate operator API writes (default: from
    ``$FEDERATION_REDIRECT_ADMIN_TOKENS`` and ``admin.tokens_file``). Background tasks start
    and stop with the ASGI lifespan.
    """
    registry = Registry(config, clock=clock)
    # One TLS context (the certifi bundle, parsed once: about 1 MiB) for the health checks and
    # the home-page proxy, the one httpx would make for each, unless SSL_CERT_FILE or
    # SSL_CERT_DIR direct the proxy's client (which honours the environment) elsewhere.
    tls = httpx.create_ssl_context(trust_env=False) if health_client is None else None
    engine = HealthEngine(
        config,
        registry,
        client=health_client,
        clock=clock,
        wall_clock=wall_clock,
        rng=rng,
        tls=tls,
    )
    if store is None:
        store = build_store(config, registry, engine, clock=clock, wall_clock=wall_clock)
    shared = store
    metrics = Metrics(registry, check_stats=lambda: engine.stats, store=store)
    own_proxy_client = proxy_client is None
    tls_from_env = bool(os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"))
    client = proxy_client or httpx.AsyncClient(
        verify=tls if tls is not None and not tls_from_env else True,
        # One client serves every visitor: it must never keep a member's Set-Cookie and
        # send it with another visitor's request. A policy that accepts no domain stores none.
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        timeout=httpx.Timeout(config.proxy.timeout, connect=config.proxy.connect_timeout),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        follow_redirects=False,
    )

    async def housekeeping() -> None:
        # Once a second: forget launch counts past their windows, move slow-start ramps.
        while True:
            await asyncio.sleep(1.0)
            registry.loads.expire(clock())
            registry.tick()

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        if run_health_checks:
            await shared.start()
        chores = asyncio.create_task(housekeeping(), name="housekeeping")
        log.info(
            "federation-redirect serving %d members (%s): %s",
            len(config.hosts),
            config.load_balancer,
            ", ".join(config.hosts),
        )
        try:
            yield
        finally:
            chores.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chores
            if run_health_checks:
                await shared.stop()
            await engine.stop()
            if own_proxy_client:
                await client.aclose()

    if admin_tokens is None:
        admin_tokens = AdminTokens.from_environment(config.admin.tokens_file)
    local = LocalEndpoints(
        registry,
        metrics,
        lifespan=lifespan,
        store=store,
        tokens=admin_tokens,
        wall_clock=wall_clock,
    )
    app = FederationApp(
        config=config,
        registry=registry,
        metrics=metrics,
        local=local,
        proxy=HomeProxy(config, registry, metrics, client),
        rng=rng,
        wall_clock=wall_clock,
    )
    app.config = config
    app.engine = engine
    app.store = store
    return app


def create_app_from_env() -> FederationApp:
    """Factory for ``uvicorn --factory``: config from ``$FEDERATION_REDIRECT_CONFIG``."""
    path = os.environ.get(CONFIG_ENV, DEFAULT_CONFIG)
    warnings: list[str] = []
    config = load_config(path, warnings).with_redis_url(os.environ.get(REDIS_ENV) or None)
    for w in warnings:
        log.warning("config: %s", w)
    return create_app(config)
