from django.urls import path

from threads import apis

urlpatterns = [
    path("me/", apis.MeApi.as_view(), name="me"),
    path("threads/", apis.ThreadListCreateApi.as_view(), name="thread-list"),
    path("threads/<str:thread_id>/", apis.ThreadDetailApi.as_view(), name="thread-detail"),
    path(
        "threads/<str:thread_id>/members/", apis.ThreadMembersApi.as_view(), name="thread-members"
    ),
    path("threads/<str:thread_id>/read/", apis.ThreadReadApi.as_view(), name="thread-read"),
    path(
        "threads/<str:thread_id>/members/<str:user_id>/",
        apis.ThreadMemberDetailApi.as_view(),
        name="thread-member-detail",
    ),
    path("topics/", apis.TopicListCreateApi.as_view(), name="topic-list"),
]
