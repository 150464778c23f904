"""The generation stages: output format, crash/stop resumption, idempotent reruns, plain sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml.contrastive import CDConfig
from ml.io import read_json, read_jsonl
from ml.reporter import RecordingReporter
from ml.scoring import implicit_rewards_from_ids
from ml.stages.generate import CDGenerateConfig, PlainGenerateConfig, cd_generate, plain_generate

from .conftest import TINY_PROMPTS

FIELDS = {
    "index",
    "sample",
    "prompt",
    "response",
    "token_ids",
    "n_tokens",
    "implicit_reward_sum",
    "implicit_reward_mean",
    "alpha",
    "finish_reason",
}


def cd_config(dirs, prompts, out, **cd) -> CDGenerateConfig:
    settings = dict(do_sample=False, max_new_tokens=8, batch_size=2, use_chat_template=False)
    settings.update(cd)
    return CDGenerateConfig(
        aligned=dirs["aligned"],
        base=dirs["base"],
        prompts=prompts,
        output_dir=str(out),
        device="cpu",
        cd=CDConfig(**settings),
    )


def rows_of(out) -> list[dict]:
    return read_jsonl(Path(out) / "samples.jsonl")


def test_cd_generate_writes_rows_and_summary(tiny_pair_dirs, tiny_prompts_file, tmp_path):
    rep = RecordingReporter()
    summary = cd_generate(cd_config(tiny_pair_dirs, tiny_prompts_file, tmp_path / "cd"), rep)
    rows = rows_of(tmp_path / "cd")
    assert [r["index"] for r in rows] == list(range(len(TINY_PROMPTS)))
    for r in rows:
        assert set(r) == FIELDS
        assert r["prompt"] == TINY_PROMPTS[r["index"]] and r["alpha"] == 0.4
        assert r["n_tokens"] == len(r["token_ids"]) and 1 <= r["n_tokens"] <= 8
    done = read_json(tmp_path / "cd" / "DONE.json")
    assert done == summary and summary["n"] == len(TINY_PROMPTS) and summary["tokens_per_s"] > 0
    mean = sum(r["implicit_reward_sum"] for r in rows) / len(rows)
    assert summary["mean_implicit_reward"] == pytest.approx(mean)
    progress = rep.of("progress")
    assert progress[-1] == ("cd_generate", 6, 6) and len(progress) == 3
    assert len(rep.of("sample")) == 6  # two per batch of two
    assert {e["alpha"] for e in rep.of("sample")} == {0.4}  # a sweep's page files each sample under its alpha


def test_cd_generate_resumes_after_stop_and_matches_uninterrupted_run(tiny_pair_dirs, tiny_prompts_file, tmp_path):
    full = cd_generate(cd_config(tiny_pair_dirs, tiny_prompts_file, tmp_path / "full"))
    out = tmp_path / "resumed"
    first = cd_generate(cd_config(tiny_pair_dirs, tiny_prompts_file, out), RecordingReporter(stop_after=1))
    assert first["stopped"] is True and first["n"] == 2
    assert len(rows_of(out)) == 2 and not (out / "DONE.json").exists()
    second = cd_generate(cd_config(tiny_pair_dirs, tiny_prompts_file, out))
    rows = rows_of(out)
    assert len(rows) == 6 and len({r["index"] for r in rows}) == 6
    assert rows == rows_of(tmp_path / "full")
    assert second["n"] == full["n"] == 6


def test_sampled_run_resumes_after_torn_write_with_identical_rows(tiny_pair_dirs, tiny_prompts_file, tmp_path):
    kw = dict(do_sample=True, seed=5, temperature=1.0)
    cd_generate(cd_config(tiny_pair_dirs, tiny_prompts_file, tmp_path / "full", **kw))
    reference = rows_of(tmp_path / "full")
    out = tmp_path / "crashed"
    cd_generate(cd_config(tiny_pair_dirs, tiny_prompts_file, out, **kw), RecordingReporter(stop_after=2))
    path = out / "samples.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    # A crash mid-append: the last row is torn, one row of the first batch lost.
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    cd_generate(cd_config(tiny_pair_dirs, tiny_prompts_file, out, **kw))
    rows = rows_of(out)
    assert [(r["index"], r["sample"]) for r in rows] == [(i, 0) for i in range(6)]
    assert rows == reference


def test_rerun_is_idempotent(tiny_pair_dirs, tiny_prompts_file, tmp_path):
    cfg = cd_config(tiny_pair_dirs, tiny_prompts_file, tmp_path / "cd")
    first = cd_generate(cfg)
    before = (tmp_path / "cd" / "samples.jsonl").read_bytes()
    rep = RecordingReporter()
    assert cd_generate(cfg, rep) == first
    assert (tmp_path / "cd" / "samples.jsonl").read_bytes() == before and rep.events == []


def test_changed_alpha_in_same_output_dir_is_refused(tiny_pair_dirs, tiny_prompts_file, tmp_path):
    cd_generate(cd_config(tiny_pair_dirs, tiny_prompts_file, tmp_path / "cd"), RecordingReporter(stop_after=1))
    with pytest.raises(ValueError, match="alpha"):
        cd_generate(cd_config(tiny_pair_dirs, tiny_prompts_file, tmp_path / "cd", alpha=0.9))


def test_several_samples_per_prompt(tiny_pair_dirs, tiny_prompts_file, tmp_path):
    cfg = CDGenerateConfig(
        aligned=tiny_pair_dirs["aligned"],
        base=tiny_pair_dirs["base"],
        prompts=tiny_prompts_file,
        output_dir=str(tmp_path / "cd"),
        device="cpu",
        samples_per_prompt=3,
        max_prompts=4,
        cd=dict(do_sample=True, max_new_tokens=6, batch_size=5, use_chat_template=False),
    )
    summary = cd_generate(cfg)
    rows = rows_of(tmp_path / "cd")
    assert summary["n"] == 12 and [(r["index"], r["sample"]) for r in rows] == [
        (i, s) for i in range(4) for s in range(3)
    ]
    assert len({tuple(r["token_ids"]) for r in rows}) > 4  # samples of one prompt differ


def test_plain_generate_with_and_without_base(tiny_pair, tiny_pair_dirs, tiny_prompts_file, tmp_path):
    sampling = dict(do_sample=True, seed=2, max_new_tokens=7, batch_size=4, use_chat_template=False)
    cfg = PlainGenerateConfig(
        model=tiny_pair_dirs["aligned"],
        base=tiny_pair_dirs["base"],
        prompts=tiny_prompts_file,
        output_dir=str(tmp_path / "plain"),
        device="cpu",
        sampling=sampling,
    )
    summary = plain_generate(cfg)
    rows = rows_of(tmp_path / "plain")
    assert summary["n"] == 6 and all(set(r) == FIELDS and r["alpha"] is None for r in rows)
    tok = tiny_pair.tokenizer
    scored = implicit_rewards_from_ids(
        aligned=tiny_pair.aligned,
        base=tiny_pair.base,
        pairs=[(tok(r["prompt"])["input_ids"], r["token_ids"]) for r in rows],
    )
    for r, s in zip(rows, scored):
        assert r["implicit_reward_sum"] == pytest.approx(s["sum"], abs=1e-3)
    # Same seed -> same samples; no base -> no reward.
    cfg2 = PlainGenerateConfig(
        model=tiny_pair_dirs["aligned"],
        prompts=tiny_prompts_file,
        output_dir=str(tmp_path / "plain2"),
        device="cpu",
        sampling=sampling,
    )
    plain_generate(cfg2)
    rows2 = rows_of(tmp_path / "plain2")
    assert [r["token_ids"] for r in rows2] == [r["token_ids"] for r in rows]
    assert all(r["implicit_reward_sum"] is None for r in rows2)


def test_config_from_flat_or_nested_dict_and_errors(tiny_pair_dirs, tiny_prompts_file, tmp_path):
    common = dict(aligned="a", base="b", prompts="p.jsonl", output_dir=str(tmp_path))
    flat = CDGenerateConfig.from_dict({**common, "alpha": 0.3, "batch_size": 4})
    nested = CDGenerateConfig.from_dict({**common, "cd": {"alpha": 0.3, "batch_size": 4}})
    assert flat == nested and flat.cd.alpha == 0.3
    json.dumps(flat.__dict__, default=lambda o: o.__dict__)  # serialisable for the job record
    with pytest.raises(ValueError, match="unknown setting"):
        CDGenerateConfig.from_dict({**common, "alhpa": 0.3})
    with pytest.raises(ValueError, match="alpha"):
        CDGenerateConfig.from_dict({**common, "alpha": 2.0})
    with pytest.raises(ValueError, match="base"):
        CDGenerateConfig(aligned="a", prompts="p", output_dir="o")
    with pytest.raises(ValueError, match="do_sample"):
        CDGenerateConfig(**common, samples_per_prompt=2, cd={"do_sample": False})


def _plain_greedy_reference(model, tok, prompt, *, penalty, scope, max_new, eos=2):
    """Batch 1, no cache, pi_post alone, greedy; the penalty sees prompt + generated ids or generated only."""
    import torch
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    seq = list(tok(prompt)["input_ids"])
    start = len(seq) if scope == "generated" else 0
    rep = RepetitionPenaltyLogitsProcessor(penalty=penalty)
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            x = torch.tensor([seq])
            # Plain sampling is CD at alpha 1 (ml.plain_sampling): the penalty acts on log pi_post, not raw logits.
            score = model(input_ids=x).logits[0, -1:].float().log_softmax(-1)
            if x.shape[1] > start:
                score = rep(x[:, start:], score)
            t = int(score[0].argmax())
            out.append(t)
            seq.append(t)
            if t == eos:
                break
    return out


@pytest.mark.parametrize("scope", ["all", "generated"])
def test_plain_generate_repetition_penalty_scope_matches_reference(
    tiny_pair, tiny_pair_dirs, tiny_prompts_file, tmp_path, scope
):
    """Left-padded batches through model.generate: scope "generated" penalises only what each row generated
    (the padded prompt width is cut off), scope "all" each row's prompt and generated ids, never its padding."""
    sampling = dict(
        do_sample=False,
        max_new_tokens=10,
        batch_size=4,
        use_chat_template=False,
        repetition_penalty=3.0,
        repetition_penalty_scope=scope,
    )
    plain_generate(
        PlainGenerateConfig(
            model=tiny_pair_dirs["aligned"],
            prompts=tiny_prompts_file,
            device="cpu",
            output_dir=str(tmp_path / scope),
            sampling=sampling,
        )
    )
    rows = rows_of(tmp_path / scope)
    for r in rows:
        assert r["token_ids"] == _plain_greedy_reference(
            tiny_pair.aligned, tiny_pair.tokenizer, r["prompt"], penalty=3.0, scope=scope, max_new=10
        ), r["prompt"]


def test_plain_generate_scopes_differ_and_sampling_runs(tiny_pair, tiny_pair_dirs, tiny_prompts_file, tmp_path):
    def run(name, **kw):
        sampling = dict(max_new_tokens=10, batch_size=4, use_chat_template=False, repetition_penalty=3.0, **kw)
        plain_generate(
            PlainGenerateConfig(
                model=tiny_pair_dirs["aligned"],
                prompts=tiny_prompts_file,
                device="cpu",
                output_dir=str(tmp_path / name),
                sampling=sampling,
            )
        )
        return [r["token_ids"] for r in rows_of(tmp_path / name)]

    greedy_all = run("ga", do_sample=False)
    greedy_gen = run("gg", do_sample=False, repetition_penalty_scope="generated")
    assert greedy_all != greedy_gen  # some prompt's own words are what pi_post wants to say
    a = run("sa", do_sample=True, seed=4, repetition_penalty_scope="generated")
    b = run("sb", do_sample=True, seed=4, repetition_penalty_scope="generated")
    assert a == b and all(len(x) >= 1 for x in a)
