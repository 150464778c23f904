"""ml.judge.pairwise: a local causal LM judging pairs (both orders, batched, cut to its context) and AlpacaEval 2's
length-controlled win rate (the GLM on synthetic preferences whose cause is known), then the evaluate stage's hook.
The tiny judges' verdicts mean nothing; what is checked is that the numbers are the ones the method defines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ml.io import read_json, read_jsonl, write_jsonl
from ml.judge.pairwise import (
    PairwiseJudge,
    answer_ids,
    check_judge_folder,
    fit_logistic,
    lc_bootstrap,
    lc_win_rate,
    win_summary,
)
from ml.pipeline_config import PipelineConfig
from ml.reporter import RecordingReporter
from ml.stages.evaluate import EvaluateConfig, evaluate
from ml.tiny import tiny_gpt2, word_tokenizer
from tests.ml._stage_fixtures import WORDS, save_tiny, tiny_config, write_prompts

JUDGE_WORDS = [*WORDS, "A", "B", "Response", "Answer:"]


def save_judge(path, *, seed: int = 3, n_positions: int = 256, always_a: bool = False) -> str:
    """A tiny causal LM whose vocabulary can answer A or B. ``always_a``: its last layer norm ignores the input (weight
    0) and outputs a fixed vector pointing at "A" (bias), so whatever it reads, p(A) is the same and high."""
    tok = word_tokenizer(JUDGE_WORDS)
    model = tiny_gpt2(len(tok), n_layer=1, n_embd=32, n_head=2, n_positions=n_positions, seed=seed)
    if always_a:
        a, b = tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")
        wte = model.transformer.wte.weight
        with torch.no_grad():
            model.transformer.ln_f.weight.zero_()
            direction = wte[a] - wte[b]
            model.transformer.ln_f.bias.copy_(8.0 * direction / direction.norm() ** 2)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    return save_judge(tmp_path_factory.mktemp("judge") / "judge")


PROMPTS = ["tell me about the cat", "please tell me", "the cat the dog", "tell me a b"]
OURS = ["good good a b", "yes", "ok the cat", "a"]
REFS = ["bad", "no no no please", "ok the cat", "b b b b b b"]


def test_the_answer_tokens_are_the_judges_own_and_a_vocabulary_without_them_cannot_judge(judge_dir, tmp_path):
    a, b = answer_ids(word_tokenizer(JUDGE_WORDS))
    assert a and b and not set(a) & set(b)
    assert check_judge_folder(judge_dir) is None
    why = check_judge_folder(save_tiny(tmp_path / "no_letters"))  # "a" and "b" only: no "A", "B"
    assert why is not None and "'A' and 'B'" in why


def test_preferences_are_probabilities_the_same_in_any_batch_and_a_tie_is_one_half(judge_dir):
    one = PairwiseJudge(judge_dir, device="cpu", batch_size=1).preferences(PROMPTS, OURS, REFS)
    many = PairwiseJudge(judge_dir, device="cpu", batch_size=8).preferences(PROMPTS, OURS, REFS)
    assert one is not None and many is not None
    assert all(0.0 <= p <= 1.0 for p in one)
    # Left padding with position ids: a pair's verdict does not depend on what it was batched with.
    assert many == pytest.approx(one, abs=1e-5)
    assert one[2] == 0.5  # the same answer on both sides: both orders read the same prompt, so exactly 0.5
    assert len({round(p, 6) for p in one}) > 1  # the judge does read the responses


def test_both_orders_cancel_a_judge_that_always_says_a(tmp_path):
    judge = PairwiseJudge(save_judge(tmp_path / "always_a", always_a=True), device="cpu", batch_size=3)
    first = judge.prob_first([(p, o, r) for p, o, r in zip(PROMPTS, OURS, REFS)])
    second = judge.prob_first([(p, r, o) for p, o, r in zip(PROMPTS, OURS, REFS)])
    assert first is not None and second is not None
    assert min(first) > 0.99 and min(second) > 0.99  # position bias: "A" whichever response stands there
    assert judge.preferences(PROMPTS, OURS, REFS) == [0.5] * len(PROMPTS)  # exactly: the bias cancels


def test_texts_too_long_for_the_judge_are_cut_keeping_the_answer_cue(tmp_path):
    judge = PairwiseJudge(save_judge(tmp_path / "short", n_positions=48), device="cpu")
    long_a, long_b = " ".join(["good"] * 60), " ".join(["bad"] * 30)
    ids = judge.encode("tell me about the cat", long_a, long_b)
    assert len(ids) <= 48 and judge.truncated == 1
    cue = judge.tokenizer("Answer:", add_special_tokens=False)["input_ids"]
    assert ids[-len(cue) :] == cue  # the judge still reads the question it answers
    # Both orders are cut alike (the caps follow the lengths, not the positions): same number of tokens.
    assert len(judge.encode("tell me about the cat", long_b, long_a)) == len(ids)
    prefs = judge.preferences(["tell me about the cat"], [long_a], [long_b])
    assert prefs is not None and 0.0 <= prefs[0] <= 1.0


def test_a_stop_request_between_batches_returns_none(judge_dir):
    judge = PairwiseJudge(judge_dir, device="cpu", batch_size=2)
    seen = []

    def progress(done: int, total: int) -> bool:
        seen.append((done, total))
        return False

    assert judge.preferences(PROMPTS, OURS, REFS, progress) is None
    assert seen == [(2, 8)]  # 4 pairs x 2 orders; stopped after the first batch


# --- the GLM: synthetic preferences with a known cause ----------------------------------------------------------
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


DELTA = np.linspace(-50.0, 150.0, 40)  # our answers are mostly longer than the reference's
LEN_REF = np.full_like(DELTA, 200.0)
LEN_OURS = LEN_REF + DELTA
Z = np.tanh(DELTA / DELTA.std(ddof=1))


def test_a_preference_caused_by_length_alone_is_one_half_once_length_is_controlled():
    prefs = _sigmoid(3.0 * Z)  # the judge likes longer answers, and nothing else
    raw = float(prefs.mean())
    lc = lc_win_rate(prefs, LEN_OURS, LEN_REF)
    assert raw > 0.7
    assert lc["lc_win_rate"] == pytest.approx(0.5, abs=0.02)
    assert lc["length"] == pytest.approx(3.0, rel=0.05) and lc["model"] == pytest.approx(0.0, abs=0.05)


def test_a_preference_for_the_model_itself_is_kept():
    prefs = np.full_like(DELTA, _sigmoid(1.2))  # a better model, whatever the lengths
    lc = lc_win_rate(prefs, LEN_OURS, LEN_REF)
    assert lc["lc_win_rate"] == pytest.approx(float(_sigmoid(1.2)), abs=0.01)
    assert lc["length"] == pytest.approx(0.0, abs=0.02)
    # Both causes at once: the model term survives, the length term goes.
    both = _sigmoid(0.8 + 2.0 * Z)
    lc = lc_win_rate(both, LEN_OURS, LEN_REF)
    assert lc["model"] == pytest.approx(0.8, abs=0.05) and lc["length"] == pytest.approx(2.0, abs=0.1)
    assert lc["lc_win_rate"] == pytest.approx(float(_sigmoid(0.8)), abs=0.02)
    assert float(both.mean()) > lc["lc_win_rate"] + 0.1


def test_an_instruction_difficulty_term_is_averaged_over_the_prompts():
    d = np.random.default_rng(1).permutation(np.linspace(-1.0, 1.0, len(DELTA)))  # not in step with the lengths
    prefs = _sigmoid(0.5 + 2.0 * Z - 1.5 * d)
    lc = lc_win_rate(prefs, LEN_OURS, LEN_REF, difficulty=d)
    assert lc["difficulty"] == pytest.approx(-1.5, abs=0.1)
    assert lc["lc_win_rate"] == pytest.approx(float(_sigmoid(0.5 - 1.5 * d).mean()), abs=0.02)


def test_the_fit_stays_finite_when_ours_always_wins_and_lengths_that_never_differ_explain_nothing():
    beta = fit_logistic(np.stack([np.ones(10), np.zeros(10)], axis=1), np.ones(10))
    assert np.all(np.isfinite(beta)) and _sigmoid(beta[0]) > 0.99
    same = lc_win_rate([0.9, 0.7, 0.8], [10, 20, 30], [10, 20, 30])  # every difference 0: std 0
    assert same["length_std"] == 0.0 and same["length"] == 0.0
    assert same["lc_win_rate"] == pytest.approx(0.8, abs=0.01)


def test_intervals_hold_their_estimates_and_the_bootstrap_is_seeded():
    rng = np.random.default_rng(0)
    prefs = np.clip(_sigmoid(0.4 + 1.5 * Z) + rng.normal(0, 0.1, len(Z)), 0, 1)
    clusters = [i // 2 for i in range(len(Z))]  # two samples per prompt
    s = win_summary(list(prefs), list(LEN_OURS), list(LEN_REF), clusters, n_boot=100, seed=7)
    assert s["judge_win_ci"][0] <= s["judge_win_rate"] <= s["judge_win_ci"][1]
    assert 0.0 <= s["judge_win_ci"][0] and s["judge_win_ci"][1] <= 1.0
    assert s["judge_lc_win_ci"][0] <= s["judge_lc_win_rate"] <= s["judge_lc_win_ci"][1]
    assert s["judge_lc_win_ci"][0] < s["judge_lc_win_ci"][1] and s["judge_n"] == len(Z)
    again = lc_bootstrap(prefs, LEN_OURS, LEN_REF, clusters, n_boot=100, seed=7)
    other = lc_bootstrap(prefs, LEN_OURS, LEN_REF, clusters, n_boot=100, seed=8)
    assert again == tuple(s["judge_lc_win_ci"]) and other != again
    point = lc_win_rate(prefs, LEN_OURS, LEN_REF)["lc_win_rate"]
    assert lc_bootstrap(prefs, LEN_OURS, LEN_REF, clusters, n_boot=0) == (point, point)
    empty = win_summary([], [], [], [])
    assert empty["judge_n"] == 0 and math.isnan(empty["judge_win_rate"]) and math.isnan(empty["judge_lc_win_rate"])


# --- the evaluate stage's hook ----------------------------------------------------------------------------------
JUDGE_KEYS = {"judge_win_rate", "judge_win_ci", "judge_lc_win_rate", "judge_lc_win_ci", "judge_n", "judge_name"}


def test_evaluate_with_a_judge_and_a_reference_reports_the_judge_and_each_rows_preference(judge_dir, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    strong = save_tiny(tmp_path / "strong", seed=5)
    # The reference: the same prompts (index, sample 0) answered by another method; one answer is the same text.
    write_jsonl(
        tmp_path / "ref.jsonl",
        [{"index": i, "sample": 0, "prompt": p, "response": r} for i, (p, r) in enumerate(zip(PROMPTS, REFS))],
    )
    rep = RecordingReporter()
    out = evaluate(
        EvaluateConfig(
            output_dir=str(tmp_path / "ev"),
            gold="test:count_a",
            model=strong,
            prompts=prompts,
            max_new_tokens=4,
            batch_size=4,
            reference=str(tmp_path / "ref.jsonl"),
            reference_name="weak_sft",
            judge=judge_dir,
            judge_batch_size=3,
            judge_bootstrap=50,
            device="cpu",
        ),
        rep,
    )
    assert JUDGE_KEYS <= set(out) and out["judge_name"] == "judge" and out["judge_n"] == len(PROMPTS)
    assert read_json(tmp_path / "ev" / "metrics.json") == out
    rows = read_jsonl(tmp_path / "ev" / "samples.jsonl")
    prefs = [r["judge_pref"] for r in rows]
    assert all(0.0 <= p <= 1.0 for p in prefs)
    assert out["judge_win_rate"] == pytest.approx(sum(prefs) / len(prefs))
    assert out["judge_win_ci"][0] <= out["judge_win_rate"] <= out["judge_win_ci"][1]
    assert out["judge_lc_win_ci"][0] <= out["judge_lc_win_rate"] <= out["judge_lc_win_ci"][1]
    # What the judge says about these very pairs, asked directly.
    direct = PairwiseJudge(judge_dir, device="cpu").preferences(
        [r["prompt"] for r in rows], [r["response"] for r in rows], REFS
    )
    assert prefs == pytest.approx(direct, abs=1e-5)
    assert any(stage.endswith("/judge") for stage, _, _ in rep.of("progress"))


def test_evaluate_without_a_reference_or_without_a_judge_reports_no_judge(judge_dir, tmp_path):
    write_jsonl(tmp_path / "s.jsonl", [{"prompt": p, "response": o} for p, o in zip(PROMPTS, OURS)])
    common = {"gold": "test:count_a", "samples": str(tmp_path / "s.jsonl")}
    alone = evaluate(EvaluateConfig(output_dir=str(tmp_path / "a"), judge=judge_dir, **common))
    no_judge = evaluate(EvaluateConfig(output_dir=str(tmp_path / "b"), reference=str(tmp_path / "s.jsonl"), **common))
    assert not JUDGE_KEYS & set(alone) and not JUDGE_KEYS & set(no_judge)
    with pytest.raises(ValueError, match="judge_bootstrap"):
        EvaluateConfig(output_dir=str(tmp_path / "c"), judge_bootstrap=-1, **common)


def test_a_pipeline_judge_needs_weak_sft_and_another_method(tmp_path):
    cfg = tiny_config(tmp_path, judge="/some/judge")
    with pytest.raises(ValueError, match="compares each method's answers with weak_sft's"):
        PipelineConfig.from_dict({**cfg, "methods": ["cong_s", "cong"]})
    with pytest.raises(ValueError, match="compares each method's answers with weak_sft's"):
        PipelineConfig.from_dict({**cfg, "methods": ["weak_sft"]})
    assert PipelineConfig.from_dict({**cfg, "methods": ["weak_sft", "cong_s"]}).judge == "/some/judge"
