"""Abuse controls on launches: banned networks and a per-client rate limit. Off by default.

Configured under ``abuse`` (see the README's configuration reference); with neither banned
networks nor a rate limit, :meth:`AbuseControls.from_config` returns None and the front door's
only cost is checking that attribute. Only launches (``/v2``, ``/build`` and the legacy
``/repo``) are checked: probes, metrics, the status page, the operator API, badges and the home
page never are, so a ban cannot blind the monitoring or lock out the operators.

**Client address** (:func:`client_address`). The peer the server saw, unless that peer is a
trusted proxy (``abuse.trusted_proxies``): then ``X-Forwarded-For`` is walked from the right,
skipping trusted proxies, and the first address that is not one is the client. Every proxy
appends the address it received the request from, so only the left part of the header is the
client's own writing, and that part is never reached while the walk meets an untrusted
address first. (uvicorn rewrites the peer itself from the same header for the proxies of its
``--forwarded-allow-ips``: ``federation-redirect serve`` gives it ``abuse.trusted_proxies``
when they are set, so both read the header the same way. With ``'*'`` uvicorn takes the
*leftmost* address, which a client can forge.)

**Banned networks** (``abuse.banned_networks``): a launch from an address in one of them gets
``403`` with that network's message. Lookup costs one dict probe per distinct prefix length.

**Rate limit** (``abuse.rate_limit``): a token bucket per client address (IPv6 addresses per
/64, what one subscriber usually holds) for launches without the repository's stickiness
cookie, the ones that start new sessions: ``burst`` launches at once, refilled at
``per_minute`` a minute. Once empty, ``429`` with ``Retry-After``. At most ``max_clients``
buckets are kept; the least recently used is forgotten first (a forgotten client starts with
a full bucket again), so memory is bounded whatever the number of addresses. A browser
following up on a launch carries the cookie and is not limited; a client forging the cookie
escapes the limit but is still sent only where that cookie may go.

Pure apart from the injected clock (monotonic seconds); no I/O, no locks (one event loop).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from .config import AbuseConfig
from .types import Scope

__all__ = [
    "AbuseControls",
    "Refusal",
    "TokenBuckets",
    "client_address",
    "parse_address",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

_XFF: Final = b"x-forwarded-for"
_MAX_HOPS: Final = 32  # X-Forwarded-For entries walked at most, from the right
_MAX_KEY: Final = 64  # an unparsable "address" is cut to this length
_V6_CLIENT_PREFIX: Final = 64


def parse_address(text: str) -> IPAddress | None:
    """An X-Forwarded-For entry or peer as an address: ``1.2.3.4``, ``1.2.3.4:80``, ``::1``,
    ``[::1]:80``. None for anything else (``unknown``, obfuscated identifiers, garbage)."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class _Networks:
    """A set of networks with an O(distinct prefix lengths) membership test."""

    __slots__ = ("_tables",)

    def __init__(self, networks: Iterable[tuple[IPNetwork, str]]) -> None:
        # (ip version, prefix length) -> {network address >> host bits: value}
        self._tables: dict[tuple[int, int], dict[int, str]] = {}
        for network, value in networks:
            shift = network.max_prefixlen - network.prefixlen
            table = self._tables.setdefault((network.version, network.prefixlen), {})
            table.setdefault(int(network.network_address) >> shift, value)

    def __bool__(self) -> bool:
        return bool(self._tables)

    def lookup(self, address: IPAddress) -> str | None:
        """The value of the most specific network holding ``address``, or None."""
        number = int(address)
        found: tuple[int, str] | None = None
        for (version, prefix), table in self._tables.items():
            if version != address.version:
                continue
            value = table.get(number >> (address.max_prefixlen - prefix))
            if value is not None and (found is None or prefix > found[0]):
                found = (prefix, value)
        return None if found is None else found[1]


def _trusted(text: str, trusted: _Networks) -> bool:
    address = parse_address(text)
    return address is not None and trusted.lookup(address) is not None


def client_address(scope: Scope, trusted: _Networks | None = None) -> str:
    """The launching client's address (module docstring); ``""`` if the server knows none."""
    peer = scope.get("client")
    host = str(peer[0]) if peer else ""
    if not trusted or not _trusted(host, trusted):
        return host
    values = [value for name, value in scope["headers"] if name == _XFF]
    if not values:
        return host
    joined = b",".join(values).decode("latin-1")
    entries = joined.rsplit(",", _MAX_HOPS)
    for entry in reversed(entries[-_MAX_HOPS:]):
        entry = entry.strip()
        if entry and not _trusted(entry, trusted):
            return entry[:_MAX_KEY]
    return host  # every hop is a trusted proxy: the request comes from inside


def _bucket_key(client: str) -> str:
    address = parse_address(client)
    if address is None:
        return client[:_MAX_KEY]
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/{_V6_CLIENT_PREFIX}", strict=False))
    return str(address)


class TokenBuckets:
    """Token buckets per key: ``burst`` tokens, refilled at ``per_minute`` a minute, at most
    ``max_keys`` buckets (least recently used forgotten first). ``clock``: monotonic seconds."""

    __slots__ = ("_buckets", "_clock", "burst", "max_keys", "rate")

    def __init__(
        self,
        *,
        per_minute: float,
        burst: int,
        max_keys: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = float(burst)
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Take a token for ``key``: 0.0 if there was one, else seconds until there is."""
        now = self._clock()
        buckets = self._buckets
        state = buckets.get(key)
        if state is None:
            if len(buckets) >= self.max_keys:
                buckets.popitem(last=False)
            tokens = self.burst
        else:
            tokens = min(self.burst, state[0] + (now - state[1]) * self.rate)
            buckets.move_to_end(key)
        if tokens >= 1.0:
            buckets[key] = (tokens - 1.0, now)
            return 0.0
        buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused launch: the status, the plain-text message and extra response headers."""

    status: int
    message: str
    headers: tuple[tuple[bytes, bytes], ...] = ()
    reason: str = "banned"  # banned | rate_limited (a metric label)


_RATE_MESSAGE: Final = "too many launches from your address; try again in {0} s"


class AbuseControls:
    """Banned networks, trusted proxies and the launch rate limit, ready for the hot path.

    ``refused`` counts refusals by reason (``banned``, ``rate_limited``).
    """

    __slots__ = ("_banned", "_trusted", "buckets", "refused")

    def __init__(
        self,
        *,
        banned: Sequence[tuple[IPNetwork, str]] = (),
        trusted_proxies: Sequence[IPNetwork] = (),
        buckets: TokenBuckets | None = None,
    ) -> None:
        self._banned = _Networks(banned)
        self._trusted = _Networks((n, "") for n in trusted_proxies)
        self.buckets = buckets
        self.refused: Counter[str] = Counter()

    @classmethod
    def from_config(
        cls, config: AbuseConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> AbuseControls | None:
        """The controls ``config`` asks for; None when it asks for none (the default)."""
        if not config.banned_networks and config.rate_limit is None:
            return None
        limit = config.rate_limit
        return cls(
            banned=[(ipaddress.ip_network(b.cidr), b.message) for b in config.banned_networks],
            trusted_proxies=[ipaddress.ip_network(p) for p in config.trusted_proxies],
            buckets=None
            if limit is None
            else TokenBuckets(
                per_minute=limit.per_minute,
                burst=limit.burst,
                max_keys=limit.max_clients,
                clock=clock,
            ),
        )

    def client(self, scope: Scope) -> str:
        """The client address of a request, as the controls see it."""
        return client_address(scope, self._trusted)

    def check(self, scope: Scope, *, new_session: bool) -> Refusal | None:
        """Whether to refuse this launch. ``new_session``: it counts against the rate limit
        (a GET without the repository's stickiness cookie). None: let it through."""
        client = client_address(scope, self._trusted)
        if self._banned:
            address = parse_address(client)
            message = None if address is None else self._banned.lookup(address)
            if message is not None:
                self.refused["banned"] += 1
                return Refusal(403, message)
        if new_session and self.buckets is not None:
            wait = self.buckets.take(_bucket_key(client))
            if wait > 0.0:
                self.refused["rate_limited"] += 1
                seconds = max(1, math.ceil(wait))
                return Refusal(
                    429,
                    _RATE_MESSAGE.format(seconds),
                    ((b"retry-after", str(seconds).encode()),),
                    "rate_limited",
                )
        return None
