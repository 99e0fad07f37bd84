from django.urls import path

from agents import apis

urlpatterns = [
    path("models/", apis.ModelListApi.as_view(), name="model-list"),
    path(
        "threads/<str:thread_id>/artifacts/",
        apis.ThreadArtifactsApi.as_view(),
        name="thread-artifacts",
    ),
    path("artifacts/<str:artifact_id>/", apis.ArtifactDetailApi.as_view(), name="artifact-detail"),
    path(
        "artifacts/<str:artifact_id>/content/",
        apis.ArtifactContentApi.as_view(),
        name="artifact-content",
    ),
    path(
        "threads/<str:thread_id>/summary/", apis.ThreadSummaryApi.as_view(), name="thread-summary"
    ),
]
