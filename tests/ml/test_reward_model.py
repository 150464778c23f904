"""Reward-model golds (ml.judge.reward_model): ``rm:<folder>`` works wherever a gold is named; scores are batched
(equal to one by one), cached in the process and in the stage's file (a resumed stage scores nothing again); a folder
that is not a one-label sequence classifier is refused before anything loads; trust_remote_code is never set; the
evaluate and weak_align stages score with it (weak alignment: best vs worst by the reward model)."""

from __future__ import annotations

import json

import pytest

from ml.gold import RM_PREFIX, get_gold, release_gold_models, resolve_gold
from ml.io import read_jsonl, write_jsonl
from ml.judge import reward_model
from ml.judge.reward_model import CACHE_FILE, check_reward_folder

from ._reward_fixtures import save_reward_model
from .conftest import TINY_WORDS

CPU = "cpu"  # float32 everywhere, so batched and one-by-one scores agree to float error (CUDA would run bf16)
SCORES = {"good": 1.0, "happy": 2.0, "bad": -1.0, "sad": -2.0}
PAIRS = [
    ("tell me about the dog", "it was very happy"),
    ("tell me about the dog", "it was good"),
    ("the cat", "sad"),
    ("one two", "three"),
    ("the cat", "it was bad"),
    ("tell me about the dog", "it was good"),  # a repeat: scored once
]


@pytest.fixture(scope="module")
def rm_path(tmp_path_factory):
    return save_reward_model(tmp_path_factory.mktemp("rm") / "rm", TINY_WORDS, SCORES)


@pytest.fixture(autouse=True)
def _fresh_process_cache():
    """Each test starts as a new process would: no model loaded, no score remembered."""
    release_gold_models()
    reward_model._scores.clear()
    yield
    release_gold_models()
    reward_model._scores.clear()


def test_batched_scores_equal_one_by_one_and_follow_the_model(rm_path):
    gold = get_gold(f"{RM_PREFIX}{rm_path}", batch_size=4, device=CPU)
    assert gold.name == f"rm:{rm_path.resolve()}" and gold.batch is not None
    batched = gold.score_many(PAIRS)
    reward_model._scores.clear()  # nothing remembered: each pair through the model on its own
    one_by_one = [get_gold(f"rm:{rm_path}", batch_size=1, device=CPU)(p, r) for p, r in PAIRS]
    assert batched == pytest.approx(one_by_one, abs=1e-5)
    # The head reads the response's last word: happy > good > three (no score) > bad > sad.
    happy, good, sad, three, bad, _ = batched
    assert happy > good > three > bad > sad
    assert three == pytest.approx(0.0, abs=1e-6)
    # The same judge as ml.scoring's RewardModelJudge, directly.
    from ml.scoring import RewardModelJudge

    direct = RewardModelJudge(rm_path, device=CPU).score_batch([p for p, _ in PAIRS], [r for _, r in PAIRS])
    assert batched == pytest.approx(direct, abs=1e-5)


def test_scores_are_cached_in_the_process_and_in_the_stage_file(rm_path, tmp_path):
    cache = tmp_path / CACHE_FILE
    first = resolve_gold(f"rm:{rm_path}", device=CPU, batch_size=2, cache_file=cache)
    scores = first.score_many(PAIRS)
    scorer = first.score
    assert scorer.computed == 5  # 6 pairs, one repeated
    rows = read_jsonl(cache)
    assert [(r["prompt"], r["response"]) for r in rows] == list(dict.fromkeys(PAIRS))
    assert [r["score"] for r in rows] == pytest.approx(scores[:5])

    again = resolve_gold(f"rm:{rm_path}", device=CPU, batch_size=2)  # same process: the LRU answers
    assert again.score_many(PAIRS) == scores and again.score.computed == 0

    # A new process (nothing loaded, nothing remembered) resuming the stage reads its file back: nothing rescored.
    release_gold_models()
    reward_model._scores.clear()
    resumed = resolve_gold(f"rm:{rm_path}", device=CPU, batch_size=2, cache_file=cache)
    assert resumed.score_many(PAIRS) == scores and resumed.score.computed == 0
    assert not reward_model._loaded  # and the model was never even loaded
    # A new pair is scored (and appended); a torn last line from a kill mid-write is dropped, not fatal.
    with cache.open("a") as fh:
        fh.write('{"gold": "rm:x", "prompt": "tor')
    reward_model._scores.clear()
    more = resolve_gold(f"rm:{rm_path}", device=CPU, batch_size=2, cache_file=cache)
    assert more.score_many([("the", "happy")])[0] == pytest.approx(scores[0], abs=1e-5)
    assert more.score.computed == 1 and len(read_jsonl(cache)) == 6


def test_folders_that_are_not_one_label_classifiers_are_refused_before_loading(rm_path, tmp_path):
    assert check_reward_folder(rm_path) is None
    two = save_reward_model(tmp_path / "two", TINY_WORDS, SCORES, num_labels=2)
    assert "2 labels" in check_reward_folder(two) and "num_labels=1" in check_reward_folder(two)
    with pytest.raises(ValueError, match="num_labels=1"):
        get_gold(f"rm:{two}")
    from ml.tiny import tiny_gpt2, word_tokenizer

    lm = tmp_path / "lm"
    tiny_gpt2(len(word_tokenizer(TINY_WORDS)), n_layer=1, n_embd=8, n_head=1).save_pretrained(str(lm))
    assert "not a sequence-classification model" in check_reward_folder(lm)
    assert "no config.json" in check_reward_folder(tmp_path / "missing")
    # A model type only custom code knows is refused (its code is never run).
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "config.json").write_text(
        json.dumps({"model_type": "my_remote_rm", "architectures": ["MyRemoteForSequenceClassification"]})
    )
    assert "could not read the model config" in check_reward_folder(custom)
    assert not reward_model._loaded


def test_trust_remote_code_is_never_set(rm_path, monkeypatch):
    """Every loader the reward model goes through is called with trust_remote_code=False (the real loaders run)."""
    import transformers

    seen: list[tuple[str, object]] = []
    for cls in ("AutoConfig", "AutoTokenizer", "AutoModelForSequenceClassification"):
        real = getattr(transformers, cls).from_pretrained

        def spy(*args, _real=real, _cls=cls, **kwargs):
            seen.append((_cls, kwargs.get("trust_remote_code", "unset")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", spy)
    get_gold(f"rm:{rm_path}")("the", "happy")
    assert {c for c, _ in seen} == {"AutoConfig", "AutoTokenizer", "AutoModelForSequenceClassification"}
    assert all(flag is False for _, flag in seen), seen


def test_evaluate_stage_scores_with_the_reward_model(rm_path, tmp_path):
    from ml.stages.evaluate import EvaluateConfig, evaluate

    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, [{"index": i, "prompt": p, "response": r} for i, (p, r) in enumerate(PAIRS[:5])])
    cfg = EvaluateConfig(output_dir=str(tmp_path / "eval"), gold=f"rm:{rm_path}", samples=str(samples), device=CPU)
    out = evaluate(cfg)
    expected = get_gold(f"rm:{rm_path}", device=CPU).score_many(PAIRS[:5])
    assert [r["gold"] for r in read_jsonl(tmp_path / "eval" / "samples.jsonl")] == pytest.approx(expected)
    assert out["gold_mean"] == pytest.approx(sum(expected) / 5) and out["gold_name"] == f"rm:{rm_path.resolve()}"
    assert len(read_jsonl(tmp_path / "eval" / CACHE_FILE)) == 5  # kept beside the stage's outputs


def test_weak_alignment_labels_best_vs_worst_by_the_reward_model(rm_path, tmp_path, tiny_pair_dirs):
    from ml.reporter import or_null
    from ml.stages.weak_align import WeakAlignConfig, label_preferences

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": p} for p in ("the cat", "tell me about the dog", "one two", "please")])
    cfg = WeakAlignConfig(
        model=tiny_pair_dirs["base"],
        output_dir=str(tmp_path / "wa"),
        prompts=str(prompts),
        gold=f"rm:{rm_path}",
        k=4,
        max_new_tokens=4,
        sample_batch_size=2,
        use_chat_template=False,
        device="cpu",
    )
    path, finished = label_preferences(cfg, or_null(None))
    rows = read_jsonl(path)
    assert finished and rows, "the tiny model's samples should not all tie under the reward model"
    gold = get_gold(f"rm:{rm_path}", device=CPU)
    for r in rows:
        assert r["chosen_gold"] == pytest.approx(gold(r["prompt"], r["chosen"]), abs=1e-5)
        assert r["rejected_gold"] == pytest.approx(gold(r["prompt"], r["rejected"]), abs=1e-5)
        assert r["chosen_gold"] > r["rejected_gold"]
    # Every sample of every prompt was scored once, through the file beside the preferences.
    assert len(read_jsonl(tmp_path / "wa" / CACHE_FILE)) <= 4 * 4
    assert {(r["prompt"], r["chosen"]) for r in rows} <= {
        (c["prompt"], c["response"]) for c in read_jsonl(tmp_path / "wa" / CACHE_FILE)
    }
