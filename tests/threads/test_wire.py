"""The wire shapes are written by WireSerializer's fast walk over the declared fields: it must
write exactly what DRF's generic Serializer.to_representation writes for the same fields."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from rest_framework import serializers

from agents.wire import ArtifactOutput
from messaging.compat.bff import HistoryMessageOutput, SessionOutput
from messaging.selectors import MessageRow
from messaging.wire import MessageOutput
from tests.agents.crew_support import bare_run
from tests.conftest import Cast
from tests.helpers import png_bytes, post
from threads.selectors import thread_get
from threads.wire import MemberOutput, ThreadOutput, WireSerializer

pytestmark = pytest.mark.django_db


def _generic(serializer: WireSerializer, instance: object) -> dict[str, object]:
    return dict(serializers.Serializer.to_representation(serializer, instance))


def test_threads_and_members_are_written_as_drf_writes_them(cast: Cast) -> None:
    thread = thread_get(thread_id=cast.thread.pk)
    assert ThreadOutput().to_representation(thread) == _generic(ThreadOutput(), thread)
    for membership in thread.memberships.all():
        assert MemberOutput().to_representation(membership) == _generic(MemberOutput(), membership)
    assert SessionOutput().to_representation(thread) == _generic(SessionOutput(), thread)


def test_messages_rows_and_artifacts_are_written_as_drf_writes_them(cast: Cast) -> None:
    from agents import services as agent_services

    message = post(cast.thread, cast.alice, "hello")
    message.refresh_from_db()
    assert MessageOutput().to_representation(message) == _generic(MessageOutput(), message)
    run = bare_run(cast.thread, cast.alice)
    artifact = agent_services.artifact_save(
        run=run,
        agent="analyst",
        kind="chart",
        title="Sales",
        content_type="image/png",
        content=png_bytes(),
        data={"rows": [["North", "17.50"]]},
    )
    assert ArtifactOutput().to_representation(artifact) == _generic(ArtifactOutput(), artifact)
    # A history row from the AI (no author), with a time that is not UTC and a file.
    now = datetime.now(UTC)
    row = MessageRow(
        id="msg_x",
        thread_id=cast.thread.pk,
        seq=3,
        author_id=None,
        text="",
        meta={"modelId": "m"},
        status="complete",
        edited=True,
        created_at=now,
        updated_at=now.astimezone(timezone(timedelta(hours=2))),
        file_ids=["file_a"],
    )
    for output in (MessageOutput(), HistoryMessageOutput()):
        assert output.to_representation(row) == _generic(output, row)
    assert MessageOutput().to_representation(row)["updatedAt"].endswith("Z")
