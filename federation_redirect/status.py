"""The public status page, ``GET /status``: one self-contained HTML document.

The page (``static/status.html``, package data) has no build step and loads nothing from
elsewhere: its CSS and JavaScript are inline, and it reads ``/api/v1/federation`` every few
seconds (``?interval=N`` seconds, 1 to 300, default 5) to draw one card per member. It is
served with a Content-Security-Policy that allows exactly its own inline script and style
(by their SHA-256 hashes) and requests to this origin, so nothing injected into it could run.
The API address is the ``data-api`` attribute of its ``<html>`` element: a copy hosted
elsewhere points it at the redirector's absolute URL (the API sends
``Access-Control-Allow-Origin: *``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

__all__ = ["StatusPage", "load_status_page"]


@dataclass(frozen=True, slots=True)
class StatusPage:
    """The page's bytes and the headers to serve them with."""

    body: bytes
    headers: dict[str, str]


def _hashes(html: str, tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
    if not blocks:
        raise ValueError(f"status page has no inline <{tag}>")
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
        for b in blocks
    )


def load_status_page() -> StatusPage:
    """Read the page from the package and derive its Content-Security-Policy (at app build)."""
    html = resources.files("federation_redirect").joinpath("static/status.html").read_text("utf-8")
    policy = "; ".join(
        (
            "default-src 'none'",
            f"script-src {_hashes(html, 'script')}",
            f"style-src {_hashes(html, 'style')}",
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    return StatusPage(
        body=html.encode(),
        headers={
            "Content-Security-Policy": policy,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )
