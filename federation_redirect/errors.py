"""The exceptions federation-redirect raises, in one tree.

::

    FederationRedirectError          base of everything below
    ├── ConfigError                  a configuration document is invalid; carries every problem
    │                                as "field.path: message" so the CLI can print them all
    └── CheckFailed                  one health check round of one member failed; carries a
                                     reason from HealthReason (also the metric label)

Anything else escaping a background loop is a bug: the loop logs it with the member's name,
counts it, and carries on.
"""

from __future__ import annotations

__all__ = ["CheckFailed", "ConfigError", "FederationRedirectError"]


class FederationRedirectError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(FederationRedirectError):
    """The configuration is invalid. ``problems`` lists each one as ``path: message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in self.problems))


class CheckFailed(FederationRedirectError):
    """A health check round failed.

    ``reason`` is one of the fixed strings of :class:`federation_redirect.models.HealthReason`
    (or ``service:<name>`` from its bounded list); ``explicit`` is true when the member itself
    said it is unwell (a failed service check, a version mismatch) or gave an answer that is
    not a usable BinderHub answer (bad_response, 3xx/4xx), rather than the network failing to
    reach it: explicit failures remove a member at once, transport failures only
    after ``check.fall`` consecutive rounds.
    """

    def __init__(self, reason: str, detail: str, *, explicit: bool) -> None:
        self.reason = reason
        self.detail = detail
        self.explicit = explicit
        super().__init__(f"{reason}: {detail}")
