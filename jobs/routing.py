"""Websocket routes (the job event stream lands here)."""

websocket_urlpatterns: list = []
