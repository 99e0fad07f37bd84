"""JSON shapes of the agents app's objects, as clients read them (camelCase).

Declared once, as ArtifactOutput: the REST views answer with it, the chatArtifactAdded event
and a reply's artifact list carry what `artifact_json` makes with it, and the OpenAPI schema is
generated from the same fields.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from agents.models import Artifact
from threads.wire import WireSerializer


class ArtifactOutput(WireSerializer):
    id = serializers.CharField()
    threadId = serializers.CharField(source="thread_id")
    messageId = serializers.CharField(source="message_id", allow_null=True)
    runId = serializers.CharField(source="run_id", allow_null=True)
    kind = serializers.ChoiceField(choices=Artifact.Kind.choices)
    title = serializers.CharField(allow_blank=True)
    contentType = serializers.CharField(source="content_type")
    size = serializers.IntegerField()
    data = serializers.JSONField(  # type: ignore[assignment]
        help_text="A chart's data rows, a table's Markdown, the agent."
    )
    contentUrl = serializers.SerializerMethodField()
    createdAt = serializers.DateTimeField(source="created_at")

    def get_contentUrl(self, artifact: Artifact) -> str:
        return f"/api/v1/artifacts/{artifact.pk}/content/"


# One bound instance: to_representation keeps no per-call state, and building a serializer
# deep-copies its declared fields.
_ARTIFACT = ArtifactOutput()


def artifact_json(artifact: Artifact) -> dict[str, Any]:
    return _ARTIFACT.to_representation(artifact)
