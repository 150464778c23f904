"""ml.spec / ml.resolve: the registry of what a job may be asked to do (no web stack here)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from ml.resolve import JobInputs, build, check, resolve
from ml.spec import DEFAULT_LIMITS, SpecError, alpha_tag, is_internal, registry, settable, top_settable

# Every field that names a file, a folder, a model, a device or the gold somewhere in ml's configs. None may be
# settable through a request, in any kind, at any depth.
PATHLIKE = {
    "model",
    "data",
    "chosen_data",
    "rejected_data",
    "prompts",
    "output_dir",
    "aligned",
    "base",
    "samples",
    "reference",
    "weak_aligned",
    "weak_base",
    "strong",
    "train_prompts",
    "eval_prompts",
    "gold",
    "device",
    "dtype",
    "name",
    "reference_name",
    "response_field",
}
# The free-text settings a request may give. A new str field in a stage config fails this test until someone
# decides: a file/name the job wires (mark it internal) or a tuning choice (add it here).
TEXT_SETTINGS = {
    "lr_scheduler_type",
    "loss_type",
    "lora_target_modules",
    "repetition_penalty_scope",
    "compile",
    "score_mode",
    "wspo_data",
    "ci_method",
    "stop_strings",
}


def _all_settable():
    for ks in registry().values():
        for stage, st in ks.stages.items():
            for name, (_, tp) in settable(st).items():
                yield ks.name, stage, name, tp
        if ks.pipeline:
            for name, (_, tp) in top_settable().items():
                yield ks.name, "top", name, tp


def test_no_path_is_settable_and_every_text_setting_is_a_reviewed_one():
    seen_text = set()
    for kind, stage, name, tp in _all_settable():
        assert name not in PATHLIKE, f"{kind}.{stage}.{name} is a path/model/device field but settable"
        if "str" in str(tp):
            seen_text.add(name)
    assert seen_text == TEXT_SETTINGS
    # ... and the marks are where the registry reads them: each stage class has internal fields.
    for ks in registry().values():
        for st in ks.stages.values():
            if st.cls.__name__ not in ("CDConfig", "PreflightConfig"):
                assert any(is_internal(f) for f in fields(st.cls)), st.cls.__name__


@pytest.mark.parametrize(
    "kind,params,path",
    [
        ("cd_generate", {"cd_generate": {"prompts": "/etc/passwd"}}, "params.cd_generate.prompts"),
        ("cd_generate", {"cd_generate": {"aligned": "/x"}}, "params.cd_generate.aligned"),
        ("cd_generate", {"output_dir": "/x"}, "params.output_dir"),
        ("cong", {"aligned": "/x", "base": "/y"}, "params.aligned"),
        ("cong", {"sft": {"data": "/x"}}, "params.sft.data"),
        ("cong", {"evaluate": {"model": "/x"}}, "params.evaluate.model"),
        ("cong", {"dpo": {"weak_base": "/x"}}, "params.dpo.weak_base"),
        ("weak_align", {"weak_align": {"prompts": "/x"}}, "params.weak_align.prompts"),
        ("weak_align", {"weak_align": {"output_dir": "/x"}}, "params.weak_align.output_dir"),
        ("evaluate", {"evaluate": {"device": "cuda:7"}}, "params.evaluate.device"),
    ],
)
def test_a_path_in_a_request_is_refused_with_its_key_path(kind, params, path):
    with pytest.raises(SpecError) as exc:
        resolve(kind, params)
    assert path in exc.value.errors, exc.value.errors


def test_unknown_nested_key_wrong_type_and_over_limit_name_the_key_path():
    with pytest.raises(SpecError) as exc:
        resolve(
            "cong", {"sft": {"bogus_knob": 1}, "dpo": {"beta": "high"}, "max_new_tokens": 10**6, "wspo": {"beta": 0.1}}
        )
    e = exc.value.errors
    assert (
        "unknown setting; known: " in e["params.sft.bogus_knob"][0] and "learning_rate" in e["params.sft.bogus_knob"][0]
    )
    assert e["params.dpo.beta"] == ["must be a number, got 'high'"]
    assert "over the limit max_new_tokens=4096" in e["params.max_new_tokens"][0]
    assert "does not run" in e["params.wspo"][0]  # methods cong_s, cong: a WSPO setting would be dropped
    with pytest.raises(SpecError) as exc:  # a stage config's own check, pinned on the key that set it
        resolve("cong", {"sft": {"warmup_ratio": 2.0}})
    assert list(exc.value.errors) == ["params.sft.warmup_ratio"]


def test_limits_bound_every_count_and_are_the_callers_to_set():
    for kind, params, key in [
        ("preflight", {"n_samples": 100_000}, "params.n_samples"),
        ("weak_align", {"k": 10**9}, "params.k"),
        ("alpha_sweep", {"alphas": [0.5] * 200_000}, "params.alphas"),
        ("cong", {"dpo": {"per_device_train_batch_size": 10**6}}, "params.dpo.per_device_train_batch_size"),
        ("cd_generate", {"cd_generate": {"samples_per_prompt": 10**6}}, "params.cd_generate.samples_per_prompt"),
    ]:
        with pytest.raises(SpecError) as exc:
            resolve(kind, params)
        assert key in exc.value.errors and "over the limit" in exc.value.errors[key][0], exc.value.errors
    assert resolve("weak_align", {"k": 64}, limits={"k": 64})["stages"]["weak_align"]["k"] == 64
    with pytest.raises(SpecError):
        resolve("weak_align", {"k": DEFAULT_LIMITS["k"] + 1})


def test_alphas_are_checked_distinct_and_get_exact_folders():
    with pytest.raises(SpecError) as exc:
        resolve("alpha_sweep", {"alphas": [0.5, 0.5]})
    assert "distinct" in exc.value.errors["params.alphas"][0]
    with pytest.raises(SpecError) as exc:
        resolve("alpha_sweep", {"alphas": [0.1, 1.5]})
    assert "params.alphas[1]" in exc.value.errors
    spec = resolve("alpha_sweep", {"alphas": [0.001, 0.004]})
    runs = build(spec, JobInputs(output_dir="/r", weak_base="/b", weak_aligned="/a", prompts="/p", gold="toy:review"))
    dirs = [r["cd_generate"].output_dir for r in runs["alphas"]]
    assert dirs == ["/r/cd_generate_a0.001", "/r/cd_generate_a0.004"] and alpha_tag(1.0) == "a1.0"
    assert [r["cd_generate"].cd.alpha for r in runs["alphas"]] == [0.001, 0.004]


def test_generic_knobs_map_explicitly_or_are_refused():
    spec = resolve(
        "cong", {"epochs": 3, "sft": {"num_train_epochs": 5}}, methods=["cong_s", "cong", "weak_sft", "wspo", "auxconf"]
    )
    st = spec["stages"]
    assert st["sft"]["num_train_epochs"] == 5  # the stage's own setting beats the knob
    assert st["dpo"]["num_train_epochs"] == st["wspo"]["num_train_epochs"] == st["auxconf"]["num_train_epochs"] == 3
    for knob in ("learning_rate", "beta", "k"):
        with pytest.raises(SpecError) as exc:
            resolve("cong", {knob: 0.1})
        assert f"params.sft.{knob}" in exc.value.errors[f"params.{knob}"][0]
    assert resolve("weak_align", {"epochs": 2, "learning_rate": 1e-4})["stages"]["weak_align"]["num_train_epochs"] == 2
    with pytest.raises(SpecError) as exc:
        resolve("cd_generate", {"epochs": 2})  # nothing trains in cd_generate
    assert "params.epochs" in exc.value.errors
    with pytest.raises(SpecError) as exc:
        resolve("evaluate", {}, alpha=0.5)
    assert "alpha" in exc.value.errors


def test_recommendations_apply_where_they_fit_and_the_request_wins():
    rec = {
        "max_new_tokens": 17,
        "cd_generate": {"batch_size": 64},
        "weak_align": {"k": 3},
        "sft": {"learning_rate": 5e-4, "num_train_epochs": 2.0},
    }
    spec = resolve("cong", {"batch_size": 2, "sft": {"learning_rate": 0.01}}, recommended=rec)
    assert spec["top"]["max_new_tokens"] == 17 and spec["stages"]["cd_generate"]["max_new_tokens"] == 17
    assert spec["stages"]["cd_generate"]["batch_size"] == 2
    assert spec["stages"]["sft"] == {**spec["stages"]["sft"], "learning_rate": 0.01, "num_train_epochs": 2.0}
    assert "weak_align" not in spec["stages"]


def test_the_spec_is_what_the_pipeline_runs():
    """Every stage config the pipeline builds from a spec carries exactly the spec's values (the pipeline's own
    wiring of seed, lengths, LoRA rank and step caps included)."""
    params = {
        "seed": 3,
        "max_new_tokens": 7,
        "lora_r": 4,
        "train_max_steps": 2,
        "max_prompts": 5,
        "max_eval_prompts": 4,
        "use_chat_template": False,
        "temperature": 0.7,
        "epochs": 3,
        "dpo": {"beta": 0.2},
        "evaluate": {"n_samples": 2},
    }
    methods = ["cong_s", "cong", "weak_sft", "wspo", "auxconf"]
    spec = resolve("cong", params, methods=methods)
    inputs = JobInputs(
        output_dir="/run",
        weak_base="/wb",
        weak_aligned="/wa",
        strong="/s",
        prompts="/p",
        eval_prompts="/e",
        gold="toy:review",
    )
    from ml.pipeline import check as check_pipeline

    planned = check_pipeline(build(spec, inputs)["pipeline"])
    stage_of = {
        "cd_generate": "cd_generate",
        "sft_cong_s": "sft",
        "sft_weak": "sft",
        "self_sample": "self_sample",
        "dpo_cong": "dpo",
        "wspo": "wspo",
        "auxconf": "auxconf",
        "eval/cong": "evaluate",
        "plain_generate": "cd_generate",
    }
    for name, stage in stage_of.items():
        cfg = planned[name]
        got = cfg.cd if name == "cd_generate" else cfg.sampling if name == "plain_generate" else cfg
        want = {k: v for k, v in spec["stages"][stage].items() if hasattr(got, k)}
        assert {k: getattr(got, k) for k in want} == want, name
    assert planned["plain_generate"].max_prompts == planned["cd_generate"].max_prompts == 5
    assert planned["dpo_cong"].max_steps == 2 and planned["dpo_cong"].lora_r == 4 and planned["dpo_cong"].seed == 3


def test_every_kind_resolves_and_builds_with_defaults():
    inputs = JobInputs(
        output_dir="/run", weak_base="/wb", weak_aligned="/wa", strong="/s", prompts="/p", gold="toy:review"
    )
    for kind in registry():
        spec = resolve(kind, {}, method="sft" if kind == "train" else None)
        check(spec, inputs)
        assert spec["version"] == 1 and spec["stages"]


def test_pipeline_config_refuses_unknown_and_path_keys_in_stage_settings():
    """A YAML config's stage mappings are checked like a request: a typo or a file field fails at construction,
    naming stage.key, not as a TypeError deep inside a run."""
    from ml.pipeline import PipelineConfig

    base = dict(weak_base="a", strong="b", train_prompts="c", eval_prompts="d", gold="toy:review", output_dir="o")
    for stage, key in (("sft", "bogus"), ("sft", "data"), ("generate", "prompts"), ("evaluate", "model")):
        with pytest.raises(ValueError, match=f"{stage}.{key}"):
            PipelineConfig(**base, **{stage: {key: 1}})
    PipelineConfig(**base, sft={"num_train_epochs": 3}, generate={"temperature": 0.7})
