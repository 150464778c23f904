"""The compiled CD path (ml.cd_compiled): static caches, per-row positions and refilled rows give the eager
loop's greedy tokens; seeded sampling repeats; CDConfig.compile dispatches as documented.

Most tests compile with dynamo's "eager" backend (the graph capture and the static-cache logic are what
can go wrong; inductor's codegen takes ~30-60 s per graph on 2 CPU cores). One slow test runs real inductor
through contrastive_generate(compile="on").
"""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from ml import cd_compiled
from ml.cd_compiled import clear_engines, compiled_generate, use_compiled
from ml.contrastive import CDConfig, contrastive_generate, eos_ids_of, prepare_rows
from ml.reporter import RecordingReporter
from ml.tiny import word_tokenizer

from .conftest import TINY_WORDS

# Twelve prompts of 1..12 words: ragged prompt lengths in every batch.
PROMPTS = [" ".join(TINY_WORDS[(3 * i + j) % len(TINY_WORDS)] for j in range(i + 1)) for i in range(12)]
T = 10


def tiny_llama(vocab: int, seed: int, *, layers: int = 2, attn: str = "sdpa"):
    """A Llama-style model (RoPE, GQA, untied head) with a wide init, so greedy choices are not near-ties."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        initializer_range=0.2,
    )
    cfg._attn_implementation = attn
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = 2, 0
    return model.eval()


def greedy(**kw) -> CDConfig:
    return CDConfig(**{"do_sample": False, "max_new_tokens": T, "batch_size": 8, "use_chat_template": False, **kw})


def eager(pair, prompts, cfg):
    tok, a, b = pair
    return contrastive_generate(aligned=a, base=b, tokenizer=tok, prompts=prompts, config=cfg)


def compiled(pair, prompts, cfg, *, backend="eager", stats=None, reporter=None):
    tok, a, b = pair
    rows = prepare_rows(tok, prompts, cfg)
    return compiled_generate(
        a, b, tok, rows, cfg, eos_ids_of(a, tok), 0, backend=backend, mode=None, stats=stats, reporter=reporter
    )


def with_early_eos(pair, prompts):
    """The pair with two more EOS ids: words the greedy CD output reaches first at varied steps, picked so
    that rows end at many different lengths and one still runs to T (found here, not hard-coded, so an init
    change does not silently remove the raggedness; the tests assert it is there). Extra EOS ids change no
    score, only where rows stop."""
    tok, a, b = pair
    full = [g.token_ids for g in eager(pair, prompts, greedy(ignore_eos=True))]

    def lengths(stop: set[int]) -> list[int]:
        return [next((j + 1 for j, t in enumerate(ids) if t in stop), T) for ids in full]

    vocab = sorted({t for ids in full for t in ids if t >= 4})  # words, not the specials
    stop: set[int] = {2}
    for _ in range(2):
        ok = [w for w in vocab if w not in stop and T in lengths(stop | {w})]
        stop.add(max(ok, key=lambda w: (len(set(lengths(stop | {w}))), -sum(lengths(stop | {w})))))
    a = copy.deepcopy(a)
    a.generation_config.eos_token_id = sorted(stop)
    return tok, a, b


@pytest.fixture(scope="module")
def llama_pair():
    tok = word_tokenizer(TINY_WORDS)
    pair = (tok, tiny_llama(len(tok), seed=1), tiny_llama(len(tok), seed=2))
    return with_early_eos(pair, PROMPTS)


def same(got, want):
    assert [g.index for g in got] == [g.index for g in want]
    for g, w in zip(got, want):
        assert (g.token_ids, g.finish_reason, g.text) == (w.token_ids, w.finish_reason, w.text)
        assert g.token_log_ratios == pytest.approx(w.token_log_ratios, abs=1e-4)


@pytest.mark.parametrize("batch", [1, 8])
def test_greedy_equals_eager_with_ragged_prompts_early_eos_and_refilled_rows(llama_pair, batch):
    cfg = greedy(batch_size=batch)
    want = eager(llama_pair, PROMPTS, cfg)
    lengths = {len(g.token_ids) for g in want if g.finish_reason == "eos"}
    assert len(lengths) >= 2 and any(g.finish_reason == "length" for g in want)  # the set-up is really ragged
    stats: dict = {}
    got = compiled(llama_pair, PROMPTS, cfg, stats=stats)
    same(got, want)
    # Every prompt beyond the first fill went into a slot another row had finished with.
    assert stats["slots"] == batch and stats["refills"] == len(PROMPTS) - batch


def test_refilling_takes_fewer_steps_than_batches_that_wait_for_their_longest_row(llama_pair):
    """Continuous batching: with 4 slots, the step count is below what fixed batches of 4 (same longest-first
    order) need, each running until its longest row ends, and above the bound of perfect packing."""
    cfg = greedy(batch_size=4)
    want = eager(llama_pair, PROMPTS, cfg)
    stats: dict = {}
    same(compiled(llama_pair, PROMPTS, cfg, stats=stats), want)
    order = sorted(want, key=lambda g: -len(llama_pair[0](g.prompt)["input_ids"]))
    n_gen = [len(g.token_ids) for g in order]
    fixed = sum(max(n_gen[i : i + 4]) - 1 for i in range(0, len(n_gen), 4))  # the first token comes from prefill
    assert sum(n_gen) / 4 - 1 <= stats["steps"] < fixed


@pytest.mark.parametrize(
    "kw",
    [
        dict(alpha=0.0, repetition_penalty_scope="generated"),
        dict(alpha=1.0, repetition_penalty=1.0),
        dict(alpha=0.6, relative_top=0.5, max_new_tokens=1),
        dict(ignore_eos=True, batch_size=5),
    ],
    ids=["alpha0-generated-scope", "alpha1-no-penalty", "one-token", "ignore-eos"],
)
def test_greedy_equals_eager_across_settings(llama_pair, kw):
    cfg = greedy(**kw)
    same(compiled(llama_pair, PROMPTS, cfg), eager(llama_pair, PROMPTS, cfg))


def test_absolute_positions_and_the_eager_attention_mask(tiny_pair):
    """GPT-2 (learned absolute positions, per-row position ids matter) and a Llama on the eager attention
    implementation (an additive float mask instead of sdpa's boolean one)."""
    gpt2 = (tiny_pair.tokenizer, tiny_pair.aligned, tiny_pair.base)
    same(compiled(gpt2, PROMPTS, greedy(batch_size=4)), eager(gpt2, PROMPTS, greedy(batch_size=4)))
    tok = tiny_pair.tokenizer
    plain = (tok, tiny_llama(len(tok), seed=1, attn="eager"), tiny_llama(len(tok), seed=2, attn="eager"))
    same(compiled(plain, PROMPTS, greedy(batch_size=4)), eager(plain, PROMPTS, greedy(batch_size=4)))


def test_seeded_sampling_repeats_and_the_seed_matters(llama_pair):
    cfg = CDConfig(max_new_tokens=T, batch_size=4, use_chat_template=False, temperature=1.5, top_p=1.0, seed=7)
    one, two = compiled(llama_pair, PROMPTS, cfg), compiled(llama_pair, PROMPTS, cfg)
    assert [g.token_ids for g in one] == [g.token_ids for g in two]
    other = compiled(llama_pair, PROMPTS, CDConfig(**{**cfg.__dict__, "seed": 8}))
    assert [g.token_ids for g in one] != [g.token_ids for g in other]
    assert all(1 <= len(g.token_ids) <= T for g in one)


def test_a_stop_request_returns_the_finished_rows_only(llama_pair):
    cfg = greedy(batch_size=2)
    rec = RecordingReporter(stop_after=1)
    got = compiled(llama_pair, PROMPTS, cfg, reporter=rec)
    assert 2 <= len(got) < len(PROMPTS)
    want = {g.index: g for g in eager(llama_pair, PROMPTS, cfg)}
    same(got, [want[g.index] for g in got])
    assert rec.of("progress")[0] == ("cd_generate", len(got), len(PROMPTS))
    assert any(name == "cd_compile_seconds" for name, _, _ in rec.of("metric"))


def test_engines_are_reused_for_the_same_pair_and_dropped_for_another(llama_pair, tiny_pair):
    """Caches and graphs are kept per worker for the models in use, and only for them: an engine holds its
    models, so a worker moving to another pair must not keep the old one's weights and caches alive."""
    first, again = {}, {}
    compiled(llama_pair, PROMPTS, greedy(), backend=None, stats=first)
    compiled(llama_pair, PROMPTS[1:], greedy(), backend=None, stats=again)  # same slots and cache width
    assert again["engine_reused"] and (again["slots"], again["width"]) == (first["slots"], first["width"])
    gpt2 = (tiny_pair.tokenizer, tiny_pair.aligned, tiny_pair.base)
    compiled(gpt2, PROMPTS, greedy(), backend=None)
    assert cd_compiled._ENGINES and all(e.same_models(gpt2[1], gpt2[2]) for e in cd_compiled._ENGINES)
    clear_engines()
    assert not cd_compiled._ENGINES


def test_compile_setting_is_checked_and_auto_is_eager_on_cpu(llama_pair):
    with pytest.raises(ValueError, match="compile must be one of off, on, auto"):
        CDConfig(compile="yes")
    tok, a, b = llama_pair
    assert use_compiled("off", a, b) is False and use_compiled("on", a, b) is True
    assert use_compiled("auto", a, b) is False  # CPU: the documented rule
    windowed = copy.deepcopy(a)
    windowed.config.sliding_window = 4
    with pytest.raises(ValueError, match="sliding attention window"):
        use_compiled("on", windowed, b)
    cfg = greedy(compile="auto")
    same(eager(llama_pair, PROMPTS, cfg), eager(llama_pair, PROMPTS, greedy()))


@pytest.mark.slow  # real inductor codegen: ~30-60 s on 2 CPU cores
@pytest.mark.skipif(not any(shutil.which(c) for c in ("gcc", "cc", "clang")), reason="inductor needs a C compiler")
def test_inductor_through_contrastive_generate_and_graphs_reused_across_calls():
    tok = word_tokenizer(TINY_WORDS)
    a, b = tiny_llama(len(tok), seed=1, layers=1), tiny_llama(len(tok), seed=2, layers=1)
    pair = (tok, a, b)
    cfg = greedy(batch_size=4, max_new_tokens=6)
    want = eager(pair, PROMPTS[:6], cfg)
    first, second = RecordingReporter(), RecordingReporter()
    on = greedy(batch_size=4, max_new_tokens=6, compile="on")
    same(contrastive_generate(aligned=a, base=b, tokenizer=tok, prompts=PROMPTS[:6], config=on, reporter=first), want)
    same(contrastive_generate(aligned=a, base=b, tokenizer=tok, prompts=PROMPTS[:6], config=on, reporter=second), want)
    assert "new graphs" in first.of("log")[-1] and "reused graphs" in second.of("log")[-1]
    (t1,), (t2,) = ([v for n, v, _ in r.of("metric") if n == "cd_compile_seconds"] for r in (first, second))
    assert t2 < t1 / 10
