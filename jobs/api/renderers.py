"""Renderers that let DRF's content negotiation accept the pairs export's media types (jobs.api.views.
PairsExportView): without one per type, a request whose Accept names only application/octet-stream would be a
406 before the view runs. The export itself is streamed, never rendered; error bodies stay JSON (the view
renders them with JSONRenderer whatever Accept said)."""

from __future__ import annotations

from rest_framework.renderers import BaseRenderer

EXPORT_TYPES = ("application/jsonl", "application/octet-stream")  # the export's media types, the default first


class JsonlRenderer(BaseRenderer):
    media_type = EXPORT_TYPES[0]
    format = "jsonl"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        raise NotImplementedError("the export streams its body; nothing is rendered with this media type")


class OctetStreamRenderer(JsonlRenderer):
    media_type = EXPORT_TYPES[1]
    format = "bin"
