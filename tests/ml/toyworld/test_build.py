"""The tiny build: manifest shape, loadable models, disjoint prompt files, idempotence, stop."""

from pathlib import Path

import pytest

from ml.io import read_jsonl
from ml.modeling import load_causal_lm, load_tokenizer, vocab_fingerprint
from ml.reporter import RecordingReporter
from ml.toyworld.build import build, world_dir


def test_manifest_lists_models_prompts_and_gold(tiny_review):
    m = tiny_review
    assert m["version"] == 2 and m["world"] == "review" and m["size"] == "tiny"
    assert m["gold"] == "toy:review" and m["label_gold"] == "toy:review:proxy"
    # Weak alignment's pairs were labelled by the proxy, not by the gold that evaluates (labeler is not evaluator).
    from ml.gold import get_gold

    proxy = get_gold("toy:review:proxy")
    prefs = read_jsonl(Path(m["root"]) / "weak_align" / "preferences.jsonl")
    assert prefs and all(r["chosen_gold"] == pytest.approx(proxy(r["prompt"], r["chosen"])) for r in prefs)
    assert set(m["models"]) == {"weak_base", "weak_aligned", "strong_base"}
    assert {"train", "heldout"} <= set(m["prompts"])
    toks = [load_tokenizer(p) for p in m["models"].values()]
    assert len({vocab_fingerprint(t) for t in toks}) == 1  # one vocabulary for the whole world
    base = load_causal_lm(m["models"]["weak_base"], device="cpu")
    strong = load_causal_lm(m["models"]["strong_base"], device="cpu")
    assert strong.num_parameters() > base.num_parameters()
    train = {r["prompt"] for r in read_jsonl(m["prompts"]["train"])}
    held = {r["prompt"] for r in read_jsonl(m["prompts"]["heldout"])}
    assert train and held and not train & held
    assert Path(m["root"], "manifest.json").exists()


def test_build_is_cached(tiny_review, tmp_path):
    root = Path(tiny_review["root"])
    data_dir = root.parents[2]
    weights = next(Path(tiny_review["models"]["weak_aligned"]).glob("*.safetensors"))
    before = weights.stat().st_mtime_ns
    rec = RecordingReporter()
    again = build("review", seed=0, data_dir=data_dir, size="tiny", reporter=rec)
    assert again == tiny_review
    assert weights.stat().st_mtime_ns == before
    assert not rec.of("progress")  # nothing was trained again


def test_stop_leaves_no_manifest(tmp_path):
    rec = RecordingReporter(stop_after=1)
    out = build("sort", seed=1, data_dir=tmp_path, size="tiny", reporter=rec)
    assert out["stopped"] is True
    assert not (world_dir("sort", 1, tmp_path, "tiny") / "manifest.json").exists()


def test_default_data_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CONGWEB_DATA_DIR", str(tmp_path))
    assert world_dir("review", 3) == tmp_path / "toyworld" / "review" / "seed3"


def test_bad_size_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="size"):
        build("review", 0, tmp_path, size="huge")


def test_find_manifests(tiny_review):
    from ml.toyworld.build import find_manifests

    data_dir = Path(tiny_review["root"]).parents[2]
    found = find_manifests(data_dir)
    assert [m["root"] for m in found if m["world"] == "review"] == [tiny_review["root"]]
