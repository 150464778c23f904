"""Websocket routes: the job event stream (see jobs.consumers) and a playground session's stream (see
jobs.playground_consumer)."""

from django.urls import path

from jobs.consumers import JobEventsConsumer
from jobs.playground_consumer import PlaygroundConsumer

websocket_urlpatterns = [
    path("ws/jobs/<int:job_id>/", JobEventsConsumer.as_asgi()),
    path("ws/playground/<slug:session>/", PlaygroundConsumer.as_asgi()),
]
