"""The OpenAPI schema is the truth: schemathesis generates requests for every operation of
/api/v1/schema/ (valid and invalid ones), sends them in-process to the Django app and runs all
of its checks on each answer (no server error, status documented, body matching its schema,
invalid input refused, valid input accepted, ...).

Requests are authenticated as alice, whose thread, messages, file and artifact stand behind
the path parameters of valid cases, so the fuzzer reaches the real answers rather than a 404.
Bounded by hypothesis settings (few examples per operation, derandomized) to run in well under
three minutes. Any accepted failure is listed in KNOWN_FAILURES with its reason; there is none.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from agents import services as agent_services
from tests.agents.conftest import scripted_llm  # noqa: F401 - the fixture: AI replies are scripted
from tests.agents.crew_support import bare_run
from tests.conftest import Cast
from tests.helpers import png_bytes, post
from tests.helpers import upload as upload_file
from threads import services as thread_services

# The WSGI handler is the same Django application (URLs, middleware, views) that daphne
# serves; it runs in the test's thread, so the fuzzer's requests see the test's database.
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", get_wsgi_application())

# (method, path) -> why its failure is accepted. Empty: the goal is 0 failures.
KNOWN_FAILURES: dict[tuple[str, str], str] = {}

# The one exception to "a schema-valid request is accepted": a 400 whose `fields` name only
# these, for a rule JSON Schema cannot state. Keyed by the field the error names.
SEMANTIC_REFUSALS = {
    "userIds": "must name users that exist",
    "topicIds": "must name topics that exist (the native API; Chat Svc makes them tags)",
    "fileIds": "must name the caller's own uploaded files",
    "modelId": "must name a model that exists and the caller may use",
    "text": "a message needs non-blank text or at least one file: a rule across two fields",
    "q": "must hold at least one word: punctuation and spaces only separate words",
    "name": "a topic name must keep a letter or digit once trimmed and slugified",
    "file": "must be a non-empty file part with a filename, which the schema's binary string "
    "does not make the generator send",
    "cursor": "must be a nextCursor the server gave",
    "before": "?before= and ?after= together are refused: OpenAPI 3.0 cannot say 'not both'",
}


@pytest.fixture
def same_connection() -> Iterator[None]:
    """Keep the test's database connection across requests, as Django's test client does: the
    handler would close it at the end of each request, and with it the test's transaction."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def seeded(cast: Cast, scripted_llm: Any) -> dict[str, Any]:  # noqa: F811
    """alice's token, and the ids a valid request's path parameters are filled with."""
    _, token = thread_services.token_issue(user=cast.alice)
    message = post(cast.thread, cast.alice, "hello")
    reply = bare_run(cast.thread, cast.alice)
    reply.message.status = "complete"
    reply.message.text = "Hi."
    reply.message.save()
    artifact = agent_services.artifact_save(
        run=reply,
        agent="analyst",
        kind="chart",
        title="Sales",
        content_type="image/png",
        content=png_bytes(),
        data={"rows": [["North", "17.50"]]},
    )
    response = upload_file(cast.client(cast.alice), "a.png", png_bytes(), "image/png")
    return {
        "token": token,
        "path": {
            "thread_id": cast.thread.pk,
            "session_id": cast.thread.pk,
            "message_id": message.pk,
            "file_id": response.json()["id"],
            "artifact_id": artifact.pk,
            "user_id": cast.bob.pk,
        },
    }


def _fill_path(case: schemathesis.Case, ids: dict[str, str]) -> None:
    """A valid case's path names alice's real objects (an invalid one keeps its garbage)."""
    meta = case.meta
    if meta is not None and meta.generation.mode != GenerationMode.POSITIVE:
        return
    for name in case.path_parameters or {}:
        if name in ids:
            case.path_parameters[name] = ids[name]


@pytest.mark.django_db
@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_keeps_to_the_schema(
    case: schemathesis.Case, seeded: dict[str, Any], same_connection: None
) -> None:
    reason = KNOWN_FAILURES.get((case.method.upper(), case.path))
    if reason:
        pytest.xfail(reason)
    _fill_path(case, seeded["path"])
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {seeded['token']}"},
        excluded_checks=[positive_data_acceptance],
    )
    _check_positive_data_accepted(case, response)


def _check_positive_data_accepted(case: schemathesis.Case, response: Any) -> None:
    """schemathesis's positive_data_acceptance, with SEMANTIC_REFUSALS as its one exception."""
    meta = case.meta
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return
    status = response.status_code
    if status < 400 or status in {401, 403, 404, 409, 429}:
        return
    assert status == 400, (status, response.text[:500])
    fields = set(response.json()["error"]["fields"])
    assert fields, response.text[:500]
    assert fields <= SEMANTIC_REFUSALS.keys(), response.text[:500]
