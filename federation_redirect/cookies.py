"""The stickiness cookie: one per repository, naming the member it was sent to.

The cookie name is derived from the repository key (``fr-`` and 16 hex digits of its blake2b
hash), so every ref and every entry point (``/v2``, ``/build``, ``/repo``) of a repository
shares it, and distinct repositories never collide in practice. The value is a member name,
which the policy honours only while that member still is a candidate: any other value is
ignored. The expiry is fixed when the cookie is first set and later redirects do not extend it.
"""

from __future__ import annotations

import math
from email.utils import formatdate
from hashlib import blake2b

__all__ = ["SetCookie", "cookie_name", "read_cookie", "set_cookie_header"]

# An empty 8-byte blake2b state: copying it is cheaper than a new hash object with options.
_EMPTY_HASH = blake2b(digest_size=8)
_ATTRS = "; Path=/; HttpOnly; SameSite=Lax"


def cookie_name(key: str) -> str:
    """The cookie name for repository ``key``."""
    h = _EMPTY_HASH.copy()
    h.update(key.encode())
    return "fr-" + h.hexdigest()


def read_cookie(header: bytes, name: str) -> str | None:
    """The value of cookie ``name`` in a raw ``Cookie`` header, or None. Never raises.

    The header is split at ``;``; the first part that is ``name=value`` (around ASCII
    whitespace) wins, and its value loses surrounding whitespace and double quotes.
    """
    needle = name.encode()
    found = header.find(needle)
    # Only a part that contains the name can match: look at those parts, in order.
    while found >= 0:
        begin = header.rfind(b";", 0, found) + 1
        end = header.find(b";", found)
        part = header[begin:] if end < 0 else header[begin:end]
        k, sep, v = part.strip().partition(b"=")
        if sep and k == needle:
            try:
                return v.strip().strip(b'"').decode("ascii")
            except UnicodeDecodeError:
                return None
        if end < 0:
            return None
        found = header.find(needle, end + 1)
    return None


def set_cookie_header(name: str, member: str, *, now: float, max_age: int, secure: bool) -> bytes:
    """A ``Set-Cookie`` value pinning the repository's cookie to ``member`` for ``max_age`` s.

    ``member`` must be a validated member name (config restricts them to a safe alphabet).
    """
    return SetCookie(max_age).header(name, member, now=now, secure=secure)


class SetCookie:
    """:func:`set_cookie_header` for one ``max_age``, formatting the expiry date at most once
    a second (the same bytes for the same arguments)."""

    __slots__ = ("_second", "_tails", "max_age")

    def __init__(self, max_age: int) -> None:
        self.max_age = max_age
        self._second: float | None = None
        self._tails: tuple[str, str] = ("", "")  # the attributes after the value: plain, Secure

    def header(self, name: str, member: str, *, now: float, secure: bool) -> bytes:
        """The ``Set-Cookie`` value for cookie ``name`` naming ``member``, set at ``now``."""
        max_age = self.max_age
        at = now + max_age
        second = math.floor(at) if math.isfinite(at) else None
        # The date shows whole seconds of ``at`` rounded to microseconds: the same for every
        # ``at`` in [second, second + 0.999999); closer to the next second, format it afresh.
        if second is not None and second >= 0 and at - second < 0.999999:
            if second != self._second:
                self._tails = _tails(formatdate(second, usegmt=True), max_age)
                self._second = second
            tails = self._tails
        else:
            tails = _tails(formatdate(at, usegmt=True), max_age)
        return f"{name}={member}{tails[secure]}".encode("ascii")


def _tails(expires: str, max_age: int) -> tuple[str, str]:
    plain = f"; Expires={expires}; Max-Age={max_age}{_ATTRS}"
    return plain, plain + "; Secure"
