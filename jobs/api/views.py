"""REST views: parse, call a selector or service, serialize. No rules here (see jobs.services).

Objects a user may not see answer 404, exactly like objects that do not exist, so ids leak nothing.
"""

from __future__ import annotations

import math
from typing import Any

from django.contrib.auth import authenticate
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import APIException, Throttled, ValidationError
from rest_framework.permissions import SAFE_METHODS, AllowAny
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from jobs import selectors, services
from jobs.api import login_guard
from jobs.api import serializers as s
from jobs.api.parsers import SafeFormParser, SafeJSONParser, SafeMultiPartParser, too_large
from jobs.models import GeneratedPair, Job


def choice_list(params, key: str, known: list[str]) -> str | None:
    """A comma-separated filter value, every item one of ``known``; else a 400 on ``key`` (an unknown value
    would silently match nothing)."""
    raw = params.get(key)
    if not raw:
        return None
    unknown = [v for v in raw.split(",") if v and v not in known]
    if unknown:
        raise ValidationError({key: [f"unknown {key} {', '.join(map(repr, unknown))}; known: {', '.join(known)}"]})
    return str(raw)


def int_param(params, key: str, default: int) -> int:
    try:
        return int(params.get(key, default))
    except (TypeError, ValueError):
        raise ValidationError({key: [f"{key} must be an integer, got {params.get(key)!r}"]}) from None


class TooManyActiveJobs(APIException):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "too_many_active_jobs"


class ServiceAPIView(APIView):
    """Turns a service's django ValidationError into DRF's 400 with the same field messages."""

    def handle_exception(self, exc):
        if isinstance(exc, DjangoValidationError):
            detail = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
            exc = ValidationError(detail)
        elif isinstance(exc, services.JobQuotaExceeded):
            exc = TooManyActiveJobs(str(exc))
        return super().handle_exception(exc)

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        # Parse every write's body now, even where the view ignores it (cancel, retry), so a body the
        # parsers refuse (jobs.api.parsers) is a 400 on every endpoint and nothing is changed.
        if request.method not in SAFE_METHODS:
            try:
                request.data  # noqa: B018 - the access parses
            except RequestDataTooBig:  # DRF reads request.body, which Django limits: 413, with a message
                raise too_large() from None

    # Set on the views that answer pages ({count, next, previous, results}), so the OpenAPI schema
    # describes the page, not a bare array (drf-spectacular reads it from the view).
    pagination_class: Any = None

    def paginate(self, request, qs, serializer_class):
        paginator = (self.pagination_class or api_settings.DEFAULT_PAGINATION_CLASS)()
        page = paginator.paginate_queryset(qs, request, view=self)
        return paginator.get_paginated_response(serializer_class(page, many=True).data)

    def get_job(self, request, pk):
        job = selectors.job_get(user=request.user, job_id=pk)
        if job is None:
            raise Http404("no such job")
        return job


class TokenView(ServiceAPIView):
    permission_classes = [AllowAny]
    authentication_classes = []
    throttle_classes = [login_guard.LoginLockThrottle]  # 429 while the username or address is locked

    def throttled(self, request, wait):
        raise Throttled(wait, detail=login_guard.lock_message(int(wait or 1)))

    @extend_schema(
        request=s.TokenRequestSerializer,
        responses={200: {"type": "object", "properties": {"token": {"type": "string"}}}},
    )
    def post(self, request):
        ser = s.TokenRequestSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        user = authenticate(request, username=ser.validated_data["username"], password=ser.validated_data["password"])
        if user is None or not user.is_active:
            raise ValidationError({"detail": ["wrong username or password"]})
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})


class ModelListView(ServiceAPIView):
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(responses=s.ModelEntrySerializer(many=True))
    def get(self, request):
        return self.paginate(request, selectors.models_visible(user=request.user), s.ModelEntrySerializer)

    @extend_schema(request=s.ModelRegisterSerializer, responses={201: s.ModelEntrySerializer})
    def post(self, request):
        ser = s.ModelRegisterSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        m = services.model_register(owner=request.user, **ser.validated_data)
        return Response(s.ModelEntrySerializer(m).data, status=status.HTTP_201_CREATED)


class DatasetListView(ServiceAPIView):
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS
    parser_classes = [SafeMultiPartParser, SafeFormParser]

    @extend_schema(responses=s.DatasetSerializer(many=True))
    def get(self, request):
        return self.paginate(request, selectors.datasets_visible(user=request.user), s.DatasetSerializer)

    @extend_schema(request={"multipart/form-data": s.DatasetUploadSerializer}, responses={201: s.DatasetSerializer})
    def post(self, request):
        ser = s.DatasetUploadSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        d = ser.validated_data
        ds = services.dataset_create(
            name=d["name"], kind=d["kind"], gold=d.get("gold", ""), chunks=d["file"].chunks(), owner=request.user
        )
        return Response(s.DatasetSerializer(ds).data, status=status.HTTP_201_CREATED)


class JobListView(ServiceAPIView):
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS
    parser_classes = [SafeJSONParser, SafeFormParser, SafeMultiPartParser]

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, description="comma-separated statuses"),
            OpenApiParameter("kind", str, description="comma-separated kinds"),
        ],
        responses=s.JobSummarySerializer(many=True),
    )
    def get(self, request):
        q = request.query_params
        qs = selectors.job_list(
            user=request.user,
            status=choice_list(q, "status", Job.Status.values),
            kind=choice_list(q, "kind", Job.Kind.values),
        )
        # Config and results can be large JSON: a list neither loads nor sends them.
        return self.paginate(request, qs.defer("config", "results"), s.JobSummarySerializer)

    @extend_schema(
        request=s.JobCreateSerializer,
        responses={201: s.JobSerializer},
        description="400: {field or params.key.path: [messages]}; 429: the per-user cap on queued and "
        "running jobs (JOB_MAX_ACTIVE_PER_USER).",
    )
    def post(self, request):
        ser = s.JobCreateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        job = services.job_create(user=request.user, **ser.validated_data)
        return Response(s.JobSerializer(job).data, status=status.HTTP_201_CREATED)


class JobDetailView(ServiceAPIView):
    @extend_schema(responses=s.JobSerializer)
    def get(self, request, pk):
        return Response(s.JobSerializer(self.get_job(request, pk)).data)


class JobCancelView(ServiceAPIView):
    @extend_schema(request=None, responses=s.JobSerializer)
    def post(self, request, pk):
        job = services.job_cancel(job=self.get_job(request, pk), user=request.user)
        return Response(s.JobSerializer(job).data)


class JobRetryView(ServiceAPIView):
    @extend_schema(request=None, responses=s.JobSerializer)
    def post(self, request, pk):
        job = services.job_retry(job=self.get_job(request, pk), user=request.user)
        return Response(s.JobSerializer(job).data)


class JobEventsView(ServiceAPIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("after", int, description="only events with seq > after"),
            OpenApiParameter("limit", int, description="at most this many (1..5000, default 1000)"),
        ],
        responses=s.JobEventSerializer(many=True),
    )
    def get(self, request, pk):
        job = self.get_job(request, pk)
        after = int_param(request.query_params, "after", 0)
        limit = min(max(int_param(request.query_params, "limit", 1000), 1), 5000)
        events = selectors.job_events(job=job, after=after, limit=limit)
        return Response(s.JobEventSerializer(events, many=True).data)


class JobPairsView(ServiceAPIView):
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        parameters=[
            OpenApiParameter("review_status", str, description="comma-separated review statuses"),
            OpenApiParameter("min_reward", float, description="implicit reward >= this"),
            OpenApiParameter("search", str, description="text in the prompt or the chosen response"),
        ],
        responses=s.GeneratedPairSerializer(many=True),
    )
    def get(self, request, pk):
        job = self.get_job(request, pk)
        q = request.query_params
        try:
            min_reward = float(q["min_reward"]) if q.get("min_reward") not in (None, "") else None
        except ValueError:
            min_reward = math.nan
        if min_reward is not None and not math.isfinite(min_reward):  # nan matches nothing, silently
            raise ValidationError({"min_reward": [f"min_reward must be a finite number, got {q['min_reward']!r}"]})
        review_status = choice_list(q, "review_status", GeneratedPair.Review.values)
        qs = selectors.job_pairs(job=job, review_status=review_status, min_reward=min_reward, search=q.get("search"))
        return self.paginate(request, qs, s.GeneratedPairSerializer)


class PairReviewView(ServiceAPIView):
    @extend_schema(request=s.PairReviewSerializer, responses=s.GeneratedPairSerializer)
    def post(self, request, pk, pair_id):
        job = self.get_job(request, pk)
        pair = GeneratedPair.objects.filter(job=job, pk=pair_id).first()
        if pair is None:
            raise Http404("no such pair")
        ser = s.PairReviewSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        pair = services.pair_review(pair=pair, user=request.user, **ser.validated_data)
        return Response(s.GeneratedPairSerializer(pair).data)


class PairsExportView(ServiceAPIView):
    @extend_schema(responses={(200, "application/jsonl"): str})
    def get(self, request, pk):
        job = self.get_job(request, pk)
        resp = StreamingHttpResponse(services.pairs_export(job=job), content_type="application/jsonl")
        resp["Content-Disposition"] = f'attachment; filename="job-{job.pk}-pairs.jsonl"'
        return resp


class JobResultsView(ServiceAPIView):
    @extend_schema(responses={200: {"type": "object"}})
    def get(self, request, pk):
        job = self.get_job(request, pk)
        return Response(
            {
                "id": job.pk,
                "status": job.status,
                "partial": job.partial,
                "results": job.results,
                "artifacts": s.ArtifactSerializer(job.artifacts.all(), many=True).data,
            }
        )


class KindListView(ServiceAPIView):
    """Every job kind with the JSON Schema of its params (from ml's registry, with this server's limits)."""

    @extend_schema(responses={200: {"type": "object", "additionalProperties": {"type": "object"}}})
    def get(self, request):
        from django.conf import settings

        from ml.spec_schema import describe

        return Response(describe(getattr(settings, "JOB_LIMITS", None)))


class PresetListView(ServiceAPIView):
    @extend_schema(responses={200: {"type": "array", "items": {"type": "object"}}})
    def get(self, request):
        return Response(selectors.presets(user=request.user))
