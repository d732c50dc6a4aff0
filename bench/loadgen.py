"""A small HTTP/1.1 load generator: a fixed offered rate (open loop), or as fast as possible.

Usage (``bench/http_bench.py`` runs it in its own process, pinned to the load CPU)::

    python bench/loadgen.py --port 8080 --requests FILE --rate 2000 --duration 3
    python bench/loadgen.py --port 8080 --requests FILE --connections 50 --duration 4

It prints one JSON document: requests completed, errors, achieved rate and latency
percentiles in microseconds.

``FILE`` has one request per line: ``METHOD PATH`` then tab-separated ``Name: value`` headers
(the format ``bench/http_bench.py`` writes and its wrk script reads). Requests are sent in
file order, cycling.

**Fixed rate** (``--rate R``): request ``i`` is due at ``start + i / R``, whatever happened
to the ones before it (open loop, so a slow answer cannot hold the next requests back, the
"coordinated omission" of closed-loop generators). Its latency is measured from the instant
it was *due* to the last byte of its answer, so time a request waited for a free connection
counts against the server. Each due request goes out on an idle keep-alive connection, or on
a new one (at most ``--max-connections``). While an answer is expected within 2 ms the loop
polls its sockets without sleeping (``epoll`` with a zero timeout), so arrivals are timed to
the microsecond; otherwise it sleeps until just before the next request is due, leaving the
CPU to the members that share it. ``late_sends`` counts requests sent more than 100 us after
they were due (the generator itself was held up).

**Saturation** (no ``--rate``): ``--connections`` keep-alive connections, each sending its next
request as soon as the previous answer is complete (closed loop, like wrk). It is the fallback
when wrk is not installed, and much slower than wrk: check the server's busy share.

Answers are parsed only as far as needed: status line, ``Content-Length`` or chunked
framing. Standard library only; Linux (``select.epoll``).
"""

from __future__ import annotations

import argparse
import json
import math
import select
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field


def read_requests(path: str, host: str) -> list[bytes]:
    """The request file as raw HTTP/1.1 requests."""
    out = []
    with open(path, encoding="ascii") as lines:
        for line in lines:
            fields = line.rstrip("\n").split("\t")
            if not fields[0]:
                continue
            head = [f"{fields[0]} HTTP/1.1", f"Host: {host}", *fields[1:], "", ""]
            out.append("\r\n".join(head).encode("ascii"))
    if not out:
        raise SystemExit(f"{path}: no requests")
    return out


@dataclass
class _Conn:
    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)
    due: float = 0.0  # when the request in flight was due (fixed rate) or sent


def _complete(buffer: bytearray) -> int:
    """Length of the first complete HTTP response in ``buffer``, 0 if incomplete, -1 if bad."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return 0
    head = bytes(buffer[:end]).lower()
    if not head.startswith(b"http/1.1 "):
        return -1
    body = end + 4
    marker = head.find(b"\r\ncontent-length:")
    if marker >= 0:
        stop = head.find(b"\r\n", marker + 2)
        length = int(head[marker + 17 : stop if stop >= 0 else None])
        return body + length if len(buffer) >= body + length else 0
    if b"\r\ntransfer-encoding: chunked" in head:
        last = buffer.find(b"\r\n0\r\n\r\n", body - 2)
        return last + 7 if last >= 0 else 0
    status = int(head[9:12])
    if status in (204, 304) or 100 <= status < 200:
        return body
    return -1  # read-until-close answers are not used by the redirector


@dataclass
class Result:
    requests: int = 0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    duration: float = 0.0
    connections: int = 0
    late_sends: int = 0  # sent more than 100 us after being due (generator fell behind)

    def to_json(self) -> dict[str, object]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return round(lat[min(len(lat) - 1, math.ceil(p / 100 * len(lat)) - 1)] * 1e6, 1)

        return {
            "requests": self.requests,
            "errors": self.errors,
            "statuses": self.statuses,
            "duration_s": round(self.duration, 3),
            "rate": round(self.requests / self.duration, 1) if self.duration else 0.0,
            "connections": self.connections,
            "late_sends": self.late_sends,
            "latency_us": {
                "p50": pct(50),
                "p90": pct(90),
                "p99": pct(99),
                "p999": pct(99.9),
                "max": pct(100),
            },
        }


class Generator:
    def __init__(self, host: str, port: int, requests: list[bytes], max_connections: int) -> None:
        self.address = (host, port)
        self.requests = requests
        self.max_connections = max_connections
        self.poller = select.epoll()
        self.conns: dict[int, _Conn] = {}
        self.idle: deque[_Conn] = deque()
        self.busy: dict[int, _Conn] = {}
        self.result = Result()
        self.next = 0

    def open(self) -> _Conn:
        sock = socket.create_connection(self.address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn = _Conn(sock)
        self.conns[sock.fileno()] = conn
        self.poller.register(sock.fileno(), select.EPOLLIN)
        self.result.connections += 1
        return conn

    def close(self) -> None:
        for conn in self.conns.values():
            conn.sock.close()
        self.poller.close()

    def send(self, conn: _Conn, due: float) -> None:
        request = self.requests[self.next]
        self.next = (self.next + 1) % len(self.requests)
        conn.due = due
        conn.sock.sendall(request)  # small requests fit the socket buffer
        self.busy[conn.sock.fileno()] = conn

    def poll(self, timeout: float = 0) -> list[_Conn]:
        """Read what arrived; return the connections whose answer is complete."""
        done = []
        for fd, _ in self.poller.poll(timeout):
            conn = self.conns[fd]
            try:
                data = conn.sock.recv(65536)
            except BlockingIOError:
                continue
            now = time.perf_counter()
            if not data:
                self.drop(conn)
                continue
            conn.buffer += data
            length = _complete(conn.buffer)
            if length < 0:
                self.drop(conn)
                continue
            if length:
                status = bytes(conn.buffer[9:12]).decode("ascii", "replace")
                del conn.buffer[:length]
                del self.busy[fd]
                result = self.result
                result.requests += 1
                result.statuses[status] = result.statuses.get(status, 0) + 1
                result.latencies.append(now - conn.due)
                done.append(conn)
        return done

    def drop(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        self.result.errors += 1
        self.poller.unregister(fd)
        conn.sock.close()
        self.conns.pop(fd, None)
        self.busy.pop(fd, None)
        if conn in self.idle:
            self.idle.remove(conn)

    def fixed_rate(self, rate: float, duration: float, connections: int) -> Result:
        for _ in range(connections):
            self.idle.append(self.open())
        interval = 1.0 / rate
        total = int(rate * duration)
        start = time.perf_counter() + 0.01
        sent = 0
        waiting: deque[float] = deque()  # due times without a free connection yet
        while sent < total or self.busy or waiting:
            now = time.perf_counter()
            while sent < total and start + sent * interval <= now:
                waiting.append(start + sent * interval)
                sent += 1
            while waiting:
                if not self.idle:
                    if len(self.conns) >= self.max_connections:
                        break
                    self.idle.append(self.open())
                due = waiting.popleft()
                if now - due > 100e-6:
                    self.result.late_sends += 1
                self.send(self.idle.popleft(), due)
            self.idle.extend(self.poll(self._timeout(now, start + sent * interval)))
            if now > start + duration + 5.0:  # answers that never come
                self.result.errors += len(self.busy) + len(waiting)
                break
        self.result.duration = time.perf_counter() - start
        return self.result

    def _timeout(self, now: float, next_due: float) -> float:
        """How long the next poll may block. The loop spins (0) while an answer is due soon,
        so arrivals are timed to the microsecond; otherwise it sleeps, to leave the CPU to the
        members that share it, waking a little before the next request is due."""
        if self.busy:
            oldest = min(conn.due for conn in self.busy.values())
            return 0.0 if now - oldest < 0.002 else 0.001  # epoll counts milliseconds
        wait = next_due - now
        if wait > 200e-6:
            time.sleep(wait - 150e-6)  # clock_nanosleep: tens of microseconds late at worst
        return 0.0

    def saturate(self, duration: float, connections: int) -> Result:
        start = time.perf_counter()
        for _ in range(connections):
            self.send(self.open(), time.perf_counter())
        end = start + duration
        while time.perf_counter() < end:
            for conn in self.poll(0.01):
                self.send(conn, time.perf_counter())
        self.result.duration = time.perf_counter() - start
        return self.result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", required=True, metavar="FILE")
    parser.add_argument("--rate", type=float, help="requests per second (open loop)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds (default 3)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--max-connections", type=int, default=256)
    args = parser.parse_args(argv)
    requests = read_requests(args.requests, f"{args.host}:{args.port}")
    gen = Generator(args.host, args.port, requests, args.max_connections)
    try:
        if args.rate:
            result = gen.fixed_rate(args.rate, args.duration, args.connections)
        else:
            result = gen.saturate(args.duration, args.connections)
    finally:
        gen.close()
    json.dump(result.to_json(), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
