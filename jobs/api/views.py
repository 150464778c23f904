"""REST views: parse, call a selector or service, serialize. No rules here (see jobs.services).

Objects a user may not see answer 404, exactly like objects that do not exist, so ids leak nothing.
Bodies are JSON (jobs.api.parsers.SafeJSONParser), except the dataset upload's multipart form. Each
operation's summary and description are what the OpenAPI schema shows a client's author; the error
responses every operation declares come from jobs.api.schema.ApiSchema.
"""

from __future__ import annotations

import math
from typing import Any

from django.contrib.auth import authenticate
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import APIException, Throttled, ValidationError
from rest_framework.permissions import SAFE_METHODS, AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from jobs import selectors, services
from jobs.api import job_rows, login_guard
from jobs.api import serializers as s
from jobs.api.parsers import SafeJSONParser, too_large
from jobs.api.renderers import EXPORT_TYPES, JsonlRenderer, OctetStreamRenderer
from jobs.api.schema import TOO_MANY_REQUESTS, ApiSchema, KindSerializer
from jobs.job_table import filter_labels
from jobs.models import GeneratedPair, Job

EVENTS_LIMIT = (1, 5000)  # GET /jobs/<id>/events/?limit=: the bounds ...
EVENTS_LIMIT_DEFAULT = 1000  # ... and the default


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


def int_param(params, key: str, default: int, bounds: tuple[int, int] | None = None) -> int:
    try:
        value = int(params.get(key, default))
    except (TypeError, ValueError):
        raise ValidationError({key: [f"{key} must be an integer, got {params.get(key)!r}"]}) from None
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        # Out of range is refused rather than clamped: a client asking for 0 has a bug to hear about.
        raise ValidationError({key: [f"{key} must be between {bounds[0]} and {bounds[1]}, got {value}"]})
    return value


def float_param(params, key: str) -> float | None:
    """A finite number, or None when absent or empty; else a 400 on ``key`` (nan would match nothing, silently)."""
    raw = params.get(key)
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValidationError({key: [f"{key} must be a finite number, got {raw!r}"]})
    return value


def bool_param(params, key: str) -> bool | None:
    """1/true/yes or 0/false/no (any case), None when absent or empty; else a 400 on ``key``."""
    raw = str(params.get(key) or "").strip().lower()
    if not raw:
        return None
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("0", "false", "no"):
        return False
    raise ValidationError({key: [f"{key} must be one of 1, true, yes, 0, false, no; got {params.get(key)!r}"]})


# The pairs' implicit reward was one ambiguous number (a per-token mean the docs did not describe); the filter
# on it is refused with the names that replaced it rather than silently re-read as one of them.
GONE_PAIR_FILTERS = {
    "min_reward": "min_reward is gone: use min_reward_sum (the implicit reward, summed over response tokens) or "
    "min_reward_mean (per token)",
}


class TooManyActiveJobs(APIException):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "too_many_active_jobs"


# The base of every API view (no docstring: drf-spectacular would show it as every operation's description).
# Bodies are JSON unless a view says otherwise; a service's django ValidationError becomes DRF's 400 with the
# same field messages, or {"detail": message} when it names no field (docs/API.md, "Errors").
class ServiceAPIView(APIView):
    parser_classes = [SafeJSONParser]
    schema = ApiSchema()

    def handle_exception(self, exc):
        if isinstance(exc, DjangoValidationError):
            detail = exc.message_dict if hasattr(exc, "error_dict") else {"detail": " ".join(exc.messages)}
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
        summary="Get an API token",
        description="Exchanges a username and password for the user's token (the same one on every call). "
        "Send it on every other call as the header `Authorization: Token <token>`. Wrong credentials: 400 "
        '`{"detail": "wrong username or password"}`. Repeated failures lock the username and the address '
        "for a while: 429, whose message says when to try again.",
        request=s.CredentialsSerializer,
        responses={200: s.AuthTokenSerializer, 429: TOO_MANY_REQUESTS},
    )
    def post(self, request):
        ser = s.CredentialsSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        user = authenticate(request, username=ser.validated_data["username"], password=ser.validated_data["password"])
        if user is None or not user.is_active:
            raise ValidationError({"detail": "wrong username or password"})
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})


class ModelListView(ServiceAPIView):
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        summary="List models",
        description="The models you can use in jobs: your own and the shared ones (shared: true), newest first.",
        responses=s.ModelEntrySerializer(many=True),
    )
    def get(self, request):
        return self.paginate(request, selectors.models_visible(user=request.user), s.ModelEntrySerializer)

    @extend_schema(
        summary="Register a model",
        description="Registers a Hugging Face model folder on the server (an absolute path under one of "
        "MODEL_ROOTS) under a name unique among your models. Its tokenizer's vocabulary fingerprint is "
        "stored: a weak pair must share one.",
        request=s.ModelRegisterSerializer,
        responses={201: s.ModelEntrySerializer},
    )
    def post(self, request):
        ser = s.ModelRegisterSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        m = services.model_register(owner=request.user, **ser.validated_data)
        return Response(s.ModelEntrySerializer(m).data, status=status.HTTP_201_CREATED)


class JobListView(ServiceAPIView):
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        summary="List jobs",
        description="Your jobs (staff: everyone's), newest first. Rows leave out config and spec; "
        "GET /api/v1/jobs/{id}/ has them.",
        parameters=[
            OpenApiParameter("status", str, description="Only these statuses, comma-separated."),
            OpenApiParameter("kind", str, description="Only these kinds, comma-separated."),
            OpenApiParameter("tag", str, description="Only jobs with this tag."),
            OpenApiParameter("search", str, description="Only jobs with this text in their name or a tag."),
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
        qs = filter_labels(qs, tag=q.get("tag"), search=q.get("search"))  # name and tags (jobs.job_table)
        if not job_rows.available():  # a summary field that needs the model: the serializer, per job
            return self.paginate(request, qs.defer("config", "results"), s.JobSummarySerializer)
        # Plain rows of the columns the list shows (config and results, large JSON, are not among them), turned
        # into JSON by JobSummarySerializer's own fields without a model and a serializer per job (job_rows).
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(qs.values(*job_rows.lookups()), request, view=self)
        return paginator.get_paginated_response(job_rows.rows(page))

    @extend_schema(
        summary="Create a job",
        description="Checks the request as a worker would, stores the job with the configuration it will "
        "run (config.spec) and queues it. Which fields a kind needs: docs/API.md and GET /api/v1/kinds/. "
        "400: a message per field, or per setting's key path (params.sft.learning_rate); nothing is "
        "created. 429: you already have JOB_MAX_ACTIVE_PER_USER jobs queued or running.",
        request=s.JobCreateSerializer,
        responses={201: s.JobSerializer, 429: TOO_MANY_REQUESTS},
    )
    def post(self, request):
        ser = s.JobCreateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        job = services.job_create(user=request.user, **ser.validated_data)
        return Response(s.JobSerializer(job).data, status=status.HTTP_201_CREATED)


class JobDetailView(ServiceAPIView):
    @extend_schema(
        summary="Get a job",
        description="The job's status, progress and the configuration it runs.",
        responses=s.JobSerializer,
    )
    def get(self, request, pk):
        return Response(s.JobSerializer(self.get_job(request, pk)).data)


class JobCancelView(ServiceAPIView):
    @extend_schema(
        summary="Cancel a job",
        description="A queued job is cancelled at once; a running one is asked to stop and stops within a "
        "batch (keeping what it made, partial: true). A finished job: 400 on status.",
        request=None,
        responses=s.JobSerializer,
    )
    def post(self, request, pk):
        job = services.job_cancel(job=self.get_job(request, pk), user=request.user)
        return Response(s.JobSerializer(job).data)


class JobRetryView(ServiceAPIView):
    @extend_schema(
        summary="Retry a job",
        description="Queues a failed or cancelled job again with the same configuration (any other status: "
        "400 on status).",
        request=None,
        responses=s.JobSerializer,
    )
    def post(self, request, pk):
        job = services.job_retry(job=self.get_job(request, pk), user=request.user)
        return Response(s.JobSerializer(job).data)


class JobEventsView(ServiceAPIView):
    @extend_schema(
        summary="List a job's events",
        description="What the job reported, in order (seq counts from 1): status changes, progress, "
        "metrics, samples and log lines. Poll with after = the last seq you have.",
        parameters=[
            OpenApiParameter("after", int, description="Only events with seq greater than this (default 0)."),
            OpenApiParameter(
                "limit",
                {"type": "integer", "minimum": EVENTS_LIMIT[0], "maximum": EVENTS_LIMIT[1]},
                description=f"At most this many ({EVENTS_LIMIT[0]}..{EVENTS_LIMIT[1]}, default "
                f"{EVENTS_LIMIT_DEFAULT}); out of range is a 400.",
            ),
        ],
        responses=s.JobEventSerializer(many=True),
    )
    def get(self, request, pk):
        job = self.get_job(request, pk)
        after = int_param(request.query_params, "after", 0)
        limit = int_param(request.query_params, "limit", EVENTS_LIMIT_DEFAULT, bounds=EVENTS_LIMIT)
        events = selectors.job_events(job=job, after=after, limit=limit)
        return Response(s.JobEventSerializer(events, many=True).data)


class JobShardsView(ServiceAPIView):
    @extend_schema(
        summary="List a job's generation shards",
        description="Per-shard detail of the job's sharded generation stages (params.shards): which worker holds "
        "or held each part, its attempts and rows written. Empty when every stage ran whole. The job's progress "
        "events carry one bar per stage, summed over its shards.",
        responses=s.JobShardSerializer(many=True),
    )
    def get(self, request, pk):
        job = self.get_job(request, pk)
        return Response(s.JobShardSerializer(selectors.job_shards(job=job), many=True).data)


class JobPairsView(ServiceAPIView):
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        summary="List a job's preference pairs",
        description="The pairs contrastive decoding made (chosen: the CD response; rejected: the weak "
        "model's), with their rewards and review state, in prompt order.",
        parameters=[
            OpenApiParameter("review_status", str, description="Only these review states, comma-separated."),
            OpenApiParameter(
                "min_reward_sum",
                float,
                description="Only pairs whose implicit reward (summed over response tokens) is at least this.",
            ),
            OpenApiParameter(
                "min_reward_mean", float, description="Only pairs whose implicit reward per token is at least this."
            ),
            OpenApiParameter(
                "empty_response", bool, description="Only pairs with (true) or without (false) an empty response."
            ),
            OpenApiParameter(
                "search", str, description="Only pairs with this text in the prompt or the chosen response."
            ),
        ],
        responses=s.GeneratedPairSerializer(many=True),
    )
    def get(self, request, pk):
        job = self.get_job(request, pk)
        q = request.query_params
        gone = {k: [msg] for k, msg in GONE_PAIR_FILTERS.items() if k in q}
        if gone:
            raise ValidationError(gone)
        qs = selectors.job_pairs(
            job=job,
            review_status=choice_list(q, "review_status", GeneratedPair.Review.values),
            min_reward_sum=float_param(q, "min_reward_sum"),
            min_reward_mean=float_param(q, "min_reward_mean"),
            empty_response=bool_param(q, "empty_response"),
            search=q.get("search"),
        )
        return self.paginate(request, qs, s.GeneratedPairSerializer)


class PairReviewView(ServiceAPIView):
    @extend_schema(
        summary="Review a pair",
        description="Approve, reject or edit (with edited_text) one pair; rejected pairs are left out of the export.",
        request=s.PairReviewSerializer,
        responses=s.GeneratedPairSerializer,
    )
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
    renderer_classes = [JSONRenderer, JsonlRenderer, OctetStreamRenderer]  # JSON first: what */* gets

    def finalize_response(self, request, response, *args, **kwargs):
        # An error is a Response (the download is not): JSON, as the schema says, whatever Accept asked for.
        if isinstance(response, Response):
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), "application/json"
        return super().finalize_response(request, response, *args, **kwargs)

    @extend_schema(
        summary="Export a job's pairs",
        description="The pairs as reviewed, as TRL preference JSONL (one JSON object per line: prompt, chosen, "
        "rejected), streamed as a file download: rejected pairs skipped, edits applied, one-sided pairs left out. "
        "A train job's pairs_from trains on exactly these rows. The body is application/jsonl unless the "
        "request's Accept prefers application/octet-stream (generated clients read that one as bytes); the bytes "
        "are the same. Pairs with an empty response are left out unless include_empty is true.",
        parameters=[
            OpenApiParameter(
                "include_empty",
                bool,
                description="Also export pairs with an empty (whitespace-only) chosen or rejected response.",
            ),
            OpenApiParameter(
                "include_pending",
                bool,
                description="Export pending (unreviewed) pairs too, or not; absent: only while none of the job's "
                "pairs has been reviewed.",
            ),
        ],
        responses={(200, media): OpenApiTypes.BINARY for media in EXPORT_TYPES},
    )
    def get(self, request, pk):
        job = self.get_job(request, pk)
        include_empty = bool(bool_param(request.query_params, "include_empty"))  # checked before streaming starts
        include_pending = bool_param(request.query_params, "include_pending")
        media = request.get_preferred_type(EXPORT_TYPES) or EXPORT_TYPES[0]
        choice = {"job": job, "include_empty": include_empty, "include_pending": include_pending}
        # Under ASGI an async iterator, sent page by page (Django reads a synchronous one into a list first).
        asgi = isinstance(request._request, ASGIRequest)
        rows = services.pairs_export_async(**choice) if asgi else services.pairs_export(**choice)
        resp = StreamingHttpResponse(rows, content_type=media)
        resp["Content-Disposition"] = f'attachment; filename="job-{job.pk}-pairs.jsonl"'
        return resp


class JobResultsView(ServiceAPIView):
    @extend_schema(
        summary="Get a job's results",
        description="The scores a finished job recorded (results: null before; their layout depends on the "
        "kind, tagged with results_version) and the files it wrote (artifacts).",
        responses=s.JobResultsSerializer,
    )
    def get(self, request, pk):
        return Response(s.JobResultsSerializer(self.get_job(request, pk)).data)


class KindListView(ServiceAPIView):
    @extend_schema(
        summary="List job kinds",
        description="Every job kind with its help, its stages, its knobs and the JSON Schema of its params "
        "(from the ML core's registry, with this server's limits as maximum).",
        responses={200: serializers.DictField(child=KindSerializer())},
    )
    def get(self, request):
        from django.conf import settings

        from ml.spec_schema import describe

        return Response(describe(getattr(settings, "JOB_LIMITS", None)))


class PresetListView(ServiceAPIView):
    @extend_schema(
        summary="List presets",
        description="Ready-made job requests for the registered toy worlds and offline models; POST a "
        "preset's request to /api/v1/jobs/ as it is.",
        responses=s.PresetSerializer(many=True),
    )
    def get(self, request):
        return Response(selectors.presets(user=request.user))
