from django.urls import path

from messaging import apis, sse
from messaging.compat import bff

urlpatterns = [
    path("chat/messages", bff.chat_messages, name="bff-chat-messages"),
    path("chat/sessions", bff.ChatSessionsApi.as_view(), name="bff-chat-sessions"),
    path(
        "chat/sessions/<str:session_id>",
        bff.ChatSessionDetailApi.as_view(),
        name="bff-chat-session-detail",
    ),
    path("chat/history", bff.ChatHistoryApi.as_view(), name="bff-chat-history"),
    path("events/", sse.events_stream, name="events-stream"),
    path("events/types/", apis.EventTypesApi.as_view(), name="event-types"),
    path(
        "threads/<str:thread_id>/messages/",
        apis.ThreadMessagesApi.as_view(),
        name="thread-messages",
    ),
    path("messages/<str:message_id>/", apis.MessageDetailApi.as_view(), name="message-detail"),
    path("messages/<str:message_id>/stop/", apis.MessageStopApi.as_view(), name="message-stop"),
    path(
        "messages/<str:message_id>/regenerate/",
        apis.MessageRegenerateApi.as_view(),
        name="message-regenerate",
    ),
    path("search/", apis.SearchApi.as_view(), name="search"),
    path("files/", apis.FileUploadApi.as_view(), name="file-upload"),
    path("files/<str:file_id>/", apis.FileDetailApi.as_view(), name="file-detail"),
    path("files/<str:file_id>/content/", apis.FileContentApi.as_view(), name="file-content"),
]
