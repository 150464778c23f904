"""Sharded generation (ml.shards): n shards hold exactly the rows of one unsharded run, each resumes alone, and
the merge refuses what is not the whole stage."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ml.contrastive import CDConfig
from ml.io import read_json, read_jsonl, write_jsonl
from ml.reporter import RecordingReporter
from ml.shards import Shard, generation_plan, merge_shards, run_shards_here, shard_count
from ml.stages.generate import CDGenerateConfig, PlainGenerateConfig, cd_generate, plain_generate

from .conftest import TINY_PROMPTS


def cd_config(dirs, prompts, out, **cd) -> CDGenerateConfig:
    settings = dict(do_sample=True, temperature=1.0, max_new_tokens=6, batch_size=1, use_chat_template=False)
    settings.update(cd)
    return CDGenerateConfig(
        aligned=dirs["aligned"], base=dirs["base"], prompts=prompts, output_dir=str(out), device="cpu",
        cd=CDConfig(**settings),
    )  # fmt: skip


def rows(out) -> list[dict]:
    return read_jsonl(Path(out) / "samples.jsonl")


def test_shard_takes_every_nth_chunk_and_parses_its_name():
    s = Shard.parse("1/3")
    assert (s.index, s.count, str(s)) == (1, 3, "1/3")
    assert [k for k in range(8) if s.takes(k)] == [1, 4, 7]
    assert s.dir("/r/cd") == Path("/r/cd/shards/1-of-3")
    for bad in ("3/3", "-1/2", "1/0", "1", "a/b"):
        with pytest.raises(ValueError):
            Shard.parse(bad)


@pytest.mark.parametrize(
    ("requested", "workers", "items", "batch", "want"),
    [
        ("auto", 2, 100, 8, 2),  # one shard per live worker
        ("auto", 0, 100, 8, 1),  # nobody seen: one
        ("auto", 8, 20, 8, 3),  # capped: each shard gets at least one batch (20 rows = 3 chunks)
        (4, 1, 100, 8, 4),  # a number is taken as asked ...
        (4, 1, 10, 8, 2),  # ... up to the number of chunks
        (1, 5, 100, 8, 1),
    ],
)
def test_shard_count(requested, workers, items, batch, want):
    assert shard_count(requested, workers, items, batch) == want


@pytest.mark.parametrize("n", [2, 3])
def test_sampled_shards_merge_into_exactly_the_unsharded_rows(tiny_pair_dirs, tiny_prompts_file, tmp_path, n):
    whole = cd_generate(cd_config(tiny_pair_dirs, tiny_prompts_file, tmp_path / "whole"))
    cfg = cd_config(tiny_pair_dirs, tiny_prompts_file, tmp_path / "sharded")
    parts = [cd_generate(replace(cfg, shard=f"{i}/{n}")) for i in range(n)]
    assert sum(p["n"] for p in parts) == len(TINY_PROMPTS)
    assert all(p["n"] >= 1 for p in parts)  # 6 chunks over n shards: nobody idle
    assert not (tmp_path / "sharded" / "samples.jsonl").exists()  # nothing merged before merge_shards
    merged = merge_shards(cfg, n)
    assert rows(tmp_path / "sharded") == rows(tmp_path / "whole")  # same tokens, same order, sampled
    assert merged["n"] == whole["n"] and merged["shards"] == n
    assert merged["mean_implicit_reward"] == pytest.approx(whole["mean_implicit_reward"])
    assert read_json(tmp_path / "sharded" / "DONE.json") == merged
    assert cd_generate(cfg) == merged  # the finished stage is not generated again


def test_a_stopped_shard_resumes_alone_and_the_merge_waits_for_it(tiny_pair_dirs, tiny_prompts_file, tmp_path):
    cfg = cd_config(tiny_pair_dirs, tiny_prompts_file, tmp_path / "cd")
    done0 = cd_generate(replace(cfg, shard="0/2"))
    first = cd_generate(replace(cfg, shard="1/2"), RecordingReporter(stop_after=1))
    assert first["stopped"] is True and first["n"] == 1
    with pytest.raises(ValueError, match=r"shard 1/2 .* has not finished"):
        merge_shards(cfg, 2)
    rep = RecordingReporter()
    done1 = cd_generate(replace(cfg, shard="1/2"), rep)
    assert rep.of("progress")[0] == ("cd_generate", 2, 3)  # picked up after its first row, of its own 3
    assert cd_generate(replace(cfg, shard="0/2")) == done0  # shard 0 untouched: not run again
    merge_shards(cfg, 2)
    assert done1["n"] == 3 and [r["index"] for r in rows(tmp_path / "cd")] == list(range(len(TINY_PROMPTS)))
    assert rows(tmp_path / "cd") == rows(cd_generate_whole(tiny_pair_dirs, tiny_prompts_file, tmp_path))


def cd_generate_whole(dirs, prompts, tmp_path) -> Path:
    cd_generate(cd_config(dirs, prompts, tmp_path / "ref"))
    return tmp_path / "ref"


def test_the_merge_refuses_shards_that_are_not_the_whole_stage(tiny_pair_dirs, tiny_prompts_file, tmp_path):
    cfg = cd_config(tiny_pair_dirs, tiny_prompts_file, tmp_path / "cd")
    for i in range(2):
        cd_generate(replace(cfg, shard=f"{i}/2"))
    part = Shard(1, 2).dir(cfg.output_dir) / "samples.jsonl"
    kept = read_jsonl(part)
    write_jsonl(part, kept[:-1])  # a row lost
    with pytest.raises(ValueError, match="hold 5 distinct of 6 samples"):
        merge_shards(cfg, 2)
    write_jsonl(part, kept + [kept[0]])  # a row twice
    with pytest.raises(ValueError, match=r"hold 6 distinct of 6 samples \(7 rows\)"):
        merge_shards(cfg, 2)


def test_plain_generation_shards_and_the_local_runner(tiny_pair_dirs, tiny_prompts_file, tmp_path):
    def plain(out) -> PlainGenerateConfig:
        sampling = CDConfig(do_sample=True, max_new_tokens=5, batch_size=2, use_chat_template=False)
        return PlainGenerateConfig(
            model=tiny_pair_dirs["aligned"], base=tiny_pair_dirs["base"], prompts=tiny_prompts_file,
            output_dir=str(out), device="cpu", sampling=sampling,
        )  # fmt: skip

    plain_generate(plain(tmp_path / "whole"))
    cfg = plain(tmp_path / "sharded")
    assert generation_plan(cfg) == (6, 2)
    out = run_shards_here(5)("plain_generate", plain_generate, cfg, RecordingReporter())
    assert out["shards"] == 3  # 6 rows at 2 per chunk: three chunks, so at most three shards
    assert rows(tmp_path / "sharded") == rows(tmp_path / "whole")


def test_self_sample_and_evaluate_shards_give_the_unsharded_rows_and_metrics(tmp_path):
    """The strong model's sampling (self_sample, and evaluate's responses) in shards: batch k is seeded by its
    first prompt's index wherever it runs, so the joined rows, and evaluate's scores of them, are those of one
    run. A stopped shard resumes alone."""
    from ml.stages.evaluate import EvaluateConfig, evaluate
    from ml.stages.self_sample import SelfSampleConfig, self_sample

    from ._stage_fixtures import count_a, save_tiny, write_prompts

    model = save_tiny(tmp_path / "m", seed=4)
    prompts = write_prompts(tmp_path / "p.jsonl")

    def ss(out) -> SelfSampleConfig:
        return SelfSampleConfig(
            model=model, prompts=prompts, output_dir=str(tmp_path / out), batch_size=2, max_new_tokens=5
        )

    def ev(out) -> EvaluateConfig:
        return EvaluateConfig(
            output_dir=str(tmp_path / out), gold=count_a, model=model, prompts=prompts, n_samples=2, batch_size=2,
            max_new_tokens=5, seed=7,
        )  # fmt: skip

    assert ss("s").shard_plan() == (6, 2) and ev("e").shard_plan() == (6, 2)
    whole_ss, whole_ev = self_sample(ss("ss-whole")), evaluate(ev("ev-whole"))
    stopped = self_sample(replace(ss("ss-3"), shard="1/3"), RecordingReporter(stop_after=0))
    assert stopped.get("stopped") is True
    sharded_ss = run_shards_here(3)("self_sample", self_sample, ss("ss-3"), RecordingReporter())
    sharded_ev = run_shards_here(2)("evaluate", evaluate, ev("ev-2"), RecordingReporter())
    assert rows(tmp_path / "ss-3") == rows(tmp_path / "ss-whole")
    assert {k: v for k, v in sharded_ss.items() if k != "samples"} == {
        k: v for k, v in whole_ss.items() if k != "samples"
    }
    assert rows(tmp_path / "ev-2") == rows(tmp_path / "ev-whole")  # scored rows, in the same order
    assert sharded_ev["gold_mean"] == whole_ev["gold_mean"] and sharded_ev["n"] == whole_ev["n"] == 12
    given = EvaluateConfig(
        output_dir=str(tmp_path / "given"), gold=count_a, samples=str(tmp_path / "ev-2" / "samples.jsonl")
    )
    assert given.shard_plan() is None  # scoring given samples generates nothing: it runs whole


def test_shard_units_add_up_to_the_stage():
    for n_items, batch, count in [(6, 2, 3), (7, 2, 2), (100, 8, 3), (1, 4, 1)]:
        units = [Shard(i, count).units(n_items, batch) for i in range(count)]
        assert sum(units) == n_items
    assert [Shard(i, 2).units(7, 2) for i in range(2)] == [4, 3]  # chunks 2,2,2,1: 0 and 2 vs 1 and 3
