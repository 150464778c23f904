"""Data and loss guarantees of the training stages and of teacher-forced scoring, checked on the pure
functions (``make mutate``, docs/TESTING.md lists the mutants each kills): where a too-long pair is cut,
what padding holds, which log-prob sits at which position, and the per-pair reward summary."""

from __future__ import annotations

import pytest
import torch

from ml.scoring import _fit, _reward_dicts
from ml.stages._train import encode_pair, encode_response, pad_collate, shifted_token_logps
from ml.tiny import word_tokenizer


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer("a b c d e f g h".split())  # a..h = ids 4..11, eos = 2


def test_encode_pair_appends_eos_and_cuts_prompt_start_then_response_end(tok):
    """Under the limit nothing is cut and the response ends with eos; over it the prompt keeps its END
    (at most half the budget), the response keeps its START, and the pair fits the limit exactly."""
    p, r = encode_pair(tok, "a b c d e", "f g h", use_chat_template=False)
    assert (p, r) == ([4, 5, 6, 7, 8], [9, 10, 11, 2])
    assert encode_pair(tok, "a b c d e", "f g h", use_chat_template=False, max_length=9) == (p, r)
    p, r = encode_pair(tok, "a b c d e", "f g h", use_chat_template=False, max_length=6)
    assert (p, r) == ([6, 7, 8], [9, 10, 11])
    kept = (0, 0)
    for limit in range(2, 12):  # at every budget: fits, keeps the prompt's end and the response's start
        p, r = encode_pair(tok, "a b c d e", "f g h", use_chat_template=False, max_length=limit)
        assert len(p) + len(r) <= limit and p and r
        assert p == [4, 5, 6, 7, 8][-len(p) :] and r == [9, 10, 11, 2][: len(r)]
        # a larger budget never keeps fewer tokens of either side (7 once kept 2 response tokens, 6 kept 3)
        assert len(p) >= kept[0] and len(r) >= kept[1], (limit, p, r)
        kept = (len(p), len(r))
    assert encode_pair(tok, "a b c d e", "f g h", use_chat_template=False, max_length=7) == ([6, 7, 8], [9, 10, 11, 2])
    # a short prompt is not cut to make room: the response loses its end instead
    p, r = encode_pair(tok, "a", "b c d e f g h", use_chat_template=False, max_length=4)
    assert (p, r) == ([4], [5, 6, 7])
    # a tiny budget still leaves one prompt token and one response token
    assert encode_pair(tok, "a b c", "d e", use_chat_template=False, max_length=2) == ([6], [7])


def test_encode_response_adds_eos_only_when_asked(tok):
    assert encode_response(tok, "f g") == [9, 10, 2]
    assert encode_response(tok, "f g", add_eos=False) == [9, 10]


def test_pad_collate_right_pads_ids_with_pad_id_and_the_rest_with_zero():
    feats = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "target": [0.0, 0.5, 1.5]},
        {"input_ids": [8], "labels": [8], "target": [2.5]},
    ]
    b = pad_collate(feats, pad_id=1)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]] and b["input_ids"].dtype == torch.long
    assert b["labels"].tolist() == [[-100, 6, 7], [8, 0, 0]] and b["labels"].dtype == torch.long
    assert b["target"].tolist() == [[0.0, 0.5, 1.5], [2.5, 0.0, 0.0]] and b["target"].dtype == torch.float32


def test_encode_pair_applies_the_chat_template_by_default_and_only_when_asked():
    """The prompt is wrapped in the tokenizer's chat template unless use_chat_template=False (the default is
    True, as in every stage config); the response is never templated."""
    tt = word_tokenizer("a b c d".split())  # a..d = ids 4..7, eos = 2
    tt.chat_template = (
        "{% for m in messages %}a {{ m['content'] }}{% endfor %}{% if add_generation_prompt %} b{% endif %}"
    )
    assert encode_pair(tt, "c", "d") == ([4, 6, 5], [7, 2])
    assert encode_pair(tt, "c", "d", use_chat_template=True) == ([4, 6, 5], [7, 2])
    assert encode_pair(tt, "c", "d", use_chat_template=False) == ([6], [7, 2])


def test_encode_pair_keeps_at_every_budget_what_the_rule_says(tok):
    """Over the budget L the prompt keeps max(its share, the room the whole response leaves), its share being
    half the budget (at least one token) and never more than it has; the response keeps the rest (at least one
    token). Checked exactly for one pair at every budget and as that rule over many lengths."""
    sizes = [encode_pair(tok, "a b c d e", "f g h", use_chat_template=False, max_length=n) for n in range(2, 12)]
    assert [(len(p), len(r)) for p, r in sizes] == [
        (1, 1), (1, 2), (2, 2), (2, 3), (3, 3), (3, 4), (4, 4), (5, 4), (5, 4), (5, 4)
    ]  # fmt: skip
    # a budget of one cannot hold a token of each side: it still fits, and the response keeps its first token
    p, r = encode_pair(tok, "a b c d e", "f g h", use_chat_template=False, max_length=1)
    assert len(p) + len(r) <= 1 and r == [9]
    words = "a b c d e f g h".split()
    for n_p in range(1, 7):
        for n_r in range(0, 8):  # + eos
            prompt, response = " ".join(words[:n_p]), " ".join(words[:n_r])
            for limit in range(2, 16):
                p, r = encode_pair(tok, prompt, response, use_chat_template=False, max_length=limit)
                if n_p + n_r + 1 <= limit:
                    assert (len(p), len(r)) == (n_p, n_r + 1)
                    continue
                keep_p = max(min(n_p, limit // 2), min(n_p, limit - n_r - 1))
                assert (len(p), len(r)) == (keep_p, min(n_r + 1, limit - keep_p)), (n_p, n_r, limit)
    # e.g. a 3-token prompt under a budget of 8 keeps all 3 (half the budget is 4): the response is cut to 5
    assert encode_pair(tok, "a b c", "d e f g h a b", use_chat_template=False, max_length=8) == (
        [4, 5, 6],
        [7, 8, 9, 10, 11],
    )


def test_pad_collate_takes_a_batch_of_one():
    """The last batch of an epoch (or per_device_train_batch_size=1) may hold a single example."""
    b = pad_collate([{"input_ids": [5, 6], "labels": [-100, 6]}], pad_id=1)
    assert b["input_ids"].tolist() == [[5, 6]] and b["labels"].tolist() == [[-100, 6]]


def test_a_training_budget_under_two_tokens_is_refused(tmp_path):
    """At max_length=1 no pair keeps a prompt token to predict its response from: training would see no label
    (loss 0) and still report success, so the config refuses it; 2 is the smallest budget that trains."""
    from ml.stages.sft import SFTStageConfig

    where = dict(model="m", output_dir=str(tmp_path), data=str(tmp_path / "d.jsonl"))
    with pytest.raises(
        ValueError, match=r"^max_length must be >= 2: one prompt token and one response token \(got 1\)$"
    ):
        SFTStageConfig(**where, max_length=1)
    assert SFTStageConfig(**where, max_length=2).max_length == 2


def test_shifted_token_logps_puts_log_p_of_token_t_at_t_and_zero_at_0():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6)
    ids = torch.tensor([[1, 2, 3, 4], [5, 0, 5, 0]])
    out = shifted_token_logps(logits, ids)
    lp = torch.log_softmax(logits, -1)
    assert out.shape == (2, 4)
    for b in range(2):
        assert out[b, 0] == 0.0
        for t in range(1, 4):
            assert out[b, t] == pytest.approx(float(lp[b, t - 1, ids[b, t]]), abs=1e-6)


def test_fit_cuts_the_prompt_start_first_then_the_response_end():
    """Teacher-forced scoring over the context limit: prompt loses its start (keeping >= 1 token), then
    the response its end; under or at the limit nothing changes."""
    assert _fit([1, 2, 3], [4, 5], None) == ([1, 2, 3], [4, 5])
    assert _fit([1, 2, 3], [4, 5], 5) == ([1, 2, 3], [4, 5])
    assert _fit([1, 2, 3, 4], [5, 6, 7], 5) == ([3, 4], [5, 6, 7])
    assert _fit([1, 2], [3, 4, 5, 6, 7, 8], 5) == ([2], [3, 4, 5, 6])
    assert _fit([1, 2], [3, 4, 5], 1) == ([2], [])


def test_reward_dicts_sum_mean_and_count_the_per_token_log_ratio():
    out = _reward_dicts([[-1.0, -2.0], [], [-0.5]], [[-2.0, -2.5], [], [-0.25]])
    assert out[0] == {"sum": 1.5, "mean": 0.75, "n_tokens": 2}
    assert out[1] == {"sum": 0.0, "mean": 0.0, "n_tokens": 0}  # an empty response: no division by zero
    assert out[2] == {"sum": -0.25, "mean": -0.25, "n_tokens": 1}


def test_join_pairs_matches_by_index_when_both_files_carry_it_else_by_position():
    """DPO preferences: rows pair up by 'index' when BOTH sample files have it (order and gaps do not
    matter; an index without a partner is left out) and keep that index; otherwise by position."""
    from ml.stages.dpo import join_pairs

    chosen = [{"index": 2, "prompt": "p2", "response": "c2"}, {"index": 0, "prompt": "p0", "response": "c0"}]
    rejected = [
        {"index": 0, "prompt": "p0", "response": "r0"},
        {"index": 1, "prompt": "p1", "response": "r1"},
        {"index": 2, "prompt": "p2", "response": "r2"},
    ]
    assert join_pairs(chosen, rejected) == [
        {"prompt": "p2", "chosen": "c2", "rejected": "r2", "index": 2},
        {"prompt": "p0", "chosen": "c0", "rejected": "r0", "index": 0},
    ]
    # only one side has indexes: by position, and the chosen row's index is still carried
    plain = [{"prompt": "p0", "response": "r0"}, {"prompt": "p2", "response": "r2"}]
    assert join_pairs([chosen[1], {"prompt": "p2", "response": "c2"}], plain) == [
        {"prompt": "p0", "chosen": "c0", "rejected": "r0", "index": 0},
        {"prompt": "p2", "chosen": "c2", "rejected": "r2"},
    ]
    with pytest.raises(ValueError, match="disagree"):
        join_pairs(chosen, plain)  # by position: p2 vs p0
    assert join_pairs(plain, plain, field_name="response")[0] == {"prompt": "p0", "chosen": "r0", "rejected": "r0"}


def test_filter_pairs_needs_one_reward_per_pair_on_each_side():
    from ml.stages.dpo import filter_pairs

    rows = [{"prompt": "p", "chosen": "c", "rejected": "r"}]
    for chosen, rejected in (([1.0, 2.0], [0.0]), ([1.0], []), ([], [])):
        with pytest.raises(ValueError, match="^one reward per pair is needed for chosen and for rejected$"):
            filter_pairs(rows, chosen, rejected)
    assert filter_pairs([], [], []) == []


def test_map_token_values_keeps_the_value_of_a_zero_width_token():
    """A source token covering no characters (offsets (s, s), e.g. a special token) keeps its value: it goes
    to the destination token owning that position (past the text: the last token), nothing is lost."""
    from ml.stages.wspo import map_token_values

    assert map_token_values("ab", [(0, 2), (2, 2)], [1.0, 3.0], [(0, 2)]) == pytest.approx([4.0])
    # a zero-width token where another one's value already lies adds to it
    assert map_token_values("ab", [(0, 2), (0, 0)], [1.0, 0.5], [(0, 1), (1, 2)]) == pytest.approx([1.0, 0.5])
    assert map_token_values("ab cd", [(0, 0), (0, 2), (3, 5)], [0.5, 1.0, 2.0], [(0, 2), (3, 5)]) == pytest.approx(
        [1.5, 2.0]
    )


def test_map_token_values_adds_overlapping_source_tokens():
    """Byte-level tokenisers can give two tokens the same character (a multi-byte one): both values count."""
    from ml.stages.wspo import map_token_values

    assert map_token_values("ab", [(0, 2), (1, 2)], [2.0, 1.0], [(0, 1), (1, 2)]) == pytest.approx([1.0, 2.0])


def test_map_token_values_gives_uncovered_characters_to_the_next_token_else_the_last():
    """A character no destination token covers (a space between words, text past the last token, a value
    past the text) goes to the NEXT destination token by start, else to the last one (offsets in text order,
    as a tokenizer gives them)."""
    from ml.stages.wspo import map_token_values

    text = "ab cd e"  # 7 characters, one value each (powers of two: every owner is visible in the sums)
    src = [(i, i + 1) for i in range(7)] + [(7, 7)]
    vals = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]
    assert map_token_values(text, src, vals, [(0, 2), (3, 5)]) == [3.0, 252.0]
    assert map_token_values(text, src, vals, [(1, 2), (3, 4)]) == [3.0, 252.0]  # gaps before and between
    assert map_token_values(text, src, vals, [(0, 1), (2, 3), (6, 7)]) == [1.0, 6.0, 248.0]
    assert map_token_values(text, src, vals, []) == []
