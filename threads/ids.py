"""Prefixed random ids (`thr_…`, `msg_…`), the Chat Svc convention that clients already use."""

from __future__ import annotations

import re
import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
_BODY_LENGTH = 22  # 62**22 ≈ 2**131: unguessable, so a leaked id never grants access by itself
ID_MAX_LENGTH = 64

# A client may choose its own id (idempotent retries); it must be printable and short so it is
# safe in URLs, logs and channel-group names.
CLIENT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_CLIENT_ID = re.compile(CLIENT_ID_PATTERN)


def new_id(prefix: str) -> str:
    return f"{prefix}_" + "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LENGTH))


def new_user_id() -> str:
    return new_id("usr")


def new_thread_id() -> str:
    return new_id("thr")


def new_topic_id() -> str:
    return new_id("top")


def new_message_id() -> str:
    return new_id("msg")


def new_file_id() -> str:
    return new_id("file")


def new_token_id() -> str:
    return new_id("tok")


def is_valid_client_id(value: str) -> bool:
    return bool(_CLIENT_ID.match(value))


def new_model_id() -> str:
    return new_id("mdl")


def new_run_id() -> str:
    return new_id("run")


def new_artifact_id() -> str:
    return new_id("art")
