"""The launch front door, called as an ASGI app: redirects, cookies, CORS, badges, safety."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation_redirect.app import FederationApp, create_app
from federation_redirect.cookies import cookie_name
from federation_redirect.models import HealthState

from .helpers import asgi_request, mark, three_members

MEMBER_URLS = ("https://a.example", "https://b.example", "https://c.example:8443/sub")
BADGE_BASE = "https://static.mybinder.org"


def make_app(**top: object) -> FederationApp:
    top.setdefault("load_balancer", "rendezvous")
    app = create_app(three_members(**top), rng=random.Random(7), run_health_checks=False)
    mark(app.registry, "a", "b", "c")
    return app


@pytest.fixture
def app() -> FederationApp:
    return make_app()


async def test_launch_redirects_307_with_path_and_query_unchanged(app: FederationApp) -> None:
    raw = b"/v2/gh/Org/Repo/main"
    query = b"urlpath=lab/tree/a.ipynb&x=%2F%252F?nested=1"
    answer = await asgi_request(app, raw, query=query)
    assert answer.status == 307
    location = answer.header("location")
    assert location is not None
    base = next(u for u in MEMBER_URLS if location.startswith(u + "/"))
    assert location == base + raw.decode() + "?" + query.decode()


async def test_all_refs_and_entry_points_of_a_repository_go_to_one_member(
    app: FederationApp,
) -> None:
    paths = [
        b"/v2/gh/Org/Repo/main",
        b"/build/gh/org/repo.git/1a2b3c",
        b"/v2/gh/ORG/repo/HEAD",
        b"/repo/org/repo",
    ]
    targets = set()
    for raw in paths:
        location = (await asgi_request(app, raw)).header("location")
        assert location is not None
        targets.add(location.removesuffix(raw.decode()))
    assert len(targets) == 1


async def test_build_redirect_carries_cors_header(app: FederationApp) -> None:
    answer = await asgi_request(app, b"/build/gh/org/repo/abc")
    assert answer.status == 307
    assert answer.header("access-control-allow-origin") == "*"
    launch = await asgi_request(app, b"/v2/gh/org/repo/abc")
    assert launch.header("access-control-allow-origin") is None


async def test_build_preflight_is_answered_204(app: FederationApp) -> None:
    answer = await asgi_request(app, b"/build/gh/org/repo/abc", method="OPTIONS")
    assert answer.status == 204
    assert answer.header("access-control-allow-origin") == "*"
    assert "GET" in (answer.header("access-control-allow-methods") or "")
    assert "cache-control" in (answer.header("access-control-allow-headers") or "")


async def test_head_is_redirected_like_get(app: FederationApp) -> None:
    answer = await asgi_request(app, b"/v2/gh/org/repo/abc", method="HEAD")
    assert answer.status == 307 and answer.body == b""


async def test_other_methods_on_launch_urls_are_405(app: FederationApp) -> None:
    answer = await asgi_request(app, b"/build/gh/org/repo/abc", method="POST")
    assert answer.status == 405 and "GET" in (answer.header("allow") or "")


async def test_cookie_is_keyed_by_repository_with_fixed_expiry(app: FederationApp) -> None:
    first = await asgi_request(app, b"/v2/gh/org/repo/main")
    cookie = first.header("set-cookie")
    assert cookie is not None
    name = cookie_name("gh:org/repo")
    assert cookie.startswith(f"{name}=")
    assert "Max-Age=14400" in cookie and "Path=/" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie
    member = cookie.split(";")[0].split("=")[1]
    # A later redirect that honours the cookie does not extend it.
    again = await asgi_request(
        app, b"/build/gh/Org/Repo/other", headers=[(b"cookie", f"x=1; {name}={member}".encode())]
    )
    assert again.status == 307 and again.header("set-cookie") is None
    assert app.metrics.redirects.counts[member, "cookie"] == 1


async def test_cookie_is_secure_when_served_over_https(app: FederationApp) -> None:
    answer = await asgi_request(app, b"/v2/gh/org/repo/main", scheme="https")
    assert "; Secure" in (answer.header("set-cookie") or "")


async def test_cookie_moves_a_browser_to_a_healthy_member_it_names(app: FederationApp) -> None:
    name = cookie_name("gh:org/repo")
    hashed = (await asgi_request(app, b"/v2/gh/org/repo/main")).header("location") or ""
    other = next(m for m in "abc" if not hashed.startswith(f"https://{m}."))
    answer = await asgi_request(
        app, b"/v2/gh/org/repo/main", headers=[(b"cookie", f"{name}={other}".encode())]
    )
    assert (answer.header("location") or "").startswith(
        dict(zip("abc", MEMBER_URLS, strict=True))[other]
    )


async def test_cookie_for_an_unhealthy_member_is_ignored(app: FederationApp) -> None:
    name = cookie_name("gh:org/repo")
    mark(app.registry, "b", state=HealthState.UNHEALTHY)
    for _ in range(3):
        answer = await asgi_request(
            app, b"/v2/gh/org/repo/x", headers=[(b"cookie", f"{name}=b".encode())]
        )
        assert not (answer.header("location") or "").startswith("https://b.example")


async def test_unhealthy_member_leaves_rotation_and_only_its_repositories_move(
    app: FederationApp,
) -> None:
    async def where(i: int) -> str:
        loc = (await asgi_request(app, f"/v2/gh/org/repo{i}/HEAD".encode())).header(
            "location"
        ) or ""
        return next(u for u in MEMBER_URLS if loc.startswith(u))

    before = [await where(i) for i in range(300)]
    mark(app.registry, "b", state=HealthState.UNHEALTHY)
    after = [await where(i) for i in range(300)]
    for old, new in zip(before, after, strict=True):
        assert new != "https://b.example"
        assert old == "https://b.example" or old == new


async def test_full_member_gets_no_new_repositories(app: FederationApp) -> None:
    mark(app.registry, "c", full=True)
    for i in range(200):
        loc = (await asgi_request(app, f"/v2/gh/o/r{i}/HEAD".encode())).header("location") or ""
        assert not loc.startswith("https://c.example")


async def test_no_routable_member_falls_back_to_prime_and_says_so(app: FederationApp) -> None:
    mark(app.registry, "a", "b", "c", state=HealthState.UNHEALTHY)
    answer = await asgi_request(app, b"/v2/gh/o/r/HEAD")
    assert answer.status == 307
    assert (answer.header("location") or "").startswith("https://a.example/")
    assert answer.header("set-cookie") is None
    metrics = (await asgi_request(app, b"/metrics")).body.decode()
    assert "federation_fallback_active 1.0" in metrics
    assert 'federation_redirects_total{member="a",reason="fallback"} 1.0' in metrics


async def test_three_thousand_repositories_split_by_weight_within_five_points() -> None:
    app = make_app()
    counts: Counter[str] = Counter()
    for i in range(3000):
        loc = (await asgi_request(app, f"/v2/gh/org{i % 97}/repo-{i}/HEAD".encode())).header(
            "location"
        )
        counts[next(u for u in MEMBER_URLS if (loc or "").startswith(u))] += 1
    for url in MEMBER_URLS:
        assert abs(counts[url] / 3000 - 1 / 3) < 0.05


@pytest.mark.parametrize(
    ("path", "target"),
    [
        (b"/badge.svg", "/badge.svg"),
        (b"/badge_logo.svg", "/badge_logo.svg"),
        (b"/assets/images/badge.svg", "/badge.svg"),
    ],
)
async def test_badge_paths_redirect_to_the_static_host(
    app: FederationApp, path: bytes, target: str
) -> None:
    answer = await asgi_request(app, path)
    assert answer.status == 301 and answer.header("location") == BADGE_BASE + target


async def test_badge_host_is_configurable() -> None:
    app = make_app(badge_base_url="https://badges.example/static/")
    answer = await asgi_request(app, b"/badge_logo.svg")
    assert answer.header("location") == "https://badges.example/static/badge_logo.svg"


@pytest.mark.parametrize(
    ("raw", "query"),
    [
        (b"/v2/gh/org/repo/main\r\nSet-Cookie: x=1", b""),
        (b"/v2/gh/org/repo/main", b"a=1\r\nLocation: https://evil.example"),
        (b"/v2/gh/org/repo/ma\x00in", b""),
        (b"/v2/gh/org/repo/ma in", b""),
        (b"/v2/gh/org/repo/\xc3\xa9", b""),
        (b"/v2/gh/org/repo/main", b"q=\x7f"),
    ],
    ids=["crlf-path", "crlf-query", "nul", "space", "non-ascii", "del"],
)
async def test_control_bytes_in_launch_urls_are_refused(
    app: FederationApp, raw: bytes, query: bytes
) -> None:
    answer = await asgi_request(app, raw, query=query)
    assert answer.status == 400
    assert answer.header("location") is None


@pytest.mark.parametrize(
    "raw",
    [
        b"/v2/gh/%2F%2Fevil.example/x/y",
        b"/v2/gh/..%2F..%2F/evil",
        b"/build/gh/@evil.example/r/x",
        b"/v2/\\evil.example/a",
    ],
)
async def test_hostile_looking_launch_paths_stay_on_a_member(
    app: FederationApp, raw: bytes
) -> None:
    answer = await asgi_request(app, raw)
    location = answer.header("location") or ""
    assert answer.status == 307
    assert any(location.startswith(u + "/") for u in MEMBER_URLS)


LOCATION_OK = re.compile(
    "^(" + "|".join(re.escape(u) + "/" for u in MEMBER_URLS) + "|" + re.escape(BADGE_BASE) + "/)"
)
_app = make_app()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from([b"/v2/", b"/build/", b"/repo/", b"/", b"//", b"/badge.svg", b"/v2//"]),
    path=st.binary(max_size=60),
    query=st.binary(max_size=40),
    cookie=st.binary(max_size=40),
    scheme=st.sampled_from(["http", "https"]),
)
async def test_no_input_redirects_outside_the_members_or_injects_headers(
    prefix: bytes, path: bytes, query: bytes, cookie: bytes, scheme: str
) -> None:
    raw = prefix + path
    if not raw.startswith((b"/v2/", b"/build/", b"/repo/")) and raw not in (b"/badge.svg",):
        raw = b"/v2/gh/" + path  # keep to the redirect routes; the proxy is tested elsewhere
    answer = await asgi_request(
        _app, raw, query=query, headers=[(b"host", b"x"), (b"cookie", cookie)], scheme=scheme
    )
    assert answer.status in (301, 307, 400, 405), answer
    for k, v in answer.headers:
        assert all(0x20 <= b < 0x7F for b in k + v), (k, v)
    location = answer.header("location")
    if location is not None:
        assert LOCATION_OK.match(location), location
