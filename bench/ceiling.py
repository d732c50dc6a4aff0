"""The bare-ASGI ceiling: the smallest uvicorn app, answering every request with a fixed 307.

Usage::

    python bench/ceiling.py --port 8081

uvicorn with uvloop and httptools, no access log, no lifespan, every other setting uvicorn's
default. ``bench/http_bench.py`` serves it on the same CPU as the redirector and measures
both the same way: how fast the redirector answers is reported as a fraction of this.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

_START = {
    "type": "http.response.start",
    "status": 307,
    "headers": [
        (b"location", b"https://example.org/v2/gh/org/repo/HEAD"),
        (b"content-length", b"0"),
    ],
}
_BODY = {"type": "http.response.body", "body": b""}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send(_START)
        await send(_BODY)


def main() -> None:
    parser = argparse.ArgumentParser(description="The bare-ASGI ceiling (a fixed 307).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        lifespan="off",
        log_level="warning",
    )


if __name__ == "__main__":
    main()
