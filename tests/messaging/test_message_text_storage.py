"""How PostgreSQL stores message text (migration 0005): long text compressed with lz4, which
a streaming reply's repeated partial saves pay for on every save."""

from __future__ import annotations

import pytest
from django.db import connection

from messaging.models import Message
from tests.conftest import Cast
from tests.helpers import IS_POSTGRES, post

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(not IS_POSTGRES, reason="PostgreSQL's TOAST compression"),
]


def test_a_long_reply_saved_while_streaming_is_compressed_with_lz4(cast: Cast) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'"
            " AND 'lz4' = ANY(enumvals))"
        )
        if not cursor.fetchone()[0]:
            pytest.skip("this PostgreSQL was built without lz4")
    reply = post(cast.thread, None, "")
    text = " ".join(f"token{i}" for i in range(8000))
    Message.objects.filter(pk=reply.pk).update(text=text, status=Message.Status.STREAMING)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_column_compression(text), pg_column_size(text) FROM messaging_message"
            " WHERE id = %s",
            [reply.pk],
        )
        method, stored = cursor.fetchone()
    assert method == "lz4"
    assert stored < len(text) / 2
    assert Message.objects.get(pk=reply.pk).text == text
