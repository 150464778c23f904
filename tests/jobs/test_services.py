"""Business rules in jobs.services: validation, nothing half-created, the job state machine."""

from __future__ import annotations

import os
import threading
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from jobs import services
from jobs.models import Dataset, GeneratedPair, Job, JobEvent, ModelEntry

from .conftest import make_prompts

pytestmark = pytest.mark.django_db


def _job(user, weak_pair, prompts_ds, **kw):
    wb, wa = weak_pair
    args = dict(user=user, kind="cd_generate", weak_base=wb.pk, weak_aligned=wa.pk, prompts=prompts_ds.pk, alpha=0.4)
    args.update(kw)
    return services.job_create(**args)


def _counts():
    return (Job.objects.count(), JobEvent.objects.count(), ModelEntry.objects.count(), Dataset.objects.count())


# --- models ----------------------------------------------------------------------------------------------
def test_model_register_stores_resolved_path_and_fingerprint(model_root, user):
    m = services.model_register(name="m", path=str(model_root / "weak_base"), owner=user)
    assert m.path == str((model_root / "weak_base").resolve())
    assert len(m.vocab_fingerprint) == 16
    other = services.model_register(name="o", path=str(model_root / "other_vocab"), owner=user)
    assert other.vocab_fingerprint != m.vocab_fingerprint


@pytest.mark.parametrize(
    "bad", ["relative/path", "{root}/../etc", "{root}/weak_base/../weak_base", "/etc", "{root}/missing", "{root}"]
)
def test_model_register_refuses_paths_outside_roots(model_root, user, bad):
    before = _counts()
    with pytest.raises(ValidationError) as exc:
        services.model_register(name="x", path=bad.format(root=model_root), owner=user)
    assert "path" in exc.value.message_dict
    assert _counts() == before


def test_model_register_refuses_symlink_out_of_root(model_root, user, tmp_path):
    outside = tmp_path / "outside_model"
    from .conftest import save_tiny_model

    save_tiny_model(outside)
    link = model_root / "sneaky"
    if not link.exists():
        os.symlink(outside, link)
    with pytest.raises(ValidationError) as exc:
        services.model_register(name="x", path=str(link), owner=user)
    assert "symlink" in exc.value.message_dict["path"][0]
    assert not ModelEntry.objects.exists()


def test_model_register_duplicate_name(model_root, user):
    services.model_register(name="m", path=str(model_root / "weak_base"), owner=user)
    with pytest.raises(ValidationError) as exc:
        services.model_register(name="m", path=str(model_root / "weak_aligned"), owner=user)
    assert "already exists" in exc.value.message_dict["name"][0]


# --- datasets --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "payload,kind,needle",
    [
        (b"", "prompts", "empty"),
        (b"\n\n", "prompts", "empty"),
        (b'{"prompt": "caf\xe9"}\n', "prompts", "UTF-8"),
        (b'{"prompt": "ok"}\n{"text": "no prompt"}\n', "prompts", "line 2 is missing field(s) prompt"),
        (b'{"prompt": "ok", "chosen": "c"}\n', "preferences", "rejected"),
        (b'["a list"]\n', "prompts", "JSON object"),
        (b'{"prompt": \n', "prompts", "not valid JSON"),
        (b'{"prompt": "' + b"x" * (10 * 1024 * 1024) + b'"}\n', "prompts", "1 MB"),
    ],
)
def test_dataset_create_rejects_bad_files(model_root, user, payload, kind, needle):
    before = _counts()
    files_before = set((model_root.parent).rglob("*.jsonl"))
    with pytest.raises(ValidationError) as exc:
        services.dataset_create(name="d", kind=kind, chunks=[payload], owner=user)
    assert needle in " ".join(exc.value.message_dict["file"])
    assert _counts() == before
    from django.conf import settings

    datasets = settings.VAR_DIR / "datasets"
    assert not datasets.exists() or not list(datasets.glob("*"))  # no file left behind (the folder may not exist)
    assert set((model_root.parent).rglob("*.jsonl")) == files_before


def test_dataset_create_size_limit(model_root, user, settings):
    settings.UPLOAD_MAX_BYTES = 100
    with pytest.raises(ValidationError) as exc:
        services.dataset_create(name="d", chunks=[make_prompts(10)], owner=user)
    assert "upload limit" in exc.value.message_dict["file"][0]
    assert not Dataset.objects.exists()


def test_dataset_create_stores_file_and_counts(model_root, user, settings):
    ds = services.dataset_create(
        name="d", chunks=[make_prompts(3)[:7], make_prompts(3)[7:]], gold="toy:review", owner=user
    )
    assert ds.row_count == 3
    assert ds.path.startswith(str(settings.VAR_DIR / "datasets"))
    from ml.io import read_prompts

    assert read_prompts(ds.path) == ["the movie 0 was", "the movie 1 was", "the movie 2 was"]


def test_dataset_unknown_gold(model_root, user):
    with pytest.raises(ValidationError) as exc:
        services.dataset_create(name="d", chunks=[make_prompts(1)], gold="toy:nope", owner=user)
    assert "gold" in exc.value.message_dict


# --- job creation ------------------------------------------------------------------------------------------
def test_job_create_stores_full_config_and_queued_event(user, weak_pair, prompts_ds):
    job = _job(user, weak_pair, prompts_ds, params={"max_prompts": 2, "batch_size": 1})
    assert job.status == Job.Status.QUEUED and job.attempts == 0
    assert job.config["weak_base"]["path"].endswith("weak_base")
    assert job.config["prompts"]["row_count"] == 4
    assert job.config["alpha"] == 0.4 and job.config["params"] == {"max_prompts": 2, "batch_size": 1}
    ev = list(job.events.values_list("seq", "type"))
    assert ev == [(1, "status")]


@pytest.mark.parametrize(
    "kw,field,needle",
    [
        ({"alpha": 1.5}, "alpha", "between 0 and 1"),
        ({"alpha": -0.1}, "alpha", "between 0 and 1"),
        ({"alpha": "abc"}, "alpha", "number"),
        ({"alpha": True}, "alpha", "number"),
        ({"alpha": float("nan")}, "alpha", "number"),
        ({"weak_base": 99999}, "weak_base", "no model with id 99999"),
        ({"weak_base": "x"}, "weak_base", "integer"),
        ({"prompts": 99999}, "prompts", "no dataset"),
        ({"kind": "train", "method": "magic"}, "method", "sft"),
        ({"kind": "cong", "methods": ["cong", "voodoo"]}, "methods", "cong_s"),
        ({"params": {"max_prompts": 0}}, "params.max_prompts", "max_prompts"),
        ({"params": {"bogus": 1}}, "params.bogus", "unknown setting"),
        ({"params": [1]}, "params", "object"),
    ],
)
def test_job_create_validation_errors_create_nothing(user, weak_pair, prompts_ds, kw, field, needle):
    before = _counts()
    with pytest.raises(ValidationError) as exc:
        _job(user, weak_pair, prompts_ds, **kw)
    assert needle in " ".join(exc.value.message_dict[field]), exc.value.message_dict
    assert _counts() == before


def test_cong_job_may_ask_for_filtered_cong(user, weak_pair, prompts_ds, model_root):
    strong = services.model_register(name="s", path=str(model_root / "weak_aligned"), kind="strong", owner=user)
    ds = services.dataset_create(name="g", chunks=[make_prompts(4)], gold="toy:review", owner=user)
    job = _job(user, weak_pair, ds, kind="cong", strong=strong.pk, methods=["cong", "cong_filtered"])
    assert job.config["methods"] == ["cong", "cong_filtered"]


def test_job_create_unknown_kind(user, weak_pair, prompts_ds):
    with pytest.raises(ValidationError) as exc:
        _job(user, weak_pair, prompts_ds, kind="dance")
    assert "unknown job kind" in exc.value.message_dict["kind"][0]
    assert not Job.objects.exists()


def test_job_create_vocab_mismatch_names_both_models(user, model_root, prompts_ds):
    wb = services.model_register(name="base-A", path=str(model_root / "weak_base"), owner=user)
    wa = services.model_register(name="aligned-B", path=str(model_root / "other_vocab"), owner=user)
    with pytest.raises(ValidationError) as exc:
        _job(user, (wb, wa), prompts_ds)
    msg = exc.value.message_dict["weak_aligned"][0]
    assert "base-A" in msg and "aligned-B" in msg and "vocabulary" in msg
    assert not Job.objects.exists()


def test_job_create_empty_dataset(user, weak_pair, prompts_ds):
    Dataset.objects.filter(pk=prompts_ds.pk).update(row_count=0)
    with pytest.raises(ValidationError) as exc:
        _job(user, weak_pair, prompts_ds)
    assert "empty" in exc.value.message_dict["prompts"][0]
    assert not Job.objects.exists()


def test_job_create_cannot_use_another_users_model(user, other_user, weak_pair, prompts_ds):
    with pytest.raises(ValidationError) as exc:
        _job(other_user, weak_pair, prompts_ds)
    assert "no model" in exc.value.message_dict["weak_base"][0]


def test_shared_models_are_usable_by_everyone(other_user, model_root):
    wb = services.model_register(name="swb", path=str(model_root / "weak_base"), owner=None)
    wa = services.model_register(name="swa", path=str(model_root / "weak_aligned"), owner=None)
    ds = services.dataset_create(name="sp", chunks=[make_prompts(2)], owner=None)
    job = _job(other_user, (wb, wa), ds)
    assert job.owner == other_user


# --- lifecycle -----------------------------------------------------------------------------------------------
def test_cancel_queued_is_immediate_and_finished_cannot_be_cancelled(user, weak_pair, prompts_ds):
    job = _job(user, weak_pair, prompts_ds)
    job = services.job_cancel(job=job)
    assert job.status == Job.Status.CANCELLED and job.finished is not None
    with pytest.raises(ValidationError) as exc:
        services.job_cancel(job=job)
    assert "already finished" in exc.value.message_dict["status"][0]


def test_cancel_running_sets_flag(user, weak_pair, prompts_ds):
    job = _job(user, weak_pair, prompts_ds)
    assert services.job_claim(job_id=job.pk, task_id="t1")
    job = services.job_cancel(job=job)
    assert job.status == Job.Status.CANCELLING and job.cancel_requested
    assert services.cancel_requested(job_id=job.pk)


def test_retry_only_failed_or_cancelled(user, weak_pair, prompts_ds):
    job = _job(user, weak_pair, prompts_ds)
    services.job_claim(job_id=job.pk, task_id="t1")
    with pytest.raises(ValidationError) as exc:
        services.job_retry(job=job)
    assert "only failed or cancelled" in exc.value.message_dict["status"][0]
    services.job_fail(job_id=job.pk, error="boom", task_id="t1")
    job = services.job_retry(job=job)
    assert job.status == Job.Status.QUEUED and job.attempts == 0 and job.error == ""


def test_claim_is_exclusive_and_counts_attempts(user, weak_pair, prompts_ds):
    job = _job(user, weak_pair, prompts_ds)
    assert services.job_claim(job_id=job.pk, task_id="t1").attempts == 1
    assert services.job_claim(job_id=job.pk, task_id="t2") is None  # duplicate delivery: refused
    # The same message redelivered after its process died reclaims it (attempt 2).
    again = services.job_claim(job_id=job.pk, task_id="t1")
    assert again.attempts == 2 and "lost" in again.error


def test_claim_after_stale_heartbeat_and_gives_up(user, weak_pair, prompts_ds, settings):
    job = _job(user, weak_pair, prompts_ds, max_attempts=2)
    services.job_claim(job_id=job.pk, task_id="t1")
    old = timezone.now() - timedelta(seconds=settings.JOB_STALE_AFTER_SECONDS + 5)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=old)
    assert services.job_claim(job_id=job.pk, task_id="t2").attempts == 2
    Job.objects.filter(pk=job.pk).update(heartbeat_at=old)
    assert services.job_claim(job_id=job.pk, task_id="t3") is None
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error.startswith("gave up after 2 attempts; last error: worker")


def test_reaper_requeues_then_fails(user, weak_pair, prompts_ds, settings):
    job = _job(user, weak_pair, prompts_ds, max_attempts=2)
    services.job_claim(job_id=job.pk, task_id="t1")
    assert services.jobs_reap_stale(send=False) == []  # fresh heartbeat: left alone
    old = timezone.now() - timedelta(seconds=settings.JOB_STALE_AFTER_SECONDS + 5)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=old)
    assert services.jobs_reap_stale(send=False) == [(job.pk, "requeued")]
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED and "heartbeat" in job.error
    services.job_claim(job_id=job.pk, task_id="t2")
    Job.objects.filter(pk=job.pk).update(heartbeat_at=old)
    assert services.jobs_reap_stale(send=False) == [(job.pk, "failed")]
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and job.error.startswith("gave up after 2 attempts")


@pytest.mark.django_db(transaction=True)
def test_event_seq_is_monotonic_under_concurrent_writers(user):
    job = Job.objects.create(owner=user, kind="cd_generate", config={})
    errors = []

    def write():
        from django.db import connection

        try:
            for i in range(15):
                services.event_append(job_id=job.pk, type="log", data={"i": i})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    seqs = list(JobEvent.objects.filter(job=job).values_list("seq", flat=True))
    assert seqs == list(range(1, 61))


# --- pairs -----------------------------------------------------------------------------------------------------
def test_pair_store_never_duplicates_and_export(user, weak_pair, prompts_ds):
    job = _job(user, weak_pair, prompts_ds)
    row = {"index": 0, "prompt": "p0", "response": "cd0", "plain": "pl0", "implicit_reward_mean": 0.5, "alpha": 0.4}
    _, created = services.pair_store(job_id=job.pk, row=row)
    _, again = services.pair_store(job_id=job.pk, row={**row, "response": "other"})
    assert created and not again
    services.pair_store(job_id=job.pk, row={"index": 1, "prompt": "p1", "response": "cd1", "plain": "pl1"})
    services.pair_store(job_id=job.pk, row={"index": 2, "prompt": "p2", "response": "cd2"})
    pairs = {p.prompt_index: p for p in GeneratedPair.objects.filter(job=job)}
    # Named numbers only: a row's mean is stored as the mean; no sum was given, so none is made up.
    assert pairs[0].chosen == "cd0" and pairs[0].implicit_reward_mean == 0.5 and pairs[0].implicit_reward_sum is None
    services.pair_review(pair=pairs[0], user=user, action="edit", edited_text="better")
    services.pair_review(pair=pairs[2], user=user, action="reject")
    import json

    # Reviewed: the edit is the chosen side, the rejected pair is out, the pending one too unless asked for; the
    # one-sided pair 2 (no plain, no rejected) is no preference data either way.
    rows = [json.loads(line) for line in services.pairs_export(job=job)]
    assert rows == [{"prompt": "p0", "chosen": "better", "rejected": "pl0"}]
    rows = [json.loads(line) for line in services.pairs_export(job=job, include_pending=True)]
    assert rows == [
        {"prompt": "p0", "chosen": "better", "rejected": "pl0"},
        {"prompt": "p1", "chosen": "cd1", "rejected": "pl1"},
    ]
    with pytest.raises(ValidationError):
        services.pair_review(pair=pairs[1], user=user, action="edit", edited_text=" ")


def test_pair_store_flags_empty_responses_and_export_leaves_them_out_unless_asked(user, weak_pair, prompts_ds):
    import json

    job = _job(user, weak_pair, prompts_ds)
    rows = [
        {"index": 0, "prompt": "p0", "response": "cd0", "plain": "pl0"},
        {"index": 1, "prompt": "p1", "response": "", "plain": "pl1"},  # CD stopped at once
        {"index": 2, "prompt": "p2", "response": " \n\t", "plain": "pl2"},  # whitespace only
        {"index": 3, "prompt": "p3", "response": "cd3", "plain": "  "},  # the side it is paired with is empty
        {"index": 4, "prompt": "p4", "response": "cd4", "rejected": "", "plain": "pl4"},  # rejected wins over plain
        {"index": 5, "prompt": "p5", "response": "cd5", "rejected": "r5"},
    ]
    for row in rows:
        services.pair_store(job_id=job.pk, row=row)
    flags = dict(GeneratedPair.objects.filter(job=job).values_list("prompt_index", "empty_response"))
    assert flags == {0: False, 1: True, 2: True, 3: True, 4: True, 5: False}

    def export(**kw):
        return [json.loads(line)["prompt"] for line in services.pairs_export(job=job, **kw)]

    assert export() == ["p0", "p5"]
    assert export(include_empty=True) == ["p0", "p1", "p2", "p3", "p4", "p5"]
    # A reviewer's edit gives an empty chosen text: the pair is exported again, still flagged as generated empty.
    services.pair_review(
        pair=GeneratedPair.objects.get(job=job, prompt_index=1), user=user, action="edit", edited_text="ok"
    )
    assert export(include_pending=True) == ["p0", "p1", "p5"]
    assert export() == ["p1"]  # once a pair is reviewed, the pending ones are left out unless asked for
    assert GeneratedPair.objects.get(job=job, prompt_index=1).empty_response is True


def test_toyworld_register_is_idempotent_and_shared(model_root, tmp_path, other_user):
    p = tmp_path / "train.jsonl"
    p.write_bytes(make_prompts(5))
    h = tmp_path / "heldout.jsonl"
    h.write_bytes(make_prompts(3, start=100))
    manifest = {
        "world": "review",
        "seed": 0,
        "size": "tiny",
        "gold": "toy:review",
        "models": {
            "weak_base": str(model_root / "weak_base"),
            "weak_aligned": str(model_root / "weak_aligned"),
            "strong_base": str(model_root / "other_vocab"),
        },
        "prompts": {"train": str(p), "heldout": str(h)},
    }
    first = services.toyworld_register(manifest=manifest)
    again = services.toyworld_register(manifest=manifest)
    assert {k: m.pk for k, m in first["models"].items()} == {k: m.pk for k, m in again["models"].items()}
    assert ModelEntry.objects.count() == 3 and Dataset.objects.count() == 2
    assert all(m.owner is None for m in ModelEntry.objects.all())
    assert first["datasets"]["train"].gold == "toy:review" and first["datasets"]["heldout"].row_count == 3
    # Anyone can build a ConG job from them; the held-out split is picked for evaluation.
    m = first["models"]
    job = services.job_create(
        user=other_user,
        kind="cong",
        weak_base=m["weak_base"].pk,
        weak_aligned=m["weak_aligned"].pk,
        strong=m["strong_base"].pk,
        prompts=first["datasets"]["train"].pk,
    )
    assert job.config["eval_prompts"]["id"] == first["datasets"]["heldout"].pk
    assert job.config["methods"] == ["cong_s", "cong"]


def test_toyworld_datasets_carry_the_worlds_settings_and_jobs_inherit_them(model_root, tmp_path, other_user):
    from ml.toyworld.worlds import get_world

    p = tmp_path / "train.jsonl"
    p.write_bytes(make_prompts(5))
    manifest = {
        "world": "review",
        "seed": 0,
        "size": "tiny",
        "gold": "toy:review",
        "generation": {"max_new_tokens": 17},
        "models": {
            "weak_base": str(model_root / "weak_base"),
            "weak_aligned": str(model_root / "weak_aligned"),
            "strong_base": str(model_root / "weak_base"),
        },
        "prompts": {"train": str(p)},
    }
    reg = services.toyworld_register(manifest=manifest)
    ds = reg["datasets"]["train"]
    recipe = get_world("review").recipe("tiny").stages
    assert ds.defaults["max_new_tokens"] == 17
    assert ds.defaults["sft"] == recipe["sft"] and ds.defaults["cd_generate"] == recipe["generate"]
    m = reg["models"]
    job = services.job_create(
        user=other_user,
        kind="cong",
        weak_base=m["weak_base"].pk,
        weak_aligned=m["weak_aligned"].pk,
        strong=m["strong_base"].pk,
        prompts=ds.pk,
        params={"max_new_tokens": 9, "batch_size": 1, "sft": {"learning_rate": 0.01}},
    )
    spec = job.config["spec"]
    gen, sft, dpo = spec["stages"]["cd_generate"], spec["stages"]["sft"], spec["stages"]["dpo"]
    assert recipe["generate"]["batch_size"] != 1
    assert gen["batch_size"] == 1  # the job's knob beats the dataset's per-stage recommendation
    assert spec["top"]["max_new_tokens"] == 9 and gen["max_new_tokens"] == 9  # the job's own value wins
    assert sft["learning_rate"] == 0.01  # ... key by key inside a stage's settings
    assert sft["num_train_epochs"] == recipe["sft"]["num_train_epochs"]  # the rest of the recommendation stays
    assert {k: dpo[k] for k in recipe["dpo"]} == recipe["dpo"]
    assert "wspo" not in spec["stages"]  # a recommendation for a stage this job does not run is left out
    assert job.config["params"] == {"max_new_tokens": 9, "batch_size": 1, "sft": {"learning_rate": 0.01}}


def test_preflight_job_validates_like_cd_generate_and_needs_a_gold(user, weak_pair, prompts_ds, model_root):
    gold_ds = services.dataset_create(name="g", chunks=[make_prompts(4)], gold="toy:review", owner=user)
    job = _job(user, weak_pair, gold_ds, kind="preflight", alpha=None, params={"n_samples": 2, "alphas": [0.0]})
    assert job.kind == Job.Kind.PREFLIGHT and job.config["weak_base"]["path"].endswith("weak_base")
    assert job.config["weak_aligned"]["path"].endswith("weak_aligned") and job.config["prompts"]["gold"] == "toy:review"
    before = _counts()
    with pytest.raises(ValidationError) as exc:  # a weak pair is needed, as for cd_generate
        _job(user, weak_pair, gold_ds, kind="preflight", weak_aligned=None)
    assert "weak_aligned" in exc.value.message_dict
    other = services.model_register(name="o", path=str(model_root / "other_vocab"), owner=user)
    with pytest.raises(ValidationError) as exc:  # ... from one vocabulary
        _job(user, weak_pair, gold_ds, kind="preflight", weak_aligned=other.pk)
    assert "vocabulary" in exc.value.message_dict["weak_aligned"][0]
    with pytest.raises(ValidationError) as exc:  # unlike cd_generate, it scores with the gold reward
        _job(user, weak_pair, prompts_ds, kind="preflight")
    assert "no gold reward" in exc.value.message_dict["prompts"][0]
    with pytest.raises(ValidationError) as exc:
        _job(user, weak_pair, gold_ds, kind="preflight", params={"n_samples": 0})
    assert "n_samples" in exc.value.message_dict["params.n_samples"][0]
    assert _counts() == (before[0], before[1], before[2] + 1, before[3])  # only the model "o" was added
