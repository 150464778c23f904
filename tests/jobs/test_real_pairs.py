"""Every generated pair shows both sides: a CD job's pairs carry a plain pi_post sample for the same prompt, a ConG
job's pairs are the DPO pairs as trained (CD chosen, the strong model's own sample rejected) plus plain pi_post, and
the export is TRL preference data (the DPO stage, through TRL, trains on it)."""

from __future__ import annotations

import json

import pytest
from django.conf import settings as dj
from rest_framework.test import APIClient

from jobs import services
from jobs.models import GeneratedPair, Job
from jobs.runner import run_job
from ml.io import SAMPLES, read_jsonl

from .conftest import make_prompts, tiny_cong_request
from .test_runner import _register_tiny_gold

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch):
    monkeypatch.setattr(services.dispatch, "send", lambda job_id: None)


def _export(user, job: Job) -> list[dict]:
    c = APIClient()
    c.force_authenticate(user)
    res = c.get(f"/api/v1/jobs/{job.pk}/pairs/export/")
    assert res.status_code == 200
    return [json.loads(line) for line in b"".join(res.streaming_content).splitlines()]


def _responses(job: Job, stage: str) -> dict[int, str]:
    rows = read_jsonl(dj.RUNS_DIR / str(job.pk) / stage / SAMPLES)
    return {r["index"]: r["response"] for r in rows if r.get("sample", 0) == 0}


def _cd_job(user, weak_pair, **params) -> Job:
    _register_tiny_gold()
    ds = services.dataset_create(name="p", chunks=[make_prompts(3)], gold="test:positive_words", owner=user)
    wb, wa = weak_pair
    job = services.job_create(
        user=user,
        kind="cd_generate",
        weak_base=wb.pk,
        weak_aligned=wa.pk,
        prompts=ds.pk,
        params={"max_new_tokens": 4, "do_sample": True, **params},
    )
    assert run_job(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    return job


def test_a_cd_job_pairs_cd_with_a_plain_sample_and_exports_trl_preference_data(user, weak_pair, tmp_path):
    job = _cd_job(user, weak_pair)
    plain, cd = _responses(job, "plain_generate"), _responses(job, "cd_generate")
    pairs = list(GeneratedPair.objects.filter(job=job).order_by("prompt_index"))
    assert len(pairs) == 3 and job.results["pairs"]["with_plain"] == 3
    for p in pairs:
        assert p.chosen == cd[p.prompt_index] and p.plain == plain[p.prompt_index] and p.rejected is None
    assert job.results["plain"]["n"] == 3  # the plain stage's summary rides along with CD's

    rows = _export(user, job)
    assert [sorted(r) for r in rows] == [["chosen", "prompt", "rejected"]] * len(rows)
    assert {(r["chosen"], r["rejected"]) for r in rows} <= {(p.chosen, p.plain) for p in pairs}
    assert len(rows) == sum(not p.empty_response for p in pairs)
    if not rows:  # the tiny models can sample only empty answers: nothing to train on, but nothing to check either
        pytest.skip("every sampled response was empty")

    # TRL preference data: the DPO stage (TRL's DPOTrainer) trains a step on the export as it is.
    from ml.stages.dpo import DPOStageConfig, dpo

    data = tmp_path / "export.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    wb, _ = weak_pair
    done = dpo(
        DPOStageConfig(
            model=wb.path,
            output_dir=str(tmp_path / "dpo"),
            data=str(data),
            max_steps=1,
            per_device_train_batch_size=1,
            use_chat_template=False,
        )
    )
    assert done["n_pairs"] == len(rows)


def test_plain_false_makes_no_plain_side_and_nothing_to_export(user, weak_pair):
    job = _cd_job(user, weak_pair, plain=False)
    assert not (dj.RUNS_DIR / str(job.pk) / "plain_generate").exists()
    assert job.results["pairs"] == {"stored": 3, "score_errors": 0, "with_plain": 0, "with_rejected": 0}
    assert _export(user, job) == []  # one-sided pairs are no preference data


def test_a_cong_job_stores_the_dpo_pairs_as_trained(user, weak_pair):
    """chosen = the CD sample, rejected = ConG-S's own sample for the same prompt (what dpo_cong trained on), plain
    = the plain pi_post sample; the export's rejected side is the DPO one."""
    job = services.job_create(user=user, **tiny_cong_request(user, weak_pair, ["cong"], max_eval_prompts=1))
    assert run_job(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    own, plain, cd = (_responses(job, s) for s in ("self_sample", "plain_generate", "cd_generate"))
    pairs = list(GeneratedPair.objects.filter(job=job).order_by("prompt_index"))
    assert len(pairs) == 3
    assert job.results["pairs"]["with_rejected"] == job.results["pairs"]["with_plain"] == 3
    for p in pairs:
        assert (p.chosen, p.rejected, p.plain) == (cd[p.prompt_index], own[p.prompt_index], plain[p.prompt_index])
    trained = read_jsonl(dj.RUNS_DIR / str(job.pk) / "dpo_cong" / "pairs.jsonl")
    exported = _export(user, job)
    assert {(r["chosen"], r["rejected"]) for r in exported} <= {(r["chosen"], r["rejected"]) for r in trained}


@pytest.mark.django_db(transaction=True)  # the ASGI handler runs the view in another thread
def test_under_asgi_the_export_is_sent_page_by_page_with_the_same_bytes(user, monkeypatch):
    """Through Django's ASGI handler (what the web processes serve) the export goes out a page of pairs at a time,
    where a synchronous iterator would be read into one list first; the bytes equal the synchronous path's."""
    from asgiref.sync import async_to_sync
    from asgiref.testing import ApplicationCommunicator
    from django.core.handlers.asgi import ASGIHandler
    from rest_framework.authtoken.models import Token

    from jobs.services import pairs as pair_services

    monkeypatch.setattr(pair_services, "EXPORT_PAGE", 2)
    job = Job.objects.create(owner=user, kind="cd_generate", status="succeeded", config={})
    for i in range(7):
        services.pair_store(job_id=job.pk, row={"index": i, "prompt": f"p{i}", "response": f"good {i}"})
        services.pair_side_store(job_id=job.pk, prompt_index=i, side="plain", text=f"plain {i}")
    services.pair_review(pair=GeneratedPair.objects.get(job=job, prompt_index=3), user=user, action="reject")
    want = b"".join(s.encode() for s in services.pairs_export(job=job, include_pending=True))
    token = Token.objects.create(user=user)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/api/v1/jobs/{job.pk}/pairs/export/",
        "query_string": b"include_pending=1",
        "headers": [(b"host", b"testserver"), (b"authorization", f"Token {token.key}".encode())],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 5000),
    }

    async def go() -> tuple[int, list[bytes]]:
        comm = ApplicationCommunicator(ASGIHandler(), scope)
        await comm.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await comm.receive_output(timeout=30)
        parts = []
        while True:
            msg = await comm.receive_output(timeout=30)
            parts.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        await comm.wait(timeout=30)
        return start["status"], parts

    status, parts = async_to_sync(go)()
    assert status == 200 and b"".join(parts) == want and want.count(b"\n") == 6
    assert len([p for p in parts if p]) >= 3  # four pages of two pairs: sent as they were read
