"""Websocket routes: the job event stream (see jobs.consumers)."""

from django.urls import path

from jobs.consumers import JobEventsConsumer

websocket_urlpatterns = [
    path("ws/jobs/<int:job_id>/", JobEventsConsumer.as_asgi()),
]
