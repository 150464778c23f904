"""Teacher-forced scoring against plain unbatched computations, and the reward-model judge."""

from __future__ import annotations

import pytest
import torch

from ml.contrastive import CDConfig, contrastive_generate
from ml.gold import GoldReward
from ml.scoring import RewardModelJudge, implicit_rewards, implicit_rewards_from_ids, sequence_logprobs, token_logprobs

PROMPTS = ["the", "tell me about the dog", "a big red cat sat on the mat", "one two", "please", "cat"]
RESPONSES = ["cat sat on the mat", "it was a good dog", "yes", "three and then one two three", "", "ran"]


def manual_logprobs(model, tok, prompt, response, eos=False):
    p = tok(prompt)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])
    x = torch.tensor([p + r])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=x).logits[0].float(), -1)
    return [float(lp[len(p) - 1 + j, t]) for j, t in enumerate(r)]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_token_and_sequence_logprobs_match_unbatched(tiny_pair, batch_size):
    tok, model = tiny_pair.tokenizer, tiny_pair.aligned
    got = token_logprobs(model, tok, PROMPTS, RESPONSES, batch_size=batch_size)
    seq = sequence_logprobs(model, tok, PROMPTS, RESPONSES, batch_size=batch_size)
    for p, r, g, s in zip(PROMPTS, RESPONSES, got, seq):
        ref = manual_logprobs(model, tok, p, r)
        assert g == pytest.approx(ref, abs=1e-4)
        assert s == pytest.approx(sum(ref), abs=1e-3)
    assert got[4] == [] and seq[4] == 0.0


def test_implicit_rewards_match_manual_log_ratio(tiny_pair):
    tok = tiny_pair.tokenizer
    got = implicit_rewards(
        aligned=tiny_pair.aligned,
        base=tiny_pair.base,
        tokenizer=tok,
        prompts=PROMPTS,
        responses=RESPONSES,
        batch_size=3,
        append_eos=True,
    )
    for p, r, g in zip(PROMPTS, RESPONSES, got):
        a = manual_logprobs(tiny_pair.aligned, tok, p, r, eos=True)
        b = manual_logprobs(tiny_pair.base, tok, p, r, eos=True)
        ref = [x - y for x, y in zip(a, b)]
        assert g["n_tokens"] == len(ref) == len(tok(r, add_special_tokens=False)["input_ids"]) + 1
        assert g["sum"] == pytest.approx(sum(ref), abs=1e-3)
        assert g["mean"] == pytest.approx(sum(ref) / len(ref), abs=1e-4)


def test_scoring_agrees_with_generation_rewards(tiny_pair):
    """The same prompt/response boundary as generation: scoring the generated ids gives its reward."""
    tok = tiny_pair.tokenizer
    cfg = CDConfig(do_sample=True, seed=1, max_new_tokens=9, batch_size=4, use_chat_template=False)
    gens = contrastive_generate(
        aligned=tiny_pair.aligned, base=tiny_pair.base, tokenizer=tok, prompts=PROMPTS, config=cfg
    )
    pairs = [(tok(g.prompt)["input_ids"], g.token_ids) for g in gens]
    scored = implicit_rewards_from_ids(aligned=tiny_pair.aligned, base=tiny_pair.base, pairs=pairs, batch_size=4)
    for g, s in zip(gens, scored):
        assert s["n_tokens"] == g.implicit_reward.n_tokens
        assert s["sum"] == pytest.approx(g.implicit_reward.sum, abs=1e-3)


def test_mismatched_lengths_raise(tiny_pair):
    with pytest.raises(ValueError, match="pair up"):
        implicit_rewards(
            aligned=tiny_pair.aligned,
            base=tiny_pair.base,
            tokenizer=tiny_pair.tokenizer,
            prompts=["a", "b"],
            responses=["c"],
        )


def _save_reward_model(path, tok, num_labels=1, seed=0):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        num_labels=num_labels,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.2,
    )
    GPT2ForSequenceClassification(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def test_reward_model_judge_scores_batched_and_deterministic(tmp_path, tiny_tokenizer):
    path = _save_reward_model(tmp_path / "rm", tiny_tokenizer)
    judge = RewardModelJudge(path, batch_size=4)
    scores = judge.score_batch(PROMPTS, RESPONSES)
    assert len(scores) == len(PROMPTS) and all(isinstance(s, float) for s in scores)
    assert len(set(round(s, 5) for s in scores)) > 1  # it does tell responses apart
    one_by_one = [RewardModelJudge(path, batch_size=1)(p, r) for p, r in zip(PROMPTS, RESPONSES)]
    assert scores == pytest.approx(one_by_one, abs=1e-5)
    assert RewardModelJudge(path).score_batch(PROMPTS, RESPONSES) == pytest.approx(scores, abs=1e-6)
    # The input the head sees is prompt ids + response ids, pooled at the last real token.
    from transformers import AutoModelForSequenceClassification

    m = AutoModelForSequenceClassification.from_pretrained(path).eval()
    ids = tiny_tokenizer(PROMPTS[1])["input_ids"] + tiny_tokenizer(RESPONSES[1], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        direct = float(m(input_ids=torch.tensor([ids])).logits[0, 0])
    assert scores[1] == pytest.approx(direct, abs=1e-5)
    gold = judge.as_gold()
    assert isinstance(gold, GoldReward) and gold(PROMPTS[1], RESPONSES[1]) == pytest.approx(scores[1], abs=1e-5)


def test_reward_model_judge_rejects_multi_label_models(tmp_path, tiny_tokenizer):
    path = _save_reward_model(tmp_path / "cls", tiny_tokenizer, num_labels=3)
    with pytest.raises(ValueError, match="num_labels=1"):
        RewardModelJudge(path)
    with pytest.raises(FileNotFoundError):
        RewardModelJudge(tmp_path / "missing")
