"""A database that stops answering is a 503 with Retry-After in each door's error shape, never a
500. The outage is simulated by making the first query a door makes raise what psycopg raises
when the server goes away; tests/faults/test_postgres_restart.py does it for real."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import OperationalError
from django.test import AsyncClient, Client

from tests.conftest import Cast
from threads import services as thread_services


class DatabaseGone:
    """A test double for an outage: every query through Django's cursor fails."""

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        raise OperationalError("terminating connection due to administrator command")


def _token(cast: Cast) -> str:
    return thread_services.token_issue(user=cast.alice)[1]


def _gone(connection: Any) -> Any:
    return connection.execute_wrapper(DatabaseGone())


@pytest.mark.django_db
def test_a_rest_call_during_an_outage_is_503_in_the_one_error_shape(cast: Cast) -> None:
    from django.db import connection

    client = Client(headers={"Authorization": f"Bearer {_token(cast)}"})
    with _gone(connection):
        response = client.get("/api/v1/me/")
    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    assert response.json()["error"]["code"] == "unavailable"
    assert set(response.json()["error"]) == {"code", "message", "fields"}


@pytest.mark.django_db
def test_chat_svc_during_an_outage_is_503_in_its_own_shape(cast: Cast) -> None:
    from django.db import connection

    client = Client(headers={"Authorization": f"Bearer {_token(cast)}"})
    with _gone(connection):
        response = client.post("/chat-svc/threads", {}, content_type="application/json")
    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    assert set(response.json()) == {"error"}
    assert isinstance(response.json()["error"], str)


@pytest.mark.django_db
async def test_an_async_door_during_an_outage_is_503_not_500(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The BFF's message route and the SSE stream are plain async views, outside DRF's handler:
    the middleware answers for them."""

    def token_lookup_gone(raw: str) -> None:
        raise OperationalError("the connection is lost")

    monkeypatch.setattr("messaging.sse.user_from_token", token_lookup_gone)
    client = AsyncClient()
    auth = {"Authorization": "Bearer any"}
    for response in (
        await client.post(
            "/api/v1/chat/messages", {"message": "hi"}, "application/json", headers=auth
        ),
        await client.get("/api/v1/events/", headers={**auth, "Accept": "text/event-stream"}),
    ):
        assert response.status_code == 503
        assert response["Retry-After"] == "2"
        assert response.json()["error"]["code"] == "unavailable"


@pytest.mark.django_db
def test_the_schema_documents_503_with_retry_after() -> None:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    post = schema["paths"]["/api/v1/threads/{thread_id}/messages/"]["post"]
    assert "Retry-After" in post["responses"]["503"]["headers"]


@pytest.mark.django_db
def test_a_redis_outage_is_503_too(cast: Cast, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis holds the cache, the live text and the channel layer: a request that needs it
    while it restarts is told to come back, as for the database."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    def cache_gone(*args: Any, **kwargs: Any) -> None:
        raise RedisConnectionError("Connection closed by server.")

    monkeypatch.setattr("threads.apis.MeApi.get", cache_gone)
    client = Client(headers={"Authorization": f"Bearer {_token(cast)}"})
    response = client.get("/api/v1/me/")
    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    assert response.json()["error"]["message"] == "The cache is not answering; try again shortly."


@pytest.mark.django_db(transaction=True)
async def test_a_socket_frame_during_an_outage_gets_an_error_frame_not_a_dropped_socket(
    cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The native socket answers the frame with the 503's error frame (code `unavailable`,
    `retryAfter`) and stays open; AI-at-Work's answers in its own error frame."""
    import json

    from asgiref.sync import sync_to_async
    from channels.testing import WebsocketCommunicator

    from chatproject.asgi import application

    async def gone(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("the connection is lost")

    monkeypatch.setattr("messaging.streams.Subscription.subscribe", gone)
    monkeypatch.setattr("messaging.compat.aiatwork.AIAtWorkConsumer._dispatch", gone)
    token = await sync_to_async(_token)(cast)
    native = WebsocketCommunicator(
        application, "/ws/v1/events/", headers=[(b"authorization", f"Bearer {token}".encode())]
    )
    assert (await native.connect(timeout=5))[0]
    await native.send_json_to({"action": "subscribe", "threadId": cast.thread.pk})
    frame = await native.receive_json_from(timeout=5)
    assert frame["type"] == "error"
    assert frame["error"]["code"] == "unavailable" and frame["error"]["retryAfter"] == 2
    await native.send_json_to({"action": "ping", "ref": "still here"})
    assert await native.receive_json_from(timeout=5) == {"type": "pong", "ref": "still here"}
    await native.disconnect()

    legacy = WebsocketCommunicator(application, f"/ws?token={token}")
    assert (await legacy.connect(timeout=5))[0]
    await legacy.send_to(text_data=json.dumps({"type": 3, "data": {}}))
    assert await legacy.receive_json_from(timeout=5) == {
        "error": "The database is not answering; try again shortly."
    }
    await legacy.disconnect()
