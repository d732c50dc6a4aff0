"""Bearer tokens of the operators: who may write through the operator API.

Tokens come from two sources, both optional, both in the same format (``name:token`` entries
separated by commas or newlines; blank entries and lines starting with ``#`` are ignored):

* the environment variable ``FEDERATION_REDIRECT_ADMIN_TOKENS``, read once when the app is
  built;
* the file named by ``admin.tokens_file``, read when the app is built and read again whenever
  its modification time, size or inode changes (so a rotated Kubernetes secret takes effect
  without a restart).

The *name* identifies the operator in the audit log; the token is the secret. A source with a
malformed entry (no ``:``, an empty or unprintable token, a name outside
``[A-Za-z0-9_.@+-]{1,64}``, one token under two names) is rejected whole, and the log says
which entry by its position, never by its token; an unreadable file is treated the same way.
A file that was good and turns unreadable or malformed keeps its last good tokens (an edit
or a secret rotation may be half done); a deleted file revokes its tokens.

Contract of :meth:`AdminTokens.identify`: the operator's name for a presented token, or None.
It compares SHA-256 digests of the presented and every known token with
:func:`hmac.compare_digest` and never stops early, so its time depends on neither the
presented token nor how much of it matches. No token known (:attr:`AdminTokens.enabled`
false) means writes are disabled: there is no open mode.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TOKENS_ENV", "AdminTokens", "TokenProblem", "parse_tokens"]

log = logging.getLogger("federation_redirect.auth")

TOKENS_ENV = "FEDERATION_REDIRECT_ADMIN_TOKENS"

_NAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,64}$")
_SHORT = 16  # tokens shorter than this are accepted with a warning
_MAX_FILE_BYTES = 1 << 20
_GONE = (-1, -1, -1)  # stamp of a file that could not be stat'ed


@dataclass(frozen=True, slots=True)
class TokenProblem:
    """One malformed entry: where it is (1-based entry number) and what is wrong with it."""

    entry: int
    message: str


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def parse_tokens(text: str) -> tuple[dict[bytes, str], list[TokenProblem]]:
    """Parse ``name:token`` entries into ``{sha256(token): name}`` and the problems found.

    The caller must reject the whole source when the problem list is not empty.
    """
    digests: dict[bytes, str] = {}
    problems: list[TokenProblem] = []
    entries = [e.strip() for e in re.split(r"[,\n]", text)]
    number = 0
    for entry in entries:
        if not entry or entry.startswith("#"):
            continue
        number += 1
        name, sep, token = entry.partition(":")
        name, token = name.strip(), token.strip()
        if not sep:
            problems.append(TokenProblem(number, "expected name:token"))
        elif not _NAME.match(name):
            problems.append(TokenProblem(number, "the name must be 1-64 of A-Z a-z 0-9 _ . @ + -"))
        elif not token or not all(0x21 <= ord(c) <= 0x7E for c in token):
            problems.append(
                TokenProblem(number, "the token must be printable ASCII without spaces")
            )
        else:
            digest = _digest(token)
            other = digests.setdefault(digest, name)
            if other != name:
                problems.append(TokenProblem(number, f"same token as the entry for {other!r}"))
            elif len(token) < _SHORT:
                log.warning("admin token of %r is shorter than %d characters", name, _SHORT)
    return digests, problems


class AdminTokens:
    """The operators' tokens from the environment and an optional file (module docstring)."""

    def __init__(
        self,
        tokens: Mapping[str, str] | None = None,
        *,
        env_value: str | None = None,
        path: str | Path | None = None,
    ) -> None:
        """``tokens`` maps names to tokens (for tests and embedding); ``env_value`` is the
        text of ``FEDERATION_REDIRECT_ADMIN_TOKENS``; ``path`` the tokens file. The file is
        read here (blocking, at start-up) and again by :meth:`refresh`."""
        self._fixed: dict[bytes, str] = {}
        for name, token in (tokens or {}).items():
            digests, problems = parse_tokens(f"{name}:{token}")
            if problems:
                raise ValueError(f"admin token of {name!r}: {problems[0].message}")
            self._fixed.update(digests)
        if env_value:
            digests, problems = parse_tokens(env_value)
            for p in problems:
                log.error("%s: entry %d: %s; ignoring the variable", TOKENS_ENV, p.entry, p.message)
            if not problems:
                self._fixed.update(digests)
        self.path = Path(path) if path is not None else None
        self._file: dict[bytes, str] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._all: tuple[tuple[bytes, str], ...] = ()
        self.refresh()

    @classmethod
    def from_environment(
        cls, tokens_file: str | None, environ: Mapping[str, str] | None = None
    ) -> AdminTokens:
        """Tokens from ``$FEDERATION_REDIRECT_ADMIN_TOKENS`` and ``tokens_file``."""
        env = os.environ if environ is None else environ
        return cls(env_value=env.get(TOKENS_ENV), path=tokens_file)

    @property
    def enabled(self) -> bool:
        """At least one token is known: writes are possible."""
        return bool(self._all)

    @property
    def names(self) -> frozenset[str]:
        """The operators' names (for logs and tests; never the tokens)."""
        return frozenset(name for _, name in self._all)

    def identify(self, presented: str) -> str | None:
        """The name whose token is ``presented``, or None (constant time; module docstring)."""
        digest = _digest(presented)
        found: str | None = None
        for known, name in self._all:
            if hmac.compare_digest(digest, known) and found is None:
                found = name
        return found

    def refresh(self) -> bool:
        """Re-read the tokens file if it changed since the last read. True if tokens changed.

        Blocking (a ``stat`` and, on change, a small read): call it from a worker thread on
        the event loop.
        """
        changed = False
        if self.path is not None:
            try:
                st = self.path.stat()
            except OSError as exc:
                if self._stamp != _GONE:
                    log.error("admin.tokens_file %s: cannot read: %s", self.path, exc.strerror)
                    self._stamp = _GONE
                if isinstance(exc, FileNotFoundError):
                    self._file = {}  # deleted: its tokens are revoked
            else:
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
                if stamp != self._stamp:
                    self._stamp = stamp
                    self._read_file()
        merged = tuple({**self._file, **self._fixed}.items())
        if merged != self._all:
            self._all = merged
            changed = True
        return changed

    def _read_file(self) -> None:
        assert self.path is not None
        try:
            with self.path.open("rb") as stream:
                data = stream.read(_MAX_FILE_BYTES + 1)
            if len(data) > _MAX_FILE_BYTES:
                raise OSError(0, f"larger than {_MAX_FILE_BYTES} bytes")
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            log.error(
                "admin.tokens_file %s: cannot read: %s; keeping the last tokens", self.path, why
            )
            return
        digests, problems = parse_tokens(text)
        for p in problems:
            log.error(
                "admin.tokens_file %s: entry %d: %s; keeping the last tokens",
                self.path,
                p.entry,
                p.message,
            )
        if problems:
            return
        self._file = digests
        names = ", ".join(sorted(set(digests.values()))) or "none"
        log.info("admin tokens read from %s: %s", self.path, names)
