"""Business rules: every write to the jobs app goes through a function here (HackSoft style).

Functions take keyword-only typed arguments and are named ``<entity>_<action>``. Invalid input raises
django.core.exceptions.ValidationError keyed by field (the API answers 400 with those messages) and
leaves nothing half-created: each function validates everything first and writes inside one
transaction. Job state changes are conditional UPDATEs with a row-count check, so two workers (or a
redelivered task) can never both move the same job.

One module per sub-domain; callers use this package's names (``from jobs import services``):

    catalog    models and datasets (names per owner, model roots, uploads, the toy world's shared entries)
    creation   job_create (spec through ml's registry, per-user cap) and the worker's access re-check
    lifecycle  cancel, retry, claim, heartbeat, finish, fail, the stale-job reaper
    events     the job's event log (and the push to the browser, jobs.notify)
    pairs      artifacts and generated pairs: mirror, review, export
    shards     the parts of a sharded generation stage: plan, claim, heartbeat, progress, end
    offline    the real offline models: registration and the staff install
    dispatch   sending tasks to workers (by name: no import of jobs.tasks)
"""

from jobs.services import dispatch
from jobs.services.catalog import (
    ALIGNED_NAME_MARK,
    RESERVED_MODEL_PREFIXES,
    _model_ref,
    _reserved_model_name,
    dataset_create,
    datasets_dir,
    model_register,
    toyworld_register,
)
from jobs.services.creation import (
    KIND_NEEDS,
    JobQuotaExceeded,
    job_build,
    job_check_access,
    job_create,
    job_inputs,
)
from jobs.services.events import event_append
from jobs.services.lifecycle import (
    cancel_requested,
    job_cancel,
    job_claim,
    job_fail,
    job_finish,
    job_heartbeat,
    job_mark_cancelled,
    job_retry,
    job_set_progress,
    jobs_reap_stale,
    worker_name,
)
from jobs.services.offline import (
    OFFLINE_GOLD,
    OFFLINE_HELDOUT,
    OFFLINE_TRAIN,
    offline_install,
    offline_install_request,
    offline_install_status,
    offline_model_name,
    offline_params,
    offline_register,
)
from jobs.services.pairs import (
    artifact_record,
    pair_review,
    pair_side_store,
    pair_sides_store,
    pair_store,
    pairs_export,
    pairs_export_async,
)
from jobs.services.review_loop import pairs_training_file
from jobs.services.shards import (
    shard_claim,
    shard_end,
    shard_heartbeat,
    shard_progress,
    shard_send,
    shards_plan,
)

__all__ = [
    "ALIGNED_NAME_MARK",
    "KIND_NEEDS",
    "OFFLINE_GOLD",
    "OFFLINE_HELDOUT",
    "OFFLINE_TRAIN",
    "RESERVED_MODEL_PREFIXES",
    "JobQuotaExceeded",
    "_model_ref",
    "_reserved_model_name",
    "artifact_record",
    "cancel_requested",
    "dataset_create",
    "datasets_dir",
    "dispatch",
    "event_append",
    "job_cancel",
    "job_check_access",
    "job_claim",
    "job_build",
    "job_create",
    "job_fail",
    "job_finish",
    "job_heartbeat",
    "job_inputs",
    "job_mark_cancelled",
    "job_retry",
    "job_set_progress",
    "jobs_reap_stale",
    "model_register",
    "offline_install",
    "offline_install_request",
    "offline_install_status",
    "offline_model_name",
    "offline_params",
    "offline_register",
    "pair_review",
    "pair_side_store",
    "pair_sides_store",
    "pair_store",
    "pairs_export",
    "pairs_export_async",
    "pairs_training_file",
    "shard_claim",
    "shard_end",
    "shard_heartbeat",
    "shard_progress",
    "shard_send",
    "shards_plan",
    "toyworld_register",
    "worker_name",
]
