from django.urls import path

from agents import apis

urlpatterns = [
    path("models/", apis.ModelListApi.as_view(), name="model-list"),
    path(
        "threads/<str:thread_id>/summary/", apis.ThreadSummaryApi.as_view(), name="thread-summary"
    ),
]
