"""federation-redirect: the front door of a federation of BinderHubs.

Health-checks each member BinderHub, weights traffic by capacity, hashes each repository
stickily to one member and answers launches with an HTTP redirect.
"""

import sys

__version__ = "0.1.0"

# httpx imports its command-line client (httpx._main) whenever click, pygments and rich are
# installed, as they are next to the test dependencies: about 4 MiB of modules that this
# package never runs. A None entry makes that import fail, so httpx defines its stub instead
# (the `httpx` console script, a process of its own, is unaffected). Too late if httpx is
# already imported, and harmless then.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
