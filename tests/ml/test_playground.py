"""ml.playground: streamed decoding equals the batch paths token for token (greedy CD = contrastive_generate, greedy
plain = plain_generate's model.generate, sampled CD = contrastive_generate with the same seed), the deltas add up to
the response, a character made of several byte tokens arrives whole, and the two sides of the weak pair interleave."""

from __future__ import annotations

from typing import Any

import pytest

from ml.contrastive import CDConfig, contrastive_generate
from ml.io import read_jsonl, write_jsonl
from ml.playground import Delta, Finish, IncrementalText, side_by_side, stream
from ml.stages.generate import PlainGenerateConfig, plain_generate

from .conftest import TINY_PROMPTS


def _cfg(**kw) -> CDConfig:
    base: dict[str, Any] = dict(do_sample=False, max_new_tokens=12, use_chat_template=False, repetition_penalty=1.3)
    base.update(kw)
    return CDConfig(**base)


def _collect(events) -> tuple[list[str], Finish]:
    events = list(events)
    deltas = [e.text for e in events if isinstance(e, Delta)]
    finishes = [e for e in events if isinstance(e, Finish)]
    assert len(finishes) == 1 and events[-1] is finishes[0], events
    return deltas, finishes[0]


@pytest.mark.parametrize("scope", ["all", "generated"])
def test_greedy_cd_stream_equals_contrastive_generate(tiny_pair, scope):
    cfg = _cfg(repetition_penalty_scope=scope, alpha=0.3)
    batch = contrastive_generate(
        aligned=tiny_pair.aligned, base=tiny_pair.base, tokenizer=tiny_pair.tokenizer, prompts=TINY_PROMPTS, config=cfg
    )
    for prompt, want in zip(TINY_PROMPTS, batch):
        deltas, fin = _collect(
            stream(
                model=tiny_pair.aligned,
                base=tiny_pair.base,
                tokenizer=tiny_pair.tokenizer,
                prompt=prompt,
                config=cfg,
                mode="cd",
            )
        )
        assert fin.token_ids == want.token_ids, prompt
        assert fin.text == want.text and fin.finish_reason == want.finish_reason
        assert "".join(deltas) == fin.text
        # A token at a time: one delta per token that adds text (special tokens, EOS or BOS, add none).
        specials = set(tiny_pair.tokenizer.all_special_ids)
        assert len(deltas) == len([t for t in fin.token_ids if t not in specials])
    assert any(len(g.token_ids) > 3 for g in batch)  # the comparison covers real multi-token responses


def test_sampled_cd_stream_equals_contrastive_generate_with_the_same_seed(tiny_pair):
    cfg = _cfg(do_sample=True, temperature=0.9, top_p=0.9, seed=7, batch_size=1)
    for prompt in TINY_PROMPTS[:3]:
        [want] = contrastive_generate(
            aligned=tiny_pair.aligned, base=tiny_pair.base, tokenizer=tiny_pair.tokenizer, prompts=[prompt], config=cfg
        )
        _, fin = _collect(
            stream(
                model=tiny_pair.aligned,
                base=tiny_pair.base,
                tokenizer=tiny_pair.tokenizer,
                prompt=prompt,
                config=cfg,
                mode="cd",
            )
        )
        assert fin.token_ids == want.token_ids


@pytest.mark.parametrize("scope", ["all", "generated"])
def test_greedy_plain_stream_equals_plain_generate(tiny_pair, tiny_pair_dirs, tmp_path, scope):
    cfg = _cfg(repetition_penalty_scope=scope)
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": p} for p in TINY_PROMPTS])
    plain_generate(
        PlainGenerateConfig(
            model=tiny_pair_dirs["aligned"], prompts=str(prompts), output_dir=str(tmp_path / "out"), sampling=cfg
        )
    )
    rows = sorted(read_jsonl(tmp_path / "out" / "samples.jsonl"), key=lambda r: r["index"])
    for prompt, row in zip(TINY_PROMPTS, rows):
        for mode in ("plain", "model"):  # the same loop under either name
            deltas, fin = _collect(
                stream(model=tiny_pair.aligned, tokenizer=tiny_pair.tokenizer, prompt=prompt, config=cfg, mode=mode)
            )
            assert fin.stream == mode
            assert fin.token_ids == row["token_ids"], prompt
            assert fin.text == row["response"] and fin.finish_reason == row["finish_reason"]
            assert "".join(deltas) == fin.text


def test_side_by_side_interleaves_cd_and_plain(tiny_pair):
    cfg = _cfg(max_new_tokens=8, ignore_eos=True)
    prompt = TINY_PROMPTS[2]
    events = list(
        side_by_side(
            aligned=tiny_pair.aligned, base=tiny_pair.base, tokenizer=tiny_pair.tokenizer, prompt=prompt, config=cfg
        )
    )
    order = [e.stream for e in events if isinstance(e, Delta)]
    assert order[:6] == ["cd", "plain"] * 3  # one token of each in turn
    for name, mode in (("cd", "cd"), ("plain", "plain")):
        alone = list(
            stream(
                model=tiny_pair.aligned,
                base=tiny_pair.base,
                tokenizer=tiny_pair.tokenizer,
                prompt=prompt,
                config=cfg,
                mode=mode,
            )
        )
        mine = [e for e in events if e.stream == name]
        assert mine == alone
        assert len(mine[-1].token_ids) == 8 and mine[-1].finish_reason == "length"


def test_side_by_side_streams_that_end_apart_equal_their_single_streams(tiny_pair):
    # Greedy with EOS: the two sides end after different numbers of tokens (one runs on alone), and nothing the
    # other did (grad mode, caches) leaks into it.
    import torch

    cfg = _cfg(max_new_tokens=20)
    lengths = set()
    for prompt in TINY_PROMPTS:
        events = list(
            side_by_side(
                aligned=tiny_pair.aligned, base=tiny_pair.base, tokenizer=tiny_pair.tokenizer, prompt=prompt, config=cfg
            )
        )
        for name in ("cd", "plain"):
            alone = list(
                stream(
                    model=tiny_pair.aligned,
                    base=tiny_pair.base,
                    tokenizer=tiny_pair.tokenizer,
                    prompt=prompt,
                    config=cfg,
                    mode=name,  # type: ignore[arg-type]
                )
            )
            assert [e for e in events if e.stream == name] == alone
        fins = {e.stream: len(e.token_ids) for e in events if isinstance(e, Finish)}
        lengths.add(fins["cd"] != fins["plain"])
    assert True in lengths  # some prompt's sides ended apart
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()


def test_multibyte_characters_arrive_whole():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    core = ByteLevelBPETokenizer()
    core.train_from_iterator(["plain ascii words only"], vocab_size=260, min_frequency=1)
    tok = PreTrainedTokenizerFast(tokenizer_object=core._tokenizer)
    text = "héllo 🙂 wörld ✓"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids[:8]).endswith("\ufffd") or len(ids) > len(text)  # characters span several tokens
    inc = IncrementalText(tok)
    pieces = [inc.push(i) for i in ids]
    assert "".join(pieces) == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)
    assert "" in pieces  # held back while a character was incomplete


def test_settings_are_checked_before_the_first_event(tiny_pair):
    t, m = tiny_pair.tokenizer, tiny_pair.aligned
    with pytest.raises(ValueError, match="mode must be one of"):
        stream(model=m, tokenizer=t, prompt="the", config=_cfg(), mode="beam")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weak base model"):
        stream(model=m, tokenizer=t, prompt="the", config=_cfg(), mode="cd")
    with pytest.raises(ValueError, match="exceeds the model's context"):
        stream(model=m, tokenizer=t, prompt="the", config=_cfg(max_new_tokens=1000), mode="model")


def test_closing_a_stream_stops_decoding(tiny_pair):
    s = stream(
        model=tiny_pair.aligned,
        tokenizer=tiny_pair.tokenizer,
        prompt="the",
        config=_cfg(ignore_eos=True, max_new_tokens=50),
    )
    first = next(s)
    assert isinstance(first, Delta)
    s.close()
    assert list(s) == []
