"""The jobs app's data: models and datasets users register, jobs and what they produce.

Rules (who may do what, which transitions are legal) live in ``jobs/services.py``; these classes only
describe the rows. Field names are a contract with the pages, the admin and the REST API: keep them.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ModelEntry(models.Model):
    """A Hugging Face model folder under one of settings.MODEL_ROOTS."""

    class Kind(models.TextChoices):
        WEAK = "weak", "weak"
        STRONG = "strong", "strong"
        ANY = "any", "any"
        # A sequence-classification folder with one label: a judge (gold "rm:<id>"), never a model a job trains
        # or samples (jobs.services.catalog checks both).
        REWARD = "reward", "reward"

    # Unique per owner, not globally: a global name let one user pre-empt another's (or the toy world's)
    # registration and told anyone which private names exist. Shared entries (owner NULL) have their own
    # namespace, which users cannot take (jobs.services.model_register; docs/SECURITY.md section 3).
    name = models.CharField(max_length=200)
    path = models.CharField(max_length=1000, help_text="Resolved absolute path of the HF folder.")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.ANY)
    family = models.CharField(max_length=100, blank=True, default="")
    vocab_fingerprint = models.CharField(
        max_length=64, blank=True, default="", help_text="Hash of the tokenizer's token->id map (ml.modeling)."
    )
    # CASCADE, not SET_NULL: a deleted user's private entries must not turn into shared ones (nor collide
    # with a shared name of the same spelling).
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="model_entries",
        help_text="Empty = shared with everyone.",
    )
    aligned_from = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="For a pi_post a weak_align job made: its pi_pre (the weak pair, stored rather than guessed).",
    )
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="modelentry_unique_owner_name"),
            # NULLs are distinct in a unique index, so shared names need a constraint of their own.
            models.UniqueConstraint(
                fields=["name"], condition=models.Q(owner__isnull=True), name="modelentry_unique_shared_name"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Dataset(models.Model):
    """A validated JSONL file stored under VAR_DIR/datasets/ (converted from the uploaded format: ml.data_formats)."""

    class Kind(models.TextChoices):
        PROMPTS = "prompts", "prompts"
        PREFERENCES = "preferences", "preferences"

    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.PROMPTS)
    path = models.CharField(max_length=1000, help_text="Where the validated file is stored.")
    row_count = models.PositiveIntegerField(default=0)
    format = models.CharField(
        max_length=20,
        default="jsonl",
        help_text="The format of the file as uploaded (ml.data_formats.FORMATS); what is stored is always JSONL.",
    )
    gold = models.CharField(
        max_length=100, blank=True, default="", help_text="Registered gold reward for these prompts, e.g. 'toy:review'."
    )
    defaults = models.JSONField(
        default=dict,
        blank=True,
        help_text="Job params recommended for these prompts (e.g. a toy world's "
        "generation length and learning rates); a job's own params win.",
    )
    eval_split = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Held-out prompts that jobs training on this dataset evaluate on (the toy worlds and the "
        "offline install link their -train split to their -heldout one).",
    )
    # CASCADE for the same reason as ModelEntry.owner: a deleted user's uploads must not become shared.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="datasets",
        help_text="Empty = shared with everyone.",
    )
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class Job(models.Model):
    class Kind(models.TextChoices):
        CONG = "cong", "ConG pipeline"
        CD_GENERATE = "cd_generate", "contrastive decoding"
        ALPHA_SWEEP = "alpha_sweep", "alpha sweep"
        WEAK_ALIGN = "weak_align", "weak alignment"
        TRAIN = "train", "train strong model"
        EVALUATE = "evaluate", "evaluate"
        PREFLIGHT = "preflight", "pre-flight check"

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        CANCELLING = "cancelling", "cancelling"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        CANCELLED = "cancelled", "cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)
    ACTIVE = (Status.QUEUED, Status.RUNNING, Status.CANCELLING)

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    config = models.JSONField(default=dict, help_text="Full, validated configuration of the job.")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True)
    stage = models.CharField(max_length=50, blank=True, default="")
    progress = models.FloatField(default=0.0, help_text="0..1 within the current stage.")
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    error = models.TextField(blank=True, default="")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    task_id = models.CharField(
        max_length=100, blank=True, default="", help_text="Celery task id of the attempt that holds the job."
    )
    worker = models.CharField(max_length=200, blank=True, default="", help_text="host:pid running it.")
    cancel_requested = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    results = models.JSONField(null=True, blank=True)
    tracking = models.JSONField(
        default=dict,
        blank=True,
        help_text="Its MLflow run (jobs.tracking): uri, experiment, experiment_id, run_id; empty when none.",
    )
    partial = models.BooleanField(default=False, help_text="Stopped before the end; artifacts are partial.")
    send_pending = models.BooleanField(
        default=False, help_text="Its task could not be sent (broker down); the reaper sends it again."
    )
    waiting_for = models.CharField(
        max_length=300,
        blank=True,
        default="",
        help_text="Why a queued job has not started, when no live worker can take it (e.g. it needs 4 GPUs).",
    )
    review_guidelines = models.TextField(
        blank=True,
        default="",
        help_text="What reviewers of its pairs should approve, reject or edit; shown on its review desk.",
    )
    # Labels to tell jobs apart (jobs.services.creation.job_labels checks them): a free name, short tags.
    name = models.CharField(max_length=200, blank=True, default="")
    tags = models.JSONField(default=list, blank=True, help_text="Short lowercase labels (at most 10).")
    experiment = models.ForeignKey(
        "Experiment",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="jobs",
        help_text="The experiment whose grid cell this job is (jobs.services.experiments).",
    )

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self) -> str:
        return f"job {self.pk} ({self.kind}, {self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED


class Experiment(models.Model):
    """A grid of jobs made from one job request (jobs.services.experiments; docs/EXPERIMENTS.md): one job per cell of
    the grid's cartesian product; the cells that differ only in params.seed are one setting's replicates."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="experiments")
    name = models.CharField(max_length=200)
    request = models.JSONField(default=dict, help_text="The job request every cell starts from.")
    grid = models.JSONField(default=dict, help_text="Job-request path -> the values it takes, e.g. params.seed.")
    baseline = models.CharField(
        max_length=50, blank=True, default="", help_text="The method the others' paired differences are against."
    )
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self) -> str:
        return f"experiment {self.pk} ({self.name})"


class JobEvent(models.Model):
    class Type(models.TextChoices):
        PROGRESS = "progress", "progress"
        METRIC = "metric", "metric"
        SAMPLE = "sample", "sample"
        LOG = "log", "log"
        STATUS = "status", "status"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=20, choices=Type.choices)
    data = models.JSONField(default=dict)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="jobevent_unique_seq")]

    def __str__(self) -> str:
        return f"job {self.job_id} event {self.seq} ({self.type})"

    def as_message(self) -> dict:
        return {
            "seq": self.seq,
            "type": self.type,
            "data": self.data,
            "created": self.created.isoformat() if self.created else None,
        }


class GeneratedPair(models.Model):
    class Review(models.TextChoices):
        PENDING = "pending", "pending"
        APPROVED = "approved", "approved"
        REJECTED = "rejected", "rejected"
        EDITED = "edited", "edited"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="pairs")
    prompt_index = models.PositiveIntegerField()
    prompt = models.TextField()
    chosen = models.TextField(help_text="The contrastive-decoding response.")
    rejected = models.TextField(null=True, blank=True)
    plain = models.TextField(null=True, blank=True, help_text="Plain pi_post sample, when made.")
    # Two named numbers, never one "implicit_reward": the implicit reward of docs/METHOD.md is the sum; the
    # per-token mean is what a stored row held before migration 0011 (whose sum is unknown, so null).
    implicit_reward_sum = models.FloatField(
        null=True, blank=True, help_text="Implicit reward: log pi_post - log pi_pre summed over the response tokens."
    )
    implicit_reward_mean = models.FloatField(
        null=True, blank=True, help_text="The implicit reward per token: the sum divided by n_tokens."
    )
    n_tokens = models.PositiveIntegerField(null=True, blank=True, help_text="Tokens in the generated response.")
    empty_response = models.BooleanField(
        default=False,
        help_text="A generated response (chosen, or the rejected/plain one it is paired with) is empty or whitespace "
        "only; the export leaves such pairs out unless asked (?include_empty=1).",
    )
    gold_reward = models.FloatField(null=True, blank=True)
    score_error = models.TextField(
        blank=True,
        default="",
        help_text=("Why the dataset's gold reward could not score this pair (empty = scored, or no gold)."),
    )
    alpha = models.FloatField(null=True, blank=True)
    shard = models.PositiveIntegerField(
        null=True, blank=True, help_text="The shard that generated it (sharded stages)."
    )
    worker = models.CharField(max_length=200, blank=True, default="", help_text="The worker that generated it.")
    review_status = models.CharField(max_length=20, choices=Review.choices, default=Review.PENDING, db_index=True)
    edited_text = models.TextField(blank=True, default="")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="reviewed_pairs"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "prompt_index"]
        constraints = [models.UniqueConstraint(fields=["job", "prompt_index"], name="pair_unique_prompt")]

    def __str__(self) -> str:
        return f"job {self.job_id} pair #{self.prompt_index} ({self.review_status})"


class Artifact(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="artifacts")
    stage = models.CharField(max_length=50)
    kind = models.CharField(max_length=50, help_text="e.g. samples, model, results, preferences")
    path = models.CharField(max_length=1000)
    partial = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "id"]
        constraints = [models.UniqueConstraint(fields=["job", "stage", "kind"], name="artifact_unique_kind")]

    def __str__(self) -> str:
        return f"job {self.job_id} {self.stage}/{self.kind}" + (" (partial)" if self.partial else "")


class JobShard(models.Model):
    """One part of a sharded generation stage (ml.shards): claimed by one worker at a time, like a job, by a
    conditional update (jobs/services/shards.py); its rows live in its own JSONL under the job's run folder."""

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        CANCELLED = "cancelled", "cancelled"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="shards")
    stage = models.CharField(max_length=50, help_text="The generation stage it is part of.")
    index = models.PositiveIntegerField()
    count = models.PositiveIntegerField(help_text="How many shards the stage has.")
    generator = models.CharField(max_length=50, help_text="ml.stages.generate.GENERATORS name.")
    config = models.JSONField(default=dict, help_text="The stage's config (without the shard).")
    index_offset = models.PositiveIntegerField(default=0, help_text="Added to its rows' prompt index (sweeps).")
    mirror_pairs = models.BooleanField(default=False, help_text="Its rows are stored as the job's pairs.")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    task_id = models.CharField(max_length=100, blank=True, default="")
    worker = models.CharField(max_length=200, blank=True, default="", help_text="The worker running it.")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)
    done = models.PositiveIntegerField(default=0, help_text="Rows written.")
    total = models.PositiveIntegerField(default=0, help_text="Rows it writes.")
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["job", "stage", "index"]
        constraints = [models.UniqueConstraint(fields=["job", "stage", "index"], name="jobshard_unique_index")]

    def __str__(self) -> str:
        return f"job {self.job_id} {self.stage} shard {self.index}/{self.count} ({self.status})"


# --- notifications (jobs/services/webhooks.py; docs/NOTIFICATIONS.md) -------------------------------------------
class Webhook(models.Model):
    """A URL of a user's that gets a signed JSON POST when one of their jobs ends."""

    class Event(models.TextChoices):
        SUCCEEDED = "job.succeeded", "job succeeded"
        FAILED = "job.failed", "job failed"
        CANCELLED = "job.cancelled", "job cancelled"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=500)
    # Kept as given: it signs every request (HMAC needs the key itself). Shown once, when the webhook is created.
    secret = models.CharField(max_length=200)
    events = models.JSONField(default=list, help_text="The events it receives (Webhook.Event values).")
    active = models.BooleanField(default=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created", "id"]

    def __str__(self) -> str:
        return f"webhook {self.pk} of {self.owner_id}: {self.url}"


class WebhookDelivery(models.Model):
    """One attempt to deliver one event to one webhook; a retry is a new row with the same delivery_id."""

    class State(models.TextChoices):
        PENDING = "pending", "pending"  # queued; not tried yet
        DELIVERED = "delivered", "delivered"  # answered 2xx
        RETRYING = "retrying", "failed, retried"  # failed; the next attempt (a new row) is scheduled
        FAILED = "failed", "failed"  # failed for good (4xx, or no attempts left)

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    job = models.ForeignKey("Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    event = models.CharField(max_length=30, help_text="A Webhook.Event value, or ping.")
    delivery_id = models.UUIDField(db_index=True, help_text="The same on every attempt of one event's delivery.")
    payload = models.JSONField(default=dict, help_text="The JSON body, the same on every attempt.")
    attempt = models.PositiveIntegerField(default=1)
    state = models.CharField(max_length=20, choices=State.choices, default=State.PENDING)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True, default="")
    response_excerpt = models.CharField(max_length=500, blank=True, default="")
    created = models.DateTimeField(auto_now_add=True)
    attempted_at = models.DateTimeField(null=True, blank=True)
    next_retry_at = models.DateTimeField(null=True, blank=True, help_text="When the next attempt is due (retrying).")

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self) -> str:
        return f"delivery {self.delivery_id} attempt {self.attempt} ({self.state})"


class NotificationSettings(models.Model):
    """A user's notification choices beyond webhooks."""

    owner = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    email_on_job_end = models.BooleanField(default=False, help_text="E-mail the user when one of their jobs ends.")
