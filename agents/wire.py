"""JSON shapes of the agents app's objects, as clients read them (camelCase)."""

from __future__ import annotations

from typing import Any

from agents.models import Artifact
from threads.wire import iso


def artifact_json(artifact: Artifact) -> dict[str, Any]:
    return {
        "id": artifact.pk,
        "threadId": artifact.thread_id,
        "messageId": artifact.message_id,
        "runId": artifact.run_id,
        "kind": artifact.kind,
        "title": artifact.title,
        "contentType": artifact.content_type,
        "size": artifact.size,
        "data": artifact.data,
        "contentUrl": f"/api/v1/artifacts/{artifact.pk}/content/",
        "createdAt": iso(artifact.created_at),
    }
