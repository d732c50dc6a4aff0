"""The status page, ``/status``, in a real headless browser.

The browser is Debian's ``chromium`` driven by Playwright (``executable_path``: Playwright's
own browser download is never used). When chromium is missing, the session fixture installs
it with apt-get if it runs as root and ``$CI`` or ``$FEDERATION_REDIRECT_INSTALL_CHROMIUM``
is set (CI runs as root with Debian's mirrors reachable); otherwise the browser tests skip,
saying how to get it. Screenshots go to ``tests/artifacts/`` (ignored by git).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from federation_redirect.app import FederationApp, create_app
from federation_redirect.auth import AdminTokens
from federation_redirect.config import parse_config
from federation_redirect.models import Capacity, HealthReport, HealthState
from federation_redirect.testing import RunningMember

from .conftest import StartFake
from .helpers import ServedApp, asgi_request, mark, three_members
from .test_shared_state import CHECKS, eventually

pytestmark = pytest.mark.timeout(900)  # the first test may install chromium

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TOKEN = "status-page-token-0123456789"
OPS = {"Authorization": f"Bearer {TOKEN}"}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_ENV = "FEDERATION_REDIRECT_INSTALL_CHROMIUM"


def find_chromium() -> str | None:
    for candidate in ("chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found:
            return found
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's chromium, installing it first where that is allowed (module doc)."""
    path = find_chromium()
    if path is not None:
        return path
    may_install = os.geteuid() == 0 and (os.environ.get("CI") or os.environ.get(INSTALL_ENV))
    if not may_install or shutil.which("apt-get") is None:
        pytest.skip(
            "no chromium for the status page test: run `apt-get install chromium`, or run the "
            f"tests as root with CI=true or {INSTALL_ENV}=1 to install it automatically"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=800)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    path = find_chromium()
    if path is None:
        pytest.fail("apt-get installed chromium but no chromium binary was found")
    return path


class Browser:
    """One page in a fresh chromium profile, collecting console errors and page errors."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on(
            "console",
            lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))


@pytest.fixture
async def browser(chromium: str, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    playwright_api = pytest.importorskip("playwright.async_api")
    contexts: list[Any] = []
    async with playwright_api.async_playwright() as pw:

        async def open_page(**context_options: Any) -> Browser:
            context = await pw.chromium.launch_persistent_context(
                str(tmp_path / f"profile-{len(contexts)}"),
                executable_path=chromium,
                headless=True,
                args=CHROMIUM_ARGS,
                **context_options,
            )
            contexts.append(context)
            return Browser(await context.new_page())

        yield open_page
        for context in contexts:
            await context.close()


def screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


# -- without a browser ------------------------------------------------------------------------


async def test_the_page_is_self_contained_with_a_strict_content_security_policy() -> None:
    app = create_app(three_members(), run_health_checks=False, admin_tokens=AdminTokens())
    answer = await asgi_request(app, b"/status")
    assert answer.status == 200
    assert answer.header("content-type") == "text/html; charset=utf-8"
    html = answer.body.decode()
    # nothing loaded from elsewhere: no src= at all, the only href is the inline favicon
    assert "src=" not in html
    assert re.findall(r'href="([^"]*)"', html) == ["data:,"]
    assert "@import" not in html and "url(" not in html
    policy = answer.header("content-security-policy") or ""
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    for tag in ("script", "style"):
        (block,) = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in policy
    assert 'name="viewport"' in html


# -- in chromium ------------------------------------------------------------------------------


@pytest.fixture
async def members(start_fake: StartFake) -> dict[str, RunningMember]:
    return {
        "gesis": await start_fake("gesis", pods=142, quota=300),
        "bids": await start_fake("bids", pods=61, quota=180),
        "ovh": await start_fake("ovh", pods=12, quota=60),
        "2i2c": await start_fake("2i2c", pods=0, quota=None),
    }


async def test_the_page_shows_every_member_and_follows_one_going_down(
    browser: Callable[..., Any], members: dict[str, RunningMember]
) -> None:
    config = parse_config(
        {
            "hosts": {
                name: {"url": m.url, "weight": 50, "prime": name == "gesis"}
                for name, m in members.items()
            },
            "check": CHECKS,
        }
    )
    app = create_app(config, admin_tokens=AdminTokens({"ops": TOKEN}))
    async with ServedApp(app) as served, httpx.AsyncClient(base_url=served.url) as client:
        await eventually(
            lambda: all(m.health is HealthState.HEALTHY for m in app.registry.snapshot.members),
            10,
            "every member healthy",
        )
        for i in range(120):
            await client.get(f"/v2/gh/org/repo-{i}/HEAD")
            client.cookies.clear()
        r = await client.patch(
            "/api/v1/members/bids", json={"state": "drain", "reason": "node upgrade"}, headers=OPS
        )
        assert r.status_code == 200

        tab = await browser(viewport={"width": 1280, "height": 800})
        page = tab.page
        await page.goto(f"{served.url}/status?interval=1")
        await page.wait_for_selector("article[data-member]")
        cards = page.locator("article[data-member]")
        assert await cards.count() == 4
        assert await cards.evaluate_all("cards => cards.map(c => c.dataset.member)") == [
            "gesis",
            "bids",
            "ovh",
            "2i2c",
        ]
        assert await page.get_attribute('[data-member="bids"]', "data-state") == "drain"
        bids_text = await page.inner_text('[data-member="bids"]')
        assert "node upgrade" in bids_text and "61 / 180 pods" in bids_text
        assert "redirects" in await page.inner_text('[data-member="gesis"]')

        await members["ovh"].set_mode("503")
        await page.wait_for_selector('[data-member="ovh"][data-health="unhealthy"]', timeout=10_000)
        reason = await page.inner_text('[data-member="ovh"] [data-role="reason"]')
        assert reason.startswith("service:jupyterhub_api")
        summary = await page.inner_text("#summary")
        assert summary.startswith("2 of 4 members take new repositories")
        await page.screenshot(path=str(screenshot_path("status-page.png")), full_page=True)

        phone = await browser(
            viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
        )
        await phone.page.goto(f"{served.url}/status?interval=1")
        await phone.page.wait_for_selector('[data-member="ovh"][data-health="unhealthy"]')
        widths = await phone.page.evaluate(
            "[document.documentElement.scrollWidth, window.innerWidth]"
        )
        assert widths[0] <= widths[1], "the page scrolls sideways on a phone"
        await phone.page.screenshot(
            path=str(screenshot_path("status-page-phone.png")), full_page=True
        )
        assert tab.errors == [] and phone.errors == []  # while the redirector still runs


async def test_the_page_shows_degraded_full_and_maintenance_badges_and_a_lost_redirector(
    browser: Callable[..., Any],
) -> None:
    config = parse_config(
        {
            "hosts": {
                name: {"url": f"https://{name}.example", "prime": name == "a"}
                for name in ("a", "b", "c", "d")
            }
        }
    )
    app: FederationApp = create_app(
        config, run_health_checks=False, admin_tokens=AdminTokens({"ops": TOKEN})
    )
    mark(app.registry, "a", "b", "c", "d")
    # degraded counts only next to a routable member that is not (d here)
    app.registry.report(
        "a",
        HealthReport(
            state=HealthState.HEALTHY,
            capacity=Capacity(quota=100, pods=20),
            degraded=True,
            launch_failure_ratio=0.4,
        ),
    )
    mark(app.registry, "b", full=True)
    async with ServedApp(app, lifespan="off") as served:
        async with httpx.AsyncClient(base_url=served.url) as client:
            r = await client.patch("/api/v1/members/c", json={"state": "maint"}, headers=OPS)
            assert r.status_code == 200
        tab = await browser()
        await tab.page.goto(f"{served.url}/status?interval=1")
        await tab.page.wait_for_selector('[data-member="a"] [data-role="degraded"]')
        assert "40 %" in await tab.page.inner_text('[data-member="a"]')
        assert "FULL" in (await tab.page.inner_text('[data-member="b"] .badges')).upper()
        assert await tab.page.get_attribute('[data-member="c"]', "data-state") == "maint"
        assert await tab.page.get_attribute('[data-member="b"]', "data-degraded") == "false"
        assert await tab.page.is_hidden("#fallback")
        await tab.page.screenshot(
            path=str(screenshot_path("status-page-badges.png")), full_page=True
        )
    # the redirector is gone: the page says so and keeps the last data
    await tab.page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    assert "Cannot reach the redirector" in await tab.page.inner_text("#error")
    assert await tab.page.locator("article[data-member]").count() == 4
    # the failed fetches themselves are logged by the browser; nothing else may be
    assert [e for e in tab.errors if "Failed to load resource" not in e] == []
