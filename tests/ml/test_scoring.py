"""Teacher-forced scoring against plain unbatched computations, and the reward-model judge."""

from __future__ import annotations

import pytest
import torch

from ml.contrastive import CDConfig, contrastive_generate
from ml.gold import GoldReward
from ml.scoring import (
    RewardModelJudge,
    _fit,
    implicit_rewards,
    implicit_rewards_from_ids,
    sequence_logprobs,
    token_logprobs,
    token_logprobs_from_ids,
)

from .conftest import peaked_tiny_gpt2

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


# --- token_logprobs_from_ids: what each forward is given, and the edge cases of the batch loop -----------


def manual_from_ids(model, p, r):
    """The same log-probs from one unpadded forward of prompt + response."""
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([p + r])).logits[0].float(), -1)
    return [float(lp[len(p) - 1 + j, t]) for j, t in enumerate(r)]


class _Recorder(torch.nn.Module):
    """A causal LM seen through its forward: records what each call is given, then runs the real model."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.calls = inner, inner.config, []

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None, logits_to_keep=0):
        self.calls.append(
            {
                "ids": input_ids,
                "mask": attention_mask,
                "pos": position_ids,
                "use_cache": use_cache,
                "keep": logits_to_keep,
            }
        )
        return self.inner(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
        )


class _RecorderWithoutKeep(_Recorder):
    """A model whose forward has no ``logits_to_keep`` (and no **kwargs): it returns every position's logits."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        return super().forward(input_ids, attention_mask, position_ids, use_cache)


def test_each_forward_gets_the_left_padding_mask_positions_and_only_the_needed_logits(tiny_pair):
    """The mask and the position ids are the contract of left padding (transformers happens to infer the
    mask from position ids; a model that does not needs it); logits_to_keep = R + 1 and no KV cache keep
    memory to what scoring reads."""
    model = _Recorder(tiny_pair.aligned)
    pairs = [([13, 14], [15]), ([3, 4, 5, 6], [7, 8]), ([9], [10, 11, 12])]
    got = token_logprobs_from_ids(model, pairs, batch_size=3)
    assert len(model.calls) == 1
    call = model.calls[0]
    # Longest first: rows are pairs 1 (6 tokens), 2 (4), 0 (3), right-aligned in 6 columns.
    assert call["mask"].tolist() == [[1] * 6, [0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]]
    assert call["pos"].tolist() == [[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3], [0, 0, 0, 0, 1, 2]]
    assert call["ids"][call["mask"].bool()].tolist() == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    assert call["keep"] == 4  # the longest response (3) + the last prompt position
    assert call["use_cache"] is False
    for (p, r), g in zip(pairs, got):
        assert g == pytest.approx(manual_from_ids(tiny_pair.aligned, p, r), abs=1e-4)


def test_a_model_without_logits_to_keep_is_not_given_it_and_scores_the_same(tiny_pair):
    model = _RecorderWithoutKeep(tiny_pair.aligned)
    pairs = [([3, 4, 5, 6, 7], [8, 9]), ([10, 11], [12, 13, 14])]
    got = token_logprobs_from_ids(model, pairs, batch_size=2)
    assert model.calls[0]["keep"] == 0  # our signature's default: nothing passed, all 7 positions come back
    for (p, r), g in zip(pairs, got):
        assert g == pytest.approx(manual_from_ids(tiny_pair.aligned, p, r), abs=1e-4)


def test_batches_group_equal_lengths_longest_first(tiny_pair):
    """Sorted by total length, longest first: equal lengths share a batch (no padding), and the largest
    batch runs first, so running out of memory shows at once rather than at the end."""
    model = _Recorder(tiny_pair.aligned)
    # Totals 2, 5, 2, 5; by prompt minus response they would sort 0, -3, 0, 3 instead.
    pairs = [([3], [4]), ([5], [6, 7, 8, 9]), ([10], [11]), ([12, 13, 14, 15], [16])]
    got = token_logprobs_from_ids(model, pairs, batch_size=2)
    assert [c["ids"].tolist() for c in model.calls] == [[[5, 6, 7, 8, 9], [12, 13, 14, 15, 16]], [[3, 4], [10, 11]]]
    assert all(bool(c["mask"].all()) for c in model.calls)
    for (p, r), g in zip(pairs, got):
        assert g == pytest.approx(manual_from_ids(tiny_pair.aligned, p, r), abs=1e-4)


def test_the_default_batch_is_16_sequences(tiny_pair):
    """The default bounds one forward's memory; 17 pairs take two forwards."""
    model = _Recorder(tiny_pair.aligned)
    token_logprobs_from_ids(model, [([3 + i % 5], [4]) for i in range(17)])
    assert [c["ids"].shape[0] for c in model.calls] == [16, 1]


@pytest.mark.parametrize("batch_size", [1, 2])
def test_an_empty_response_scores_as_empty_and_the_rest_of_the_work_still_runs(tiny_pair, batch_size):
    """The longest pair has no response: alone it is a batch with nothing to score (batch_size 1), or the
    first row of a batch that does have some (batch_size 2); either way the next pair is still scored."""
    pairs = [([3, 4, 5, 6, 7, 8], []), ([9], [10, 11])]
    got = token_logprobs_from_ids(tiny_pair.aligned, pairs, batch_size=batch_size)
    assert got[0] == []
    assert got[1] == pytest.approx(manual_from_ids(tiny_pair.aligned, [9], [10, 11]), abs=1e-4)


def test_a_response_without_a_prompt_is_refused(tiny_pair):
    """Nothing predicts its first token; before, it was scored from a pad position (values depending on
    the batch and the pad id) or, alone, from the token after it."""
    msg = r"^a pair has response ids but no prompt ids \(encode_prompt starts an empty prompt at BOS\)$"
    with pytest.raises(ValueError, match=msg):
        token_logprobs_from_ids(tiny_pair.aligned, [([3], [4]), ([], [5])])
    assert token_logprobs_from_ids(tiny_pair.aligned, [([], [])]) == [[]]


def test_batch_size_below_one_is_refused_by_name(tiny_pair):
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        token_logprobs_from_ids(tiny_pair.aligned, [([3], [4])], batch_size=0)


def test_fit_keeps_the_end_of_a_long_prompt():
    """The prompt keeps its last tokens, whatever its length (slicing from the front agrees when the
    prompt is twice what it keeps or keeps one token, the cases in test_train_data_mutants.py)."""
    assert _fit([1, 2, 3, 4, 5], [6, 7], 4) == ([4, 5], [6, 7])
    assert _fit([1, 2, 3, 4, 5, 6], [7], 3) == ([5, 6], [7])


def test_pairs_over_the_context_limit_are_scored_as_fitted(tiny_tokenizer):
    """A model of 8 positions: 6 prompt + 4 response tokens are scored as the last 4 prompt tokens + the
    response (unfitted, position 9 does not exist in the model)."""
    model = peaked_tiny_gpt2(len(tiny_tokenizer), seed=3, n_layer=1, n_positions=8)
    p, r = [3, 4, 5, 6, 7, 8], [9, 10, 11, 12]
    got = token_logprobs_from_ids(model, [(p, r), ([13], [14])], batch_size=2)
    assert got[0] == pytest.approx(manual_from_ids(model, p[-4:], r), abs=1e-4)
    assert got[1] == pytest.approx(manual_from_ids(model, [13], [14]), abs=1e-4)


class _MetaLM(torch.nn.Module):
    """Weights on the 'meta' device, standing in for a GPU: records where its inputs are, and returns fixed
    CPU logits (row-independent: position t of a row of width L gets TABLE[t])."""

    TABLE = torch.randn(8, 40, generator=torch.Generator().manual_seed(0))

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.empty(1, device="meta"))
        self.config = type("Config", (), {"n_positions": 8})()
        self.devices = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None, logits_to_keep=0):
        self.devices.append({t.device.type for t in (input_ids, attention_mask, position_ids)})
        b, width = input_ids.shape
        return type("Out", (), {"logits": self.TABLE[:width][-logits_to_keep:].expand(b, -1, -1)})()


def _meta_expected(p, r):
    lp = torch.log_softmax(_MetaLM.TABLE, -1)
    return [float(lp[len(p) - 1 + j, t]) for j, t in enumerate(r)]


def test_inputs_are_moved_to_the_models_device():
    model = _MetaLM()
    got = token_logprobs_from_ids(model, [([3, 4], [5, 6, 7])])
    assert model.devices == [{"meta"}]
    assert got[0] == pytest.approx(_meta_expected([3, 4], [5, 6, 7]), abs=1e-6)


def test_targets_are_made_on_the_logits_device_not_the_default_one():
    """As on a GPU, where the logits are on CUDA and new tensors default to the CPU; here the default is
    'meta' and the logits are on the CPU: an index made on the default device gathers no real values."""
    model = _MetaLM()
    with torch.device("meta"):
        got = token_logprobs_from_ids(model, [([3, 4], [5, 6, 7])])
    assert got[0] == pytest.approx(_meta_expected([3, 4], [5, 6, 7]), abs=1e-6)
