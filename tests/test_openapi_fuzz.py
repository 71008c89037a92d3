"""Schemathesis over the plugin app's own OpenAPI, on a real api-server: no 5xx, every answer as declared.

Covers the REST channel (`POST /ticket`) and the status JSON (`GET /status`). Not `POST
/status/release`: it triggers jira_inbox runs, which is an action, not a read. The schema comes from
the app itself (`app.openapi()`): the api-server does not publish it (`openapi_url=None`, since the
docs routes would be open without a token).

Bounded and reproducible: a fixed number of examples per operation, derandomized, so a failure
reruns identically. About a minute with the api-server start.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from jira_mail_sync_plugin import URL_PREFIX, app
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode

from tests.test_rest_channel import RestServer, rest_server  # noqa: F401 (the api-server fixture)

pytestmark = pytest.mark.airflow

EXAMPLES_PER_OPERATION = 60
FUZZED = {"/ticket", "/status"}
# What issue #20 asks of every answer, plus, for the channel's body, that the schema's `pattern` and
# `maxLength` are the whole truth: what they allow is taken, what they forbid is refused.
REQUIRED_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
BODY_CHECKS = [positive_data_acceptance, negative_data_rejection]


def _schema() -> schemathesis.BaseSchema:
    config = SchemathesisConfig()
    config.projects.default.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        max_examples=EXAMPLES_PER_OPERATION,
        deterministic=True,
        database="none",
    )
    schema = schemathesis.openapi.from_dict(app.openapi(), config=config)
    return schema.include(path_regex="^(" + "|".join(FUZZED) + ")$")


schema = _schema()


@pytest.fixture
def server(rest_server: RestServer) -> RestServer:  # noqa: F811
    """The api-server with a few issues Jira knows, one of them in a project the channel does not serve."""
    rest_server.standin.reset()
    rest_server.standin.add_issue("ABC-1", summary="Known", assignee_email="dev@example.com", progress=(1, 2))
    rest_server.standin.add_issue("OPS-2", summary="Also known")
    rest_server.standin.add_issue("HR-3", summary="Not served")
    return rest_server


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_channel_and_the_status_json_answer_as_their_openapi_says(case, server: RestServer) -> None:
    checks = REQUIRED_CHECKS + (BODY_CHECKS if case.path == "/ticket" else [])
    case.call_and_validate(
        base_url=server.url + URL_PREFIX,
        headers={"Authorization": f"Bearer {server.token}"},
        checks=checks,
        timeout=30,
    )
