"""How fast the redirector answers over real HTTP, next to the bare-ASGI ceiling.

Usage::

    python bench/http_bench.py [--json PATH] [--duration 2] [--rounds 5] [--repos 10000]
                               [--no-redis]

About 2 minutes on 2 CPUs. Everything runs on this machine, on 127.0.0.1:

* three fake members (``python -m federation_redirect.testing --control``), reporting pod
  quotas of 1,000,000, so that no load bound is active;
* side by side on one CPU (``--server-cpu``, default 0; like ``taskset -c``): the ceiling
  (``bench/ceiling.py``: uvicorn, uvloop, httptools, a fixed 307), the redirector
  (``python -m federation_redirect serve``, default log level) with the in-memory store, and
  another with the Redis store (a throwaway ``redis-server``, see
  :mod:`federation_redirect.localredis`); the load generators, the members and Redis run on
  another CPU (``--load-cpu``, default 1).

The configuration is production's (``bounded``, default ``routing`` and ``check`` settings)
except: ``per_repo_cap`` 1,000,000 (each repository is launched hundreds of times in a run)
and a health check period of 2 s (so that the members' new quotas are seen quickly).

Cases (each request file cycles over ``--repos`` distinct repositories; every request has
browser-like headers and ``X-Forwarded-For``/``-Proto: https`` as behind the ingress):

``v2``      ``/v2/gh/<org>/<repo>/<ref>`` launches without cookie (answer: 307 + Set-Cookie).
``build``   ``/build/gh/...`` with ``Origin`` (answer: 307 + CORS + Set-Cookie).
``cookie``  ``/v2`` launches carrying a valid stickiness cookie among other cookies.
``home``    ``/``: the home page, proxied to the prime member.
``bounded`` ``/v2`` launches while the members report quotas of 60: every load bound is
            active and launches spill or saturate (the reasons are shown).

Each redirector first serves 3 s of launches (a production replica has run for days: its
ranking cache, interned keys and launch counters are full). Then the redirect cases (``v2``,
``build``, ``cookie``) are measured in ``--rounds`` interleaved rounds: in each, the ceiling,
then every case on each redirector (their order alternating from round to round), so that a
drift of this machine's speed during the run falls on every server alike; a row reports the
median of its rounds and their range. Each is a **saturation** run of ``--duration`` seconds
with wrk (``-t1 -c50``, a Lua script that cycles through the request file; without wrk,
``bench/loadgen.py`` in closed loop, much slower): requests/s and wrk's latency p50/p99;
**CPU** of the server process over that run (from ``/proc/<pid>/task/*/schedstat``) divided by
the requests answered, and the share of the wall time it was busy (below ~95 %: the load
generator, not the server, was the limit). Then, per row, a **fixed offered rate** of 2,000
requests/s (``bench/loadgen.py``, open loop, latency from when each request was due; half the
saturation rate if that is lower, so that the queue stays bounded); the server's **peak RSS**
(VmHWM) so far; and how the redirector decided (from its ``/metrics``). ``bounded`` and
``home`` (no target) get one run each after a 1 s warm-up. ``x ceiling`` is requests/s over
the ceiling's in the same run; ``other`` is the CPU used meanwhile by processes that are not
this benchmark's (from ``/proc/stat``; the most of any round): when it is high, the figures
are not to be trusted. The redirectors' log lines during the load phases are counted (there
should be none). As root, the servers, members and generators run at nice -10
(``--priority``). ``--json PATH`` writes everything.

wrk is Debian's: if it is missing and we are root, ``apt-get install -y wrk`` is tried once
(``--no-install`` to skip). Exit status 1 if a target (README, "Performance") is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from federation_redirect.cookies import cookie_name
from federation_redirect.hashing import rank
from federation_redirect.keys import launch_key
from federation_redirect.localredis import LocalRedis

HERE = Path(__file__).resolve().parent
MEMBERS = ("a", "b", "c")
BIG_QUOTA = 1_000_000
SMALL_QUOTA = 60
CONNECTIONS = 50
FIXED_RATE = 2000.0

# Targets (README, "Performance")
TARGET_RATIO = 0.45
TARGET_P99_US = 2000.0
TARGET_RSS_MIB = 80.0
SERVER_WARM_UP_S = 3.0
ROUND_CASES = ("v2", "build", "cookie")
TARGET_REDIS_SHARE = 0.90

LUA = r"""
local reqs = {}
local n = 0
local i = 0

init = function(args)
  for line in io.lines(args[1]) do
    local fields = {}
    for f in string.gmatch(line, "[^\t]+") do fields[#fields + 1] = f end
    local method, path = string.match(fields[1], "^(%S+) (.+)$")
    local headers = {}
    for k = 2, #fields do
      local name, value = string.match(fields[k], "^([^:]+): (.*)$")
      headers[name] = value
    end
    n = n + 1
    reqs[n] = wrk.format(method, path, headers)
  end
end

request = function()
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\n{"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "latency_us": {"p50": %d, "p90": %d, ' ..
    '"p99": %d, "p999": %d, "max": %d}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"""

BROWSER = (
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Accept-Language: en-GB,en;q=0.5",
    "Accept-Encoding: gzip, deflate, br",
    "X-Forwarded-For: 203.0.113.7",
    "X-Forwarded-Proto: https",
)


# -- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(cpu: int | None, priority: int = 0) -> Callable[[], None]:
    """Run in the child before exec: its CPU (like ``taskset -c``) and its nice value."""

    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if priority:
            with contextlib.suppress(PermissionError):
                os.setpriority(os.PRIO_PROCESS, 0, priority)

    return setup


class Processes:
    """Children of this benchmark; every one is stopped on exit."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        argv: Sequence[str],
        *,
        cpu: int | None,
        stderr: Path | None = None,
        stdout: bool = False,
        priority: int = 0,
    ) -> subprocess.Popen[bytes]:
        err = open(stderr, "wb") if stderr else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=err,
            preexec_fn=pinned(cpu, priority),  # CPU affinity and nice value only
        )
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)


def wait_http(port: int, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            status, _, _ = http_get(port, path)
            if status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"127.0.0.1:{port}{path} did not answer 200 within {timeout:g} s")


def http_get(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def http_post_json(url: str, document: object) -> None:
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        body = json.dumps(document)
        conn.request("POST", "/_control", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}/_control answered {response.status}")
    finally:
        conn.close()


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far (ns resolution from schedstat)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        return total / 1e9
    except FileNotFoundError:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def machine_busy() -> float:
    """CPU seconds every CPU of this machine spent busy so far (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_busy() -> float:
    """CPU seconds used so far by this process and all its children, living or waited for."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total = 0.0
    todo = list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo += children.get(pid, [])
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


# -- requests ---------------------------------------------------------------------------------


def repo_path(k: int, entry: str = "v2") -> str:
    ref = ("HEAD", "main", f"{k * 2654435761 % 16**12:012x}")[k % 3]
    query = "?urlpath=lab/tree/index.ipynb" if k % 4 == 0 else ""
    return f"/{entry}/gh/bench-org-{k % 997}/repo-{k}/{ref}{query}"


def write_requests(path: Path, lines: Iterator[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="ascii")
    return path


def request_files(workdir: Path, repos: int) -> dict[str, Path]:
    browser = "\t".join(BROWSER)
    page = "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"

    def cookie_line(k: int) -> str:
        path = repo_path(k)
        key = launch_key(path.partition("?")[0])
        # equal quotas, so equal capacity weights: the member the hash chooses
        member = rank(key, [(m, 1.0) for m in MEMBERS])[0][0]
        other = cookie_name(launch_key(repo_path(k + 1).partition("?")[0]))
        cookies = f"_xsrf=2|7a1e|1b2c3d4e5f; {other}=b; {cookie_name(key)}={member}"
        return f"GET {path}\t{page}\t{browser}\tCookie: {cookies}"

    return {
        "v2": write_requests(
            workdir / "v2.txt", (f"GET {repo_path(k)}\t{page}\t{browser}" for k in range(repos))
        ),
        "build": write_requests(
            workdir / "build.txt",
            (
                f"GET {repo_path(k, 'build')}\tAccept: text/event-stream\t"
                f"Origin: https://mybinder.org\t{browser}"
                for k in range(repos)
            ),
        ),
        "cookie": write_requests(workdir / "cookie.txt", (cookie_line(k) for k in range(repos))),
        "home": write_requests(workdir / "home.txt", iter([f"GET /\t{page}\t{browser}"])),
    }


# -- measurement ------------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    server: str  # "ceiling", "memory" or "redis"
    requests: int = 0
    errors: int = 0
    rps: float = 0.0
    ratio: float | None = None
    p50_us: float = 0.0
    p99_us: float = 0.0
    cpu_us: float = 0.0
    busy: float = 0.0  # share of the saturation run the server was on its CPU
    fixed_offered: float = 0.0
    fixed_rate: float = 0.0
    fixed_p50_us: float | None = None
    fixed_p99_us: float | None = None
    fixed_p999_us: float | None = None
    fixed_errors: int = 0
    fixed_late: float = 0.0  # share of the requests the generator sent > 100 us late
    other_load: float = 0.0  # CPU used by processes that are not this benchmark's, in CPUs
    rss_mib: float = 0.0
    reasons: dict[str, float] = field(default_factory=dict)
    samples: list[float] = field(default_factory=list)  # requests/s of each round


@dataclass
class Saturation:
    requests: int
    duration: float
    errors: int
    p50_us: float
    p99_us: float
    cpu_s: float = 0.0  # the server's CPU time over the run
    other_load: float = 0.0  # CPUs used meanwhile by processes not of this benchmark

    @property
    def rps(self) -> float:
        return self.requests / self.duration


class Driver:
    """Runs the load generators (pinned to the load CPU, at high priority when allowed)."""

    def __init__(self, args: argparse.Namespace, wrk: str | None, workdir: Path) -> None:
        self.args = args
        self.wrk = wrk
        self.lua = workdir / "requests.lua"
        self.lua.write_text(LUA)
        self.setup = pinned(None, args.priority)

    def run(self, argv: list[str]) -> str:
        return subprocess.run(
            argv, capture_output=True, text=True, check=True, preexec_fn=self.setup
        ).stdout

    def saturate(self, port: int, requests: Path, duration: float) -> Saturation:
        if self.wrk:
            out = self.run(
                [self.wrk, "-t1", f"-c{CONNECTIONS}", f"-d{duration:g}s", "--timeout", "5s",
                 "-s", str(self.lua), f"http://127.0.0.1:{port}", "--", str(requests)]
            )  # fmt: skip
            doc = json.loads(out[out.rindex("\n{") :])
            latency = doc["latency_us"]
            return Saturation(
                doc["requests"],
                doc["duration_us"] / 1e6,
                sum(doc["errors"].values()),
                latency["p50"],
                latency["p99"],
            )
        doc = self.loadgen(port, requests, ["--connections", str(CONNECTIONS)], duration)
        latency = doc["latency_us"]
        bad = sum(n for status, n in doc["statuses"].items() if status >= "400")
        return Saturation(
            doc["requests"], doc["duration_s"], doc["errors"] + bad, latency["p50"], latency["p99"]
        )

    def loadgen(self, port: int, requests: Path, extra: list[str], duration: float) -> Any:
        argv = [sys.executable, str(HERE / "loadgen.py"), "--port", str(port),
                "--requests", str(requests), "--duration", str(duration), *extra]  # fmt: skip
        return json.loads(self.run(argv))

    def sample(self, port: int, pid: int, requests: Path, duration: float) -> Saturation:
        """One saturation run, with the server's CPU time and the machine's other load."""
        machine0, own0, cpu0 = machine_busy(), own_busy(), cpu_seconds(pid)
        wall0 = time.monotonic()
        sat = self.saturate(port, requests, duration)
        sat.cpu_s = cpu_seconds(pid) - cpu0
        foreign = (machine_busy() - machine0) - (own_busy() - own0)
        sat.other_load = max(0.0, foreign / (time.monotonic() - wall0))
        return sat

    def fixed(self, row: Row, port: int, requests: Path) -> None:
        """Latency at a fixed offered rate (below capacity, or the open-loop queue and the
        memory would grow without end)."""
        row.fixed_offered = min(FIXED_RATE, round(row.rps / 2, -2) or 100.0)
        fixed = self.loadgen(
            port, requests, ["--rate", str(row.fixed_offered)], self.args.rate_duration
        )
        latency = fixed["latency_us"]
        row.fixed_p50_us = latency["p50"]
        row.fixed_p99_us = latency["p99"]
        row.fixed_p999_us = latency["p999"]
        row.fixed_rate = fixed["rate"]
        row.fixed_errors = fixed["errors"]
        row.fixed_late = fixed["late_sends"] / max(fixed["requests"], 1)


def summarise(row: Row, samples: list[Saturation]) -> Row:
    """The row's saturation figures: the median of its rounds (the most loaded round's
    ``other``)."""
    row.samples = [round(s.rps) for s in samples]
    row.requests = sum(s.requests for s in samples)
    row.errors = sum(s.errors for s in samples)
    row.rps = statistics.median(s.rps for s in samples)
    row.p50_us = statistics.median(s.p50_us for s in samples)
    row.p99_us = statistics.median(s.p99_us for s in samples)
    row.cpu_us = statistics.median(s.cpu_s / max(s.requests, 1) * 1e6 for s in samples)
    row.busy = statistics.median(s.cpu_s / s.duration for s in samples)
    row.other_load = max(s.other_load for s in samples)
    return row


def redirect_counts(port: int) -> dict[str, float]:
    _, _, body = http_get(port, "/metrics")
    counts: dict[str, float] = {}
    for match in re.finditer(
        rb'^federation_redirects_total\{member="[^"]*",reason="([^"]*)"\} (\S+)$', body, re.M
    ):
        reason = match.group(1).decode()
        counts[reason] = counts.get(reason, 0.0) + float(match.group(2))
    return counts


def quotas_seen(port: int) -> dict[str, float]:
    _, _, body = http_get(port, "/metrics")
    pattern = rb'^federation_member_quota_pods\{member="([^"]*)"\} (\S+)$'
    return {m.group(1).decode(): float(m.group(2)) for m in re.finditer(pattern, body, re.M)}


def set_quotas(members: dict[str, str], port: int, quota: int) -> None:
    for url in members.values():
        http_post_json(url, {"pods": [0, quota]})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if all(quotas_seen(port).get(m) == quota for m in members):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the redirector did not see quotas of {quota} within 20 s")


def check_answer(port: int, requests: Path, case: str) -> None:
    """One request of the case, checked, so a broken server cannot post good figures."""
    line = requests.read_text().splitlines()[0].split("\t")
    path = line[0].split(" ", 1)[1]
    headers = dict(h.split(": ", 1) for h in line[1:])
    status, got, _ = http_get(port, path, headers)
    if case == "home":
        ok = status == 200
    else:
        ok = status == 307 and "location" in got
        if case == "cookie":
            ok = ok and "set-cookie" not in got
        elif case in ("v2", "build"):
            ok = ok and "secure" in got.get("set-cookie", "").lower()
        if case == "build":
            ok = ok and got.get("access-control-allow-origin") == "*"
    if not ok:
        raise RuntimeError(f"{case}: unexpected answer {status} {got}")


# -- the run ----------------------------------------------------------------------------------


def find_wrk(install: bool) -> str | None:
    found = shutil.which("wrk")
    if found or not install:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
    return shutil.which("wrk")


def write_config(path: Path, members: dict[str, str]) -> Path:
    lines = ["hosts:"]
    for name, url in members.items():
        prime = ", prime: true" if name == "a" else ""
        lines.append(f"  {name}: {{url: '{url}', weight: 50{prime}}}")
    lines += [
        "load_balancer: bounded",
        "check: {period: 2}",
        "routing: {per_repo_cap: 1000000}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Server:
    name: str  # "ceiling", "memory" or "redis"
    proc: subprocess.Popen[bytes]
    port: int
    log: Path | None = None
    quiet_from: int = 0  # log lines before the load phases

    @property
    def pid(self) -> int:
        return self.proc.pid


class Reasons:
    """How a redirector decided over some runs (from its ``/metrics``)."""

    def __init__(self) -> None:
        self.counts: dict[str, float] = {}

    def around(self, port: int, measure: Callable[[], Saturation]) -> Saturation:
        before = redirect_counts(port)
        sat = measure()
        for reason, n in redirect_counts(port).items():
            self.counts[reason] = self.counts.get(reason, 0.0) + n - before.get(reason, 0.0)
        return sat

    def shares(self) -> dict[str, float]:
        total = sum(self.counts.values())
        return {r: round(n / total, 4) for r, n in sorted(self.counts.items()) if total and n > 0}


def start_servers(
    args: argparse.Namespace, procs: Processes, config: Path, workdir: Path, cpu: int | None
) -> tuple[list[Server], LocalRedis | None]:
    """The ceiling and the redirectors, side by side on the server CPU."""
    port = free_port()
    ceiling = procs.start(
        [sys.executable, str(HERE / "ceiling.py"), "--port", str(port)],
        cpu=cpu,
        priority=args.priority,
    )
    servers = [Server("ceiling", ceiling, port)]
    redis = None
    for store in ["memory"] if args.no_redis else ["memory", "redis"]:
        port = free_port()
        argv = [sys.executable, "-m", "federation_redirect", "serve", "--config",
                str(config), "--port", str(port)]  # fmt: skip
        if store == "redis":
            redis = LocalRedis()
            redis.start()
            argv += ["--redis-url", redis.url]
        log = workdir / f"{store}.log"
        proc = procs.start(argv, cpu=cpu, stderr=log, priority=args.priority)
        servers.append(Server(store, proc, port, log))
    wait_for_port(servers[0].port)
    for server in servers[1:]:
        wait_http(server.port, "/readyz")
    return servers, redis


def run(args: argparse.Namespace) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu: int | None = args.server_cpu
    load_cpu: int | None = args.load_cpu
    if server_cpu not in cpus or load_cpu not in cpus or server_cpu == load_cpu:
        print(f"warning: CPUs {cpus}: running unpinned", file=sys.stderr)
        server_cpu = load_cpu = None
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})  # children (members, Redis, generators) inherit it
    wrk = find_wrk(not args.no_install)
    if wrk is None:
        print("warning: no wrk: saturation by bench/loadgen.py (slower)", file=sys.stderr)
    procs = Processes()
    rows: list[Row] = []
    log_lines: dict[str, list[str]] = {}
    redis: LocalRedis | None = None
    with tempfile.TemporaryDirectory(prefix="federation-redirect-bench-") as tmp:
        workdir = Path(tmp)
        files = request_files(workdir, args.repos)
        driver = Driver(args, wrk, workdir)
        try:
            members: dict[str, str] = {}
            for name in MEMBERS:
                proc = procs.start(
                    [sys.executable, "-m", "federation_redirect.testing", "--name", name,
                     "--port", "0", "--quota", str(BIG_QUOTA), "--control"],
                    cpu=load_cpu,
                    stdout=True,
                    priority=args.priority,  # the home page case needs them as much as wrk
                )  # fmt: skip
                assert proc.stdout is not None
                members[name] = proc.stdout.readline().decode().strip()
            config = write_config(workdir / "bench.yaml", members)
            servers, redis = start_servers(args, procs, config, workdir, server_cpu)
            ceiling, redirectors = servers[0], servers[1:]
            for server in redirectors:
                # A replica in production has run for days: fill its ranking cache, interned
                # keys and launch counters before measuring anything.
                print(f"{server.name}: warming up ...", file=sys.stderr)
                driver.saturate(server.port, files["v2"], SERVER_WARM_UP_S)
                for case in ROUND_CASES:
                    check_answer(server.port, files[case], case)
                assert server.log is not None
                server.quiet_from = len(server.log.read_bytes().splitlines())

            driver.saturate(ceiling.port, files["v2"], 1.0)  # warm-up
            # The redirect cases in interleaved rounds: the ceiling, then each case on each
            # redirector (their order alternating), so that a drift of the machine's speed
            # during the run falls on every server alike.
            samples: dict[tuple[str, str], list[Saturation]] = {}
            reasons: dict[tuple[str, str], Reasons] = {}
            for n in range(args.rounds):
                print(f"round {n + 1} of {args.rounds} ...", file=sys.stderr)
                samples.setdefault(("v2", "ceiling"), []).append(
                    driver.sample(ceiling.port, ceiling.pid, files["v2"], args.duration)
                )
                order = redirectors if n % 2 == 0 else redirectors[::-1]
                for case in ROUND_CASES:
                    for server in order:
                        key = (case, server.name)
                        counted = reasons.setdefault(key, Reasons())
                        measure = partial(
                            driver.sample, server.port, server.pid, files[case], args.duration
                        )
                        samples.setdefault(key, []).append(counted.around(server.port, measure))
            by_name = {s.name: s for s in servers}
            for (case, name), runs in samples.items():
                server = by_name[name]
                row = summarise(Row(case, name), runs)
                if (case, name) in reasons:
                    row.reasons = reasons[(case, name)].shares()
                print(f"{name}: {case} at 2,000/s ...", file=sys.stderr)
                driver.fixed(row, server.port, files[case])
                row.rss_mib = peak_rss_kib(server.pid) / 1024
                rows.append(row)
            procs.stop(ceiling.proc)

            # Bounds active, then the home page: no target, one run per redirector.
            for case in ("bounded", "home"):
                requests = files["v2" if case == "bounded" else case]
                if case == "bounded":
                    for server in redirectors:
                        set_quotas(members, server.port, SMALL_QUOTA)
                for server in redirectors:
                    print(f"{server.name}: {case} ...", file=sys.stderr)
                    check_answer(server.port, requests, case)
                    driver.saturate(server.port, requests, 1.0)  # warm-up
                    counted = Reasons()
                    measure = partial(
                        driver.sample, server.port, server.pid, requests, args.duration
                    )
                    sat = counted.around(server.port, measure)
                    row = summarise(Row(case, server.name), [sat])
                    row.reasons = counted.shares()
                    driver.fixed(row, server.port, requests)
                    row.rss_mib = peak_rss_kib(server.pid) / 1024
                    rows.append(row)
                if case == "bounded":
                    for server in redirectors:
                        set_quotas(members, server.port, BIG_QUOTA)
            for server in redirectors:
                assert server.log is not None
                log_lines[server.name] = server.log.read_text().splitlines()[server.quiet_from :]
        finally:
            procs.stop_all()
            if redis is not None:
                redis.close()
    server_order = ("ceiling", "memory", "redis")
    case_order = ("v2", "build", "cookie", "bounded", "home")
    rows.sort(key=lambda r: (server_order.index(r.server), case_order.index(r.case)))
    ceiling_rps = rows[0].rps
    for row in rows:
        row.ratio = row.rps / ceiling_rps if ceiling_rps else None
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "generator": "wrk" if wrk else "bench/loadgen.py",
            "pinned": {"server": server_cpu, "load": load_cpu},
        },
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "fixed_rate": FIXED_RATE,
            "fixed_duration_s": args.rate_duration,
            "connections": CONNECTIONS,
            "repos": args.repos,
        },
        "rows": [asdict(r) for r in rows],
        "log_lines_during_load": log_lines,
    }


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


# -- report -----------------------------------------------------------------------------------


def spread(samples: list[float]) -> str:
    """The lowest and highest requests/s of a row's rounds, in thousands."""
    if len(samples) < 2:
        return ""
    return f"{min(samples) / 1e3:.1f}-{max(samples) / 1e3:.1f}"


def table(result: dict[str, Any]) -> str:
    rows = [Row(**r) for r in result["rows"]]
    head = (
        f"{'case':8} {'server':8} {'req/s':>8} {'rounds k':>11} {'x ceil':>6} {'p50 ms':>6} "
        f"{'p99 ms':>6} "
        f"{'us CPU':>6} {'busy':>4} {'fixed/s':>7} {'p50 ms':>6} {'p99 ms':>6} {'RSS MiB':>7} "
        f"{'other':>5}  decisions"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        reasons = " ".join(f"{k} {v:.0%}" for k, v in r.reasons.items())
        lines.append(
            f"{r.case:8} {r.server:8} {r.rps:>8,.0f} {spread(r.samples):>11} "
            f"{r.ratio or 0:>6.2f} {r.p50_us / 1e3:>6.2f} "
            f"{r.p99_us / 1e3:>6.2f} {r.cpu_us:>6.1f} {r.busy:>4.0%} {r.fixed_offered:>7,.0f} "
            f"{(r.fixed_p50_us or 0) / 1e3:>6.2f} {(r.fixed_p99_us or 0) / 1e3:>6.2f} "
            f"{r.rss_mib:>7.1f} {r.other_load:>5.2f}  {reasons}"
        )
    lines.append(
        "req/s, p50/p99 (from wrk, 50 connections), us CPU and busy: the median of the "
        "rounds (rounds k: their lowest and highest req/s, in thousands); fixed/s: the offered "
        "rate of the open-loop run and its p50/p99; us CPU: server CPU per request; busy: its "
        "share of the saturation run; other: CPUs used meanwhile by processes not of this "
        "benchmark (the most of any round)"
    )
    return "\n".join(lines)


def verdicts(result: dict[str, Any]) -> list[tuple[str, bool, str]]:
    rows = [Row(**r) for r in result["rows"]]
    out: list[tuple[str, bool, str]] = []
    redirects = [r for r in rows if r.server != "ceiling" and r.case in ("v2", "build", "cookie")]
    for r in redirects:
        out.append(
            (f"{r.server} {r.case}: >= {TARGET_RATIO} x ceiling", (r.ratio or 0) >= TARGET_RATIO,
             f"{r.ratio:.2f} x")
        )  # fmt: skip
    for r in redirects:
        p99 = r.fixed_p99_us or float("inf")
        out.append(
            (f"{r.server} {r.case}: p99 at 2,000/s < 2 ms", p99 < TARGET_P99_US,
             f"{p99 / 1000:.2f} ms")
        )  # fmt: skip
    for server in ("memory", "redis"):
        peak = max((r.rss_mib for r in rows if r.server == server), default=None)
        if peak is not None:
            out.append((f"{server}: peak RSS < 80 MiB", peak < TARGET_RSS_MIB, f"{peak:.1f} MiB"))
    memory = {r.case: r.rps for r in rows if r.server == "memory"}
    for r in redirects:
        if r.server == "redis" and memory.get(r.case):
            share = r.rps / memory[r.case]
            out.append(
                (f"redis {r.case}: >= 90 % of memory", share >= TARGET_REDIS_SHARE, f"{share:.0%}")
            )
    logs = result["log_lines_during_load"]
    assert isinstance(logs, dict)
    for server, lines in logs.items():
        out.append((f"{server}: no log line per request", not lines, f"{len(lines)} lines"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    parser.add_argument(
        "--duration", type=float, default=2.0, help="seconds of each saturation run (2)"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds of the redirect cases (5)"
    )
    parser.add_argument("--rate-duration", type=float, default=3.0, help="fixed-rate seconds (3)")
    parser.add_argument("--repos", type=int, default=10_000, help="distinct repositories (10000)")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis store")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    parser.add_argument(
        "--priority",
        type=int,
        default=-10 if os.geteuid() == 0 else 0,
        help="nice value of the servers and load generators (default -10 as root, else 0)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = run(args)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    print(table(result))
    print()
    failed = False
    for name, ok, value in verdicts(result):
        failed |= not ok
        print(f"{'holds ' if ok else 'MISSED'}  {name}: {value}")
    result["targets"] = [{"target": n, "holds": ok, "value": v} for n, ok, v in verdicts(result)]
    print(f"\n{result['elapsed_s']} s; generator {result['machine']['generator']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
