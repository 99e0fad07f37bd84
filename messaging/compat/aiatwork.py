"""AI-at-Work's Chat-Backend protocol on Threadline's services: one WebSocket at `/ws` speaking
`{"type": <int>, "data": {...}}` frames, and `POST /upload`. A session is a thread.

    0 UserDetails       {}              → {"user_id", "username"}
    1 ListSessions      {}              → {"user_id", "session_info": [{session_id, session_name}]}
    2 ChatsBySessionId  {session_id}    → {"user_id", "session_id", "chat": "[{role, content}]"}
    3 ChatMessage       {session_id | "NEW", message, model_id? | model_name?,
                         session_prompt?, file_name?, stream?}
                        → {"user_id", "session_id", "session_name", "message", "message_id"}
    4 SessionDelete     {session_id}    → {"user_id"}
    5 GetAIModels       {}              → {"models": [names the caller may use]}
    6 GetBalance        {}              → {"user_id", "balance"}

Answers are `{"type": <the same code>, "data": {...}}`; errors are `{"error": "<text>"}`, and an
unknown code is such an error, never a closed socket. Unlike the original, the socket is
authenticated (session cookie, `Authorization: Bearer`, or `?token=`), and a frame carrying a
`user_id` that is not the caller's is refused. Permissions and membership are the native API's.

Frame 3 posts the message and asks the model for a reply (`reply_request`), then waits for the
reply on the event stream (a Subscription, as every door) while the socket keeps serving other
frames. With `"stream": true` the reply's text also arrives as it is written, in frames
`{"type": 3, "data": {"session_id", "message_id", "offset", "delta"}}`, before the final one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from rest_framework import status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.models import AIModel
from agents.selectors import balance_of, model_for_legacy_request, models_for_user
from agents.services import conversation
from agents.services.conversation import Posted
from chatproject.api import api_exception_handler, request_user, service_unavailable
from messaging.compat.common import ReplyListener
from messaging.consumers import HubSocket
from messaging.uploads import upload_limit_install
from threads import selectors as thread_selectors
from threads.errors import ApplicationError, Invalid
from threads.models import Thread, User
from threads.permissions import Perm, require_perm

logger = logging.getLogger(__name__)

USER_DETAILS = 0
LIST_SESSIONS = 1
CHATS_BY_SESSION_ID = 2
CHAT_MESSAGE = 3
SESSION_DELETE = 4
GET_AI_MODELS = 5
GET_BALANCE = 6

NEW_SESSION = "NEW"
SESSION_NAME_CHARS = 20  # the original named a session after the first 20 characters
MAX_SESSION_PROMPT = 20_000


class FrameError(Exception):
    """A frame this protocol cannot take; its text goes back as `{"error": text}`."""


def _string(data: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise FrameError(f"{key} is required.")
        return None
    if not isinstance(value, str):
        raise FrameError(f"{key} must be a string.")
    return value


# --- the frames' reads and writes (sync: run through database_sync_to_async) -----------------


def _sessions(user: User) -> dict[str, Any]:
    threads = thread_selectors.threads_by_ids(user=user, ids=None)
    return {
        "user_id": user.pk,
        "session_info": [{"session_id": t.pk, "session_name": t.title} for t in threads],
    }


def _chats(user: User, session_id: str) -> dict[str, Any]:
    thread, rows = conversation.history_all(user=user, thread_id=session_id)
    chat = [
        {"role": "user" if row.author_id else "assistant", "content": row.text}
        for row in rows
        if row.text
    ]
    return {
        "user_id": user.pk,
        "session_id": thread.pk,
        "chat": json.dumps(chat, ensure_ascii=False),
    }


def _session_delete(user: User, session_id: str) -> dict[str, Any]:
    conversation.thread_remove(user=user, thread_id=session_id)
    return {"user_id": user.pk}


def _models(user: User) -> dict[str, Any]:
    return {"models": [model.name for model in models_for_user(user=user)]}


def _balance(user: User) -> dict[str, Any]:
    balance = balance_of(user=user)
    if balance is None:  # no account until the first reply; it opens with the starting credit
        balance = settings.STARTING_BALANCE
    return {"user_id": user.pk, "balance": float(balance)}


@dataclass
class ChatRequest:
    session_id: str | None  # None: "NEW", start a session
    message: str
    model_id: int | None
    model_name: str | None
    session_prompt: str
    file_ids: list[str]
    stream: bool


def _chat_request(data: dict[str, Any]) -> ChatRequest:
    session_id = _string(data, "session_id", required=True)
    message = _string(data, "message", required=True)
    assert session_id is not None and message is not None  # noqa: S101 - required above
    model_id = data.get("model_id")
    if model_id is not None and (not isinstance(model_id, int) or isinstance(model_id, bool)):
        raise FrameError("model_id must be an integer.")
    prompt = _string(data, "session_prompt") or ""
    if len(prompt) > MAX_SESSION_PROMPT:
        raise FrameError(f"session_prompt is longer than {MAX_SESSION_PROMPT} characters.")
    files = data.get("file_name")
    if files in (None, ""):
        file_ids: list[str] = []
    elif isinstance(files, str):
        file_ids = [files]
    elif isinstance(files, list) and all(isinstance(f, str) for f in files):
        file_ids = [f for f in files if f]
    else:
        raise FrameError("file_name must be a string (or a list of strings).")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise FrameError("stream must be true or false.")
    return ChatRequest(
        session_id=None if session_id == NEW_SESSION else session_id,
        message=message,
        model_id=model_id,
        model_name=_string(data, "model_name"),
        session_prompt=prompt,
        file_ids=file_ids,
        stream=stream,
    )


def _chat_post(user: User, request: ChatRequest) -> tuple[Thread, Posted, bool]:
    """Post the message and ask for the reply, in a new session for "NEW"."""
    model: AIModel = model_for_legacy_request(
        user=user, model_number=request.model_id, model_name=request.model_name
    )
    return conversation.session_post(
        user=user,
        session_id=request.session_id,
        text=request.message,
        title=request.message.strip()[:SESSION_NAME_CHARS],
        session_prompt=request.session_prompt,
        file_ids=request.file_ids,
        model=model,
    )


def _session_name(thread_id: str) -> str:
    return thread_selectors.thread_get(thread_id=thread_id).title


# --- the socket ------------------------------------------------------------------------------


class AIAtWorkConsumer(HubSocket):
    user: User | None = None

    async def connect(self) -> None:
        user = await self.caller()
        if user is None:
            return
        self.user = user
        self.replies: set[asyncio.Task[None]] = set()
        self.handlers: dict[int, Callable[[dict[str, Any]], Awaitable[None]]] = {
            USER_DETAILS: self._user_details,
            LIST_SESSIONS: self._reply_with(LIST_SESSIONS, lambda u, d: _sessions(u)),
            CHATS_BY_SESSION_ID: self._reply_with(
                CHATS_BY_SESSION_ID, lambda u, d: _chats(u, self._session_id(d))
            ),
            CHAT_MESSAGE: self._chat_message,
            SESSION_DELETE: self._reply_with(
                SESSION_DELETE, lambda u, d: _session_delete(u, self._session_id(d))
            ),
            GET_AI_MODELS: self._reply_with(GET_AI_MODELS, lambda u, d: _models(u)),
            GET_BALANCE: self._reply_with(GET_BALANCE, lambda u, d: _balance(u)),
        }
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for task in list(getattr(self, "replies", ())):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.user is None:
            return
        raw = await self.frame_text(text_data, bytes_data)
        if raw is None:
            return
        try:
            frame = json.loads(raw)
        except ValueError:
            await self._error('Frames are JSON: {"type": <int>, "data": {...}}.')
            return
        try:
            await self._dispatch(frame)
        except (FrameError, ApplicationError) as exc:
            await self._error(exc.message if isinstance(exc, ApplicationError) else str(exc))
        except Exception as exc:
            unavailable = service_unavailable(exc)  # the database or Redis restarting
            if unavailable is not None:
                await self._error(unavailable.message)
                return
            logger.exception("AI-at-Work frame failed")
            await self._error("Internal error.")

    async def _dispatch(self, frame: Any) -> None:
        assert self.user is not None  # noqa: S101 - set in connect
        if not isinstance(frame, dict):
            raise FrameError('Frames are JSON objects: {"type": <int>, "data": {...}}.')
        code = frame.get("type")
        if not isinstance(code, int) or isinstance(code, bool):
            raise FrameError("type must be an integer message code.")
        data = frame.get("data") or {}
        if not isinstance(data, dict):
            raise FrameError("data must be an object.")
        claimed = data.get("user_id")
        if claimed not in (None, "") and claimed != self.user.pk:
            raise FrameError("user_id is not the signed-in user.")
        handler = self.handlers.get(code)
        if handler is None:
            raise FrameError(f"Unknown message type {code}.")
        await handler(data)

    @staticmethod
    def _session_id(data: dict[str, Any]) -> str:
        value = _string(data, "session_id", required=True)
        assert value is not None  # noqa: S101 - required
        return value

    def _reply_with(
        self, code: int, read: Callable[[User, dict[str, Any]], dict[str, Any]]
    ) -> Callable[[dict[str, Any]], Awaitable[None]]:
        async def handle(data: dict[str, Any]) -> None:
            assert self.user is not None  # noqa: S101 - set in connect
            answer = await database_sync_to_async(read)(self.user, data)
            await self._send(code, answer)

        return handle

    async def _user_details(self, data: dict[str, Any]) -> None:
        assert self.user is not None  # noqa: S101 - set in connect
        await self._send(USER_DETAILS, {"user_id": self.user.pk, "username": self.user.username})

    async def _chat_message(self, data: dict[str, Any]) -> None:
        assert self.user is not None  # noqa: S101 - set in connect
        request = _chat_request(data)
        listener = ReplyListener(user=self.user)
        user = self.user
        thread, posted = await listener.ask(request.session_id, lambda: _chat_post(user, request))
        assert posted.run is not None  # noqa: S101 - a new message with a model gets a run
        reply_id = posted.run.message_id
        task = asyncio.create_task(self._answer(listener, thread.pk, reply_id, request.stream))
        self.replies.add(task)
        task.add_done_callback(self.replies.discard)

    async def _answer(
        self, listener: ReplyListener, thread_id: str, reply_id: str, stream: bool
    ) -> None:
        assert self.user is not None  # noqa: S101 - set in connect
        try:
            async for step in listener.reply(reply_id):
                if step.kind == "delta":
                    if stream:
                        await self._send(
                            CHAT_MESSAGE,
                            {
                                "session_id": thread_id,
                                "message_id": reply_id,
                                "offset": step.data["offset"],
                                "delta": step.data["text"],
                            },
                        )
                    continue
                if step.data["status"] == "complete":
                    name = await database_sync_to_async(_session_name)(thread_id)
                    await self._send(
                        CHAT_MESSAGE,
                        {
                            "user_id": self.user.pk,
                            "session_id": thread_id,
                            "session_name": name,
                            "message": step.data["text"],
                            "message_id": reply_id,
                        },
                    )
                elif step.data["status"] == "cancelled":
                    await self._error("The reply was stopped.")
                else:
                    await self._error(step.data["meta"].get("error") or "The reply failed.")
        except TimeoutError:
            await self._error("The reply took too long.")
        except LookupError as exc:
            await self._error(str(exc))
        finally:
            await listener.close()

    async def refuse(self, exc: ApplicationError) -> None:
        await self._error(exc.message)

    async def _send(self, code: int, data: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps({"type": code, "data": data}, ensure_ascii=False))

    async def _error(self, text: str) -> None:
        await self.send(text_data=json.dumps({"error": text}, ensure_ascii=False))


# --- POST /upload ----------------------------------------------------------------------------


def upload_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """The original upload answered errors as `{"message": text, "data": null}`."""
    response = api_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "error" in response.data:
        response.data = {"message": response.data["error"]["message"], "data": None}
    return response


class UploadApi(APIView):
    """Multipart `file` and `session_id` (a session of the caller's, or "NEW" to start one, as
    the original allowed). Stores the file; the answer's `data.fileName` is what a ChatMessage
    names in `file_name` to attach it to its message (the model then reads it)."""

    parser_classes = [MultiPartParser]
    schema = None  # AI-at-Work's protocol, documented in docs/compat.md

    def get_exception_handler(self) -> Any:
        return upload_exception_handler

    def post(self, request: Request) -> Response:
        user = request_user(request)
        require_perm(user, Perm.MESSAGE_CREATE)
        upload_limit_install(request)
        session_id = request.data.get("session_id") or ""
        if not isinstance(session_id, str) or not session_id:
            raise Invalid("Session ID is required", fields={"session_id": ["Required."]})
        upload = request.FILES.get("file")
        if not isinstance(upload, UploadedFile):
            raise Invalid("Send the file in a multipart field named 'file'.")
        # The original read session_prompt only when starting a session.
        prompt = request.data.get("session_prompt") or "" if session_id == NEW_SESSION else ""
        if not isinstance(prompt, str) or len(prompt) > MAX_SESSION_PROMPT:
            raise Invalid("session_prompt is not valid.")
        with transaction.atomic():
            thread, _ = conversation.session_open(
                user=user,
                session_id=None if session_id == NEW_SESSION else session_id,
                session_prompt=prompt,
            )
            file = conversation.file_upload(
                user=user,
                name=upload.name or "file",
                claimed_type=upload.content_type or "",
                stream=upload,
                size=upload.size or 0,
            )
        return Response(
            {
                "message": "File uploaded successfully",
                "data": {
                    "fileName": file.pk,
                    "sessionId": thread.pk,
                    "name": file.name,
                    "size": file.size,
                    "contentType": file.content_type,
                },
            },
            status=status.HTTP_202_ACCEPTED,
        )


upload = UploadApi.as_view()
