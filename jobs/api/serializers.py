"""REST representations. Serializers shape input and output only; rules live in jobs.services."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from jobs.api import schema as shapes
from jobs.api.json_checks import UnsafeJSON, check_jsonl
from jobs.models import Artifact, Dataset, GeneratedPair, Job, JobEvent, JobShard, ModelEntry
from jobs.services.creation import TAG_MAX_CHARS, TAGS_MAX
from jobs.services.review_loop import PAIRS_FROM_MAX
from ml.pipeline_config import METHODS as CONG_METHODS
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


class StrictIntegerField(serializers.IntegerField):
    """An integer that must be sent as a JSON integer: "1" or true is refused (DRF's IntegerField would take
    both), so a client's type mistake is a 400 naming the field, not a silent conversion."""

    default_error_messages = {"invalid": "must be an integer (an id), got {value}."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid", value=_shown(data))
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    """A number that must be sent as a JSON number (not a string or a boolean)."""

    default_error_messages = {"invalid": "must be a number, got {value}."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid", value=_shown(data))
        return super().to_internal_value(data)


class StringListField(serializers.ListField):
    """A list of strings, refused as a whole (one message under the field, not one per index)."""

    child = serializers.CharField()
    default_error_messages = {"invalid": "must be a list of strings, got {value}."}

    def to_internal_value(self, data):
        if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
            self.fail("invalid", value=_shown(data))
        return list(data)


def _shown(value) -> str:
    return repr(value)[:80]


def _params_schema() -> dict:
    """params in the OpenAPI schema: one closed object per job kind, derived from ml's registry. anyOf, not
    oneOf: a small params object such as {"max_prompts": 2} is valid for several kinds at once."""
    from django.conf import settings

    from ml.spec import registry
    from ml.spec_schema import params_schema

    return {
        "anyOf": [params_schema(k, getattr(settings, "JOB_LIMITS", None)) for k in registry()],
        "description": "Settings for the job's kind (see each kind's schema; GET /api/v1/kinds/).",
    }


class ParamsField(serializers.JSONField):
    """params, described per job kind in the OpenAPI schema (the JSON body's parser has checked it). The schema is
    built when the OpenAPI document is (ParamsFieldExtension), not at import: ml's registry imports the stage modules
    and with them torch, which a web process that only lists jobs never needs."""


class ParamsFieldExtension(OpenApiSerializerFieldExtension):
    target_class = ParamsField

    def map_serializer_field(self, auto_schema, direction):
        return _params_schema()


def _id_field(what: str, **kwargs) -> StrictIntegerField:
    return StrictIntegerField(required=False, allow_null=True, help_text=what, **kwargs)


class JobCreateSerializer(serializers.Serializer):
    """Types are checked here (ids are integers, alpha a number); jobs.services.job_create checks values and
    answers with field messages."""

    kind = serializers.ChoiceField(
        choices=Job.Kind.choices,
        error_messages={"invalid_choice": "unknown job kind {input!r}; use one of " + ", ".join(Job.Kind.values)},
    )
    weak_base = _id_field("Model id (pi_pre).")
    weak_aligned = _id_field("Model id (pi_post).")
    strong = _id_field("Model id of the strong model.")
    prompts = _id_field("Dataset id.")
    eval_prompts = _id_field(
        "kind=cong/train: held-out dataset id (default: the toy world's -heldout split, else the training prompts)."
    )
    alpha = StrictFloatField(
        required=False, allow_null=True, help_text=f"CD alpha in [0, 1] (default {DEFAULT_ALPHA})."
    )
    method = serializers.CharField(
        required=False, allow_null=True, allow_blank=True, help_text=f"kind=train: one of {', '.join(TRAIN_METHODS)}."
    )
    methods = StringListField(
        required=False, allow_null=True, help_text=f"kind=cong: list drawn from {', '.join(CONG_METHODS)}."
    )
    params = ParamsField(
        required=False,
        allow_null=True,
        help_text='Settings: job-level knobs and per-stage objects, e.g. {"max_prompts": 100, '
        '"sft": {"num_train_epochs": 3}}; GET /api/v1/kinds/ lists them.',
    )
    pairs_from = serializers.ListField(
        child=StrictIntegerField(),
        required=False,
        allow_null=True,
        max_length=PAIRS_FROM_MAX,
        help_text="kind=train (method sft or dpo): ids of your jobs whose pairs, as reviewed, are the training data "
        "instead of new generation (the same rows as their exports).",
    )
    include_pending = serializers.BooleanField(
        required=False,
        allow_null=True,
        help_text="With pairs_from: train on pending pairs too (true) or not (false); absent: a source job's pending "
        "pairs count only when none of its pairs was reviewed.",
    )
    gold = serializers.CharField(
        required=False,
        allow_null=True,
        allow_blank=True,
        max_length=100,
        help_text="The gold that labels (weak alignment's best vs worst, the pairs' scores): a registered name such as "
        "toy:review, or rm:<id> of a reward model (kind reward). Default: the prompt dataset's gold.",
    )
    eval_gold = serializers.CharField(
        required=False,
        allow_null=True,
        allow_blank=True,
        max_length=100,
        help_text="kind=evaluate/alpha_sweep/cong/train: the gold that scores the evaluations, as gold. Default: gold.",
    )
    judge = _id_field(
        "kind=cong: model id of a causal LM that compares each method's evaluation answers with weak_sft's, in "
        "both orders (a pairwise judge); the results gain judge_win_rate and judge_lc_win_rate (length-controlled)."
    )
    # Lengths and the tags' characters are jobs.services.creation.job_labels' to check (one place, also the form's).
    name = serializers.CharField(required=False, allow_null=True, allow_blank=True, help_text="A name to tell it by.")
    tags = StringListField(
        required=False,
        allow_null=True,
        help_text=f"At most {TAGS_MAX} short labels (up to {TAG_MAX_CHARS} characters: letters, digits, _ . : + / -); "
        "stored lowercase. GET /api/v1/jobs/?tag= filters by one.",
    )


class TrackingSerializer(serializers.Serializer):
    """A job's MLflow run (jobs.tracking.api_view; docs/TRACKING.md)."""

    uri = serializers.CharField(help_text="The tracking store (no credentials; a local one as $VAR_DIR/...).")
    experiment = serializers.CharField(help_text="The MLflow experiment's name.")
    experiment_id = serializers.CharField()
    run_id = serializers.CharField()
    url = serializers.CharField(allow_null=True, help_text="The run in the MLflow UI; null when MLFLOW_UI_URL is unset")


class JobSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", read_only=True)
    tags = serializers.ListField(child=serializers.CharField(), read_only=True)
    experiment = serializers.IntegerField(
        source="experiment_id", read_only=True, allow_null=True, help_text="The experiment it is a cell of, if any."
    )
    pair_count = serializers.SerializerMethodField()
    tracking = serializers.SerializerMethodField(help_text="Its MLflow run; null when it has none (tracking off).")
    config = shapes.described_json(shapes.JobConfigSerializer, read_only=True)
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
            "name",
            "tags",
            "experiment",
            "kind",
            "status",
            "stage",
            "progress",
            "attempts",
            "max_attempts",
            "error",
            "waiting_for",
            "cancel_requested",
            "partial",
            "created",
            "started",
            "finished",
            "heartbeat_at",
            "config",
            "spec",
            "pair_count",
            "tracking",
        ]
        read_only_fields = fields

    @extend_schema_field(TrackingSerializer(allow_null=True))
    def get_tracking(self, obj) -> dict | None:
        from jobs.tracking import api_view

        return api_view(obj)

    @extend_schema_field(shapes.JobSpecSerializer(allow_null=True))
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
        # tracking: a method field (jobs.tracking), which would send the list off job_rows' values() fast path.
        fields = [f for f in JobSerializer.Meta.fields if f not in ("config", "spec", "tracking")]
        read_only_fields = fields


class JobEventSerializer(serializers.ModelSerializer):
    # The metaclass takes declared fields out of the class, so this does not shadow Serializer.data.
    data = shapes.described_json(shapes.EventDataSerializer, read_only=True)  # type: ignore[assignment]

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
            # Named for the number each holds (models.GeneratedPair; docs/API.md): the sum is the implicit reward.
            "implicit_reward_sum",
            "implicit_reward_mean",
            "n_tokens",
            "empty_response",
            "gold_reward",
            "score_error",
            "alpha",
            # Who generated it: the shard of a sharded stage (null when the stage ran whole) and the worker.
            "shard",
            "worker",
            "review_status",
            "edited_text",
            "reviewer",
            "reviewed_at",
        ]


class JobShardSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobShard
        fields = ["stage", "index", "count", "status", "worker", "attempts", "done", "total", "error", "finished"]
        read_only_fields = fields


class PairReviewSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=["approve", "reject", "edit"])
    edited_text = serializers.CharField(required=False, allow_blank=True, default="")


class ArtifactSerializer(serializers.ModelSerializer):
    class Meta:
        model = Artifact
        fields = ["stage", "kind", "path", "partial", "created"]


class JobResultsSerializer(serializers.ModelSerializer):
    results = shapes.described_json(
        shapes.ResultsSerializer(allow_null=True), read_only=True, help_text="null until the job finishes."
    )
    artifacts = ArtifactSerializer(many=True, read_only=True)

    class Meta:
        model = Job
        fields = ["id", "status", "partial", "results", "artifacts"]
        read_only_fields = fields


class PresetBodySerializer(serializers.Serializer):
    """A ready-made body for POST /api/v1/jobs/ (the ids are this server's)."""

    kind = serializers.ChoiceField(choices=Job.Kind.choices)
    weak_base = serializers.IntegerField(required=False)
    weak_aligned = serializers.IntegerField(required=False)
    strong = serializers.IntegerField(required=False)
    prompts = serializers.IntegerField(required=False)
    alpha = serializers.FloatField(required=False)
    methods = serializers.ListField(child=serializers.CharField(), required=False)
    params = shapes.described_json(shapes.OPEN_OBJECT, required=False)


class PresetSerializer(serializers.Serializer):
    name = serializers.CharField()
    request = PresetBodySerializer()


class CredentialsSerializer(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(style={"input_type": "password"}, trim_whitespace=False)


class AuthTokenSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Send it as the header Authorization: Token <token>.")
