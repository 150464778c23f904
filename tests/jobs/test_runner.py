"""jobs.runner pieces that do not need a worker: the samples.jsonl -> GeneratedPair mirror."""

from __future__ import annotations

import json
import random

import pytest

from jobs.models import GeneratedPair
from jobs.runner import PairMirror
from ml import diagnose
from ml.gold import get_gold

from .test_services import _job

pytestmark = pytest.mark.django_db


def _register_tiny_gold() -> None:
    """A gold reward for the tiny models' word list (the toy golds want their own prompt formats)."""
    from ml.gold import GoldReward, register

    def score(prompt: str, response: str) -> float:
        words = response.split()
        return float(words.count("good") + words.count("great") - words.count("bad") - words.count("awful"))

    register("test:positive_words", lambda: GoldReward(name="test:positive_words", score=score))


def test_mirror_scores_pairs_with_the_gold_reward_and_never_duplicates(user, weak_pair, prompts_ds, tmp_path):
    job = _job(user, weak_pair, prompts_ds)
    path = tmp_path / "samples.jsonl"
    from ml.toyworld.worlds import get_world

    world, rng = get_world("review"), random.Random(0)
    prompts = [world.sample_prompt(rng) for _ in range(3)]
    responses = [world.sample_response(p, rng) for p in prompts]
    responses[0] = "broken"  # scored too: gold penalises a broken template
    # The implicit reward as ml.stages.generate writes it: the sum over tokens, the mean per token, the count.
    rows = [
        {
            "index": i,
            "sample": 0,
            "prompt": prompts[i],
            "response": responses[i],
            "n_tokens": 4 + i,
            "implicit_reward_sum": 0.1 * i * (4 + i),
            "implicit_reward_mean": 0.1 * i,
        }
        for i in range(3)
    ]
    gold = get_gold("toy:review")
    mirror = PairMirror(job.pk, path, gold="toy:review")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]) + '{"index": 2, "torn')  # torn tail
    assert mirror.sync() == 2
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # the stage rewrites the file at the end
    assert mirror.sync() == 1
    assert PairMirror(job.pk, path, gold="toy:review").sync() == 0  # a restarted worker adds nothing
    pairs = list(GeneratedPair.objects.filter(job=job).order_by("prompt_index"))
    assert [p.prompt_index for p in pairs] == [0, 1, 2]
    for p, r in zip(pairs, rows):
        assert p.gold_reward == pytest.approx(gold(r["prompt"], r["response"]))
        assert p.implicit_reward_sum == pytest.approx(r["implicit_reward_sum"])
        assert p.implicit_reward_mean == pytest.approx(r["implicit_reward_mean"])
        assert p.n_tokens == r["n_tokens"] and p.empty_response is False
    assert pairs[0].gold_reward != pairs[1].gold_reward  # a real score, not a constant


def test_mirror_flags_empty_responses(user, weak_pair, prompts_ds, tmp_path):
    """A response with nothing but whitespace (CD stopped at once) is stored, flagged as empty; others are not."""
    job = _job(user, weak_pair, prompts_ds)
    path = tmp_path / "samples.jsonl"
    texts = ["good film", "", "  \n", "ok"]
    path.write_text(
        "".join(json.dumps({"index": i, "sample": 0, "prompt": "p", "response": t}) + "\n" for i, t in enumerate(texts))
    )
    assert PairMirror(job.pk, path).sync() == 4
    pairs = GeneratedPair.objects.filter(job=job).order_by("prompt_index")
    assert [(p.chosen, p.empty_response) for p in pairs] == [(t, not t.strip()) for t in texts]


def test_preflight_runner_stores_the_verdict_in_results(user, weak_pair, model_root):
    """The whole run_job path in-process (claim, runner, finish) on the tiny weak pair with a toy gold."""
    from jobs import services
    from jobs.models import Job
    from jobs.runner import run_job

    from .conftest import make_prompts

    _register_tiny_gold()
    ds = services.dataset_create(name="held", chunks=[make_prompts(3)], gold="test:positive_words", owner=user)
    wb, wa = weak_pair
    job = services.job_create(
        user=user,
        kind="preflight",
        weak_base=wb.pk,
        weak_aligned=wa.pk,
        prompts=ds.pk,
        params={"max_new_tokens": 4, "n_samples": 1, "alphas": [0.0], "max_prompts": 2},
    )
    outcome = run_job(job_id=job.pk)
    job.refresh_from_db()
    assert outcome == "succeeded", job.error
    assert job.status == Job.Status.SUCCEEDED
    r = job.results
    # Which verdict comes out depends on what the tiny models sample; it must follow from the numbers stored
    # beside it, as ml.diagnose decides: the gain of CD at the decision alpha over plain pi_post, and its
    # 95% interval (above zero: raises; below zero: lowers; else no_gain).
    cd = {c["alpha"]: c for c in r["sweep"]["cd"]}[r["decision_alpha"]]
    assert r["decision_alpha"] == 0.4
    assert r["gold_gain"] == pytest.approx(cd["gold_mean"] - r["sweep"]["plain_post"]["gold_mean"])
    lo, hi = r["gold_gain_ci"]
    assert lo <= r["gold_gain"] <= hi
    expected = "raises" if lo > 0 else "lowers" if hi < 0 else "no_gain"
    assert r["verdict"] == expected, (r["verdict"], r["gold_gain_ci"])
    prefix = {
        "raises": "CD raises gold reward here",
        "lowers": "CD does not raise gold reward here; it lowers it",
        "no_gain": "CD does not raise gold reward here:",
    }
    assert r["message"].startswith(prefix[expected]), r["message"]
    # and the stored verdict is the one ml.diagnose gives for the stored sweep, message and all
    again = diagnose.verdict(r["sweep"], r["decision_alpha"])
    assert (r["verdict"], r["message"]) == (again["verdict"], again["message"])
    assert r["gold_gain_ci"] == pytest.approx(again["gold_gain_ci"])
    assert r["gold"] == "test:positive_words" and r["n_prompts"] == 2
    assert [c["alpha"] for c in r["sweep"]["cd"]] == [0.0, 0.4, 1.0] and r["sweep"]["plain_post"]["n"] == 2
    assert any("pre-flight verdict" in str(e.data) for e in job.events.filter(type="log"))
