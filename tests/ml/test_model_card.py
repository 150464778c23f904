"""Model cards (ml.model_card): a tiny pipeline run leaves a README.md in every model folder it trained, saying the
base model, the data, the method, the hyperparameters as run, the training summary and the held-out results; the
inputs it did not train get none."""

from __future__ import annotations

from pathlib import Path

from ml.io import read_json
from ml.model_card import CARD, write_model_cards
from ml.pipeline import LABELS, PipelineConfig, run
from ml.results import method_rows
from tests.ml._stage_fixtures import FAST, tiny_config


def test_a_pipeline_run_writes_a_card_into_each_model_it_trained(tmp_path):
    cfg = tiny_config(tmp_path, methods=["cong_s", "weak_post"], sft={**FAST, "learning_rate": 0.00123})
    res = run(PipelineConfig.from_dict(cfg))
    out = tmp_path / "run"

    card = (out / "sft_cong_s" / "model" / CARD).read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert f"# {LABELS['cong_s']} (`cong_s`)" in card and "stage: `sft_cong_s` (SFTStageConfig)" in card
    assert "- model: `strong`" in card  # the base model, by its folder's name (never the server's path)
    assert str(tmp_path) not in card
    n_cd = sum(1 for line in (out / "cd_generate" / "samples.jsonl").read_text().splitlines() if line.strip())
    assert f"- data: `cd_generate/samples.jsonl` ({n_cd} rows)" in card
    assert "- training prompts: `train.jsonl`" in card and "- gold reward: `test:count_a`" in card
    assert "| learning_rate | 0.00123 |" in card and "| per_device_train_batch_size | 2 |" in card
    assert "| model |" not in card and "| output_dir |" not in card  # internal fields are no hyperparameters
    done = read_json(out / "sft_cong_s" / "DONE.json")
    assert f"- steps: {done['steps']}" in card and f"- n_examples: {done['n_examples']}" in card
    (row,) = method_rows("cong", {"methods": {"cong_s": res["methods"]["cong_s"]}})
    assert row.gold_mean is not None and row.gold_lo is not None and row.gold_hi is not None
    # No WeakSFT in this run, so no win rate: the card says so rather than inventing one.
    assert f"| {row.gold_mean:.4g} | [{row.gold_lo:.4g}, {row.gold_hi:.4g}] | - | {row.implicit_mean:.4g} |" in card
    assert "- the run's weak pair: pi_pre `pre`, pi_post `weak_align/model`" in card

    # pi_post, trained by the pipeline's weak_align and evaluated as weak_post: its card names that method.
    post = (out / "weak_align" / "model" / CARD).read_text()
    assert f"# {LABELS['weak_post']} (`weak_post`)" in post and "- model: `pre`" in post
    assert "| k | 3 |" in post and "| beta |" in post
    # Inputs are nobody's output: the strong model's folder is left as it was.
    assert not (Path(cfg["strong"]) / CARD).exists() and not (Path(cfg["weak_base"]) / CARD).exists()
    # Generation and evaluation stages trained nothing.
    assert not list((out / "cd_generate").rglob(CARD)) and not list((out / "eval").rglob(CARD))

    # A rerun (everything resumed) writes the same cards.
    run(PipelineConfig.from_dict(cfg))
    assert (out / "sft_cong_s" / "model" / CARD).read_text() == card


def test_a_stage_that_did_not_finish_gets_no_card(tmp_path):
    from ml.stages.sft import SFTStageConfig

    folder = tmp_path / "run" / "sft_cong_s"
    cfg = SFTStageConfig(model=str(tmp_path / "m"), output_dir=str(folder), data=str(tmp_path / "d.jsonl"))
    assert write_model_cards({"sft_cong_s": cfg}) == []  # no DONE.json
    (folder / "model").mkdir(parents=True)
    (folder / "DONE.json").write_text('{"model_dir": "%s"}' % (folder / "model"))
    assert write_model_cards({"sft_cong_s": cfg}) == []  # DONE.json, but no model in the folder
    (folder / "model" / "config.json").write_text("{}")
    (path,) = write_model_cards({"sft_cong_s": cfg})
    text = path.read_text()
    assert "Not evaluated by the pipeline" in text and "| learning_rate | 1e-05 |" in text


def test_a_weak_align_job_leaves_a_card_in_pi_post(tmp_path, capsys):
    """`python -m ml job weak_align` (ml.execute, the web worker's path too): pi_post gets its card, no results."""
    from ml.cli import main
    from tests.ml._stage_fixtures import save_tiny, write_prompts

    base = save_tiny(tmp_path / "models" / "pre", seed=11)
    prompts = write_prompts(tmp_path / "train.jsonl")
    out = tmp_path / "run"
    args = ["job", "weak_align", "--weak-base", base, "--prompts", prompts, "--gold", "test:count_a"]
    flags = ["--max-new-tokens", "4", "--weak_align.k", "3", "--weak_align.max-steps", "1"]
    flags += ["--weak_align.max-length", "32"]  # the tiny model's context is 64
    assert main([*args, "--out", str(out), "--quiet", *flags]) == 0, capsys.readouterr()
    card = (out / "weak_align" / "model" / CARD).read_text()
    assert card.startswith("# Weak alignment", card.index("---\n\n") + 5)
    assert "- model: `pre`" in card and "- prompts: `train.jsonl` (6 rows)" in card and "| k | 3 |" in card
    assert "Not evaluated by the pipeline" in card
