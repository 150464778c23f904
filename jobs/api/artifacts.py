"""REST views of a job's artifacts (models out): the list, and a download of one, streamed.

Who may: whoever may see the job (ServiceAPIView.get_job: its owner, and staff, who see every job everywhere in
the API); anyone else gets the 404 of a job that does not exist. What may be downloaded, and how it is streamed:
jobs.services.artifacts.
"""

from __future__ import annotations

from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, StreamingHttpResponse
from django.urls import reverse
from django.utils.http import content_disposition_header
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from jobs.api.views import ServiceAPIView
from jobs.services.artifacts import (
    ARCHIVE_TYPE,
    FILE_TYPE,
    Listed,
    artifact_target,
    as_async,
    file_chunks,
    job_artifacts,
    tar_gz_chunks,
)


class JobArtifactSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="artifact.id")
    stage = serializers.CharField(source="artifact.stage", help_text="The stage (or method) that made it.")
    kind = serializers.CharField(
        source="artifact.kind", help_text="model (a Hugging Face model folder), samples (JSONL), results (JSON)."
    )
    path = serializers.CharField(
        source="artifact.path", help_text="Where it is on the server (the same as GET /jobs/{id}/results/ shows)."
    )
    name = serializers.CharField(
        source="target.name",
        allow_null=True,
        help_text="Its path inside the job's run folder (dpo_cong/model); null when it is not the job's own output "
        "(a pipeline's input models: the strong base, a given pi_post) or no longer on disk.",
    )
    is_folder = serializers.BooleanField(source="target.is_dir", allow_null=True)
    size_bytes = serializers.IntegerField(
        allow_null=True, help_text="Bytes of the file, or of the files a folder's download holds (before compression)."
    )
    # The field "partial" (as the results' artifacts have it), which shadows the serializer's own partial flag.
    partial = serializers.BooleanField(  # type: ignore[assignment]
        source="artifact.partial", help_text="The job stopped before it was finished."
    )
    created = serializers.DateTimeField(source="artifact.created")
    download_url = serializers.SerializerMethodField(
        help_text="GET it for the file, or the folder as a .tar.gz; null when it cannot be downloaded (name is null)."
    )

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_download_url(self, row: Listed) -> str | None:
        if row.target is None:
            return None
        url = reverse("api:job-artifact-download", args=[row.artifact.job_id, row.artifact.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request is not None else url


class JobArtifactsView(ServiceAPIView):
    @extend_schema(
        summary="List a job's artifacts",
        description="The models and files the job made, in the order made: trained model folders (kind model, one "
        "per method; each holds a README.md model card), samples and results. Each one that is the job's own "
        "output has a download_url.",
        responses=JobArtifactSerializer(many=True),
    )
    def get(self, request, pk):
        rows = job_artifacts(self.get_job(request, pk))
        return Response(JobArtifactSerializer(rows, many=True, context={"request": request}).data)


class ArtifactDownloadView(ServiceAPIView):
    renderer_classes = [JSONRenderer]  # the error bodies; the download itself is streamed, never rendered

    def perform_content_negotiation(self, request, force=False):
        # Whatever the client accepts (curl */*, a generated client application/octet-stream), it gets the bytes.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        summary="Download an artifact",
        description="A file artifact as it is (application/octet-stream); a folder (a trained model) as a gzipped "
        "tar (application/gzip) of one folder, job-<id>-<stage>-model/, which unpacks into a folder that "
        "AutoModelForCausalLM.from_pretrained loads. Streamed as it is read, never held whole. Only what the job "
        "wrote inside its own run folder downloads; symlinks inside a folder are left out. 404: no such job or "
        "artifact, one you may not see, or one that cannot be downloaded (download_url null).",
        responses={(200, ARCHIVE_TYPE): OpenApiTypes.BINARY, (200, FILE_TYPE): OpenApiTypes.BINARY},
    )
    def get(self, request, pk, artifact_id):
        job = self.get_job(request, pk)
        art = job.artifacts.filter(pk=artifact_id).first()
        target = artifact_target(art) if art is not None else None
        if target is None:
            raise Http404("no such artifact, or not one that can be downloaded")
        chunks = tar_gz_chunks(target) if target.is_dir else file_chunks(target)
        # Under ASGI an async iterator (Django would read a synchronous one into a list first: the whole download).
        body = as_async(chunks) if isinstance(request._request, ASGIRequest) else chunks
        resp = StreamingHttpResponse(body, content_type=ARCHIVE_TYPE if target.is_dir else FILE_TYPE)
        resp["Content-Disposition"] = content_disposition_header(True, target.filename)
        return resp
