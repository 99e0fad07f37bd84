"""REST interface for the AI models a user may use."""

from __future__ import annotations

from django.http import HttpResponseBase
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.models import ThreadSummary
from agents.selectors import access_artifact, artifact_list, models_for_user
from agents.wire import ArtifactOutput
from chatproject.api import request_user
from messaging.storage import download_response
from threads.permissions import Perm
from threads.selectors import access_thread


class ModelOutput(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    provider = serializers.CharField()
    contextWindow = serializers.IntegerField(source="context_window")
    maxOutputTokens = serializers.IntegerField(source="max_output_tokens")
    priceInputPer1k = serializers.DecimalField(
        source="price_input_per_1k", max_digits=16, decimal_places=6
    )
    priceOutputPer1k = serializers.DecimalField(
        source="price_output_per_1k", max_digits=16, decimal_places=6
    )
    isDefault = serializers.BooleanField(source="is_default")


class ModelListApi(APIView):
    class ListOutputSerializer(serializers.Serializer):
        models = ModelOutput(many=True)

    @extend_schema(responses=ListOutputSerializer, summary="The AI models you may use")
    def get(self, request: Request) -> Response:
        models = models_for_user(user=request_user(request))
        return Response(self.ListOutputSerializer({"models": models}).data)


class ThreadSummaryApi(APIView):
    class OutputSerializer(serializers.Serializer):
        text = serializers.CharField(allow_null=True)
        uptoSeq = serializers.IntegerField(allow_null=True)
        updatedAt = serializers.DateTimeField(allow_null=True)

    @extend_schema(
        responses=OutputSerializer,
        summary="The rolling summary the AI reads instead of a thread's older turns",
    )
    def get(self, request: Request, thread_id: str) -> Response:
        thread = access_thread(
            user=request_user(request), thread_id=thread_id, perm=Perm.MESSAGE_VIEW
        )
        summary = ThreadSummary.objects.filter(thread=thread).first()
        return Response(
            self.OutputSerializer(
                {
                    "text": summary.text if summary else None,
                    "uptoSeq": summary.upto_seq if summary else None,
                    "updatedAt": summary.updated_at if summary else None,
                }
            ).data
        )


class ThreadArtifactsApi(APIView):
    class ListOutputSerializer(serializers.Serializer):
        artifacts = ArtifactOutput(many=True)

    @extend_schema(
        responses=ListOutputSerializer,
        summary="The charts, tables and summaries the AI made in a thread, oldest first",
    )
    def get(self, request: Request, thread_id: str) -> Response:
        artifacts = artifact_list(user=request_user(request), thread_id=thread_id)
        return Response(self.ListOutputSerializer({"artifacts": artifacts[:500]}).data)


class ArtifactDetailApi(APIView):
    @extend_schema(responses=ArtifactOutput, summary="One artifact")
    def get(self, request: Request, artifact_id: str) -> Response:
        artifact = access_artifact(user=request_user(request), artifact_id=artifact_id)
        return Response(ArtifactOutput(artifact).data)


# Shown in the browser (an <img>, a table view): images that cannot carry script. Everything
# else (SVG, HTML, CSV, Markdown...) is an attachment.
_INLINE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}


class ArtifactContentApi(APIView):
    @extend_schema(
        responses={(200, "*/*"): bytes, 302: None},
        summary="An artifact's bytes (with S3 storage: a redirect to a presigned URL valid "
        "for 5 minutes)",
    )
    def get(self, request: Request, artifact_id: str) -> HttpResponseBase:
        artifact = access_artifact(user=request_user(request), artifact_id=artifact_id)
        return download_response(
            artifact.content,
            filename=_artifact_filename(artifact.title, artifact.content_type),
            content_type=artifact.content_type,
            inline=artifact.content_type in _INLINE_TYPES,
        )


_EXTENSIONS = {
    "image/png": ".png",
    "text/csv": ".csv",
    "text/markdown": ".md",
    "application/json": ".json",
    "image/svg+xml": ".svg",
    "text/html": ".html",
}


def _artifact_filename(title: str, content_type: str) -> str:
    stem = "".join(c if c.isalnum() or c in " -_" else "_" for c in title).strip()[:80]
    return (stem or "artifact") + _EXTENSIONS.get(content_type, "")
