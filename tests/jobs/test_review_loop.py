"""The review loop closed: a train job's pairs_from trains on its source jobs' pairs as reviewed (rejected ones
skipped, edits used, pending ones by the rule), and its rows are exactly the sources' exports."""

from __future__ import annotations

import json

import pytest
from django.conf import settings as dj
from django.core.exceptions import ValidationError
from rest_framework.test import APIClient

from jobs import services
from jobs.models import GeneratedPair, Job
from jobs.runner import run_job
from ml.io import read_jsonl
from ml.results import method_rows

from .conftest import make_prompts
from .test_runner import _register_tiny_gold

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch):
    monkeypatch.setattr(services.dispatch, "send", lambda job_id: None)


def _client(user) -> APIClient:
    c = APIClient()
    c.force_authenticate(user)
    return c


def _source(user, n: int = 4) -> Job:
    """A finished CD job with n two-sided pairs (stored as the worker's mirror stores them)."""
    job = Job.objects.create(owner=user, kind="cd_generate", status="succeeded", config={})
    for i in range(n):
        services.pair_store(job_id=job.pk, row={"index": i, "prompt": f"tell me {i}", "response": f"good film {i}"})
        services.pair_side_store(job_id=job.pk, prompt_index=i, side="plain", text=f"bad film {i}")
    return job


def _review(user, job: Job, actions: dict[int, tuple[str, str]]) -> None:
    for i, (action, text) in actions.items():
        pair = GeneratedPair.objects.get(job=job, prompt_index=i)
        services.pair_review(pair=pair, user=user, action=action, edited_text=text)


def _export(user, job: Job, query: str = "") -> list[dict]:
    res = _client(user).get(f"/api/v1/jobs/{job.pk}/pairs/export/{query}")
    assert res.status_code == 200, res.content
    return [json.loads(line) for line in b"".join(res.streaming_content).splitlines()]


def _train(user, weak_pair, pairs_from, **extra) -> Job:
    _register_tiny_gold()
    ds = services.dataset_create(name="eval", chunks=[make_prompts(2)], gold="test:positive_words", owner=user)
    wb, wa = weak_pair
    return services.job_create(
        user=user,
        kind="train",
        method=extra.pop("method", "dpo"),
        weak_base=wb.pk,
        weak_aligned=wa.pk,
        strong=wb.pk,
        prompts=ds.pk,
        pairs_from=pairs_from,
        params={"max_new_tokens": 3, "train_max_steps": 1, "max_eval_prompts": 1},
        **extra,
    )


def test_a_train_job_trains_on_exactly_the_reviewed_pairs_and_they_equal_the_export(user, weak_pair):
    src = _source(user)
    _review(user, src, {0: ("reject", ""), 1: ("edit", "a great film, edited"), 2: ("approve", "")})  # 3 pending
    expected = _export(user, src)
    # Reviewed, so the pending pair is left out: the edited and the approved one remain, the edit as chosen.
    assert [r["chosen"] for r in expected] == ["a great film, edited", "good film 2"]
    assert [r["rejected"] for r in expected] == ["bad film 1", "bad film 2"]

    job = _train(user, weak_pair, [src.pk])
    assert job.config["pairs_from"] == {"jobs": [{"id": src.pk, "kind": "cd_generate"}], "include_pending": None}
    assert run_job(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    run = dj.RUNS_DIR / str(job.pk)
    assert read_jsonl(run / "reviewed_pairs.jsonl") == expected  # the training rows are the export
    assert job.results["train_examples"] == 2
    review = job.results["review"][str(src.pk)]
    assert (review["approved"], review["edited"], review["rejected"], review["pending"]) == (1, 1, 1, 1)
    assert review["pending_included"] is False
    # SFT on the chosen side, then DPO on the pairs: both stages saw the two rows, and nothing was generated.
    assert json.loads((run / "sft_cong_s" / "DONE.json").read_text())["n_examples"] == 2
    assert json.loads((run / "dpo_cong" / "DONE.json").read_text())["n_pairs"] == 2
    assert not (run / "cd_generate").exists() and not (run / "plain_generate").exists()
    assert [r.method for r in method_rows("train", job.results)] == ["ConG"]


def test_include_pending_brings_the_unreviewed_pairs_back(user, weak_pair):
    src = _source(user, n=3)
    _review(user, src, {0: ("reject", "")})
    assert [r["prompt"] for r in _export(user, src)] == []  # reviewed: pending ones are out by default
    assert [r["prompt"] for r in _export(user, src, "?include_pending=1")] == ["tell me 1", "tell me 2"]
    job = _train(user, weak_pair, [src.pk], method="sft", include_pending=True)
    assert run_job(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    assert job.results["train_examples"] == 2 and job.results["review"][str(src.pk)]["pending_included"] is True


def test_an_unreviewed_job_trains_on_all_its_pairs_and_two_sources_concatenate(user, weak_pair):
    a, b = _source(user, n=2), _source(user, n=3)
    job = _train(user, weak_pair, [a.pk, b.pk], method="sft")
    assert run_job(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    assert job.results["train_examples"] == 5
    rows = read_jsonl(dj.RUNS_DIR / str(job.pk) / "reviewed_pairs.jsonl")
    assert rows == _export(user, a) + _export(user, b)


@pytest.mark.parametrize(
    ("change", "key", "needle"),
    [
        ({"method": "weak_sft"}, "method", "takes method sft or dpo"),
        ({"include_pending": "yes"}, "include_pending", "true, false or absent"),
    ],
)
def test_bad_pairs_from_requests_name_what_to_change(user, weak_pair, change, key, needle):
    src = _source(user, n=1)
    with pytest.raises(ValidationError) as exc:
        _train(user, weak_pair, [src.pk], **change)
    assert needle in " ".join(exc.value.message_dict[key])


def test_pairs_from_names_only_your_jobs_with_pairs_and_only_for_train(user, other_user, weak_pair, prompts_ds):
    mine, theirs = _source(user, n=1), _source(other_user, n=1)
    empty = Job.objects.create(owner=user, kind="cd_generate", status="succeeded", config={})
    with pytest.raises(ValidationError) as exc:
        _train(user, weak_pair, [theirs.pk, empty.pk, 10**6])
    msg = " ".join(exc.value.message_dict["pairs_from"])
    assert f"job {theirs.pk} does not exist or is not yours" in msg
    assert f"job {empty.pk} (cd_generate) has no generated pairs" in msg and "job 1000000 does not exist" in msg
    wb, wa = weak_pair
    res = _client(user).post(
        "/api/v1/jobs/",
        {"kind": "cd_generate", "weak_base": wb.pk, "weak_aligned": wa.pk, "prompts": prompts_ds.pk,
         "pairs_from": [mine.pk]},
        format="json",
    )  # fmt: skip
    assert res.status_code == 400 and "only used by kind=train" in res.json()["pairs_from"][0]
    res = _client(user).post(
        "/api/v1/jobs/", {"kind": "train", "method": "sft", "pairs_from": ["x"]}, format="json"
    )  # the type is the serializer's: a 400 on the key, not a 500
    assert res.status_code == 400 and "pairs_from" in res.json()
