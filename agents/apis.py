"""REST interface for the AI models a user may use."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.models import ThreadSummary
from agents.selectors import models_for_user
from chatproject.api import request_user
from threads.permissions import Perm
from threads.selectors import access_thread
from threads.wire import iso


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
    @extend_schema(responses=ModelOutput(many=True), summary="The AI models you may use")
    def get(self, request: Request) -> Response:
        models = models_for_user(user=request_user(request))
        return Response({"models": ModelOutput(models, many=True).data})


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
            {
                "text": summary.text if summary else None,
                "uptoSeq": summary.upto_seq if summary else None,
                "updatedAt": iso(summary.updated_at) if summary else None,
            }
        )
