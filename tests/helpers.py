"""Small helpers the API tests share: error assertions, DB snapshots, files, permissions."""

from __future__ import annotations

import os
import runpy
import struct
import tempfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.conf import settings
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import models
from rest_framework.test import APIClient

from messaging.models import Message
from messaging.services import message_post
from threads.models import CHAT_PERMISSIONS, ApiToken, Thread, User

API = "/api/v1"
IS_POSTGRES = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
MISSING_THREAD = "thr_doesnotexist00000000000"
MISSING_MESSAGE = "msg_doesnotexist00000000000"
MISSING_FILE = "file_doesnotexist0000000000"


def error(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def assert_error(
    response: Any,
    status: int,
    code: str,
    *,
    fields: dict[str, Any] | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """The response is the one error shape with this status and code (and fields, if given)."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "fields"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    if fields is not None:
        assert body["error"]["fields"] == fields
    if message is not None:
        assert body["error"]["message"] == message
    return body["error"]


def assert_field_error(response: Any, *names: str) -> None:
    """A 400 `invalid` error naming exactly these fields."""
    err = assert_error(response, 400, "invalid")
    assert sorted(err["fields"]) == sorted(names), err


def drain(response: Any) -> Any:
    """Read a streamed body to its end, which closes the file behind it.

    Never call response.close() on a test-client response: that sends request_finished, whose
    close_old_connections closes the test's PostgreSQL connection in the middle of its
    transaction. The test client closes a streamed response itself once it is consumed.
    """
    if getattr(response, "streaming", False):
        response.body = b"".join(response.streaming_content)
    return response


# --- database snapshots ----------------------------------------------------------------------

# Tokens record when they were last used and users when they last logged in: both change on
# successful authentication, which is not what "nothing changed" is about.
_NOT_SNAPSHOT = {ApiToken, User}


def _snapshot_models() -> list[type[models.Model]]:
    return [
        model
        for label in ("threads", "messaging", "agents")
        for model in apps.get_app_config(label).get_models(include_auto_created=True)
        if model not in _NOT_SNAPSHOT
    ]


def db_state() -> dict[str, list[Any]]:
    """Every row of every chat table, every column: equal before and after means nothing
    changed (including the event log, whatever tables the apps grow)."""
    state: dict[str, list[Any]] = {}
    for model in _snapshot_models():
        names = [field.attname for field in model._meta.concrete_fields]
        state[model._meta.label] = sorted(
            tuple(str(value) for value in row) for row in model._default_manager.values_list(*names)
        )
    state["users"] = sorted(User.objects.values_list("username", "is_active"))
    return state


# --- content ---------------------------------------------------------------------------------


def png_bytes() -> bytes:
    """A real 1x1 PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


CSV_BYTES = b"name,count\nalpha,1\nbeta,2\n"


def upload(client: APIClient, name: str, data: bytes, content_type: str) -> Any:
    return client.post(
        f"{API}/files/",
        {"file": SimpleUploadedFile(name, data, content_type=content_type)},
        format="multipart",
    )


def post(thread: Thread, author: User | None, text: str = "hello", **kwargs: Any) -> Message:
    message, _ = message_post(thread=thread, author=author, text=text, **kwargs)
    return message


def post_many(thread: Thread, author: User, count: int, prefix: str = "m") -> list[Message]:
    return [post(thread, author, f"{prefix}{i}") for i in range(count)]


# --- permissions -----------------------------------------------------------------------------

CHAT_PERMS = tuple(codename for codename, _ in CHAT_PERMISSIONS)


def set_chat_perms(user: User, codenames: Iterable[str]) -> None:
    """Give `user` exactly these chat permissions, directly instead of through the group."""
    user.groups.clear()
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="threads", codename__in=list(codenames))
    )


# --- settings ----------------------------------------------------------------------------------

SETTINGS_FILE = Path(__file__).resolve().parents[1] / "chatproject" / "settings.py"
_SETTINGS_ENV_PREFIXES = (
    "AWS_",
    "GATEWAY_",
    "USE_S3",
    "MEDIA_ROOT",
    # The HTTPS profile and the login protection (tests/chatproject/test_security_profile.py).
    "BEHIND_HTTPS_PROXY",
    "SECURE_",
    "SESSION_COOKIE_SECURE",
    "CSRF_",
    "TRUSTED_PROXY_COUNT",
    "LOGIN_",
)


def load_settings(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> dict[str, Any]:
    """Run chatproject/settings.py afresh in its own namespace with `env` set (and the storage,
    gateway, HTTPS and login variables of this process cleared); the running settings are
    untouched."""
    for name in list(os.environ):
        if name.startswith(_SETTINGS_ENV_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("VAR_DIR", tempfile.mkdtemp(prefix="threadline-settings-"))
    monkeypatch.setenv("SECRET_KEY", "settings-test")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(SETTINGS_FILE))
