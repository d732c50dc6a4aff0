"""``python -m federation_redirect``: the same commands as ``federation-redirect``."""

from .cli import main

raise SystemExit(main())
