"""Property-based fuzzing of every /api operation with Schemathesis, with and without a token.

Schemathesis reads the OpenAPI document and sends generated requests (valid
and invalid parameters, bodies, ids) to the app, against demo data in the test
transaction. Every answer must be: no 5xx, a status and content type the
document lists, a body matching its documented schema, and, for every error,
``application/problem+json``. How the schema is written is checked too: a
request the schema allows but Makazi refuses (a 4xx naming why) is fine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Connection

from app.main import create_app
from geo.core.settings import Settings
from geo.demo.generator import generate
from geo.demo.loader import load
from tests.support.db import BoundDatabase

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def api_schema(app_settings: Settings, db: BoundDatabase, connection: Connection) -> Any:
    load(connection, generate(120, seed=11))
    fuzzed = app_settings.model_copy(update={"token_failures_per_minute": 0})
    return schemathesis.openapi.from_asgi("/api", create_app(fuzzed, database=db))


schema = schemathesis.pytest.from_fixture("api_schema")


FUZZ = hypothesis_settings(
    max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)


def answers_as_documented(case: Any, headers: dict[str, str]) -> None:
    """Send the generated request; check the answer against the document and the rules."""
    response = case.call(headers=headers)
    case.validate_response(response, checks=CHECKS)
    if response.status_code >= 400:
        kind = response.headers.get("content-type", [""])[0]
        assert kind.startswith("application/problem+json"), response.text[:300]


@schema.parametrize()
@FUZZ
def test_anonymous_requests(case: Any) -> None:
    answers_as_documented(case, {})


@schema.parametrize()
@FUZZ
def test_admin_requests(case: Any, token_for: Callable[..., dict[str, str]]) -> None:
    answers_as_documented(case, token_for("admin"))
