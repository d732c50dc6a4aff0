"""Abuse controls: banned networks, trusted proxies, the per-client launch rate limit.

The pure parts (``abuse.py``) are tested directly, with an injected clock; the hook in the
front door through the complete ASGI app; the client address with trusted proxies also through
a real uvicorn server configured as ``federation-redirect serve`` configures it.
"""

from __future__ import annotations

import ipaddress
import tracemalloc
from typing import Any

import httpx
import pytest

from federation_redirect.abuse import (
    AbuseControls,
    TokenBuckets,
    client_address,
    parse_address,
)
from federation_redirect.app import FederationApp, create_app
from federation_redirect.config import AbuseConfig, Config, parse_config
from federation_redirect.errors import ConfigError
from federation_redirect.types import Scope

from .helpers import asgi_request, mark


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scope(peer: str, *xff: str) -> Scope:
    return {
        "type": "http",
        "client": (peer, 40000),
        "headers": [(b"x-forwarded-for", v.encode()) for v in xff],
    }


def controls(clock: Clock | None = None, **abuse: Any) -> AbuseControls:
    made = AbuseControls.from_config(AbuseConfig.model_validate(abuse), clock=clock or Clock())
    assert made is not None
    return made


# -- the client address ---------------------------------------------------------------------


def test_addresses_are_parsed_with_ports_brackets_and_v4_mapped_forms() -> None:
    assert parse_address("192.0.2.1") == ipaddress.ip_address("192.0.2.1")
    assert parse_address(" 192.0.2.1:443 ") == ipaddress.ip_address("192.0.2.1")
    assert parse_address("[2001:db8::1]:80") == ipaddress.ip_address("2001:db8::1")
    assert parse_address("2001:db8::1") == ipaddress.ip_address("2001:db8::1")
    assert parse_address("::ffff:192.0.2.1") == ipaddress.ip_address("192.0.2.1")
    for junk in ("unknown", "_hidden", "", "[::1", "999.1.1.1", "1.2.3.4:5:6", "a" * 1000):
        assert parse_address(junk) is None


def test_x_forwarded_for_counts_only_behind_a_trusted_proxy() -> None:
    c = controls(
        trusted_proxies=["10.0.0.0/8", "127.0.0.1"], rate_limit={"per_minute": 1, "burst": 1}
    )
    # no proxy in front: the header is the client's own writing, ignored
    assert c.client(scope("198.51.100.7", "192.0.2.1")) == "198.51.100.7"
    # behind the ingress: the last address not a trusted proxy, from the right
    assert c.client(scope("10.1.1.1", "203.0.113.9")) == "203.0.113.9"
    assert c.client(scope("10.1.1.1", "1.1.1.1, 203.0.113.9, 10.2.2.2")) == "203.0.113.9"
    # a client forging the header's left part changes nothing
    assert c.client(scope("10.1.1.1", "10.9.9.9, 192.0.2.200", "203.0.113.9")) == "203.0.113.9"
    # several headers are one list, in order
    assert c.client(scope("127.0.0.1", "192.0.2.5", "10.0.0.3")) == "192.0.2.5"
    # junk appended by no proxy is still 'the client' (never a trusted proxy)
    assert c.client(scope("10.1.1.1", "unknown")) == "unknown"
    # every hop trusted: the request comes from inside
    assert c.client(scope("10.1.1.1", "10.0.0.2, 127.0.0.1")) == "10.1.1.1"
    assert c.client(scope("10.1.1.1")) == "10.1.1.1"
    assert c.client({"type": "http", "headers": []}) == ""


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert client_address(scope("192.0.2.1", "203.0.113.9")) == "192.0.2.1"


# -- bans -----------------------------------------------------------------------------------


def test_banned_networks_refuse_with_their_message_most_specific_first() -> None:
    c = controls(
        banned_networks=[
            {"cidr": "192.0.2.0/24", "message": "the whole range"},
            {"cidr": "192.0.2.128/25", "message": "the upper half"},
            {"cidr": "2001:db8::/32", "message": "v6"},
        ],
    )
    refusal = c.check(scope("192.0.2.1"), new_session=True)
    assert refusal is not None and (refusal.status, refusal.message) == (403, "the whole range")
    refusal = c.check(scope("192.0.2.200"), new_session=False)
    assert refusal is not None and refusal.message == "the upper half"
    refusal = c.check(scope("2001:db8:1::5"), new_session=True)
    assert refusal is not None and refusal.message == "v6"
    assert c.check(scope("::ffff:192.0.2.9"), new_session=True) is not None  # v4-mapped
    assert c.check(scope("192.0.3.1"), new_session=True) is None
    assert c.check(scope("unknown"), new_session=True) is None
    assert c.refused["banned"] == 4


def test_nothing_configured_means_no_controls_at_all() -> None:
    assert AbuseControls.from_config(AbuseConfig()) is None
    # trusted proxies alone enforce nothing either
    assert AbuseControls.from_config(AbuseConfig(trusted_proxies=["10.0.0.0/8"])) is None


# -- the rate limit -------------------------------------------------------------------------


def test_token_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(per_minute=6, burst=3, max_keys=10, clock=clock)  # 1 per 10 s
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(10.0)
    clock.now += 5
    assert buckets.take("a") == pytest.approx(5.0)
    clock.now += 5
    assert buckets.take("a") == 0.0
    assert buckets.take("b") == 0.0  # another client is not affected
    clock.now += 3600
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # refilled to the burst, not beyond


def test_token_buckets_keep_at_most_max_keys_forgetting_the_least_recent() -> None:
    clock = Clock()
    buckets = TokenBuckets(per_minute=1, burst=1, max_keys=3, clock=clock)
    for key in ("a", "b", "c"):
        buckets.take(key)
    buckets.take("a")  # a is the most recent now (and refused)
    buckets.take("d")  # evicts b
    assert len(buckets) == 3
    assert buckets.take("b") == 0.0  # forgotten: a full bucket again (evicts c)
    assert buckets.take("a") > 0  # still remembered and empty


def test_the_rate_limit_memory_is_bounded_under_a_flood_of_addresses() -> None:
    clock = Clock()
    buckets = TokenBuckets(per_minute=10, burst=5, max_keys=10_000, clock=clock)
    tracemalloc.start()
    try:
        for i in range(30_000):
            buckets.take(f"198.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(buckets) == 10_000
    assert size / 10_000 < 300, size  # bytes per tracked client (README: about 250)


def test_rate_limit_counts_new_sessions_only_and_ipv6_per_64() -> None:
    clock = Clock()
    c = controls(clock, rate_limit={"per_minute": 60, "burst": 2})
    assert c.check(scope("192.0.2.1"), new_session=True) is None
    assert c.check(scope("192.0.2.1"), new_session=True) is None
    refusal = c.check(scope("192.0.2.1"), new_session=True)
    assert refusal is not None and refusal.status == 429
    assert dict(refusal.headers) == {b"retry-after": b"1"}
    assert c.check(scope("192.0.2.1"), new_session=False) is None  # cookie follow-ups pass
    assert c.check(scope("2001:db8:0:1::1"), new_session=True) is None
    assert c.check(scope("2001:db8:0:1::2"), new_session=True) is None
    assert c.check(scope("2001:db8:0:1:ffff::3"), new_session=True) is not None  # same /64
    assert c.check(scope("2001:db8:0:2::1"), new_session=True) is None
    clock.now += 1
    assert c.check(scope("192.0.2.1"), new_session=True) is None
    assert c.refused["rate_limited"] == 2


# -- configuration --------------------------------------------------------------------------


def base(**abuse: Any) -> dict[str, Any]:
    return {"hosts": {"a": {"url": "https://a.example", "prime": True}}, "abuse": abuse}


def test_config_reports_every_bad_abuse_setting_with_its_path() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(
            base(
                banned_networks=[{"cidr": "10.0.0.1/8"}, {"cidr": "x", "message": "a\x00b"}],
                trusted_proxies=["127.0.0.1", "bad"],
                rate_limit={"per_minute": 0, "burst": 0},
                surprise=1,
            )
        )
    problems = err.value.problems
    assert "abuse.banned_networks.0.cidr: 10.0.0.1/8 has host bits set" in problems
    assert any(p.startswith("abuse.banned_networks.1.cidr: ") for p in problems)
    assert "abuse.banned_networks.1.message: must not contain control characters" in problems
    assert any(p.startswith("abuse.trusted_proxies.1: ") for p in problems)
    assert "abuse.rate_limit.per_minute: must be > 0" in problems
    assert "abuse.rate_limit.burst: must be >= 1" in problems
    assert "abuse.surprise: unknown key" in problems


def test_config_defaults_are_off() -> None:
    config = parse_config(base())
    assert config.abuse.banned_networks == [] and config.abuse.trusted_proxies == []
    assert config.abuse.rate_limit is None
    ok = parse_config(base(banned_networks=[{"cidr": "192.0.2.7"}]))
    assert ok.abuse.banned_networks[0].cidr == "192.0.2.7/32"
    assert ok.abuse.banned_networks[0].message.startswith("Launches from your network")


# -- through the front door -----------------------------------------------------------------

BANNED_MESSAGE = "Launches from 192.0.2.0/24 are blocked (mining). Contact ops@example.org."


def abusive_config(**extra: Any) -> Config:
    return parse_config(
        {
            "hosts": {
                "a": {"url": "https://a.example", "prime": True},
                "b": {"url": "https://b.example"},
            },
            "load_balancer": "rendezvous",
            "abuse": {
                "banned_networks": [{"cidr": "192.0.2.0/24", "message": BANNED_MESSAGE}],
                "trusted_proxies": ["10.0.0.0/8"],
                "rate_limit": {"per_minute": 60, "burst": 3},
                **extra,
            },
        }
    )


def _page(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, stream=httpx.ByteStream(b"home"))


def front(config: Config) -> FederationApp:
    app = create_app(
        config,
        run_health_checks=False,
        proxy_client=httpx.AsyncClient(transport=httpx.MockTransport(_page)),
    )
    mark(app.registry, *config.hosts)
    return app


async def call(app: FederationApp, path: bytes, peer: str = "198.51.100.1", **kw: Any) -> Any:
    """An ASGI request from ``peer`` (helpers.asgi_request with another client address)."""

    async def wrapped(s: Scope, receive: Any, send: Any) -> None:
        s["client"] = (peer, 5555)
        await app(s, receive, send)

    return await asgi_request(wrapped, path, **kw)


async def test_a_banned_network_gets_403_with_its_message_on_every_launch_path() -> None:
    app = front(abusive_config())
    for path in (b"/v2/gh/o/r/HEAD", b"/build/gh/o/r/HEAD", b"/repo/o/r"):
        for method in ("GET", "HEAD"):
            answer = await call(app, path, "192.0.2.33", method=method)
            assert answer.status == 403, (path, method)
            assert answer.body.decode().strip() == BANNED_MESSAGE
            assert answer.header("location") is None
    # behind the ingress, the address comes from X-Forwarded-For
    behind = await call(
        app, b"/v2/gh/o/r/HEAD", "10.0.0.5", headers=[(b"x-forwarded-for", b"192.0.2.9")]
    )
    assert behind.status == 403
    # a client outside the network is redirected
    assert (await call(app, b"/v2/gh/o/r/HEAD", "198.51.100.2")).status == 307
    # a forged header from an untrusted peer changes nothing
    forged = await call(
        app, b"/v2/gh/o/r/HEAD", "192.0.2.9", headers=[(b"x-forwarded-for", b"198.51.100.3")]
    )
    assert forged.status == 403


@pytest.mark.parametrize(
    "path",
    [
        b"/healthz",
        b"/readyz",
        b"/metrics",
        b"/status",
        b"/active_hosts",
        b"/badge.svg",
        b"/",
        b"/api/v1/members",
        b"/about",
    ],
)
async def test_probes_metrics_status_badges_and_pages_are_never_banned(path: bytes) -> None:
    app = front(abusive_config())
    answer = await call(app, path, "192.0.2.33")
    assert answer.status in (200, 301), (path, answer.status)


async def test_the_rate_limit_refuses_cookieless_launches_past_the_burst() -> None:
    app = front(abusive_config())
    statuses = [
        (await call(app, f"/v2/gh/o/r{i}/HEAD".encode(), "198.51.100.9")).status for i in range(5)
    ]
    assert statuses == [307, 307, 307, 429, 429]
    refused = await call(app, b"/v2/gh/o/x/HEAD", "198.51.100.9")
    assert refused.header("retry-after") == "1" and "too many launches" in refused.body.decode()
    # another client, a HEAD (a link checker) and a cookie follow-up are not limited
    assert (await call(app, b"/v2/gh/o/r/HEAD", "198.51.100.10")).status == 307
    assert (await call(app, b"/v2/gh/o/r9/HEAD", "198.51.100.9", method="HEAD")).status == 307
    first = await call(app, b"/v2/gh/o/sticky/HEAD", "198.51.100.11")
    cookie = first.header("set-cookie").split(";", 1)[0].encode()
    follow_ups = [
        (
            await call(app, b"/v2/gh/o/sticky/HEAD", "198.51.100.11", headers=[(b"cookie", cookie)])
        ).status
        for _ in range(10)
    ]
    assert follow_ups == [307] * 10
    # refused launches are not counted as launches
    text = (await call(app, b"/metrics")).body.decode()
    redirected = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("federation_redirects_total{")
    )
    assert redirected == 3 + 1 + 1 + 1 + 10
    assert app.abuse is not None and app.abuse.refused["rate_limited"] == 3


async def test_disabled_controls_cost_one_attribute_check() -> None:
    app = front(parse_config({"hosts": {"a": {"url": "https://a.example", "prime": True}}}))
    assert app.abuse is None
    for _ in range(20):
        assert (await call(app, b"/v2/gh/o/r/HEAD", "192.0.2.1")).status == 307
