"""The configuration model: typed, strict, and compatible with mybinder.org's Helm values.

A document is YAML or JSON (JSON is YAML). It may be the ``federationRedirect`` section itself
or a values file containing it under that key. The keys the production Tornado app reads
(``hosts``, ``check``, ``load_balancer``, ``pod_headroom``, ``host_cookie_age_hours``) keep their
meaning; the chart-only keys (``enabled``, ``image``, ``resources``, ``nodeSelector``, ``host``)
are accepted and ignored with a warning. Anything else unknown is an error.

:func:`load_config` / :func:`parse_config` return a :class:`Config` with every default filled
in, or raise :class:`~federation_redirect.errors.ConfigError` listing every problem as
``field.path: message`` (for example ``hosts.gesis.weight: must be >= 0``).
"""

from __future__ import annotations

import ipaddress
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .models import Strategy

__all__ = [
    "CHART_ONLY_KEYS",
    "AbuseConfig",
    "AdminConfig",
    "BannedNetworkConfig",
    "CheckConfig",
    "Config",
    "HostConfig",
    "OutcomesConfig",
    "ProxyConfig",
    "RateLimitConfig",
    "RoutingConfig",
    "StateConfig",
    "load_config",
    "parse_config",
]

# Keys of the Helm chart's federationRedirect values that only the chart uses.
CHART_ONLY_KEYS = frozenset({"enabled", "image", "resources", "nodeSelector", "host"})

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _http_url(value: str) -> str:
    """Validate an absolute http(s) URL with a host and no query or fragment; strip '/'s."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must include a host name")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError("must not have a query string or fragment")
    if any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in value):
        raise ValueError("must be printable ASCII with no spaces")
    if "\\" in value or "@" in parts.netloc:
        raise ValueError("must not contain '\\' or credentials")
    return value.rstrip("/")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class HostConfig(_Strict):
    """One member BinderHub."""

    url: str = Field(description="Base URL of the member; launches are redirected under it.")
    weight: float = Field(
        default=1.0,
        ge=0,
        allow_inf_nan=False,
        description="Relative share of new repositories. 0: no new launches, still checked.",
    )
    health: str | None = Field(default=None, description="Health URL; default url + /health.")
    versions: str | None = Field(default=None, description="Versions URL; default url + /versions.")
    prime: bool = Field(
        default=False,
        description="Reference for versions, fallback when nothing is routable, home page.",
    )
    pages: bool | None = Field(
        default=None,
        description="May serve the federation's home page (default: same as prime).",
    )
    quota: int | None = Field(
        default=None,
        ge=1,
        description="Pod capacity when the member's /health does not report one.",
    )
    metrics: str | None = Field(
        default=None,
        description="Prometheus URL of its launch outcomes; default url + /metrics; null: "
        "none (the member is never degraded).",
    )

    @field_validator("url", "health", "versions", "metrics")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @model_validator(mode="after")
    def _fill_defaults(self) -> HostConfig:
        # frozen: set derived defaults through object.__setattr__ once, at validation time
        if self.health is None:
            object.__setattr__(self, "health", self.url + "/health")
        if self.versions is None:
            object.__setattr__(self, "versions", self.url + "/versions")
        if "metrics" not in self.model_fields_set:  # absent: the default; null: no scrapes
            object.__setattr__(self, "metrics", self.url + "/metrics")
        if self.pages is None:
            object.__setattr__(self, "pages", self.prime)
        return self

    @property
    def health_url(self) -> str:
        assert self.health is not None
        return self.health

    @property
    def versions_url(self) -> str:
        assert self.versions is not None
        return self.versions

    @property
    def serves_pages(self) -> bool:
        return bool(self.pages)


class CheckConfig(_Strict):
    """Health checking. Times in seconds. Defaults are the production chart's."""

    period: float = Field(
        default=15, gt=0, allow_inf_nan=False, description="Seconds between checks of a member."
    )
    jitter: float = Field(
        default=0.1,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Each wait is period x (1 +/- jitter/2), so members are not checked in step.",
    )
    retries: int = Field(default=5, ge=1, description="Attempts per round on transport errors.")
    timeout: float = Field(
        default=5,
        gt=0,
        allow_inf_nan=False,
        description="Deadline of a whole check round (/versions and /health, retries included).",
    )
    failed_period: float = Field(
        default=90,
        gt=0,
        allow_inf_nan=False,
        description="Longest wait between checks of an unhealthy member.",
    )
    fall: int = Field(
        default=2, ge=1, description="Failed rounds (transport errors) before removal."
    )
    rise: int = Field(default=2, ge=1, description="Good rounds before re-admission.")
    fast_period: float = Field(
        default=1,
        gt=0,
        allow_inf_nan=False,
        description="Check interval while a member is changing state.",
    )
    min_backoff: float = Field(
        default=2,
        gt=0,
        allow_inf_nan=False,
        description="First re-check delay of an unhealthy member; doubles each round.",
    )
    max_backoff: float = Field(
        default=25,
        gt=0,
        allow_inf_nan=False,
        description="Cap of that delay (the effective cap is min(max_backoff, failed_period)).",
    )
    versions: Literal["exact", "binderhub", "off"] = Field(
        default="exact",
        description="exact: /versions must equal the prime's; binderhub: only the BinderHub "
        "version (before '+') must match; off: no comparison.",
    )
    max_response_bytes: int = Field(
        default=65536, ge=1024, description="Largest /health or /versions body read."
    )
    version_grace_seconds: float = Field(
        default=1800,
        ge=0,
        allow_inf_nan=False,
        description="After the prime's /versions change, members still on the previous ones "
        "stay in rotation this long (a rolling upgrade that starts with the prime); 0: off.",
    )
    panic_grace_seconds: float = Field(
        default=120,
        ge=0,
        allow_inf_nan=False,
        description="When every healthy member falls at once through timeouts or refused "
        "connections (this redirector's own network, most likely), keep routing to them this "
        "long instead of emptying the rotation; 0: off.",
    )

    @model_validator(mode="after")
    def _check_order(self) -> CheckConfig:
        if self.min_backoff > self.max_backoff:
            raise ValueError("min_backoff must be <= max_backoff")
        return self


class RoutingConfig(_Strict):
    """The bounded policy (``load_balancer: bounded``) and slow start."""

    balance_factor: float = Field(
        default=1.25,
        ge=1,
        allow_inf_nan=False,
        description="A member may carry up to this times its weight share of the total load "
        "before its new repositories spill to their next member.",
    )
    per_repo_cap: int = Field(
        default=100,
        ge=1,
        description="Launches of one repository sent to one member within session_minutes "
        "before the next ones spill (BinderHub's per_repo_quota).",
    )
    session_minutes: float = Field(
        default=20,
        gt=0,
        allow_inf_nan=False,
        description="How long a launch counts towards per_repo_cap (a session's length).",
    )
    report_seconds: float = Field(
        default=60,
        gt=0,
        allow_inf_nan=False,
        description="How long a launch counts on top of a member's pod report (BinderHub "
        "caches its pod count for up to 60 s).",
    )
    warm_hours: float = Field(
        default=6,
        ge=0,
        allow_inf_nan=False,
        description="A repository sent to a member within this window counts as warm there "
        "(its image cached): it keeps going there while the member is under balance_factor x "
        "its bound, before new repositories spill; 0: off.",
    )
    slow_start_seconds: float = Field(
        default=120,
        ge=0,
        allow_inf_nan=False,
        description="A member back from unhealthy ramps its weight up over this window; 0: off.",
    )


class StateConfig(_Strict):
    """Where replicas share state. No ``redis_url``: this process alone, in memory."""

    redis_url: str | None = Field(
        default=None,
        description="redis://, rediss:// or unix:// URL of the shared store; none: in memory. "
        "Also --redis-url or FEDERATION_REDIRECT_REDIS_URL.",
    )
    key_prefix: str = Field(
        default="federation-redirect",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="Prefix of every Redis key, so federations can share a Redis.",
    )
    lock_seconds: float = Field(
        default=5,
        gt=0,
        allow_inf_nan=False,
        description="TTL of the health-checker lock; a dead checker is replaced within it.",
    )
    flush_seconds: float = Field(
        default=0.2,
        gt=0,
        le=0.2,
        allow_inf_nan=False,
        description="Launch counters are shared at least this often.",
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value


class ProxyConfig(_Strict):
    """Pass-through of the home page (every non-launch path) to a page-serving member."""

    connect_timeout: float = Field(
        default=3, gt=0, allow_inf_nan=False, description="Seconds to connect to a member."
    )
    timeout: float = Field(
        default=30, gt=0, allow_inf_nan=False, description="Seconds to wait for each read."
    )
    max_body_bytes: int = Field(
        default=1 << 20, ge=0, description="Largest request body forwarded (else 413)."
    )
    launch_host: str | None = Field(
        default=None,
        description="Value of X-Binder-Launch-Host; default https://<request host>/.",
    )


class OutcomesConfig(_Strict):
    """Launch outcomes from members' own /metrics (see outcomes.py). Seconds, minutes, 0..1."""

    enabled: bool = Field(
        default=True,
        description="Scrape members' /metrics and scale down members whose launches fail.",
    )
    scrape_period: float = Field(
        default=60, gt=0, allow_inf_nan=False, description="Seconds between scrapes of a member."
    )
    window_minutes: float = Field(
        default=15,
        gt=0,
        allow_inf_nan=False,
        description="Failure ratios are over the launches of this many minutes.",
    )
    min_attempts: int = Field(
        default=10, ge=1, description="Launches within the window before the ratio counts."
    )
    degrade_ratio: float = Field(
        default=0.5,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="A member whose launch failure ratio reaches this is degraded.",
    )
    recover_ratio: float = Field(
        default=0.25,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="A degraded member recovers after a full window under this ratio.",
    )
    weight_factor: float = Field(
        default=0.1,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="A degraded member's effective weight is multiplied by this.",
    )
    scrape_timeout: float = Field(
        default=10,
        gt=0,
        allow_inf_nan=False,
        description="Deadline in seconds of one scrape (connect, answer and body).",
    )
    max_bytes: int = Field(
        default=4 << 20,
        ge=4096,
        description="Most bytes of a member's /metrics read per scrape.",
    )

    @model_validator(mode="after")
    def _check_ratios(self) -> OutcomesConfig:
        if self.recover_ratio > self.degrade_ratio:
            raise ValueError("recover_ratio must be <= degrade_ratio")
        return self


class AdminConfig(_Strict):
    """The operator API (``/api/v1``): who may change member weights and states."""

    tokens_file: str | None = Field(
        default=None,
        description="File of 'name:token' entries (one per line or comma-separated; '#' "
        "comments) accepted as bearer tokens for writes, in addition to "
        "FEDERATION_REDIRECT_ADMIN_TOKENS; re-read when it changes. None: only the variable.",
    )


def _network(value: str) -> str:
    """Validate an IPv4 or IPv6 address or network (CIDR) with no host bits set."""
    try:
        return str(ipaddress.ip_network(value.strip()))
    except ValueError as exc:  # "... has host bits set", "... does not appear to be ..."
        raise ValueError(str(exc)) from None


class BannedNetworkConfig(_Strict):
    """A network whose launches are refused with 403 and ``message``."""

    cidr: str = Field(description="IPv4 or IPv6 network, e.g. 192.0.2.0/24 (or one address).")
    message: str = Field(
        default="Launches from your network are blocked. Please contact the operators of "
        "this Binder federation.",
        min_length=1,
        max_length=1000,
        description="Plain text sent with the 403.",
    )

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        return _network(value)

    @field_validator("message")
    @classmethod
    def _check_message(cls, value: str) -> str:
        if any((ord(c) < 0x20 and c not in "\n\t") or ord(c) == 0x7F for c in value):
            raise ValueError("must not contain control characters")
        return value


class RateLimitConfig(_Strict):
    """Launches without a stickiness cookie, per client address (IPv6: per /64)."""

    per_minute: float = Field(
        gt=0, allow_inf_nan=False, description="Launches a minute a client may sustain."
    )
    burst: int = Field(ge=1, description="Launches a client may make at once.")
    max_clients: int = Field(
        default=100_000,
        ge=1,
        description="Client addresses tracked at most; the least recently seen is forgotten.",
    )


class AbuseConfig(_Strict):
    """Optional abuse controls on launches (see abuse.py). Everything off by default."""

    banned_networks: list[BannedNetworkConfig] = Field(
        default=[], description="Networks whose launches get 403 with a message."
    )
    trusted_proxies: list[Annotated[str, AfterValidator(_network)]] = Field(
        default=[],
        description="Addresses or networks of proxies whose X-Forwarded-For is believed.",
    )
    rate_limit: RateLimitConfig | None = Field(
        default=None, description="Per-client limit on launches without a cookie; none: off."
    )


class Config(_Strict):
    """The whole configuration, with every default filled in."""

    hosts: dict[str, HostConfig] = Field(
        description="The members by name (letters, digits, '.', '_', '-'); null entries dropped."
    )
    check: CheckConfig = Field(default_factory=CheckConfig)
    load_balancer: Strategy = Field(
        default=Strategy.BOUNDED,
        strict=False,
        description="bounded: rendezvous over capacity x weight with load bounds and spill; "
        "rendezvous: sticky weighted hashing per repository; random: weighted random.",
    )
    pod_headroom: int = Field(
        default=10, ge=0, description="A member with pods + headroom >= quota counts as full."
    )
    host_cookie_age_hours: float = Field(
        default=4,
        gt=0,
        allow_inf_nan=False,
        description="Lifetime of the stickiness cookie; not extended by later redirects.",
    )
    badge_base_url: str = Field(
        default="https://static.mybinder.org",
        description="Badge paths redirect to this base URL + /badge.svg or /badge_logo.svg.",
    )
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    outcomes: OutcomesConfig = Field(default_factory=OutcomesConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    abuse: AbuseConfig = Field(default_factory=AbuseConfig)

    @field_validator("badge_base_url")
    @classmethod
    def _badge(cls, value: str) -> str:
        return _http_url(value)

    @model_validator(mode="after")
    def _federation(self) -> Config:
        problems: list[str] = []
        if not self.hosts:
            problems.append("hosts: at least one member is required")
        seen: dict[str, str] = {}
        for name, host in self.hosts.items():
            if not _NAME.match(name):
                problems.append(
                    f"hosts.{name}: member names must be 1-63 letters, digits, '.', '_' or '-'"
                    " starting with a letter or digit"
                )
            other = seen.setdefault(host.url.lower(), name)
            if other != name:
                problems.append(f"hosts.{name}.url: same URL as hosts.{other}")
        if self.hosts and not any(h.prime for h in self.hosts.values()):
            problems.append("hosts: at least one member must have prime: true")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def with_redis_url(self, url: str | None) -> Config:
        """A copy using ``url`` for the shared store (None: keep the configured one)."""
        if url is None:
            return self
        state = StateConfig.model_validate({**self.state.model_dump(), "redis_url": url})
        return self.model_copy(update={"state": state})

    @property
    def members(self) -> list[tuple[str, HostConfig]]:
        """Members in configuration order."""
        return list(self.hosts.items())


_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "unknown key",
    "finite_number": "must be a finite number",
    "float_type": "must be a number",
    "int_type": "must be an integer",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
}


def _message(err: Any) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']:g}"
    if kind == "greater_than":
        return f"must be > {ctx['gt']:g}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']:g}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind in ("literal_error", "enum"):
        return f"must be one of {ctx.get('expected', '')}"
    return _MESSAGES.get(kind, str(err["msg"]))


def _problems(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"] if p not in ("HostConfig",))
        msg = _message(err)
        if not path:
            # model-level problems already name their own fields, '; '-separated
            out.extend(msg.split("; "))
        else:
            out.append(f"{path}: {msg}")
    return out


def parse_config(data: object, warnings: list[str] | None = None) -> Config:
    """Validate a decoded document. Problems raise ConfigError; warnings are appended."""
    warn = warnings if warnings is not None else []
    if isinstance(data, dict) and set(data) == {"federationRedirect"}:
        data = data["federationRedirect"]
    if not isinstance(data, dict):
        raise ConfigError(["(document): must be a mapping with a 'hosts' key"])
    doc = dict(data)
    for key in sorted(CHART_ONLY_KEYS & doc.keys()):
        warn.append(f"{key}: Helm chart setting, ignored by federation-redirect")
        del doc[key]
    hosts = doc.get("hosts")
    if isinstance(hosts, dict):
        kept = {}
        for name, host in hosts.items():
            if host is None:
                warn.append(f"hosts.{name}: null entry, member dropped")
            else:
                kept[str(name)] = host
        doc["hosts"] = kept
    problems: list[str] = []
    _reject_nan(doc, "", problems)
    if problems:
        raise ConfigError(problems)
    try:
        config = Config.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None
    for name, host in config.hosts.items():
        if host.weight == 0:
            what = "prime member" if host.prime else "member"
            warn.append(f"hosts.{name}.weight: 0, {what} gets no new launches but is checked")
    return config


def _reject_nan(node: object, path: str, problems: list[str]) -> None:
    # YAML's .nan parses to a float NaN; report it with its path before pydantic does.
    if isinstance(node, dict):
        for key, value in node.items():
            _reject_nan(value, f"{path}.{key}" if path else str(key), problems)
    elif isinstance(node, float) and not math.isfinite(node):
        problems.append(f"{path}: must be a finite number")


def load_config(path: str | Path, warnings: list[str] | None = None) -> Config:
    """Read and validate a YAML or JSON configuration file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: not UTF-8 text"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{p}: not valid YAML or JSON: {exc}"]) from None
    return parse_config(data, warnings)
