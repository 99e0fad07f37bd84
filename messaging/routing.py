from django.urls import path

from messaging.compat.aiatwork import AIAtWorkConsumer
from messaging.consumers import EventsConsumer

websocket_urlpatterns = [
    path("ws/v1/events/", EventsConsumer.as_asgi()),
    # AI-at-Work's Chat-Backend socket (docs/compat.md).
    path("ws", AIAtWorkConsumer.as_asgi()),
]
