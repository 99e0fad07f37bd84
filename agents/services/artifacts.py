"""Artifacts (what a crew makes besides text) and the thread delete that removes their bytes.

`thread_delete` lives here because what it adds to `messaging.services.thread_delete` is the
artifacts' stored bytes.
"""

from __future__ import annotations

from typing import Any

from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from agents.models import AgentRun, Artifact
from messaging import events
from messaging import services as messaging_services
from messaging.events import EventType
from messaging.storage import objects_delete_on_commit
from threads.models import Thread


def artifact_save(
    *,
    run: AgentRun,
    agent: str,
    kind: str,
    title: str,
    content_type: str,
    content: bytes,
    data: dict[str, Any],
) -> Artifact:
    """Store an artifact's bytes in the default storage and its row, with a chatArtifactAdded
    event. The bytes go first: a failed row leaves no row without bytes, and its blob is
    removed."""
    from agents.wire import artifact_json

    artifact = Artifact(
        thread_id=run.thread_id,
        message_id=run.message_id,
        run=run,
        kind=kind,
        title=title,
        content_type=content_type,
        size=len(content),
        data={**data, "agent": agent},
        created_at=timezone.now(),
    )
    artifact.content.save(artifact.pk, ContentFile(content), save=False)
    try:
        with transaction.atomic():
            artifact.save(force_insert=True)
            events.record(
                thread_id=run.thread_id,
                type=EventType.ARTIFACT_ADDED,
                data=artifact_json(artifact),
            )
    except Exception:
        artifact.content.storage.delete(artifact.content.name)
        raise
    return artifact


def thread_delete(*, thread: Thread) -> None:
    """Delete a thread with everything in it, the artifacts' stored bytes included (after
    commit, like attachments)."""
    with transaction.atomic():
        blobs = [
            (artifact.content.storage, artifact.content.name)
            for artifact in Artifact.objects.filter(thread=thread).only("id", "content")
        ]
        messaging_services.thread_delete(thread=thread)
        objects_delete_on_commit(blobs)
