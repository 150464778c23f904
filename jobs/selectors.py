"""Reads: what a user may see. Users see their own jobs and shared (owner-less) models and datasets;
staff see everything. Views, consumers and pages call these instead of building querysets."""

from __future__ import annotations

from django.db.models import Count, IntegerField, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from jobs.models import Dataset, GeneratedPair, Job, JobEvent, JobShard, ModelEntry
from jobs.names import OFFLINE_STRONG, OFFLINE_TRAIN, OFFLINE_WEAK
from ml.spec import DEFAULT_ALPHA


def jobs_visible(*, user) -> QuerySet[Job]:
    qs = Job.objects.select_related("owner")
    if user is None or not user.is_authenticated:
        return qs.none()
    return qs if user.is_staff else qs.filter(owner=user)


def job_list(*, user, status: str | None = None, kind: str | None = None) -> QuerySet[Job]:
    qs = jobs_visible(user=user)
    if status:
        qs = qs.filter(status__in=status.split(","))
    if kind:
        qs = qs.filter(kind__in=kind.split(","))
    return with_pair_count(qs).order_by("-created", "-id")


def with_pair_count(qs: QuerySet[Job]) -> QuerySet[Job]:
    """Annotate ``pair_count`` in the same query: a list page must not count pairs job by job."""
    counts = (
        GeneratedPair.objects.filter(job=OuterRef("pk")).order_by().values("job").annotate(c=Count("*")).values("c")
    )
    return qs.annotate(pair_count=Coalesce(Subquery(counts, output_field=IntegerField()), Value(0)))


def job_get(*, user, job_id) -> Job | None:
    """The job if this user may see it; None otherwise (callers answer 404 either way)."""
    try:
        return with_pair_count(jobs_visible(user=user)).filter(pk=int(job_id)).first()
    except (TypeError, ValueError):
        return None


def job_spec(*, job: Job) -> dict:
    """The spec a job runs: stored at submit. A job stored before specs existed (and not migrated) gets one
    resolved from its stored params the way the old runner read them: settings that do not apply to its kind
    are left out, as they were then. ml.spec.SpecError when even that fails (the message names the key)."""
    from django.conf import settings

    from ml.resolve import resolve

    c = job.config or {}
    if c.get("spec"):
        return c["spec"]
    return resolve(
        job.kind,
        None,
        recommended=c.get("params") or {},
        alpha=c.get("alpha"),
        method=c.get("method"),
        methods=c.get("methods"),
        limits=getattr(settings, "JOB_LIMITS", None),
    )


def job_spec_or_none(*, job: Job) -> dict | None:
    from ml.spec import SpecError

    try:
        return job_spec(job=job)
    except SpecError:
        return None


def job_events(*, job: Job, after: int = 0, limit: int | None = None) -> QuerySet[JobEvent]:
    qs = JobEvent.objects.filter(job=job, seq__gt=after).order_by("seq")
    return qs[:limit] if limit else qs


def job_shards(*, job: Job) -> QuerySet[JobShard]:
    """The parts of the job's sharded generation stages (none when every stage ran whole)."""
    return JobShard.objects.filter(job=job).order_by("stage", "index")


def job_pairs(
    *,
    job: Job,
    review_status: str | None = None,
    min_reward_sum: float | None = None,
    min_reward_mean: float | None = None,
    empty_response: bool | None = None,
    search: str | None = None,
) -> QuerySet[GeneratedPair]:
    """A job's pairs by prompt index. Each reward bound names the number it compares (the implicit reward
    summed over tokens, or per token); a pair without that number never passes it."""
    qs = GeneratedPair.objects.filter(job=job)
    if review_status:
        qs = qs.filter(review_status__in=review_status.split(","))
    if min_reward_sum is not None:
        qs = qs.filter(implicit_reward_sum__gte=min_reward_sum)
    if min_reward_mean is not None:
        qs = qs.filter(implicit_reward_mean__gte=min_reward_mean)
    if empty_response is not None:
        qs = qs.filter(empty_response=empty_response)
    if search:
        qs = qs.filter(Q(prompt__icontains=search) | Q(chosen__icontains=search))
    return qs.order_by("prompt_index")


def visible(qs: QuerySet, user) -> QuerySet:
    """Models and datasets a user may use: shared ones (no owner) and their own; staff see all."""
    if user is not None and user.is_staff:
        return qs
    if user is None or not user.is_authenticated:  # AnonymousUser is not a row: Q(owner=...) would raise
        return qs.filter(owner__isnull=True)
    return qs.filter(Q(owner__isnull=True) | Q(owner=user))


def models_visible(*, user) -> QuerySet[ModelEntry]:
    return visible(ModelEntry.objects.all(), user)


def datasets_visible(*, user) -> QuerySet[Dataset]:
    return visible(Dataset.objects.all(), user)


def presets(*, user) -> list[dict]:
    """Ready-made job requests built from the registered toy worlds (shared models named toy-*) and the
    real offline models (jobs.services.offline_register)."""
    out: list[dict] = _toy_presets(user=user)
    out.extend(offline_presets(user=user))
    return out


# Which real_preset size a dataset's defaults came from, by (max_prompts, max_new_tokens); a test checks
# this against ml.offline.presets so the labels cannot drift from the presets.
OFFLINE_SIZE_SIGNATURES: dict[tuple[int | None, int | None], str] = {
    (8, 24): "smoke",
    (64, 64): "cpu",
    (None, 256): "gpu",
}
OFFLINE_CONG_METHODS = ["cong_s", "cong", "weak_sft", "wspo"]


def offline_size_label(defaults: dict | None) -> str:
    d = defaults or {}
    key = (d.get("max_prompts"), d.get("max_new_tokens"))  # JSON values: ints or null when the preset set them
    size = OFFLINE_SIZE_SIGNATURES.get(key)  # type: ignore[arg-type]
    return f"{size} size" if size else "custom size"


def offline_presets(*, user) -> list[dict]:
    """1. weak alignment of SmolLM2 (pi_pre -> pi_post) on the judge's training prompts; then, for each
    aligned SmolLM2 this user can see (a weak_align job registers one), 2. ConG into Gemma 3 270M and
    ConG self-alignment (strong = SmolLM2). The datasets' defaults carry the preset's stage settings, and
    job_create evaluates on if-judge-heldout (the -train/-heldout naming), so the requests stay short."""
    models = models_visible(user=user)
    # Shared entries only: the app registered these names (no user can take them; this makes sure of it).
    weak = models.filter(name=OFFLINE_WEAK, owner__isnull=True).first()
    strong = models.filter(name=OFFLINE_STRONG, owner__isnull=True).first()
    train = datasets_visible(user=user).filter(name=OFFLINE_TRAIN, owner__isnull=True).first()
    if weak is None or train is None:
        return []
    size = offline_size_label(train.defaults)
    out = [
        {
            "name": "SmolLM2 -> Gemma: 1. weak alignment (pi_pre -> pi_post)",
            "request": {"kind": "weak_align", "weak_base": weak.pk, "prompts": train.pk},
        }
    ]
    aligned = (
        models.filter(
            kind__in=[ModelEntry.Kind.WEAK, ModelEntry.Kind.ANY],
            family=weak.family,
            vocab_fingerprint=weak.vocab_fingerprint,
        )
        .exclude(pk=weak.pk)
        .exclude(name__startswith="toy-")
        .order_by("-created", "-id")
    )
    for wa in aligned:
        base = {
            "kind": "cong",
            "weak_base": weak.pk,
            "weak_aligned": wa.pk,
            "prompts": train.pk,
            "alpha": DEFAULT_ALPHA,
            "methods": list(OFFLINE_CONG_METHODS),
        }
        if strong is not None:
            out.append(
                {
                    "name": f"SmolLM2 -> Gemma: 2. ConG ({size}), pi_post = {wa.name}",
                    "request": {**base, "strong": strong.pk},
                }
            )
        out.append(
            {
                "name": f"SmolLM2 self-alignment: ConG ({size}), pi_post = {wa.name}",
                "request": {**base, "strong": weak.pk},
            }
        )
    return out


def _toy_presets(*, user) -> list[dict]:
    out: list[dict] = []
    models = {m.name: m for m in models_visible(user=user).filter(name__startswith="toy-", owner__isnull=True)}
    datasets = {d.name: d for d in datasets_visible(user=user).filter(name__startswith="toy-", owner__isnull=True)}
    for name, m in sorted(models.items()):
        if not name.endswith("-weak-base"):
            continue
        tag = name[: -len("-weak-base")]
        wa, strong = models.get(f"{tag}-weak-aligned"), models.get(f"{tag}-strong-base")
        train, heldout = datasets.get(f"{tag}-train"), datasets.get(f"{tag}-heldout")
        if wa is None or train is None:
            continue
        base = {"weak_base": m.pk, "weak_aligned": wa.pk, "prompts": train.pk}
        out.append(
            {
                "name": f"{tag}: contrastive decoding",
                "request": {"kind": "cd_generate", **base, "alpha": DEFAULT_ALPHA, "params": {"max_prompts": 64}},
            }
        )
        out.append(
            {"name": f"{tag}: alpha sweep", "request": {"kind": "alpha_sweep", **base, "params": {"max_prompts": 64}}}
        )
        if heldout is not None:
            # The check runs on held-out prompts, like the toy world's own diagnostic.
            out.append(
                {
                    "name": f"{tag}: pre-flight check",
                    "request": {"kind": "preflight", "weak_base": m.pk, "weak_aligned": wa.pk, "prompts": heldout.pk},
                }
            )
        if strong is not None:
            out.append(
                {
                    "name": f"{tag}: full ConG pipeline",
                    "request": {
                        "kind": "cong",
                        **base,
                        "strong": strong.pk,
                        "alpha": DEFAULT_ALPHA,
                        "methods": ["cong_s", "cong", "weak_sft"],
                    },
                }
            )
        if heldout is not None and strong is not None:
            out.append(
                {
                    "name": f"{tag}: evaluate strong base",
                    "request": {"kind": "evaluate", "strong": strong.pk, "prompts": heldout.pk},
                }
            )
    return out
