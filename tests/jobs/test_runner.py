"""jobs.runner pieces that do not need a worker: the samples.jsonl -> GeneratedPair mirror."""

from __future__ import annotations

import json
import random

import pytest

from jobs.models import GeneratedPair
from jobs.runner import PairMirror
from ml.gold import get_gold

from .test_services import _job

pytestmark = pytest.mark.django_db



def test_mirror_scores_pairs_with_the_gold_reward_and_never_duplicates(user, weak_pair, prompts_ds, tmp_path):
    job = _job(user, weak_pair, prompts_ds)
    path = tmp_path / "samples.jsonl"
    from ml.toyworld.worlds import get_world

    world, rng = get_world("review"), random.Random(0)
    prompts = [world.sample_prompt(rng) for _ in range(3)]
    responses = [world.sample_response(p, rng) for p in prompts]
    responses[0] = "broken"  # scored too: gold penalises a broken template
    rows = [{"index": i, "sample": 0, "prompt": prompts[i], "response": responses[i],
             "implicit_reward_mean": 0.1 * i} for i in range(3)]
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
        assert p.implicit_reward == pytest.approx(r["implicit_reward_mean"])
    assert pairs[0].gold_reward != pairs[1].gold_reward  # a real score, not a constant
