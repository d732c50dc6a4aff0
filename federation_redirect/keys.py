"""Map a raw BinderHub request path to a stable *repository* key.

Contract
--------
``repo_key(path)`` takes the RAW request path, still percent-escaped and without the
query string (a stray ``?`` or ``#`` and everything after it is ignored anyway), and
returns either ``None`` or a string ``"{provider}:{canonical-repo}"``.

* It returns a key exactly when ``path`` is a launch path whose repository part is
  non-empty: ``/v2/{provider}/{spec}``, ``/build/{provider}/{spec}`` or the legacy
  ``/repo/{user}/{repo}[/...]`` (keyed as ``gh``). Every other path gives ``None``.
  The route words ``v2``, ``build`` and ``repo`` are case-sensitive, as in BinderHub;
  provider ids are not (``/v2/GH/...`` is ``gh``).
* The key names the repository, not the ref: every ref, query and fragment of one
  repository gives the same key. Case is folded wherever the upstream service is
  case-insensitive or where folding is harmless for a routing key.
* Unknown providers still get a key (``"{provider}:{spec}"`` lower-cased).
* It never raises for any ``str`` input, and the key it returns can always be encoded
  as UTF-8 (lone surrogates become ``?``). It does no I/O, keeps no state and uses only
  the standard library.

Canonical repository part per provider
--------------------------------------
``gh``
    ``owner/repo`` lower-cased, percent-escapes decoded, trailing ``.git`` dropped.
    The ref (everything after the second ``/``) is ignored. A spec with only an owner
    (``/v2/gh/Org/``) is keyed as ``gh:org``.
``gist``
    ``user/gist-id`` lower-cased. A half-escaped URL in the user slot
    (``https%3A%2F%2Fgist.github.com%2Fuser``) is reduced to its last path segment.
``gl``
    The escaped namespace (everything before the first raw ``/``), decoded once,
    lower-cased, trailing ``/`` and ``.git`` dropped, re-escaped canonically with
    :func:`urllib.parse.quote` (``safe=""``), so ``a%2fb`` and ``A%2FB`` agree.
``git``
    The escaped clone URL (before the first raw ``/``), decoded once, lower-cased,
    trailing ``/`` and ``.git`` dropped, ``git@host:path`` rewritten to
    ``ssh://git@host/path``, then re-escaped canonically as for ``gl``.
``zenodo``, ``figshare``, ``dataverse``
    The whole spec is the DOI (there is no ref): decoded, lower-cased, trailing ``/``
    dropped. Figshare version suffixes (``.v2``) are kept: they are distinct records.
``hydroshare``
    The 32-hex-digit resource id found in the decoded, lower-cased spec (the last 32
    digits of the first run of at least 32 hex digits, so a stray ``%2F`` before the id
    does not leak in). A bare id and an escaped resource URL therefore agree. Without
    such a run, the decoded, lower-cased spec minus trailing ``/``.
``ckan``
    The decoded, lower-cased dataset URL with any inner query (``?activity_id=...``),
    fragment and ``/history/<activity>`` suffix removed, trailing ``/`` dropped.
anything else
    The raw spec lower-cased, trailing ``/`` dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import quote, unquote

__all__ = ["PROVIDERS", "launch_key", "repo_key"]

#: Provider ids that BinderHub registers by default.
PROVIDERS: frozenset[str] = frozenset(
    {"gh", "gist", "git", "gl", "zenodo", "figshare", "hydroshare", "dataverse", "ckan"}
)

_LAUNCH_ROUTES = frozenset({"v2", "build"})
_HEX_RUN = re.compile(r"[0-9a-f]{32,}")


def _decode(text: str) -> str:
    """Percent-decode once; invalid escapes such as ``%zz`` are kept verbatim."""
    return unquote(text) if "%" in text else text


def _encode(text: str) -> str:
    """Canonical escaped form: everything but unreserved characters escaped."""
    return quote(text, safe="", errors="surrogatepass")


def _strip_dot_git(name: str) -> str:
    """Drop one trailing ``.git`` (already lower-cased) unless nothing would remain."""
    if name.endswith(".git") and len(name) > 4:
        return name[:-4]
    return name


def _owner_repo(owner: str, repo: str) -> str | None:
    owner = _decode(owner).lower()
    if not owner:
        return None
    repo = _strip_dot_git(_decode(repo).lower())
    return f"{owner}/{repo}" if repo else owner


def _gh(spec: str) -> str | None:
    owner, _, rest = spec.partition("/")
    return _owner_repo(owner, rest.partition("/")[0])


def _gist(spec: str) -> str | None:
    user, _, rest = spec.partition("/")
    user = _decode(user)
    if "/" in user:
        # half-escaped gist URL used as the user, e.g. https://gist.github.com/jakevdp
        user = user.rstrip("/").rpartition("/")[2]
    return _owner_repo(user, rest.partition("/")[0])


def _clean_namespace(namespace: str) -> str:
    namespace = _decode(namespace).lower().rstrip("/")
    return _strip_dot_git(namespace).rstrip("/")


def _gl(spec: str) -> str | None:
    namespace = _clean_namespace(spec.partition("/")[0])
    return _encode(namespace) if namespace else None


def _git(spec: str) -> str | None:
    url = _clean_namespace(spec.partition("/")[0])
    if not url:
        return None
    if url.startswith("git@") and "://" not in url:
        url = "ssh://" + url.replace(":", "/", 1)
    return _encode(url)


def _doi(spec: str) -> str | None:
    return _decode(spec).lower().rstrip("/") or None


def _hydroshare(spec: str) -> str | None:
    text = _decode(spec).lower()
    match = _HEX_RUN.search(text)
    if match is not None:
        return match.group()[-32:]
    return text.rstrip("/") or None


def _ckan(spec: str) -> str | None:
    url = _decode(spec).lower()
    for sep in ("?", "#"):
        cut = url.find(sep)
        if cut >= 0:
            url = url[:cut]
    url = url.rstrip("/")
    head, found, _ = url.rpartition("/history/")
    if found:
        url = head.rstrip("/")
    return url or None


def _unknown(spec: str) -> str | None:
    return spec.lower().rstrip("/") or None


_CANONICAL: dict[str, Callable[[str], str | None]] = {
    "gh": _gh,
    "gist": _gist,
    "gl": _gl,
    "git": _git,
    "zenodo": _doi,
    "figshare": _doi,
    "dataverse": _doi,
    "hydroshare": _hydroshare,
    "ckan": _ckan,
}


def repo_key(path: str) -> str | None:
    """Return ``"{provider}:{canonical-repo}"`` for a launch path, else ``None``.

    ``path`` is the raw (still percent-escaped) request path. See the module docstring
    for the full contract and the per-provider rules.
    """
    cut = path.find("?")
    if cut >= 0:
        path = path[:cut]
    cut = path.find("#")
    if cut >= 0:
        path = path[:cut]
    parts = path.split("/", 3)
    if len(parts) != 4 or parts[0]:
        return None
    _, route, segment, spec = parts
    if route in _LAUNCH_ROUTES:
        provider = segment.lower()
        if not provider or not spec:
            return None
        canonical = _CANONICAL.get(provider, _unknown)(spec)
    elif route == "repo":
        # legacy Binder v1: /repo/<user>/<repo>[/<urlpath>], served as gh user/repo
        provider = "gh"
        repo = spec.partition("/")[0]
        canonical = _owner_repo(segment, repo) if repo else None
    else:
        return None
    if canonical is None:
        return None
    key = f"{provider}:{canonical}"
    if not key.isascii():
        # keys get hashed as UTF-8: lone surrogates (only a lax decoder yields them) become "?"
        key = key.encode("utf-8", "replace").decode("utf-8")
    return key


def launch_key(path: str) -> str:
    """The routing key of any path the front door redirects.

    The repository key when ``path`` names one; otherwise the lower-cased path itself, so a
    malformed launch path (``/v2/gh/``) is still routed stably to one member, whose own UI
    explains the problem.
    """
    return repo_key(path) or path.lower()
