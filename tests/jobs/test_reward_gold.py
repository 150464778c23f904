"""Reward models as judges, through the app: POST /models/ with kind "reward" registers a one-label sequence
classifier (others are refused); gold "rm:<id>" works wherever a gold is named (a dataset's gold, a job's gold and
eval_gold) and is resolved at submit to the folder, re-checked when the job runs; a real worker scores an evaluate
job and labels a weak_align job with it; the mirror scores a CD job's pairs with it; a ConG job whose eval_gold
differs from its gold reports both, each having scored what it says."""

from __future__ import annotations

import io

import pytest
from django.conf import settings as dj
from rest_framework.test import APIClient

from jobs import services
from jobs.models import GeneratedPair, Job
from jobs.runner import run_job
from ml.gold import get_gold
from ml.io import SAMPLES, read_jsonl
from ml.judge.reward_model import CACHE_FILE

from ..ml._reward_fixtures import save_reward_model
from .conftest import WORDS, finished_job, make_prompts, tiny_cong_request, wait_for

# The judge's taste: a response ending in "great" beats one ending in "good", and so on down to "awful".
WORD_SCORES = {"great": 2.0, "good": 1.0, "bad": -1.0, "awful": -2.0}


@pytest.fixture(scope="module")
def rm_folders(tiny_model_root):
    """A reward model and a two-label classifier, under the test model root (the worker's MODEL_ROOTS too)."""
    return {
        "judge": save_reward_model(tiny_model_root / "rm_judge", WORDS, WORD_SCORES),
        "two": save_reward_model(tiny_model_root / "rm_two_labels", WORDS, WORD_SCORES, num_labels=2),
    }


def _api(user) -> APIClient:
    c = APIClient()
    c.force_authenticate(user)
    return c


def _register_rm(user, path, name="judge") -> int:
    res = _api(user).post("/api/v1/models/", {"name": name, "path": str(path), "kind": "reward"}, format="json")
    assert res.status_code == 201, res.json()
    assert res.json()["kind"] == "reward"
    return int(res.json()["id"])


def _no_broker(monkeypatch) -> None:
    monkeypatch.setattr(services.dispatch, "send", lambda job_id: None)


@pytest.mark.django_db
def test_reward_models_register_through_rest_and_other_folders_are_refused(model_root, user, rm_folders):
    _register_rm(user, rm_folders["judge"])
    c = _api(user)
    res = c.post("/api/v1/models/", {"name": "two", "path": str(rm_folders["two"]), "kind": "reward"}, format="json")
    assert res.status_code == 400 and "2 labels" in res.json()["path"][0] and "num_labels=1" in res.json()["path"][0]
    lm = {"name": "lm", "path": str(model_root / "weak_base"), "kind": "reward"}
    res = c.post("/api/v1/models/", lm, format="json")
    assert res.status_code == 400 and "not a sequence-classification model" in res.json()["path"][0]
    # The same causal LM registers as what it is.
    assert c.post("/api/v1/models/", {**lm, "kind": "weak"}, format="json").status_code == 201


@pytest.mark.django_db
def test_rm_gold_resolves_to_the_folder_at_submit_and_is_checked_for_the_owner(
    model_root, user, other_user, weak_pair, rm_folders, monkeypatch
):
    _no_broker(monkeypatch)
    wb, _ = weak_pair
    rm_id = _register_rm(user, rm_folders["judge"])
    c = _api(user)
    # A dataset names its gold rm:<id>; a job on it stores the folder for ml and the name for people.
    upload = {"name": "p", "gold": f"rm:{rm_id}", "file": io.BytesIO(make_prompts(3))}
    res = c.post("/api/v1/datasets/", upload, format="multipart")
    assert res.status_code == 201, res.json()
    ds = res.json()["id"]
    res = c.post("/api/v1/jobs/", {"kind": "evaluate", "strong": wb.pk, "prompts": ds}, format="json")
    assert res.status_code == 201, res.json()
    job = Job.objects.get(pk=res.json()["id"])
    config = job.config
    expected = {"name": f"rm:{rm_folders['judge'].resolve()}", "label": "rm:judge"}
    assert {k: config["gold"][k] for k in ("name", "label")} == expected and config["gold"]["model"]["id"] == rm_id
    assert config["eval_gold"] == config["gold"]  # eval_gold defaults to gold
    assert services.job_inputs(config, "/x").eval_gold == expected["name"]

    def refused(body: dict) -> dict:
        res = c.post("/api/v1/jobs/", body, format="json")
        assert res.status_code == 400, res.json()
        return res.json()

    evaluate = {"kind": "evaluate", "strong": wb.pk, "prompts": ds}
    assert "not a reward model" in refused({**evaluate, "gold": f"rm:{wb.pk}"})["gold"][0]
    assert "is a reward model" in refused({**evaluate, "strong": rm_id})["strong"][0]
    assert "rm:<model id>" in refused({**evaluate, "eval_gold": "rm:/etc/passwd"})["eval_gold"][0]
    assert "unknown gold" in refused({**evaluate, "eval_gold": "no:such"})["eval_gold"][0]
    weak_align = {"kind": "weak_align", "weak_base": wb.pk, "prompts": ds, "eval_gold": f"rm:{rm_id}"}
    assert "only used by the kinds that evaluate" in refused(weak_align)["eval_gold"][0]
    # Another user's reward model is not there for this user, named directly or through a dataset's gold.
    theirs = _register_rm(other_user, rm_folders["judge"], name="theirs")
    assert "no model with id" in refused({**evaluate, "gold": f"rm:{theirs}"})["gold"][0]
    shared = services.dataset_create(name="s", chunks=[make_prompts(2)], gold=f"rm:{theirs}", owner=other_user)
    shared.owner = None  # staff made it shared: its gold still names a model only its uploader may use
    shared.save()
    msg = refused({**evaluate, "prompts": shared.pk})["prompts"][0]
    assert "'s gold rm:" in msg and "no model with id" in msg

    # At run time the worker checks the reward model again, like every model the job names.
    services.job_check_access(job=job)
    from jobs.models import ModelEntry

    ModelEntry.objects.filter(pk=rm_id).update(path=str(model_root / "weak_base"))
    with pytest.raises(ValueError, match="gold: model 'judge' now points at another file"):
        services.job_check_access(job=job)


# What the judge says, here on the CPU in float32: a CUDA worker scores in bf16, a hundredth or so apart. The fixture's
# scores are far apart (0, +-2.8, +-3.6), so this tolerance still tells every score from every other.
TOLERANCE = 0.05


def _rm_scores(path, rows, response="response") -> list[float]:
    return get_gold(f"rm:{path}", device="cpu").score_many([(r["prompt"], r[response]) for r in rows])


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_reward_model_scores_an_evaluate_job_and_labels_weak_alignment_on_a_real_worker(
    shared_celery_worker, user, weak_pair, rm_folders
):
    wb, _ = weak_pair
    rm_id = _register_rm(user, rm_folders["judge"])
    ds = services.dataset_create(name="p", chunks=[make_prompts(4)], owner=user)  # no gold of its own
    c = _api(user)
    evaluate = {"kind": "evaluate", "strong": wb.pk, "prompts": ds.pk, "gold": f"rm:{rm_id}"}
    weak_align = {
        "kind": "weak_align",
        "weak_base": wb.pk,
        "prompts": ds.pk,
        "gold": f"rm:{rm_id}",
        "params": {"max_prompts": 4, "max_new_tokens": 4, "k": 4, "weak_align": {"max_steps": 1}},
    }
    ids = []
    for body in ({**evaluate, "params": {"max_new_tokens": 4, "n_samples": 2}}, weak_align):
        res = c.post("/api/v1/jobs/", body, format="json")
        assert res.status_code == 201, res.json()
        ids.append(res.json()["id"])
    jobs = [
        wait_for(lambda i=i: finished_job(i), 180, what=f"job {i}; worker log:\n{shared_celery_worker.tail()}")
        for i in ids
    ]
    for job in jobs:
        assert job.status == "succeeded", (job.error, shared_celery_worker.tail())
    ev, wa = jobs

    # evaluate: every sample scored by the reward model (what the judge says here, in the test), the results name it.
    samples = read_jsonl(dj.RUNS_DIR / str(ev.pk) / "evaluate" / SAMPLES)
    assert len(samples) == 8
    assert [s["gold"] for s in samples] == pytest.approx(_rm_scores(rm_folders["judge"], samples), abs=TOLERANCE)
    assert ev.results["gold_mean"] == pytest.approx(sum(s["gold"] for s in samples) / 8, abs=1e-6)
    assert ev.results["gold"] == ev.results["eval_gold"] == "rm:judge"
    assert len(read_jsonl(dj.RUNS_DIR / str(ev.pk) / "evaluate" / CACHE_FILE)) == len(
        {(s["prompt"], s["response"]) for s in samples}
    )

    # weak_align: best vs worst of the k samples by the reward model.
    prefs = read_jsonl(dj.RUNS_DIR / str(wa.pk) / "weak_align" / "preferences.jsonl")
    assert prefs, "the tiny model's samples all tied under the judge"
    assert [p["chosen_gold"] for p in prefs] == pytest.approx(
        _rm_scores(rm_folders["judge"], prefs, "chosen"), abs=TOLERANCE
    )
    assert [p["rejected_gold"] for p in prefs] == pytest.approx(
        _rm_scores(rm_folders["judge"], prefs, "rejected"), abs=TOLERANCE
    )
    assert all(p["chosen_gold"] > p["rejected_gold"] for p in prefs)
    assert wa.results["mean_chosen_gold"] > wa.results["mean_rejected_gold"]
    assert wa.results["gold"] == "rm:judge" and "eval_gold" not in wa.results


@pytest.mark.django_db
def test_a_cong_job_with_an_eval_gold_apart_from_its_gold_reports_both(user, weak_pair, rm_folders, monkeypatch):
    _no_broker(monkeypatch)
    rm_id = _register_rm(user, rm_folders["judge"])
    request = tiny_cong_request(user, weak_pair, ["cong_s"], evaluate={"n_samples": 2})
    job = services.job_create(user=user, eval_gold=f"rm:{rm_id}", **request)
    assert run_job(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    assert job.results["gold"] == "test:positive_words" and job.results["eval_gold"] == "rm:judge"
    assert job.results["config"]["eval_gold"] == f"rm:{rm_folders['judge'].resolve()}"
    # The evaluations were scored by the reward model ...
    samples = read_jsonl(dj.RUNS_DIR / str(job.pk) / "eval" / "cong_s" / SAMPLES)
    assert len(samples) == 4
    assert [s["gold"] for s in samples] == pytest.approx(_rm_scores(rm_folders["judge"], samples), abs=TOLERANCE)
    assert job.results["methods"]["cong_s"]["gold_mean"] == pytest.approx(sum(s["gold"] for s in samples) / 4)
    # ... and the pairs by the labelling gold.
    positive = get_gold("test:positive_words")
    pairs = list(GeneratedPair.objects.filter(job=job))
    assert len(pairs) == 3
    assert all(p.gold_reward == positive(p.prompt, p.chosen) for p in pairs)


@pytest.mark.django_db
def test_the_pairs_of_a_cd_job_are_scored_by_its_reward_model_gold(user, weak_pair, rm_folders, monkeypatch):
    """The worker's mirror scores the pairs with the job's gold, in batches: a reward model named on the job."""
    _no_broker(monkeypatch)
    rm_id = _register_rm(user, rm_folders["judge"])
    ds = services.dataset_create(name="p", chunks=[make_prompts(5)], gold="toy:review", owner=user)
    wb, wa = weak_pair
    job = services.job_create(
        user=user,
        kind="cd_generate",
        weak_base=wb.pk,
        weak_aligned=wa.pk,
        prompts=ds.pk,
        gold=f"rm:{rm_id}",  # the job's gold wins over its dataset's
        params={"max_new_tokens": 4, "plain": False},
    )
    assert run_job(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    pairs = list(GeneratedPair.objects.filter(job=job).order_by("prompt_index"))
    assert len(pairs) == 5 and job.results["pairs"]["score_errors"] == 0
    judged = _rm_scores(rm_folders["judge"], [{"prompt": p.prompt, "response": p.chosen} for p in pairs])
    assert [p.gold_reward for p in pairs] == pytest.approx(judged, abs=TOLERANCE)
    assert job.results["gold"] == "rm:judge" and "eval_gold" not in job.results
