"""The stickiness cookie: one per repository, naming the member it was sent to.

The cookie name is derived from the repository key (``fr-`` and 16 hex digits of its blake2b
hash), so every ref and every entry point (``/v2``, ``/build``, ``/repo``) of a repository
shares it, and distinct repositories never collide in practice. The value is a member name,
which the policy honours only while that member still is a candidate: any other value is
ignored. The expiry is fixed when the cookie is first set and later redirects do not extend it.
"""

from __future__ import annotations

from email.utils import formatdate
from hashlib import blake2b

__all__ = ["cookie_name", "read_cookie", "set_cookie_header"]


def cookie_name(key: str) -> str:
    """The cookie name for repository ``key``."""
    return "fr-" + blake2b(key.encode(), digest_size=8).hexdigest()


def read_cookie(header: bytes, name: str) -> str | None:
    """The value of cookie ``name`` in a raw ``Cookie`` header, or None. Never raises."""
    needle = name.encode()
    for part in header.split(b";"):
        k, sep, v = part.strip().partition(b"=")
        if sep and k == needle:
            try:
                return v.strip().strip(b'"').decode("ascii")
            except UnicodeDecodeError:
                return None
    return None


def set_cookie_header(name: str, member: str, *, now: float, max_age: int, secure: bool) -> bytes:
    """A ``Set-Cookie`` value pinning the repository's cookie to ``member`` for ``max_age`` s.

    ``member`` must be a validated member name (config restricts them to a safe alphabet).
    """
    expires = formatdate(now + max_age, usegmt=True)
    attrs = f"{name}={member}; Expires={expires}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax"
    if secure:
        attrs += "; Secure"
    return attrs.encode("ascii")
