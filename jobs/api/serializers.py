"""REST representations. Serializers shape input and output only; rules live in jobs.services."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from jobs.api.json_checks import CheckedJSONDecoder, UnsafeJSON, check_jsonl
from jobs.models import Artifact, Dataset, GeneratedPair, Job, JobEvent, ModelEntry
from ml.pipeline import METHODS as CONG_METHODS
from ml.spec import DEFAULT_ALPHA, TRAIN_METHODS


class ModelEntrySerializer(serializers.ModelSerializer):
    shared = serializers.SerializerMethodField()

    class Meta:
        model = ModelEntry
        fields = ["id", "name", "path", "kind", "family", "vocab_fingerprint", "shared", "created"]
        read_only_fields = ["vocab_fingerprint", "shared", "created"]

    def get_shared(self, obj) -> bool:
        return obj.owner_id is None


class ModelRegisterSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    path = serializers.CharField(max_length=1000, help_text="Absolute path of an HF folder under MODEL_ROOTS.")
    kind = serializers.ChoiceField(choices=ModelEntry.Kind.choices, default=ModelEntry.Kind.ANY)
    family = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")


class DatasetSerializer(serializers.ModelSerializer):
    shared = serializers.SerializerMethodField()

    class Meta:
        model = Dataset
        fields = ["id", "name", "kind", "row_count", "gold", "shared", "created"]

    def get_shared(self, obj) -> bool:
        return obj.owner_id is None


class DatasetUploadSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    kind = serializers.ChoiceField(choices=Dataset.Kind.choices, default=Dataset.Kind.PROMPTS)
    gold = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    file = serializers.FileField(
        help_text="JSONL, UTF-8, one object per line with 'prompt' (preferences: prompt/chosen/rejected)."
    )

    def validate_file(self, f):
        # Rows with lone surrogates, deep nesting or huge numbers are refused here (400) rather than
        # breaking jobs.validation's json.loads/json.dumps with a 500 (docs/SECURITY.md, finding 7).
        from jobs.validation import MAX_LINE_BYTES

        try:
            check_jsonl(f.chunks(), line_limit=MAX_LINE_BYTES)
        except UnsafeJSON as exc:
            raise serializers.ValidationError(str(exc)) from None
        return f


class CheckedJSONField(serializers.JSONField):
    """A JSONField whose JSON text (sent in a form field) is parsed with the checks a JSON body gets
    (jobs.api.json_checks); DRF's would json.loads it unchecked."""

    def __init__(self, **kwargs):
        kwargs.setdefault("decoder", CheckedJSONDecoder)
        super().__init__(**kwargs)


def _params_schema() -> dict:
    """params in the OpenAPI schema: one closed object per job kind, derived from ml's registry."""
    from django.conf import settings

    from ml.spec import registry
    from ml.spec_schema import params_schema

    return {
        "oneOf": [params_schema(k, getattr(settings, "JOB_LIMITS", None)) for k in registry()],
        "description": "Settings for the job's kind (see each kind's schema; GET /api/v1/kinds/).",
    }


@extend_schema_field(_params_schema())
class ParamsField(CheckedJSONField):
    """params, checked like every JSON input, described per job kind in the OpenAPI schema."""


class JobCreateSerializer(serializers.Serializer):
    """Loose types on purpose: jobs.services.job_create checks values and answers with field messages."""

    kind = serializers.CharField(help_text=f"One of {', '.join(Job.Kind.values)}.")
    weak_base = CheckedJSONField(required=False, allow_null=True, help_text="Model id (pi_pre).")
    weak_aligned = CheckedJSONField(required=False, allow_null=True, help_text="Model id (pi_post).")
    strong = CheckedJSONField(required=False, allow_null=True, help_text="Model id of the strong model.")
    prompts = CheckedJSONField(required=False, allow_null=True, help_text="Dataset id.")
    eval_prompts = CheckedJSONField(
        required=False,
        allow_null=True,
        help_text="kind=cong/train: held-out dataset id (default: the toy "
        "world's -heldout split, else the training prompts).",
    )
    alpha = CheckedJSONField(
        required=False, allow_null=True, help_text=f"CD alpha in [0, 1] (default {DEFAULT_ALPHA})."
    )
    method = serializers.CharField(
        required=False, allow_null=True, allow_blank=True, help_text=f"kind=train: one of {', '.join(TRAIN_METHODS)}."
    )
    methods = CheckedJSONField(
        required=False, allow_null=True, help_text=f"kind=cong: list drawn from {', '.join(CONG_METHODS)}."
    )
    params = ParamsField(
        required=False,
        allow_null=True,
        help_text='Settings: job-level knobs and per-stage objects, e.g. {"max_prompts": 100, '
        '"sft": {"num_train_epochs": 3}}; GET /api/v1/kinds/ lists them.',
    )


class JobSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", read_only=True)
    pair_count = serializers.SerializerMethodField()
    spec = serializers.SerializerMethodField(
        help_text=(
            "The full configuration that runs: every stage's settings with defaults filled (null for an old job whose "
            "stored params no longer pass the checks; retry says why)."
        )
    )

    class Meta:
        model = Job
        fields = [
            "id",
            "owner",
            "kind",
            "status",
            "stage",
            "progress",
            "attempts",
            "max_attempts",
            "error",
            "cancel_requested",
            "partial",
            "created",
            "started",
            "finished",
            "heartbeat_at",
            "config",
            "spec",
            "pair_count",
        ]
        read_only_fields = fields

    def get_spec(self, obj) -> dict | None:
        from jobs.selectors import job_spec_or_none

        return job_spec_or_none(job=obj)

    def get_pair_count(self, obj) -> int:
        # Lists come annotated (selectors.with_pair_count: one query); a single fresh job is counted.
        n = getattr(obj, "pair_count", None)
        return obj.pairs.count() if n is None else n


class JobSummarySerializer(JobSerializer):
    """The list view's row: what a dashboard or a poller needs; the full config is on GET /jobs/{id}/."""

    class Meta(JobSerializer.Meta):
        fields = [f for f in JobSerializer.Meta.fields if f not in ("config", "spec")]
        read_only_fields = fields


class JobEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobEvent
        fields = ["seq", "type", "data", "created"]


class GeneratedPairSerializer(serializers.ModelSerializer):
    reviewer = serializers.CharField(source="reviewer.username", read_only=True, default=None, allow_null=True)

    class Meta:
        model = GeneratedPair
        fields = [
            "id",
            "prompt_index",
            "prompt",
            "chosen",
            "rejected",
            "plain",
            "implicit_reward",
            "gold_reward",
            "score_error",
            "alpha",
            "review_status",
            "edited_text",
            "reviewer",
            "reviewed_at",
        ]


class PairReviewSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=["approve", "reject", "edit"])
    edited_text = serializers.CharField(required=False, allow_blank=True, default="")


class ArtifactSerializer(serializers.ModelSerializer):
    class Meta:
        model = Artifact
        fields = ["stage", "kind", "path", "partial", "created"]


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(style={"input_type": "password"}, trim_whitespace=False)
