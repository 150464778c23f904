"""Contrastive decoding: the score, the batched cached loop against a plain re-implementation, sampling
reproducibility, vocabulary checks, implicit rewards and config validation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from ml.contrastive import CDConfig, cd_scores, contrastive_generate
from ml.reporter import RecordingReporter
from ml.tiny import word_tokenizer

from .conftest import TINY_WORDS, peaked_tiny_gpt2

# Six prompts of 1..8 tokens (lengths 1, 2, 3, 5, 7, 8), so batches of 4 need real left padding.
PROMPTS = [
    "cat",
    "the dog",
    "a big red",
    "tell me about the mat",
    "one two three and then it was",
    "please tell me a short story about one",
]


def greedy_reference(
    aligned, base, tokenizer, prompt, *, alpha, relative_top, rep_penalty, max_new, eos_ids, rep_scope="all"
):
    """Batch 1, no KV cache: the full sequence is re-run every step; the same formula, written out.
    rep_scope "generated": the penalty sees only the generated ids (none at the first step)."""
    seq = list(tokenizer(prompt)["input_ids"])
    start = len(seq) if rep_scope == "generated" else 0
    rep = RepetitionPenaltyLogitsProcessor(penalty=rep_penalty) if rep_penalty != 1.0 else None
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            x = torch.tensor([seq])
            lp_post = torch.log_softmax(aligned(input_ids=x).logits[0, -1].float(), -1)
            lp_pre = torch.log_softmax(base(input_ids=x).logits[0, -1].float(), -1)
            keep = lp_post >= lp_post.max() + math.log(relative_top)
            score = torch.where(keep, lp_post - (1 - alpha) * lp_pre, torch.tensor(float("-inf")))
            if rep is not None and x.shape[1] > start:
                score = rep(x[:, start:], score[None])[0]
            t = int(score.argmax())
            out.append(t)
            seq.append(t)
            if t in eos_ids:
                break
    return out


def teacher_forced_log_ratio(aligned, base, prompt_ids, gen_ids):
    x = torch.tensor([prompt_ids + gen_ids])
    with torch.no_grad():
        lp_a = torch.log_softmax(aligned(input_ids=x).logits[0].float(), -1)
        lp_b = torch.log_softmax(base(input_ids=x).logits[0].float(), -1)
    p = len(prompt_ids)
    return [float(lp_a[p - 1 + j, t] - lp_b[p - 1 + j, t]) for j, t in enumerate(gen_ids)]


def greedy(**kw) -> CDConfig:
    base = dict(do_sample=False, max_new_tokens=10, batch_size=4, use_chat_template=False)
    base.update(kw)
    return CDConfig(**base)


# --- the score ---------------------------------------------------------------------------------------


def test_cd_scores_plausible_set_and_formula():
    torch.manual_seed(0)
    la, lb = torch.randn(3, 50) * 3, torch.randn(3, 50) * 3
    s = cd_scores(la, lb, alpha=0.4, relative_top=0.1)
    lp_post, lp_pre = torch.log_softmax(la, -1), torch.log_softmax(lb, -1)
    inside = lp_post >= lp_post.max(-1, keepdim=True).values + math.log(0.1)
    assert inside.sum() < inside.numel()  # the cut actually removes tokens here
    assert torch.isneginf(s[~inside]).all()
    assert torch.allclose(s[inside], (lp_post - 0.6 * lp_pre)[inside], atol=1e-5)
    # alpha = 1: plain log pi_post inside V
    s1 = cd_scores(la, lb, alpha=1.0, relative_top=0.1)
    assert torch.allclose(s1[inside], lp_post[inside], atol=1e-6) and torch.isneginf(s1[~inside]).all()
    # alpha = 0: pure log ratio inside V
    s0 = cd_scores(la, lb, alpha=0.0, relative_top=0.1)
    assert torch.allclose(s0[inside], (lp_post - lp_pre)[inside], atol=1e-5)


def test_cd_scores_keeps_at_least_one_token():
    la = torch.tensor([[5.0, 1.0, 0.0, -2.0]])
    lb = torch.tensor([[9.0, -9.0, 0.0, 0.0]])  # the base loves token 0: its ratio is the worst
    s = cd_scores(la, lb, alpha=0.0, relative_top=1.0)  # strictest cut: only the argmax survives
    assert torch.isfinite(s).sum() == 1 and int(s.argmax()) == 0
    # With a loose cut the ratio picks token 1 instead, though pi_post prefers token 0.
    s = cd_scores(la, lb, alpha=0.0, relative_top=1e-3)
    assert int(s.argmax()) == 1


def test_cd_scores_rejects_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        cd_scores(torch.zeros(1, 3), torch.zeros(1, 3), alpha=1.5, relative_top=0.1)
    with pytest.raises(ValueError, match="shapes"):
        cd_scores(torch.zeros(1, 3), torch.zeros(1, 4), alpha=0.5, relative_top=0.1)


# --- the batched loop against the reference ----------------------------------------------------------


def test_prompt_lengths_span_one_to_eight(tiny_pair):
    lengths = sorted(len(tiny_pair.tokenizer(p)["input_ids"]) for p in PROMPTS)
    assert lengths == [1, 2, 3, 5, 7, 8]


@pytest.mark.parametrize(
    "alpha,rep,scope",
    [(0.4, 1.2, "all"), (0.0, 1.0, "all"), (0.7, 1.5, "all"), (0.4, 1.2, "generated"), (0.7, 1.5, "generated")],
)
def test_greedy_batched_equals_batch1_no_cache_reference(tiny_pair, alpha, rep, scope):
    cfg = greedy(alpha=alpha, repetition_penalty=rep, max_new_tokens=12, repetition_penalty_scope=scope)
    gens = contrastive_generate(
        aligned=tiny_pair.aligned, base=tiny_pair.base, tokenizer=tiny_pair.tokenizer, prompts=PROMPTS, config=cfg
    )
    assert [g.index for g in gens] == list(range(len(PROMPTS)))
    for g, prompt in zip(gens, PROMPTS):
        ref = greedy_reference(
            tiny_pair.aligned,
            tiny_pair.base,
            tiny_pair.tokenizer,
            prompt,
            alpha=alpha,
            relative_top=0.1,
            rep_penalty=rep,
            max_new=12,
            eos_ids={2},
            rep_scope=scope,
        )
        assert g.prompt == prompt
        assert g.token_ids == ref, f"prompt {prompt!r}"


def test_scope_all_is_the_default_and_todays_behaviour(tiny_pair):
    kw = dict(aligned=tiny_pair.aligned, base=tiny_pair.base, tokenizer=tiny_pair.tokenizer, prompts=PROMPTS)
    assert CDConfig().repetition_penalty_scope == "all"
    default = contrastive_generate(**kw, config=greedy(max_new_tokens=12))
    explicit = contrastive_generate(**kw, config=greedy(max_new_tokens=12, repetition_penalty_scope="all"))
    assert [g.token_ids for g in explicit] == [g.token_ids for g in default]
    sampled = dict(do_sample=True, seed=3, max_new_tokens=10, batch_size=4, use_chat_template=False)
    a = contrastive_generate(**kw, config=CDConfig(**sampled))
    b = contrastive_generate(**kw, config=CDConfig(**sampled, repetition_penalty_scope="all"))
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


def _first_step_scores(tiny_pair, prompt, alpha, relative_top):
    x = torch.tensor([tiny_pair.tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        la = tiny_pair.aligned(input_ids=x).logits[0, -1]
        lb = tiny_pair.base(input_ids=x).logits[0, -1]
    return x, cd_scores(la, lb, alpha=alpha, relative_top=relative_top)


def test_scope_generated_leaves_the_prompts_tokens_unpenalised(tiny_pair):
    """A prompt whose best first token is one of its own words: under "all" a strong penalty pushes it
    down, under "generated" nothing is penalised at the first step (hand check on the scores)."""
    tok = tiny_pair.tokenizer
    alpha, rt, pen = 1.0, 1e-3, 50.0
    found = None
    for w1 in TINY_WORDS:
        for w2 in TINY_WORDS[:12]:
            prompt = f"{w1} {w2}"
            x, score = _first_step_scores(tiny_pair, prompt, alpha, rt)
            best = int(score.argmax())
            if best in x[0].tolist() and torch.isfinite(score).sum() > 1:
                found = (prompt, x, score, best)
                break
        if found:
            break
    assert found is not None, "no prompt whose greedy first token repeats a prompt word"
    prompt, x, score, best = found
    penalised = RepetitionPenaltyLogitsProcessor(penalty=pen)(x, score[None].clone())[0]
    assert int(penalised.argmax()) != best

    def first(scope):
        cfg = greedy(
            alpha=alpha, relative_top=rt, repetition_penalty=pen, max_new_tokens=1, repetition_penalty_scope=scope
        )
        return contrastive_generate(
            aligned=tiny_pair.aligned, base=tiny_pair.base, tokenizer=tok, prompts=[prompt], config=cfg
        )[0].token_ids

    assert first("generated") == [best]
    assert first("all") == [int(penalised.argmax())]


def test_early_eos_rows_are_dropped_and_still_match_reference(tiny_pair):
    """Extra EOS ids make rows finish at different steps: exercises dropping finished rows mid-batch."""
    aligned = copy.deepcopy(tiny_pair.aligned)
    full = contrastive_generate(
        aligned=aligned,
        base=tiny_pair.base,
        tokenizer=tiny_pair.tokenizer,
        prompts=PROMPTS,
        config=greedy(max_new_tokens=12),
    )
    # Stop ids: the 3rd token of prompt 0 and the 6th of prompt 3, unless seen earlier in those rows.
    eos_ids = {2, full[0].token_ids[2], full[3].token_ids[5]}
    aligned.generation_config.eos_token_id = sorted(eos_ids)
    gens = contrastive_generate(
        aligned=aligned,
        base=tiny_pair.base,
        tokenizer=tiny_pair.tokenizer,
        prompts=PROMPTS,
        config=greedy(max_new_tokens=12),
    )
    reasons = {g.finish_reason for g in gens}
    assert reasons == {"eos", "length"} or reasons == {"eos"}
    assert min(len(g.token_ids) for g in gens) <= 3
    for g, prompt in zip(gens, PROMPTS):
        ref = greedy_reference(
            aligned,
            tiny_pair.base,
            tiny_pair.tokenizer,
            prompt,
            alpha=0.4,
            relative_top=0.1,
            rep_penalty=1.2,
            max_new=12,
            eos_ids=eos_ids,
        )
        assert g.token_ids == ref
        if g.finish_reason == "eos":
            assert g.token_ids[-1] in eos_ids and not any(t in eos_ids for t in g.token_ids[:-1])
        else:
            assert len(g.token_ids) == 12


def test_alpha_one_equals_models_own_greedy_generate(tiny_pair):
    tok, model = tiny_pair.tokenizer, tiny_pair.aligned
    gens = contrastive_generate(
        aligned=model,
        base=tiny_pair.base,
        tokenizer=tok,
        prompts=PROMPTS,
        config=greedy(alpha=1.0, repetition_penalty=1.0, max_new_tokens=10),
    )
    for g, prompt in zip(gens, PROMPTS):
        x = torch.tensor([tok(prompt)["input_ids"]])
        with torch.no_grad():
            out = model.generate(
                input_ids=x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=10, pad_token_id=0
            )
        ids = out[0, x.shape[1] :].tolist()
        while ids and ids[-1] == 0 and 2 in ids:  # generate pads after EOS
            ids.pop()
        assert g.token_ids == ids


# --- sampling ------------------------------------------------------------------------------------------


def test_seeded_sampling_is_reproducible_and_seed_dependent(tiny_pair):
    def run(seed):
        cfg = CDConfig(
            do_sample=True,
            seed=seed,
            max_new_tokens=10,
            batch_size=4,
            use_chat_template=False,
            temperature=1.0,
            top_p=0.95,
        )
        return [
            g.token_ids
            for g in contrastive_generate(
                aligned=tiny_pair.aligned,
                base=tiny_pair.base,
                tokenizer=tiny_pair.tokenizer,
                prompts=PROMPTS,
                config=cfg,
            )
        ]

    torch.manual_seed(123)
    first = run(7)
    torch.rand(1000)  # other users of the global RNG must not change our samples
    torch.manual_seed(999)
    assert run(7) == first
    assert run(8) != first


# --- checks and rewards --------------------------------------------------------------------------------


def test_vocab_mismatch_names_first_differing_token(tiny_pair):
    other = word_tokenizer(["the", "a", "zebra", *TINY_WORDS[3:]])  # id 6: 'zebra' instead of 'cat'
    with pytest.raises(ValueError, match=r"token id 6 is 'cat'.*'zebra'"):
        contrastive_generate(
            aligned=tiny_pair.aligned,
            base=tiny_pair.base,
            tokenizer=tiny_pair.tokenizer,
            base_tokenizer=other,
            prompts=["the"],
            config=greedy(),
        )


def test_model_vocab_size_mismatch_raises(tiny_pair):
    bigger = peaked_tiny_gpt2(len(tiny_pair.tokenizer) + 5, seed=3)
    with pytest.raises(ValueError, match="output tokens"):
        contrastive_generate(
            aligned=tiny_pair.aligned, base=bigger, tokenizer=tiny_pair.tokenizer, prompts=["the"], config=greedy()
        )


def test_implicit_reward_equals_teacher_forced_log_ratio(tiny_pair):
    cfg = CDConfig(do_sample=True, seed=3, max_new_tokens=10, batch_size=4, use_chat_template=False)
    gens = contrastive_generate(
        aligned=tiny_pair.aligned, base=tiny_pair.base, tokenizer=tiny_pair.tokenizer, prompts=PROMPTS, config=cfg
    )
    for g in gens:
        ref = teacher_forced_log_ratio(
            tiny_pair.aligned, tiny_pair.base, tiny_pair.tokenizer(g.prompt)["input_ids"], g.token_ids
        )
        assert g.implicit_reward.n_tokens == len(g.token_ids) == len(ref)
        assert g.token_log_ratios == pytest.approx(ref, abs=1e-4)
        assert g.implicit_reward.sum == pytest.approx(sum(ref), abs=1e-3)
        assert g.implicit_reward.mean == pytest.approx(sum(ref) / len(ref), abs=1e-4)


def test_stop_string_truncates_text_and_ids(tiny_pair):
    kw = dict(aligned=tiny_pair.aligned, base=tiny_pair.base, tokenizer=tiny_pair.tokenizer, prompts=PROMPTS[3:4])
    full = contrastive_generate(**kw, config=greedy(max_new_tokens=12))[0]
    words = full.text.split()
    stop = words[4]
    first = words.index(stop)
    cut = contrastive_generate(**kw, config=greedy(max_new_tokens=12, stop_strings=[stop]))[0]
    assert cut.finish_reason == "stop_string"
    assert cut.text.strip() == " ".join(words[:first])
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)] and len(cut.token_ids) == first + 1
    assert cut.implicit_reward.sum == pytest.approx(sum(full.token_log_ratios[: first + 1]), abs=1e-5)


def test_reporter_progress_and_stop(tiny_pair):
    rep = RecordingReporter(stop_after=1)
    gens = contrastive_generate(
        aligned=tiny_pair.aligned,
        base=tiny_pair.base,
        tokenizer=tiny_pair.tokenizer,
        prompts=PROMPTS,
        config=greedy(batch_size=2),
        reporter=rep,
    )
    assert rep.of("progress") == [("cd_generate", 2, 6)]
    assert len(gens) == 2
    # The longest prompts go first (less padding); the returned ones keep their input indices.
    full = contrastive_generate(
        aligned=tiny_pair.aligned,
        base=tiny_pair.base,
        tokenizer=tiny_pair.tokenizer,
        prompts=PROMPTS,
        config=greedy(batch_size=2),
    )
    for g in gens:
        assert g.token_ids == full[g.index].token_ids


def test_chat_template_wraps_prompt(tiny_pair):
    tok = copy.deepcopy(tiny_pair.tokenizer)
    tok.chat_template = (
        "{% for m in messages %}tell me {{ m['content'] }}{% endfor %}{% if add_generation_prompt %} please{% endif %}"
    )
    from ml.contrastive import encode_prompt

    assert encode_prompt(tok, "cat", use_chat_template=True) == tok("tell me cat please")["input_ids"]
    assert encode_prompt(tok, "cat", use_chat_template=False) == tok("cat")["input_ids"]
    assert encode_prompt(tok, "", use_chat_template=False) == [tok.bos_token_id]


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(alpha=1.2), "alpha"),
        (dict(alpha=-0.1), "alpha"),
        (dict(relative_top=0.0), "relative_top"),
        (dict(relative_top=1.5), "relative_top"),
        (dict(temperature=0.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.1), "top_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(repetition_penalty_scope="prompt"), "repetition_penalty_scope must be one of all, generated"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(batch_size=0), "batch_size"),
        (dict(stop_strings="\n"), "stop_strings"),
        (dict(stop_strings=[""]), "stop_strings"),
        (dict(max_prompt_tokens=0), "max_prompt_tokens"),
    ],
)
def test_invalid_config_raises(kw, needle):
    with pytest.raises(ValueError, match=needle):
        CDConfig(**kw)


def test_too_long_prompt_raises_clearly(tiny_pair):
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        contrastive_generate(
            aligned=tiny_pair.aligned,
            base=tiny_pair.base,
            tokenizer=tiny_pair.tokenizer,
            prompts=["the"],
            config=greedy(max_new_tokens=200),
        )
    gens = contrastive_generate(
        aligned=tiny_pair.aligned,
        base=tiny_pair.base,
        tokenizer=tiny_pair.tokenizer,
        prompts=[PROMPTS[-1]],
        config=greedy(max_new_tokens=120, max_prompt_tokens=8, ignore_eos=True),
    )
    assert len(gens[0].token_ids) == 120


@pytest.mark.gpu
def test_cuda_matches_cpu_greedy_and_samples_reproducibly(tiny_pair):
    aligned, base = copy.deepcopy(tiny_pair.aligned).cuda(), copy.deepcopy(tiny_pair.base).cuda()
    aligned.generation_config.eos_token_id = [2, 9]  # rows finish early: exercises the GPU drop path
    cpu_aligned = copy.deepcopy(tiny_pair.aligned)
    cpu_aligned.generation_config.eos_token_id = [2, 9]
    kw = dict(tokenizer=tiny_pair.tokenizer, prompts=PROMPTS)
    on_gpu = contrastive_generate(aligned=aligned, base=base, config=greedy(max_new_tokens=12), **kw)
    on_cpu = contrastive_generate(aligned=cpu_aligned, base=tiny_pair.base, config=greedy(max_new_tokens=12), **kw)
    assert [g.token_ids for g in on_gpu] == [g.token_ids for g in on_cpu]
    sampled = CDConfig(do_sample=True, seed=4, max_new_tokens=12, batch_size=4, use_chat_template=False)
    first = contrastive_generate(aligned=aligned, base=base, config=sampled, **kw)
    again = contrastive_generate(aligned=aligned, base=base, config=sampled, **kw)
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
