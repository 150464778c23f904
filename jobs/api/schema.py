"""The OpenAPI schema's shared pieces: the error bodies every operation declares, and the shapes of the JSON
that the API stores and passes through (a job's config and spec, its results, event data).

Every API view uses ``ApiSchema`` (jobs.api.views.ServiceAPIView), which adds the error responses an
operation can give, decided from the operation itself, so a new endpoint gets them without a list to keep:

- 400 for every write (bodies are parsed on every write, see ServiceAPIView.initial) and for a read
  with query parameters other than ``page``;
- 401 and 403 where a user is needed (no or a bad token: 401; a session without its CSRF token: 403);
- 404 where the path names an object or the answer is paginated (a page past the end).

429 depends on what a view does (the log-in lock, the per-user job cap), so those views declare it with
``TOO_MANY_REQUESTS``. The error shapes are docs/API.md's "Errors".
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent, is_field
from drf_spectacular.utils import OpenApiResponse, extend_schema_field
from rest_framework import serializers

from jobs.models import Job

ERROR_DESCRIPTIONS = {
    400: "The request was refused and nothing changed. Field errors: {field: [messages]} (a job's setting "
    "names its key path, e.g. params.sft.learning_rate); a body that could not be read at all: "
    '{"detail": message}.',
    401: 'No credentials, or a token that is not valid: {"detail": message}.',
    403: 'Not allowed (a browser session without its CSRF token): {"detail": message}.',
    404: "No such object, or one you may not see (the same answer, so ids leak nothing); or a page past the end: "
    '{"detail": message}.',
    429: 'Too many requests: {"detail": message} says why and when to try again.',
}

# The 400 body: field errors are lists of messages; "detail" is always one string (the Error component,
# ErrorSerializer, is the body of every other error).
VALIDATION_ERROR = ResolvedComponent(
    name="ValidationError",
    type=ResolvedComponent.SCHEMA,
    object="ValidationError",
    schema={
        "type": "object",
        "properties": {
            "detail": {"type": "string", "description": "Set when the request as a whole was refused."},
        },
        "additionalProperties": {"type": "array", "items": {"type": "string"}},
        "description": "A 400: each refused field (or a setting's key path, e.g. params.sft.learning_rate) with "
        'its messages, e.g. {"alpha": ["must be between 0 and 1"]}; or {"detail": message} when the request '
        "as a whole was refused.",
    },
)


class ErrorSerializer(serializers.Serializer):
    """Every error but a 400 on fields. (The body is DRF's exception handler's; this names its shape.)"""

    detail = serializers.CharField(help_text="What went wrong.")

    class Meta:
        ref_name = "Error"


# For views whose 429 is theirs to declare (see the module docstring).
TOO_MANY_REQUESTS = OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[429])


class ApiSchema(AutoSchema):
    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        params = operation.get("parameters", [])
        query = [p["name"] for p in params if p["in"] == "query"]
        security = operation.get("security", [])
        codes = []
        if "requestBody" in operation or method.upper() not in ("GET", "HEAD") or set(query) - {"page"}:
            codes.append(400)
        if security and {} not in security:
            codes += [401, 403]
        if any(p["in"] == "path" for p in params) or "page" in query:
            codes.append(404)
        responses = operation["responses"]
        for code in codes:
            if code == 400:
                registry.register_on_missing(VALIDATION_ERROR)
                ref = VALIDATION_ERROR.ref
            else:
                ref = self.resolve_serializer(ErrorSerializer, "response").ref
            responses.setdefault(
                str(code), {"description": ERROR_DESCRIPTIONS[code], "content": {"application/json": {"schema": ref}}}
            )
        return operation

    def _get_response_for_code(self, serializer, status_code, media_types=None, direction="response"):
        # drf-spectacular takes serializers, not fields, as responses; a map such as {kind: Kind} is a field.
        if is_field(serializer):
            schema = self._map_serializer_field(serializer, direction)
            return {"description": "", "content": {m: {"schema": schema} for m in self.map_renderers("media_type")}}
        return super()._get_response_for_code(serializer, status_code, media_types, direction)


# --- the shapes of stored JSON (documentation: the views pass the JSON through as stored) ----------------------
OPEN_OBJECT = {"type": "object", "additionalProperties": {}}


def described_json(shape: Any, **kwargs: Any) -> serializers.JSONField:
    """A JSON value passed through as stored, described in the schema as ``shape`` (a serializer or a schema)."""
    field_class = extend_schema_field(shape)(type("DescribedJSONField", (serializers.JSONField,), {}))
    return field_class(**kwargs)


class ModelRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    path = serializers.CharField()
    vocab_fingerprint = serializers.CharField(allow_blank=True)


class DatasetRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    path = serializers.CharField()
    row_count = serializers.IntegerField()
    kind = serializers.CharField(required=False, help_text="prompts or preferences (the training prompts only).")
    gold = serializers.CharField(required=False, allow_blank=True, help_text="The gold reward's name, if any.")


class JobSpecSerializer(serializers.Serializer):
    """The configuration a job runs: every stage's settings with defaults filled, as resolved at submit."""

    version = serializers.IntegerField(help_text="The spec layout's version.")
    kind = serializers.CharField()
    alpha = serializers.FloatField(allow_null=True)
    method = serializers.CharField(allow_null=True)
    methods = serializers.ListField(child=serializers.CharField(), allow_null=True)
    top = described_json(OPEN_OBJECT, help_text="Job-level settings of a pipeline kind (cong, train).")
    stages = serializers.DictField(
        child=described_json(OPEN_OBJECT), help_text="{stage name: that stage's settings}, in the order they run."
    )
    execution = described_json(
        OPEN_OBJECT,
        required=False,
        help_text="How it runs (never what it computes): shards per generation stage. Absent in specs from before "
        "these settings; the defaults apply.",
    )


class JobConfigSerializer(serializers.Serializer):
    """What the request named, resolved at submit: models and datasets as they were then, and the spec."""

    kind = serializers.ChoiceField(choices=Job.Kind.choices)
    alpha = serializers.FloatField(allow_null=True, required=False)
    method = serializers.CharField(allow_null=True, required=False)
    methods = serializers.ListField(child=serializers.CharField(), allow_null=True, required=False)
    params = described_json(OPEN_OBJECT, required=False, help_text="The params as sent.")
    weak_base = ModelRefSerializer(required=False)
    weak_aligned = ModelRefSerializer(required=False)
    strong = ModelRefSerializer(required=False)
    prompts = DatasetRefSerializer(required=False)
    eval_prompts = DatasetRefSerializer(required=False)
    pairs_from = described_json(
        OPEN_OBJECT,
        required=False,
        help_text='kind=train on reviewed pairs: {"jobs": [{"id", "kind"}], "include_pending": true|false|null}.',
    )
    gold = described_json(
        OPEN_OBJECT,
        required=False,
        help_text='The labelling gold as picked: {"name" (what ml resolves), "label", "model" (a reward model)}.',
    )
    eval_gold = described_json(OPEN_OBJECT, required=False, help_text="The evaluation gold, the same shape.")
    judge = described_json(
        OPEN_OBJECT, required=False, help_text="cong: the pairwise judge model as picked (name, id, path)."
    )
    spec = JobSpecSerializer(required=False)


class EventDataSerializer(serializers.Serializer):
    """An event's data; which keys are set depends on the event's type (other keys may appear)."""

    status = serializers.CharField(required=False, help_text="type=status: the job's new status.")
    message = serializers.CharField(required=False, help_text="type=status and type=log: what happened.")
    stage = serializers.CharField(required=False, help_text="type=progress: the stage that reports.")
    done = serializers.IntegerField(required=False, help_text="type=progress: units done ...")
    total = serializers.IntegerField(required=False, help_text="type=progress: ... of this many.")
    fraction = serializers.FloatField(required=False, help_text="type=progress: done / total.")
    name = serializers.CharField(required=False, help_text="type=metric: the metric's name.")
    value = serializers.FloatField(required=False, allow_null=True, help_text="type=metric: its value.")
    step = serializers.IntegerField(required=False, allow_null=True, help_text="type=metric: the training step.")


class MethodResultSerializer(serializers.Serializer):
    """One evaluated method (cong, train), the evaluated model (evaluate) or one alpha (alpha_sweep)."""

    # The metaclass takes declared fields out of the class, so this "label" shadows no Field.label at runtime.
    label = serializers.CharField(required=False)  # type: ignore[assignment]
    alpha = serializers.FloatField(required=False, help_text="alpha_sweep: the alpha this row ran with.")
    gold_mean = serializers.FloatField(required=False, allow_null=True, help_text="Mean gold reward.")
    gold_ci = serializers.ListField(
        child=serializers.FloatField(allow_null=True), required=False, help_text="[low, high] of its interval."
    )
    valid_rate = serializers.FloatField(required=False, allow_null=True)
    implicit_mean = serializers.FloatField(required=False, allow_null=True, help_text="Mean implicit reward.")
    win_rate_vs_weak_sft = serializers.FloatField(required=False, allow_null=True)
    n = serializers.IntegerField(required=False, allow_null=True, help_text="How many answers were scored.")
    pgr = serializers.FloatField(
        required=False,
        allow_null=True,
        help_text="Performance gap recovered: (gold - weak_post's) / (ceiling's - weak_post's); null without both.",
    )
    truncated_rate = serializers.FloatField(
        required=False, allow_null=True, help_text="Share of its evaluation answers cut at max_new_tokens."
    )
    judge_win_rate = serializers.FloatField(
        required=False, allow_null=True, help_text="With a job-level judge: the pairwise judge's win rate vs WeakSFT."
    )
    judge_lc_win_rate = serializers.FloatField(
        required=False, allow_null=True, help_text="... length-controlled (AlpacaEval 2's formula)."
    )


class ResultsSerializer(serializers.Serializer):
    """A finished job's results (ml.results, version 1). The keys set depend on the kind; others may appear."""

    results_version = serializers.IntegerField(required=False, help_text="Absent only on old jobs' results.")
    kind = serializers.CharField(required=False)
    methods = serializers.DictField(
        child=MethodResultSerializer(), required=False, help_text="cong, train: {method: its scores}."
    )
    alphas = MethodResultSerializer(many=True, required=False, help_text="alpha_sweep: one row per alpha.")
    n = serializers.IntegerField(required=False, help_text="cd_generate: prompts generated for.")
    pairs = described_json(
        {
            "type": "object",
            "properties": {
                "stored": {"type": "integer"},
                "score_errors": {"type": "integer"},
                "with_plain": {"type": "integer"},
                "with_rejected": {"type": "integer"},
            },
            "additionalProperties": {},
        },
        required=False,
        help_text="Jobs that store pairs: how many, how many could not be scored, and how many have their plain "
        "pi_post and rejected sides filled.",
    )
    gold = serializers.CharField(
        required=False, help_text="The labelling gold's name (rm:<model name> for a reward model)."
    )
    eval_gold = serializers.CharField(required=False, help_text="The gold that scored the evaluations.")
    train_examples = serializers.IntegerField(
        required=False, help_text="train with pairs_from: the reviewed pairs trained on."
    )
    review = described_json(
        OPEN_OBJECT,
        required=False,
        help_text="train with pairs_from: per source job id, its review counts and whether pending pairs counted.",
    )
    gold_mean = serializers.FloatField(required=False, allow_null=True, help_text="evaluate: mean gold reward.")
    gold_ci = serializers.ListField(child=serializers.FloatField(allow_null=True), required=False)
    valid_rate = serializers.FloatField(required=False, allow_null=True)
    verdict = serializers.CharField(required=False, help_text="preflight: the check's verdict ...")
    message = serializers.CharField(required=False, help_text="preflight: ... and what it means.")
    registered_model = described_json(
        {"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string"}}},
        required=False,
        help_text="weak_align: the aligned model it registered.",
    )


class KindSerializer(serializers.Serializer):
    help = serializers.CharField()
    stages = serializers.ListField(child=serializers.CharField(), help_text="The stages it runs, in order.")
    knobs = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), help_text="{knob: the stage fields it sets}."
    )
    params = described_json(
        {"type": "object", "additionalProperties": {}, "description": "The JSON Schema of this kind's params."}
    )
