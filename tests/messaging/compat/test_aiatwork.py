"""Contract tests for AI-at-Work's Chat-Backend protocol: the `/ws` socket with integer frame
types 0-6 and `POST /upload`, written from its shapes; every frame tried as charlie."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.core.files.uploadedfile import SimpleUploadedFile

from agents.llm import LLMError
from agents.models import AIModel, LegacyModelNumber, ModelGrant
from agents.services import credit_add
from chatproject.asgi import application
from messaging import services
from messaging.models import File, Message
from tests.conftest import Cast
from tests.helpers import MISSING_THREAD, post
from tests.messaging.compat.conftest import act
from threads.models import Thread

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 5.0
Socket = Callable[[str], Awaitable[WebsocketCommunicator]]


@pytest.fixture
async def socket(tokens: dict[str, str]) -> AsyncIterator[Socket]:
    opened: list[WebsocketCommunicator] = []

    async def open_socket(user: str) -> WebsocketCommunicator:
        comm = WebsocketCommunicator(application, f"/ws?token={tokens[user]}")
        opened.append(comm)
        connected, _ = await comm.connect(timeout=TIMEOUT)
        assert connected
        return comm

    yield open_socket
    for comm in opened:
        with contextlib.suppress(Exception):
            await comm.disconnect(timeout=TIMEOUT)


async def ask(comm: WebsocketCommunicator, code: Any, data: Any = None, **extra: Any) -> Any:
    frame: dict[str, Any] = {"type": code, **extra}
    if data is not None:
        frame["data"] = data
    await comm.send_to(text_data=json.dumps(frame))
    return await comm.receive_json_from(timeout=TIMEOUT)


def _map_number(number: int, model_id: str | None, legacy_name: str = "") -> None:
    LegacyModelNumber.objects.update_or_create(
        number=number,
        defaults={"legacy_name": legacy_name or f"legacy-{number}", "model_id": model_id},
    )


# --- connecting -----------------------------------------------------------------------------------


async def test_the_socket_is_authenticated(cast: Cast) -> None:
    for path in ("/ws", "/ws?token=tl_garbage"):
        comm = WebsocketCommunicator(application, path)
        connected, code = await comm.connect(timeout=TIMEOUT)
        assert (connected, code) == (False, 4401), path


# --- frames 0, 1, 2, 4, 5, 6 ----------------------------------------------------------------------


async def test_user_details(cast: Cast, socket: Socket) -> None:
    comm = await socket("alice")

    assert await ask(comm, 0, {"user_id": cast.alice.pk}) == {
        "type": 0,
        "data": {"user_id": cast.alice.pk, "username": "alice"},
    }
    assert await ask(comm, 0, {}) == await ask(comm, 0)


async def test_a_foreign_user_id_is_refused_in_every_frame(cast: Cast, socket: Socket) -> None:
    comm = await socket("charlie")
    for code in range(7):
        data = {"user_id": cast.alice.pk, "session_id": cast.thread.pk, "message": "hi"}
        assert await ask(comm, code, data) == {"error": "user_id is not the signed-in user."}
    assert await act(Message.objects.count) == 0


async def test_unknown_and_malformed_frames_are_errors_not_crashes(
    cast: Cast, socket: Socket
) -> None:
    comm = await socket("alice")

    assert await ask(comm, 9) == {"error": "Unknown message type 9."}
    assert await ask(comm, -1) == {"error": "Unknown message type -1."}
    assert await ask(comm, "3") == {"error": "type must be an integer message code."}
    assert await ask(comm, True) == {"error": "type must be an integer message code."}
    assert await ask(comm, 1, [1, 2]) == {"error": "data must be an object."}
    await comm.send_to(text_data="{not json")
    assert "error" in await comm.receive_json_from(timeout=TIMEOUT)
    await comm.send_to(text_data="[]")
    assert "error" in await comm.receive_json_from(timeout=TIMEOUT)
    # Still serving.
    assert (await ask(comm, 0))["data"]["username"] == "alice"


async def test_list_sessions_answers_only_the_callers(cast: Cast, socket: Socket) -> None:
    theirs, _ = await act(services.thread_create, creator=cast.charlie, title="charlie's")

    alice = await ask(await socket("alice"), 1, {"user_id": cast.alice.pk})
    charlie = await ask(await socket("charlie"), 1)

    assert alice == {
        "type": 1,
        "data": {
            "user_id": cast.alice.pk,
            "session_info": [{"session_id": cast.thread.pk, "session_name": "Alice's thread"}],
        },
    }
    assert charlie["data"]["session_info"] == [
        {"session_id": theirs.pk, "session_name": "charlie's"}
    ]


async def test_chats_by_session_id_is_a_json_string_of_roles_and_contents(
    cast: Cast, socket: Socket, scripted_llm
) -> None:
    await act(post, cast.thread, cast.bob, "question")
    await act(post, cast.thread, None, "answer")
    alice = await socket("alice")

    answer = await ask(alice, 2, {"session_id": cast.thread.pk})

    assert answer["type"] == 2
    assert answer["data"]["user_id"] == cast.alice.pk
    assert answer["data"]["session_id"] == cast.thread.pk
    assert json.loads(answer["data"]["chat"]) == [
        {"role": "user", "content": "question"},
        {"role": "assistant", "content": "answer"},
    ]
    assert await ask(alice, 2, {}) == {"error": "session_id is required."}
    charlie = await socket("charlie")
    assert await ask(charlie, 2, {"session_id": cast.thread.pk}) == {"error": "Thread not found."}
    assert await ask(charlie, 2, {"session_id": MISSING_THREAD}) == {"error": "Thread not found."}


async def test_session_delete(cast: Cast, socket: Socket) -> None:
    frame = {"session_id": cast.thread.pk}
    assert await ask(await socket("charlie"), 4, frame) == {"error": "Thread not found."}
    assert await ask(await socket("bob"), 4, frame) == {
        "error": "Only the thread's owner can do this."
    }
    assert await act(Thread.objects.filter(pk=cast.thread.pk).exists)

    assert await ask(await socket("alice"), 4, frame) == {
        "type": 4,
        "data": {"user_id": cast.alice.pk},
    }
    assert not await act(Thread.objects.filter(pk=cast.thread.pk).exists)


async def test_get_ai_models_lists_only_the_callers_models(cast: Cast, socket: Socket) -> None:
    def bobs_model() -> None:
        model = AIModel.objects.create(name="Bob only", provider="local")
        ModelGrant.objects.create(model=model, user=cast.bob)

    await act(bobs_model)

    alice = await ask(await socket("alice"), 5)
    bob = await ask(await socket("bob"), 5)

    assert alice == {"type": 5, "data": {"models": ["SmolLM2 135M (bundled)"]}}
    assert bob == {"type": 5, "data": {"models": ["Bob only", "SmolLM2 135M (bundled)"]}}


async def test_get_balance(cast: Cast, socket: Socket, settings: Any) -> None:
    comm = await socket("alice")
    # No account yet: the starting credit the first reply opens it with.
    assert await ask(comm, 6) == {
        "type": 6,
        "data": {"user_id": cast.alice.pk, "balance": float(settings.STARTING_BALANCE)},
    }
    await act(credit_add, user=cast.alice, amount=Decimal("2.5"))
    assert (await ask(comm, 6))["data"]["balance"] == float(settings.STARTING_BALANCE) + 2.5


# --- frame 3 --------------------------------------------------------------------------------------


async def test_chat_message_in_a_new_session_returns_the_reply(
    cast: Cast, socket: Socket, scripted_llm
) -> None:
    comm = await socket("alice")

    answer = await ask(
        comm,
        3,
        {
            "user_id": cast.alice.pk,
            "session_id": "NEW",
            "model_name": "SmolLM2 135M (bundled)",
            "message": "What is the capital of France?",
            "session_prompt": "Answer in one word.",
            "file_name": "",
        },
    )

    assert answer["type"] == 3
    data = answer["data"]
    assert set(data) == {"user_id", "session_id", "session_name", "message", "message_id"}
    assert data["user_id"] == cast.alice.pk
    assert data["message"] == "Hello, world."
    assert data["session_name"] == "What is the capital"  # the first 20 characters
    thread = await act(Thread.objects.get, pk=data["session_id"])
    assert (thread.creator_id, thread.session_prompt) == (cast.alice.pk, "Answer in one word.")
    system = scripted_llm.calls[0][0]["content"]
    assert "Answer in one word." in system


async def test_chat_message_streams_when_asked_and_takes_model_ids(
    cast: Cast, socket: Socket, scripted_llm
) -> None:
    await act(_map_number, 4, "mdl_smollm2")
    comm = await socket("bob")

    await comm.send_json_to(
        {
            "type": 3,
            "data": {"session_id": cast.thread.pk, "model_id": 4, "message": "hi", "stream": True},
        }
    )
    frames = []
    while True:
        frame = await comm.receive_json_from(timeout=TIMEOUT)
        frames.append(frame)
        if "message" in frame["data"]:
            break

    deltas = [f["data"] for f in frames[:-1]]
    assert deltas and all(set(d) == {"session_id", "message_id", "offset", "delta"} for d in deltas)
    assert "".join(d["delta"] for d in deltas) == "Hello, world."
    assert frames[-1]["data"]["message"] == "Hello, world."
    assert frames[-1]["data"]["session_id"] == cast.thread.pk
    assert frames[-1]["data"]["session_name"] == "Alice's thread"


async def test_chat_message_model_ids_go_through_the_admins_table(
    cast: Cast, socket: Socket, scripted_llm
) -> None:
    comm = await socket("alice")
    frame = {"session_id": cast.thread.pk, "message": "hi"}

    # Seeded by the migration, unmapped (transactional tests flush the seed: put it back).
    await act(_map_number, 6, None, "gpt-4")
    assert await ask(comm, 3, {**frame, "model_id": 6}) == {
        "error": "model_id 6 is not mapped to a model."
    }
    assert await ask(comm, 3, {**frame, "model_id": 99}) == {
        "error": "model_id 99 is not mapped to a model."
    }
    assert await ask(comm, 3, {**frame, "model_id": "4"}) == {
        "error": "model_id must be an integer."
    }
    assert await ask(comm, 3, {**frame, "model_name": "nope"}) == {"error": "No such AI model."}
    assert await act(Message.objects.count) == 0

    # The AI-at-Work name is accepted as model_name once the admin maps it.
    await act(_map_number, 6, "mdl_smollm2", "gpt-4")
    answer = await ask(comm, 3, {**frame, "model_name": "gpt-4"})
    assert answer["data"]["message"] == "Hello, world."


async def test_chat_message_refusals(cast: Cast, socket: Socket, scripted_llm) -> None:
    charlie = await socket("charlie")
    assert await ask(charlie, 3, {"session_id": cast.thread.pk, "message": "hi"}) == {
        "error": "Thread not found."
    }
    alice = await socket("alice")
    assert await ask(alice, 3, {"session_id": cast.thread.pk}) == {"error": "message is required."}
    assert await ask(alice, 3, {"message": "hi"}) == {"error": "session_id is required."}
    assert await ask(alice, 3, {"session_id": cast.thread.pk, "message": "hi", "stream": 1}) == {
        "error": "stream must be true or false."
    }

    def model_for_bob_only() -> None:
        model = AIModel.objects.create(name="Bob only", provider="local")
        ModelGrant.objects.create(model=model, user=cast.bob)

    await act(model_for_bob_only)
    assert await ask(
        alice, 3, {"session_id": "NEW", "message": "hi", "model_name": "Bob only"}
    ) == {"error": "You may not use the model 'Bob only'."}
    # Nothing was written: no message, and no empty session left behind by the refused NEW.
    assert await act(Message.objects.count) == 0
    assert await act(Thread.objects.count) == 1


async def test_a_failed_reply_is_an_error_with_its_reason(
    cast: Cast, socket: Socket, scripted_llm
) -> None:
    scripted_llm.failure = LLMError("The AI service cannot be reached.")

    answer = await ask(await socket("alice"), 3, {"session_id": cast.thread.pk, "message": "?"})

    assert answer == {"error": "The AI service cannot be reached."}


async def test_the_socket_serves_other_frames_while_a_reply_is_written(
    cast: Cast, socket: Socket, scripted_llm
) -> None:
    comm = await socket("alice")
    await comm.send_json_to({"type": 3, "data": {"session_id": cast.thread.pk, "message": "hi"}})
    await comm.send_json_to({"type": 0, "data": {}})

    frames = [await comm.receive_json_from(timeout=TIMEOUT) for _ in range(2)]

    assert sorted(frame["type"] for frame in frames) == [0, 3]


# --- upload ---------------------------------------------------------------------------------------


def _upload(cast: Cast, user: Any, session_id: str | None, name: str = "notes.txt") -> Any:
    body: dict[str, Any] = {"file": SimpleUploadedFile(name, b"Paris is the capital.")}
    if session_id is not None:
        body["session_id"] = session_id
    return cast.client(user).post("/upload", body, format="multipart")


async def test_upload_stores_a_file_the_next_chat_message_attaches(
    cast: Cast, socket: Socket, scripted_llm
) -> None:
    response = await act(_upload, cast, cast.alice, cast.thread.pk)

    assert response.status_code == 202, response.content
    body = response.json()
    assert body["message"] == "File uploaded successfully"
    data = body["data"]
    assert set(data) == {"fileName", "sessionId", "name", "size", "contentType"}
    assert (data["sessionId"], data["name"], data["size"]) == (cast.thread.pk, "notes.txt", 21)

    answer = await ask(
        await socket("alice"),
        3,
        {"session_id": cast.thread.pk, "message": "Read it", "file_name": data["fileName"]},
    )

    assert answer["data"]["message"] == "Hello, world."
    attached = await act(lambda: Message.objects.get(thread=cast.thread, text="Read it").file_ids)
    assert attached == [data["fileName"]]
    assert "Paris is the capital." in scripted_llm.calls[0][0]["content"]


def test_upload_refusals_keep_the_originals_error_shape(cast: Cast) -> None:
    outsider = _upload(cast, cast.charlie, cast.thread.pk)
    assert outsider.status_code == 404
    assert outsider.json() == {"message": "Thread not found.", "data": None}
    missing = _upload(cast, cast.alice, None)
    assert missing.status_code == 400
    assert missing.json() == {"message": "Session ID is required", "data": None}
    anonymous = _upload(cast, None, cast.thread.pk)
    assert anonymous.status_code == 401
    assert set(anonymous.json()) == {"message", "data"}
    assert not File.objects.exists()


def test_upload_to_a_new_session_starts_one(cast: Cast) -> None:
    response = _upload(cast, cast.bob, "NEW")

    assert response.status_code == 202
    thread = Thread.objects.get(pk=response.json()["data"]["sessionId"])
    assert thread.creator_id == cast.bob.pk
    assert File.objects.get(pk=response.json()["data"]["fileName"]).owner_id == cast.bob.pk


# --- with a native client -------------------------------------------------------------------------


async def test_an_ai_at_work_client_and_a_native_client_share_a_session(
    cast: Cast, socket: Socket, scripted_llm
) -> None:
    """alice on the AI-at-Work socket, bob on the native API: each sees the other's messages
    and the AI's reply."""
    native = await act(cast.client, cast.bob)
    await act(
        native.post,
        f"/api/v1/threads/{cast.thread.pk}/messages/",
        {"text": "bob, natively"},
        format="json",
    )
    alice = await socket("alice")

    answer = await ask(alice, 3, {"session_id": cast.thread.pk, "message": "alice, over /ws"})
    assert answer["data"]["message"] == "Hello, world."

    chats = await ask(alice, 2, {"session_id": cast.thread.pk})
    assert json.loads(chats["data"]["chat"]) == [
        {"role": "user", "content": "bob, natively"},
        {"role": "user", "content": "alice, over /ws"},
        {"role": "assistant", "content": "Hello, world."},
    ]
    seen = await act(native.get, f"/api/v1/threads/{cast.thread.pk}/messages/")
    assert [(m["userId"], m["text"]) for m in seen.json()["messages"]] == [
        (cast.bob.pk, "bob, natively"),
        (cast.alice.pk, "alice, over /ws"),
        (None, "Hello, world."),
    ]
    # The native client asking for a reply is seen on the socket's next read.
    await act(
        native.post,
        f"/api/v1/threads/{cast.thread.pk}/messages/",
        {"text": "AI, again", "reply": True},
        format="json",
    )
    chats = await ask(alice, 2, {"session_id": cast.thread.pk})
    assert json.loads(chats["data"]["chat"])[-2:] == [
        {"role": "user", "content": "AI, again"},
        {"role": "assistant", "content": "Hello, world."},
    ]
