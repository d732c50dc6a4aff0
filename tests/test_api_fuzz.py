"""Property-based tests of the operator API against its own OpenAPI schema (schemathesis).

Schemathesis reads ``/openapi.json`` from the complete redirector app (in process, through
its ASGI transport), generates valid and invalid requests for every operation and checks each
answer: no 5xx, a documented status code and content type, a body that validates against the
documented schema, invalid data rejected, valid data accepted, and authentication enforced
(its ``ignored_auth`` check replays authorised calls without the token). Calls carry a valid
operator token, so PATCH bodies really reach the store; the path parameter is a real member
for most cases. The status codes seen are written to ``tests/artifacts/schemathesis.json``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import Case

from federation_redirect.app import FederationApp, create_app
from federation_redirect.auth import AdminTokens

from .helpers import mark, three_members

TOKEN = "fuzz-token-0123456789abcdef"
OPS = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 150  # per operation and test: the whole module runs in about 10 s
SEEN: Counter[tuple[str, int]] = Counter()
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def build_app() -> FederationApp:
    app = create_app(
        three_members(), run_health_checks=False, admin_tokens=AdminTokens({"ops": TOKEN})
    )
    mark(app.registry, "a", "b", "c")
    return app


# Built at collection, as schemathesis' parametrisation needs the schema then (its lazy
# `from_fixture` loader does not work with pytest 9). Building the app does no I/O and starts
# nothing; schemathesis runs its lifespan from the first call to the end of the session.
APP = build_app()
schema = schemathesis.openapi.from_dict(cast(FastAPI, APP.api).openapi())
schema.app = APP


@pytest.fixture(scope="module")
def app() -> Iterator[FederationApp]:
    yield APP
    ARTIFACTS.mkdir(exist_ok=True)
    figures = {
        "examples_per_operation": EXAMPLES,
        "calls": sum(SEEN.values()),
        "by_operation_and_status": {
            f"{op} {status}": n for (op, status), n in sorted(SEEN.items())
        },
    }
    (ARTIFACTS / "schemathesis.json").write_text(json.dumps(figures, indent=2) + "\n")


@schema.parametrize()
@schema.given(member=st.sampled_from(["a", "b", "c", "c", None]))
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=True,
)
def test_every_answer_conforms_to_the_schema(case: Case, member: str | None) -> None:
    if member is not None and "name" in (case.path_parameters or {}):
        case.path_parameters = {**(case.path_parameters or {}), "name": member}
    response = case.call_and_validate(headers=OPS)
    SEEN[f"{case.method} {case.operation.path}", response.status_code] += 1


@schema.include(method="PATCH").parametrize()
@schema.given(member=st.sampled_from(["a", "b", "c"]))
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=True,
)
def test_no_write_without_the_token_changes_anything(
    case: Case, member: str, app: FederationApp
) -> None:
    version = app.store.version
    case.path_parameters = {**(case.path_parameters or {}), "name": member}
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        response = case.call(headers=headers)
        assert response.status_code == 401, response.text
    assert app.store.version == version
    SEEN["PATCH /api/v1/members/{name} without token", 401] += 2
