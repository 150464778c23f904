"""A pair's implicit reward is two named numbers, and empty responses are flagged and kept out of the export.

- The pairs API returns ``implicit_reward_sum`` (the implicit reward of docs/METHOD.md: log pi_post - log pi_pre
  summed over the response tokens), ``implicit_reward_mean`` (per token) and ``n_tokens`` for a pair made by
  real contrastive decoding, and the sum is what teacher-forced scoring of that response gives.
- The export leaves pairs with an empty response out unless ``?include_empty=1``.
- Migration 0011 keeps a stored ``implicit_reward`` as the mean (the number it was), leaves the sum unknown, and
  flags stored empty responses.
"""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from rest_framework.test import APIClient

from jobs import services
from jobs.models import GeneratedPair, Job
from jobs.runner import PairMirror

pytestmark = pytest.mark.django_db


def _client(user) -> APIClient:
    c = APIClient()
    c.force_authenticate(user)
    return c


def test_pairs_api_gives_the_sum_and_the_mean_of_a_real_cd_pair(user, weak_pair, model_root, tmp_path):
    from ml.contrastive import encode_prompt
    from ml.io import read_jsonl, write_jsonl
    from ml.modeling import load_causal_lm, load_tokenizer
    from ml.scoring import implicit_rewards_from_ids
    from ml.stages.generate import CDGenerateConfig, cd_generate

    wb, wa = weak_pair
    prompts = ["the movie was", "the film is"]
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in prompts])
    # ignore_eos: every response is 6 tokens long, so a sum and a mean can never be mistaken for each other.
    cd = {"alpha": 0.4, "max_new_tokens": 6, "ignore_eos": True, "use_chat_template": False, "do_sample": False}
    cfg = CDGenerateConfig(
        aligned=wa.path, base=wb.path, prompts=str(tmp_path / "p.jsonl"), output_dir=str(tmp_path / "cd"), cd=cd
    )
    cd_generate(cfg)
    job = Job.objects.create(owner=user, kind="cd_generate", status="succeeded", config={})
    assert PairMirror(job.pk, tmp_path / "cd" / "samples.jsonl").sync() == 2

    # The reward, independently: teacher-forced log pi_post - log pi_pre of each generated response.
    tok = load_tokenizer(wa.path)
    rows = read_jsonl(tmp_path / "cd" / "samples.jsonl")
    scored = implicit_rewards_from_ids(
        aligned=load_causal_lm(wa.path, device="cpu"),
        base=load_causal_lm(wb.path, device="cpu"),
        pairs=[(encode_prompt(tok, r["prompt"], use_chat_template=False), r["token_ids"]) for r in rows],
    )
    got = _client(user).get(f"/api/v1/jobs/{job.pk}/pairs/").json()["results"]
    assert [p["prompt"] for p in got] == prompts
    for pair, s in zip(got, scored):
        assert pair["n_tokens"] == s["n_tokens"] == 6
        assert pair["implicit_reward_sum"] == pytest.approx(s["sum"], abs=1e-3)
        assert pair["implicit_reward_mean"] == pytest.approx(s["sum"] / 6, abs=1e-3)
        assert pair["empty_response"] is False
        assert "implicit_reward" not in pair  # the ambiguous name is gone
    assert abs(got[0]["implicit_reward_sum"] - got[0]["implicit_reward_mean"]) > 1e-6  # they are two numbers


def test_export_leaves_empty_responses_out_unless_asked(user, other_user):
    job = Job.objects.create(owner=user, kind="cd_generate", status="succeeded", config={})
    for i, text in enumerate(["good film", "", "  \n", "fine acting"]):
        services.pair_store(job_id=job.pk, row={"index": i, "prompt": f"p{i}", "response": text})
        assert services.pair_side_store(job_id=job.pk, prompt_index=i, side="plain", text=f"plain {i}")
    # One-sided: no plain sample was made for it, so it is no preference data and never exported.
    services.pair_store(job_id=job.pk, row={"index": 4, "prompt": "p4", "response": "alone"})
    c = _client(user)
    listed = c.get(f"/api/v1/jobs/{job.pk}/pairs/").json()["results"]
    assert [p["empty_response"] for p in listed] == [False, True, True, False, False]

    def export(query: str = "") -> list[str]:
        res = c.get(f"/api/v1/jobs/{job.pk}/pairs/export/{query}")
        assert res.status_code == 200, res.content
        return [json.loads(line)["prompt"] for line in b"".join(res.streaming_content).splitlines()]

    assert export() == ["p0", "p3"]
    assert export("?include_empty=0") == ["p0", "p3"]
    assert export("?include_empty=1") == ["p0", "p1", "p2", "p3"]
    assert export("?include_empty=true") == ["p0", "p1", "p2", "p3"]
    res = c.get(f"/api/v1/jobs/{job.pk}/pairs/export/?include_empty=maybe")
    assert res.status_code == 400 and list(res.json()) == ["include_empty"]
    # Someone else's job stays a 404, opt-in or not.
    assert _client(other_user).get(f"/api/v1/jobs/{job.pk}/pairs/export/?include_empty=1").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_migration_0011_keeps_stored_rewards_as_the_mean_and_flags_empty_responses():
    before, after = ("jobs", "0010_job_send_pending"), ("jobs", "0011_pair_implicit_reward_sum_mean_empty")
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate([before])
    old = executor.loader.project_state([before]).apps
    owner = old.get_model("auth", "User").objects.create(username="old")
    job = old.get_model("jobs", "Job").objects.create(owner=owner, kind="cd_generate", config={})
    pair = old.get_model("jobs", "GeneratedPair")
    for i, (chosen, reward, rejected, plain) in enumerate(
        [("good film", 0.25, None, None), (" \n", -0.5, None, None), ("fine", None, None, ""), ("ok", 1.5, "r", "")]
    ):
        pair.objects.create(
            job=job, prompt_index=i, prompt="p", chosen=chosen, implicit_reward=reward, rejected=rejected, plain=plain
        )
    try:
        executor = MigrationExecutor(connection)
        executor.migrate([after])
        new = executor.loader.project_state([after]).apps.get_model("jobs", "GeneratedPair")
        rows = list(
            new.objects.order_by("prompt_index").values_list(
                "implicit_reward_mean", "implicit_reward_sum", "n_tokens", "empty_response"
            )
        )
        # Means stay means; no sum or token count is made up; chosen empty, or the side it is exported with
        # (rejected when there is one, else plain) empty, flags the pair.
        assert rows == [
            (0.25, None, None, False),
            (-0.5, None, None, True),
            (None, None, None, True),
            (1.5, None, None, False),
        ]
    finally:
        MigrationExecutor(connection).migrate(latest)


def test_a_later_stage_fills_a_side_of_many_pairs_in_two_queries(user, django_assert_num_queries):
    """The mirror fills the plain / rejected side of every row a sync reads at once: one select and one bulk
    update, however many rows (it was two queries per row)."""
    job = Job.objects.create(owner=user, kind="cong", status="running", config={})
    for i in range(30):
        services.pair_store(job_id=job.pk, row={"index": i, "prompt": f"p{i}", "response": f"cd {i}"})
    texts = {i: ("" if i == 3 else f"self {i}") for i in range(35)}  # 30..34 have no pair: skipped and not counted
    with django_assert_num_queries(2):
        assert services.pair_sides_store(job_id=job.pk, side="rejected", texts=texts) == 30
    pairs = {p.prompt_index: p for p in GeneratedPair.objects.filter(job=job)}
    assert pairs[7].rejected == "self 7" and pairs[7].plain is None and not pairs[7].empty_response
    assert pairs[3].rejected == "" and pairs[3].empty_response  # the side the export pairs with is empty
    with pytest.raises(ValueError, match="plain or rejected"):
        services.pair_sides_store(job_id=job.pk, side="chosen", texts={0: "x"})
