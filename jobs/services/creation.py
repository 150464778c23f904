"""Creating a job: models and datasets picked for the user, the spec resolved through ml's registry, every
config the worker will run built once, the per-user cap; and the worker's re-check of what a job names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from jobs.models import Dataset, Job, JobEvent, ModelEntry
from jobs.selectors import visible as _visible
from jobs.services import dispatch
from jobs.services._common import S, _err
from jobs.services.catalog import _model_ref, _pick_dataset, _pick_model, gold_pick, judge_pick
from jobs.services.events import event_append
from jobs.services.review_loop import REVIEWED_PAIRS, pairs_from_check

# Which model/dataset fields each kind needs (weak pair = weak_base + weak_aligned).
KIND_NEEDS: dict[str, tuple[str, ...]] = {
    Job.Kind.CONG: ("weak_base", "weak_aligned", "strong", "prompts"),
    Job.Kind.CD_GENERATE: ("weak_base", "weak_aligned", "prompts"),
    Job.Kind.ALPHA_SWEEP: ("weak_base", "weak_aligned", "prompts"),
    Job.Kind.WEAK_ALIGN: ("weak_base", "prompts"),
    Job.Kind.TRAIN: ("strong", "prompts"),
    Job.Kind.EVALUATE: ("strong", "prompts"),
    # Does CD raise gold reward for this weak pair? (ml.diagnose; held-out prompts with a gold reward)
    Job.Kind.PREFLIGHT: ("weak_base", "weak_aligned", "prompts"),
}

# What each of those fields holds, for "needs ..." messages: the page picks by name and the API by id, so the
# message names the role and neither way of giving it.
NEEDED_ROLES: dict[str, str] = {
    "weak_base": "the weak base model, pi_pre",
    "weak_aligned": "the weak aligned model, pi_post",
    "strong": "the strong model to train or evaluate",
    "prompts": "the prompt dataset",
}

JOB_MODEL_FIELDS = ("weak_base", "weak_aligned", "strong", "judge")  # judge: optional (JUDGE_KINDS)
# The kinds whose methods a pairwise judge compares with weak_sft's answers (ml.pipeline_config.judge_problem): a train
# job runs one method, with nothing to compare it with.
JUDGE_KINDS = (Job.Kind.CONG,)


JOB_DATASET_FIELDS = ("prompts", "eval_prompts")

# A job's golds (jobs.services.catalog.gold_pick): "gold" labels (weak alignment's best vs worst, the pairs' scores),
# "eval_gold" scores the evaluations, only in the kinds that evaluate (EVAL_GOLD_KINDS; default: gold).
JOB_GOLD_FIELDS = ("gold", "eval_gold")
EVAL_GOLD_KINDS = (Job.Kind.EVALUATE, Job.Kind.ALPHA_SWEEP, Job.Kind.CONG, Job.Kind.TRAIN)


def job_check_access(*, job: Job) -> None:
    """The worker's check, just before a job runs, that its owner may still use every model and dataset
    its config names: each still exists, is visible to job.owner, points at the path recorded at submit,
    and (models) is not in another user's run folder. Raises ValueError naming what to change otherwise.

    job_create checked all this at submit, but a job can wait in the queue (or be retried) long after:
    an entry may be deleted, made private, moved (offline_register follows a re-install), or a config may
    not have come from job_create at all. See docs/SECURITY.md section 2.
    """
    from jobs.validation import run_folder_allowed

    user, config = job.owner, job.config or {}
    problems: list[str] = []
    for field, ref, qs, what in [
        *((f, config.get(f), ModelEntry.objects.all(), "model") for f in JOB_MODEL_FIELDS),
        *((f, config.get(f), Dataset.objects.all(), "dataset") for f in JOB_DATASET_FIELDS),
        # A reward model named as gold is a model the job runs like the others.
        *((f, (config.get(f) or {}).get("model"), ModelEntry.objects.all(), "model") for f in JOB_GOLD_FIELDS),
    ]:
        if not ref:
            continue
        ident = ref.get("id") if isinstance(ref, dict) else None
        obj = _visible(qs, user).filter(pk=ident).first() if isinstance(ident, int) else None
        if obj is None:
            problems.append(f"{field}: {what} {ident!r} no longer exists or is not available to the job's owner")
        elif obj.path != ref.get("path"):
            problems.append(f"{field}: {what} {obj.name!r} now points at another file than when the job was submitted")
        elif what == "model" and not run_folder_allowed(obj.path, user):
            problems.append(f"{field}: model {obj.name!r} is in a job runs folder that is not one of the owner's jobs'")
    if problems:
        raise ValueError(
            "this job may not use what it was submitted with (" + "; ".join(problems) + "); "
            "submit a new job with models and datasets you can use"
        )


# A job's labels, to tell jobs apart (docs/API.md "Names and tags"): a free name and a few short tags, lowercase
# ASCII so that a tag filter can match the stored JSON list's text exactly (jobs.job_table.filter_labels).
TAGS_MAX, TAG_MAX_CHARS = 10, 40
TAG_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.:+/-]*")


def job_labels(name: Any, tags: Any) -> tuple[str, list[str]]:
    """(name, tags) as stored: trimmed, tags lowercased without repeats; a ValidationError on name/tags otherwise."""
    errors: dict[str, list[str]] = {}
    name_max = Job._meta.get_field("name").max_length or 0
    name = "" if name is None else name
    if not isinstance(name, str) or len(name.strip()) > name_max:
        errors["name"] = [f"name must be a string of at most {name_max} characters"]
    tags = [] if tags is None else tags
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        errors["tags"] = ["tags must be a list of strings"]
        tags = []
    clean = list(dict.fromkeys(t.strip().lower() for t in tags if t.strip()))
    bad = [t for t in clean if len(t) > TAG_MAX_CHARS or not TAG_PATTERN.fullmatch(t)]
    if bad:
        errors.setdefault("tags", []).append(
            f"tag {bad[0][:50]!r}: at most {TAG_MAX_CHARS} characters, letters, digits and _ . : + / - (starting "
            "with a letter or digit)"
        )
    if len(clean) > TAGS_MAX:
        errors.setdefault("tags", []).append(f"at most {TAGS_MAX} tags, got {len(clean)}")
    if errors:
        raise ValidationError(errors)
    return str(name).strip(), clean


class JobQuotaExceeded(Exception):
    """The user already has JOB_MAX_ACTIVE_PER_USER jobs queued or running (the API answers 429)."""


def job_inputs(config: dict[str, Any], output_dir: str) -> Any:
    """ml.resolve.JobInputs from a job's stored config: the files it may use, resolved at submit."""
    from ml.resolve import JobInputs

    def path(key: str) -> str:
        return str((config.get(key) or {}).get("path") or "")

    return JobInputs(
        output_dir=output_dir,
        weak_base=path("weak_base"),
        weak_aligned=path("weak_aligned"),
        strong=path("strong"),
        strong_name=str((config.get("strong") or {}).get("name") or ""),
        prompts=path("prompts"),
        prompts_kind=str((config.get("prompts") or {}).get("kind") or "prompts"),
        eval_prompts=path("eval_prompts"),
        gold=job_gold_name(config),
        eval_gold=str((config.get("eval_gold") or {}).get("name") or ""),
        # Written when the job first runs (jobs.services.review_loop), from the jobs its pairs_from names.
        pairs=f"{output_dir.rstrip('/')}/{REVIEWED_PAIRS}" if config.get("pairs_from") else "",
        judge=path("judge"),
    )


def job_gold_name(config: dict[str, Any]) -> str:
    """The labelling gold's name as ml resolves it (rm:<folder> for a reward model); jobs from before job-level golds
    stored only their dataset's."""
    if isinstance(config.get("gold"), dict):
        return str(config["gold"].get("name") or "")
    return str((config.get("prompts") or {}).get("gold") or "")


def _model_contexts(picked: dict[str, Any]) -> dict[str, tuple[str, int | None]]:
    """model field -> (name, context length from its config.json): a job whose token budget does not fit a
    model it runs on is refused at submit, not failed in the worker (ml.budget says which budget runs where)."""
    from ml.modeling import context_length

    return {f: (m.name, context_length(m.path)) for f, m in picked.items() if m is not None}


def _resolve_spec(
    *, kind: str, alpha: Any, method: Any, methods: Any, params: Any, recommended: Any, contexts: Any = None
) -> dict[str, Any]:
    """The full spec through ml's registry (ml.resolve); its key-path errors become ValidationErrors."""
    from ml.resolve import resolve
    from ml.spec import SpecError

    try:
        return resolve(
            kind,
            params,
            alpha=alpha,
            method=method,
            methods=methods,
            recommended=recommended,
            limits=getattr(settings, "JOB_LIMITS", None),
            contexts=contexts,
        )
    except SpecError as exc:
        raise ValidationError(exc.errors) from None


def active_jobs(user) -> tuple[int, int]:
    """(the user's jobs queued or running, the cap on them: 0 = no cap)."""
    cap = int(getattr(settings, "JOB_MAX_ACTIVE_PER_USER", 20))
    if user is None or cap <= 0:
        return 0, 0
    return Job.objects.filter(owner=user, status__in=Job.ACTIVE).count(), cap


def _check_quota(user) -> None:
    active, cap = active_jobs(user)
    if cap and active >= cap:
        raise JobQuotaExceeded(
            f"you have {active} jobs queued or running (the limit is {cap}); wait for some to "
            "finish or cancel some, then submit again"
        )


def job_create(*, user, max_attempts: int | None = None, **request: Any) -> Job:
    """Validate a job request (``job_build``'s arguments), store the Job with its request and resolved spec, and
    send it on commit. Within the user's cap of active jobs."""
    if request.get("kind") in Job.Kind.values:  # an unknown kind says so first (job_build)
        _check_quota(user)
    config = job_build(user=user, **request)
    _check_deployment(config["spec"])
    name, tags = job_labels(request.get("name"), request.get("tags"))
    return job_store(user=user, config=config, name=name, tags=tags, max_attempts=max_attempts)


def job_store(
    *,
    user,
    config: dict[str, Any],
    name: str = "",
    tags: list[str] | None = None,
    experiment: Any = None,
    max_attempts: int | None = None,
) -> Job:
    """Store a config job_build made (and _check_deployment passed) as a queued job, sent on commit. job_create's
    last step, and an experiment's for each of its cells (jobs.services.experiments: every cell built first)."""
    attempts: int = max_attempts or int(getattr(settings, "JOB_MAX_ATTEMPTS", 3))
    with transaction.atomic():
        job = Job.objects.create(
            owner=user,
            kind=config["kind"],
            config=config,
            max_attempts=attempts,
            name=name,
            tags=list(tags or []),
            experiment=experiment,
        )
        event_append(job_id=job.pk, type=JobEvent.Type.STATUS, data={"status": S.QUEUED, "message": "job queued"})
        job_id = job.pk
        transaction.on_commit(lambda: dispatch.send(job_id))
    return job


def job_build(
    *,
    user,
    kind: str,
    weak_base: Any = None,
    weak_aligned: Any = None,
    strong: Any = None,
    prompts: Any = None,
    alpha: Any = None,
    method: str | None = None,
    methods: list[str] | None = None,
    params: dict[str, Any] | None = None,
    eval_prompts: Any = None,
    pairs_from: Any = None,
    include_pending: Any = None,
    gold: Any = None,
    eval_gold: Any = None,
    judge: Any = None,
    name: Any = None,
    tags: Any = None,
) -> dict[str, Any]:
    """The config a job request would be stored with (models and datasets as picked, the resolved spec), or a
    ValidationError naming every problem; nothing is stored (the new-job page's memory estimate builds with it, so
    it also estimates a job this deployment's workers cannot run now: job_create refuses that, _check_deployment).

    Everything a worker would check is checked here: the spec is built through ml's registry and every
    stage config it runs is constructed once with the resolved files (ml.resolve.check)."""
    from ml.spec import WEAK_PAIR_TRAIN_METHODS

    errors: dict[str, list[str]] = {}

    def collect(fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except ValidationError as exc:
            for k, v in exc.message_dict.items():
                errors.setdefault(k, []).extend(v)
            return None

    if kind not in Job.Kind.values:
        raise _err("kind", f"unknown job kind {kind!r}; use one of {', '.join(Job.Kind.values)}")
    collect(job_labels, name, tags)  # stored by job_create, not in the config
    needs = list(KIND_NEEDS[kind])
    if kind == Job.Kind.TRAIN and method in WEAK_PAIR_TRAIN_METHODS:
        needs = ["weak_base", "weak_aligned", *needs]

    picked: dict[str, Any] = {}
    for f, ident in (
        ("weak_base", weak_base),
        ("weak_aligned", weak_aligned),
        ("strong", strong),
        ("prompts", prompts),
    ):
        if f in needs and ident in (None, ""):
            what = "this model" if f in JOB_MODEL_FIELDS else "a prompt dataset"
            errors.setdefault(f, []).append(f"a {kind} job needs {what} ({NEEDED_ROLES[f]}); choose one")
        elif f in needs and f in JOB_MODEL_FIELDS:
            picked[f] = collect(_pick_model, user, ident, f)
    ds = collect(_pick_dataset, user, prompts, "prompts") if "prompts" in needs and prompts not in (None, "") else None
    spec = collect(
        _resolve_spec,
        kind=kind,
        alpha=alpha,
        method=method,
        methods=methods,
        params=params,
        recommended=ds.defaults if ds is not None else None,
        contexts=_model_contexts(picked),
    )

    wb, wa = picked.get("weak_base"), picked.get("weak_aligned")
    if wb is not None and wa is not None and wb.vocab_fingerprint != wa.vocab_fingerprint:
        errors.setdefault("weak_aligned", []).append(
            f"weak models {wb.name!r} and {wa.name!r} do not share a vocabulary (tokenizer fingerprints "
            f"{wb.vocab_fingerprint or '?'} vs {wa.vocab_fingerprint or '?'}); contrastive decoding needs "
            "a weak pair from the same family"
        )
    eval_ds = None
    if kind in (Job.Kind.CONG, Job.Kind.TRAIN):
        if eval_prompts not in (None, ""):
            eval_ds = collect(_pick_dataset, user, eval_prompts, "eval_prompts")
        elif ds is not None and ds.eval_split_id is not None:
            # The dataset's own held-out split (toy worlds and the offline install link them), if visible.
            eval_ds = _visible(Dataset.objects.all(), user).filter(pk=ds.eval_split_id).first()
    elif eval_prompts not in (None, ""):
        errors["eval_prompts"] = ["eval_prompts is only used by kind=cong and kind=train"]
    needs_gold = (
        Job.Kind.WEAK_ALIGN,
        Job.Kind.EVALUATE,
        Job.Kind.ALPHA_SWEEP,
        Job.Kind.CONG,
        Job.Kind.TRAIN,
        Job.Kind.PREFLIGHT,
    )
    golds = _pick_golds(user, kind, ds, gold, eval_gold, collect, errors)
    if ds is not None and kind in needs_gold and not golds and ds.kind != Dataset.Kind.PREFERENCES:
        errors.setdefault("prompts", []).append(
            f"dataset {ds.name!r} has no gold reward; {kind} needs one to score responses (e.g. toy:review, or "
            "give gold)"
        )
    judge_ref = collect(_pick_judge, user, kind, judge, spec) if judge not in (None, "") else None
    reviewed = None
    if pairs_from not in (None, []):
        reviewed = collect(
            pairs_from_check,
            user=user,
            kind=kind,
            method=method,
            pairs_from=pairs_from,
            include_pending=include_pending,
        )
    elif include_pending is not None:
        errors["include_pending"] = ["include_pending is only used with pairs_from"]
    if errors:
        raise ValidationError(errors)

    config: dict[str, Any] = {
        "kind": kind,
        "alpha": spec["alpha"],
        "method": spec["method"],
        "methods": spec["methods"],
        "params": params or {},
    }
    for f, m in picked.items():
        config[f] = _model_ref(m)
    if ds is not None:
        config["prompts"] = {
            "id": ds.pk,
            "name": ds.name,
            "path": ds.path,
            "kind": ds.kind,
            "gold": ds.gold,
            "row_count": ds.row_count,
        }
    if eval_ds is not None:
        config["eval_prompts"] = {
            "id": eval_ds.pk,
            "name": eval_ds.name,
            "path": eval_ds.path,
            "row_count": eval_ds.row_count,
        }
    if reviewed is not None:
        config["pairs_from"] = reviewed
    config.update(golds)
    if judge_ref is not None:
        config["judge"] = judge_ref
    _check_buildable(spec, config)
    config["spec"] = spec
    return config


def _pick_golds(
    user, kind: str, ds: Dataset | None, gold: Any, eval_gold: Any, collect: Any, errors: dict[str, list[str]]
) -> dict[str, dict[str, Any]]:
    """The job's golds as stored ({"gold": ..., "eval_gold": ...}, each as gold_pick makes it): gold is the request's,
    else the dataset's; eval_gold the request's, else gold, in the kinds that evaluate. Problems go to ``errors``."""
    out: dict[str, dict[str, Any]] = {}
    for field, given in (("gold", gold), ("eval_gold", eval_gold)):
        if given not in (None, "") and not isinstance(given, str):
            errors.setdefault(field, []).append(f"{field} must be a string: a gold name or rm:<reward model id>")
            return out
    if eval_gold and kind not in EVAL_GOLD_KINDS:
        errors.setdefault("eval_gold", []).append(
            f"eval_gold is only used by the kinds that evaluate ({', '.join(EVAL_GOLD_KINDS)}); give gold"
        )
    if (gold or "").strip():
        picked = collect(gold_pick, user, gold.strip(), "gold")
    elif ds is not None and ds.gold:
        picked = collect(_dataset_gold, user, ds)
    else:
        picked = None
    if picked is not None:
        out["gold"] = picked
    if kind in EVAL_GOLD_KINDS:
        picked = collect(gold_pick, user, eval_gold.strip(), "eval_gold") if (eval_gold or "").strip() else None
        if picked is not None or "gold" in out:
            out["eval_gold"] = picked if picked is not None else out["gold"]
    return out


def _pick_judge(user, kind: str, judge: Any, spec: dict[str, Any] | None) -> dict[str, Any]:
    """The request's pairwise judge (a model id), where the kind compares methods: checked like every model."""
    from ml.pipeline_config import judge_problem

    if kind not in JUDGE_KINDS:
        used = " and ".join(f"kind={k}" for k in JUDGE_KINDS)
        raise _err("judge", f"judge is only used by {used}: it compares each method's answers with weak_sft's")
    why = judge_problem(list(spec["methods"])) if spec is not None else None
    if why:
        raise _err("judge", why)
    return judge_pick(user, judge, "judge")


def _dataset_gold(user, ds: Dataset) -> dict[str, Any]:
    # A dataset's rm:<id> is checked for the job's owner: the uploader's reward model may not be theirs to use.
    try:
        return gold_pick(user, ds.gold, "prompts")
    except ValidationError as exc:
        raise _err("prompts", f"dataset {ds.name!r}'s gold {ds.gold}: {'; '.join(exc.messages)}") from None


def _check_deployment(spec: dict[str, Any]) -> None:
    """What this deployment cannot run is refused now, not after the job has waited in the queue: QLoRA or fsdp
    without a CUDA worker (the live workers say whether they have one: jobs.workers); a distributed mode whose
    package is not installed is refused with the spec's other execution settings (ml.execution)."""
    from jobs.workers import any_cuda
    from ml.distributed import DEFAULT_MODE, mode_unavailable, qlora_unavailable

    mode = (spec.get("execution") or {}).get("distributed", DEFAULT_MODE)
    wants = [name for name, stage in spec.get("stages", {}).items() if stage.get("load_in_4bit")]
    if mode == DEFAULT_MODE and not wants:
        return  # nothing to ask the workers
    cuda = any_cuda()
    errors = {f"params.{name}.load_in_4bit": [why] for name in wants if (why := qlora_unavailable(cuda))}
    if why := mode_unavailable(mode, cuda):
        errors["params.distributed"] = [why]
    if errors:
        raise ValidationError(errors)


def _check_buildable(spec: dict[str, Any], config: dict[str, Any]) -> None:
    """Construct every config the worker will run (ml.resolve.check), with the job's real files."""
    from ml.resolve import check
    from ml.spec import SpecError

    try:
        check(spec, job_inputs(config, str(Path(settings.RUNS_DIR) / "pending")))
    except SpecError as exc:
        raise ValidationError(exc.errors) from None
