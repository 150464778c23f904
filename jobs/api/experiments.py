"""REST views of experiments (docs/API.md "Experiments", docs/EXPERIMENTS.md): create one from a job request and
a grid (a job per cell), list, show with the aggregate over seeds, cancel and retry every cell. A user sees their
own; staff everyone's; anyone else gets the 404 of one that does not exist. Rules in jobs.services.experiments."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.settings import api_settings

from jobs import experiment_selectors as reads
from jobs.api.schema import TOO_MANY_REQUESTS
from jobs.api.serializers import JobCreateSerializer
from jobs.api.views import ServiceAPIView
from jobs.models import Experiment
from jobs.services import experiments as service


def flat_errors(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested error detail ({"job": {"alpha": [...]}}, lists by index) as the API's flat 400 body, keyed by
    path ("job.alpha", "grid.params.seed[0]"), the shape every 400 has (jobs.api.schema.VALIDATION_ERROR)."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for k, v in detail.items():
            key = str(k) if not prefix else (f"{prefix}[{k}]" if isinstance(k, int) else f"{prefix}.{k}")
            for kk, vv in flat_errors(v, key).items():
                out.setdefault(kk, []).extend(vv)
    elif isinstance(detail, list) and detail and all(isinstance(x, str) for x in detail):
        out[prefix or "detail"] = [str(x) for x in detail]
    elif isinstance(detail, list):
        for i, v in enumerate(detail):
            for kk, vv in flat_errors(v, f"{prefix}[{i}]").items():
                out.setdefault(kk, []).extend(vv)
    else:
        out[prefix or "detail"] = [str(detail)]
    return out


class ExperimentCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, help_text="What to call it; its jobs are named after it and a cell.")
    job = JobCreateSerializer(help_text="The job request every cell starts from (the body of POST /api/v1/jobs/).")
    grid = serializers.DictField(
        child=serializers.ListField(child=serializers.JSONField(), allow_empty=False),
        help_text="Job-request path -> the values it takes: alpha, method, methods, params.<setting> or "
        'params.<stage>.<setting>, e.g. {"alpha": [0.2, 0.6], "params.seed": [0, 1]}. One job per cell of the '
        "cartesian product, at most EXPERIMENT_MAX_CELLS (64); cells that differ only in params.seed are replicates.",
    )
    baseline = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=50,
        help_text="The method the others' paired differences are against (one each job evaluates, kind=cong); "
        "default weak_sft when every cell runs it.",
    )


class CellSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    job = serializers.IntegerField(allow_null=True, help_text="null when the cell's job was deleted.")
    status = serializers.CharField()
    values = serializers.DictField(child=serializers.JSONField(), help_text="The cell's grid values.")
    label = serializers.CharField()  # type: ignore[assignment]  # a field (DRF takes it off the class)


class IntervalSerializer(serializers.Serializer):
    mean = serializers.FloatField(allow_null=True, help_text="null with no finished seed.")
    ci = serializers.ListField(child=serializers.FloatField(allow_null=True), help_text="95% Student-t interval.")
    n = serializers.IntegerField(help_text="Seeds it covers.")


class MethodAggregateSerializer(IntervalSerializer):
    method = serializers.CharField()
    label = serializers.CharField()  # type: ignore[assignment]  # a field (DRF takes it off the class)
    seeds = serializers.ListField(child=serializers.JSONField(), help_text="The seeds of the finished cells.")
    diff = IntervalSerializer(
        allow_null=True, help_text="This method minus the baseline, paired by seed (null for the baseline itself)."
    )


class SettingJobSerializer(serializers.Serializer):
    id = serializers.IntegerField(allow_null=True)
    seed = serializers.JSONField(allow_null=True)
    status = serializers.CharField()


class AggregateSerializer(serializers.Serializer):
    values = serializers.DictField(child=serializers.JSONField(), help_text="The grid values but the seed.")
    label = serializers.CharField()  # type: ignore[assignment]  # a field (DRF takes it off the class)
    jobs = SettingJobSerializer(many=True)
    done = serializers.IntegerField(help_text="Cells that succeeded: the seeds the numbers cover.")
    total = serializers.IntegerField()
    partial = serializers.BooleanField(help_text="Some of its cells have not succeeded (yet).")  # type: ignore[assignment]
    methods = MethodAggregateSerializer(many=True)


class AlphaPointSerializer(IntervalSerializer):
    alpha = serializers.FloatField()


class AlphaSeriesSerializer(serializers.Serializer):
    name = serializers.CharField()
    method = serializers.CharField()
    points = AlphaPointSerializer(many=True)


class MethodPointSerializer(IntervalSerializer):
    setting = serializers.CharField()
    method = serializers.CharField()
    label = serializers.CharField()  # type: ignore[assignment]  # a field (DRF takes it off the class)


class PlotsSerializer(serializers.Serializer):
    gold_vs_alpha = AlphaSeriesSerializer(many=True, allow_null=True, help_text="null unless the grid varies alpha.")
    methods = MethodPointSerializer(many=True)


class ExperimentRowSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    owner = serializers.CharField()
    created = serializers.DateTimeField()
    grid = serializers.DictField(child=serializers.ListField(child=serializers.JSONField()))
    baseline = serializers.CharField()
    jobs = serializers.ListField(child=serializers.IntegerField(), help_text="Its jobs' ids, in cell order.")
    status_counts = serializers.DictField(child=serializers.IntegerField())


class ExperimentSerializer(ExperimentRowSerializer):
    request = serializers.DictField(child=serializers.JSONField(), help_text="The job request of every cell.")
    cells = CellSerializer(many=True)
    finished = serializers.IntegerField(help_text="Cells whose job has finished (any way).")
    aggregates = AggregateSerializer(many=True)
    plots = PlotsSerializer()


class ExperimentActionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    changed = serializers.ListField(child=serializers.IntegerField(), help_text="The jobs it cancelled or queued.")
    unchanged = serializers.ListField(
        child=serializers.DictField(child=serializers.JSONField()), help_text="{job, reason} of each job left alone."
    )


def _row(exp: Experiment) -> dict[str, Any]:
    return {
        "id": exp.pk,
        "name": exp.name,
        "owner": exp.owner.username,
        "created": exp.created,
        "grid": exp.grid,
        "baseline": exp.baseline,
        "jobs": [j.pk for j in exp.jobs.all()],
        "status_counts": reads.status_counts(exp),
    }


def experiment_payload(exp: Experiment) -> dict[str, Any]:
    summary = service.experiment_summary(exp)
    return {**_row(exp), "request": exp.request, **summary}


class _ExperimentView(ServiceAPIView):
    def get_experiment(self, request, experiment_id) -> Experiment:
        exp = reads.experiment_get(user=request.user, experiment_id=experiment_id)
        if exp is None:
            raise Http404("no such experiment")
        return exp


class ExperimentListView(_ExperimentView):
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        summary="List experiments",
        description="Your experiments (staff: everyone's), newest first, with their jobs and how many are in each "
        "status. GET /api/v1/experiments/{id}/ has the aggregate.",
        responses=ExperimentRowSerializer(many=True),
    )
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(reads.experiments_visible(user=request.user), request, view=self)
        return paginator.get_paginated_response(ExperimentRowSerializer([_row(e) for e in page], many=True).data)

    @extend_schema(
        summary="Create an experiment",
        description="One job per cell of the grid, each checked as POST /api/v1/jobs/ checks a job; all are created "
        "or none. 400: field errors, keyed grid[<cell index>].<path> for a cell's (e.g. grid[3].params.sft."
        "learning_rate), job.<path> for the request's, grid for the grid itself (an unknown path, too many cells). "
        "429: the cells do not fit under your cap of active jobs (JOB_MAX_ACTIVE_PER_USER).",
        request=ExperimentCreateSerializer,
        responses={201: ExperimentRowSerializer, 429: TOO_MANY_REQUESTS},
    )
    def post(self, request):
        ser = ExperimentCreateSerializer(data=request.data)
        if not ser.is_valid():
            raise ValidationError(flat_errors(ser.errors))
        d = ser.validated_data
        exp = service.experiment_create(
            user=request.user, name=d["name"], request=dict(d["job"]), grid=d["grid"], baseline=d.get("baseline")
        )
        exp = reads.experiment_get(user=request.user, experiment_id=exp.pk)
        assert exp is not None
        return Response(ExperimentRowSerializer(_row(exp)).data, status=status.HTTP_201_CREATED)


class ExperimentDetailView(_ExperimentView):
    @extend_schema(
        summary="Get an experiment",
        description="Its cells and their jobs' states, and per setting (the cells equal but for params.seed) and "
        "method: the mean gold reward over the seeds that succeeded, its 95% Student-t interval and n, and the "
        "paired difference against the baseline method; partial: true while some cells have not succeeded. "
        "plots: gold against alpha (when the grid varies alpha) and every method's interval.",
        responses=ExperimentSerializer,
    )
    def get(self, request, experiment_id):
        return Response(ExperimentSerializer(experiment_payload(self.get_experiment(request, experiment_id))).data)


class ExperimentCancelView(_ExperimentView):
    @extend_schema(
        summary="Cancel an experiment",
        description="Cancels every cell still queued or running (as POST /api/v1/jobs/{id}/cancel/); finished "
        "cells are left as they are.",
        request=None,
        responses=ExperimentActionSerializer,
    )
    def post(self, request, experiment_id):
        done = service.experiment_cancel(experiment=self.get_experiment(request, experiment_id), user=request.user)
        return Response(ExperimentActionSerializer(done).data)


class ExperimentRetryView(_ExperimentView):
    @extend_schema(
        summary="Retry an experiment",
        description="Queues again every cell that failed or was cancelled (as POST /api/v1/jobs/{id}/retry/); the "
        "others are left as they are.",
        request=None,
        responses=ExperimentActionSerializer,
    )
    def post(self, request, experiment_id):
        done = service.experiment_retry(experiment=self.get_experiment(request, experiment_id), user=request.user)
        return Response(ExperimentActionSerializer(done).data)
