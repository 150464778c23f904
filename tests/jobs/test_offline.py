"""The real offline models in the web app: registration (services.offline_register and the
install_offline_models command), the SmolLM2 -> Gemma presets, and a weak_align job registering its pi_post.

Tiny stand-in models play SmolLM2 / Gemma under the offline names, with a fake manifest in a temporary
folder, so nothing here needs the converted models; the last test uses them when present (skips otherwise).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from jobs import selectors, services
from jobs.models import Dataset, Job, JobEvent, ModelEntry

from .conftest import WORDS, save_tiny_model

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def offline_dir(tmp_path_factory) -> Path:
    """<data>/offline/ with tiny stand-ins for the two converted models (built once per test session)."""
    data = tmp_path_factory.getbasetemp() / "offline_data"
    root = data / "offline"
    if not (root / "gemma3_270m_base" / "config.json").exists():
        save_tiny_model(root / "smollm2_135m_instruct", seed=0)
        save_tiny_model(root / "gemma3_270m_base", words=[*WORDS, "gemma", "only"], seed=3)
    return data


def fake_manifest(data: Path) -> dict:
    root = (data / "offline").resolve()
    return {
        "version": 1,
        "root": str(root),
        "models": {
            "smollm2_135m_instruct": {
                "key": "smollm2_135m_instruct",
                "path": str(root / "smollm2_135m_instruct"),
                "family": "smollm2",
                "role": "weak",
                "instruct": True,
            },
            "gemma3_270m_base": {
                "key": "gemma3_270m_base",
                "path": str(root / "gemma3_270m_base"),
                "family": "gemma3",
                "role": "strong",
                "instruct": False,
            },
        },
    }


@pytest.fixture
def roots(settings, tmp_path, offline_dir):
    settings.VAR_DIR = tmp_path / "var"
    settings.RUNS_DIR = (tmp_path / "var" / "runs").resolve()
    settings.DATA_DIR = offline_dir
    settings.MODEL_ROOTS = [offline_dir.resolve(), settings.RUNS_DIR]
    return settings


@pytest.fixture
def registered(roots, offline_dir):
    return services.offline_register(manifest=fake_manifest(offline_dir))


# --- params from the ml presets -----------------------------------------------------------------------
def test_offline_params_map_the_cpu_and_smoke_presets_onto_web_params(tmp_path):
    from ml.offline.presets import real_preset

    cpu = services.offline_params(real_preset("cpu", tmp_path, check_models=False))
    assert (cpu["max_prompts"], cpu["max_eval_prompts"], cpu["max_new_tokens"]) == (64, 32, 64)
    assert cpu["weak_align"] == {
        "k": 4,
        "sample_batch_size": 16,
        "learning_rate": 5e-6,
        "num_train_epochs": 2.0,
        "per_device_train_batch_size": 4,
        "max_length": 256,
    }
    assert cpu["cd_generate"] == {"batch_size": 16} and cpu["self_sample"] == {"batch_size": 16}
    for stage in ("sft", "dpo", "wspo", "auxconf"):  # the pipeline's lora_r reaches every strong-model stage
        assert cpu[stage]["lora_r"] == 16
    assert cpu["sft"]["lora_target_modules"] == "q_proj,k_proj,v_proj,o_proj" and cpu["dpo"]["learning_rate"] == 5e-6
    assert "lora_r" not in cpu["weak_align"] and all("max_steps" not in v for v in cpu.values() if isinstance(v, dict))
    smoke = services.offline_params(real_preset("smoke", tmp_path, check_models=False))
    assert (smoke["max_prompts"], smoke["max_new_tokens"], smoke["sft"]["lora_r"]) == (8, 24, 8)
    for stage in ("weak_align", "sft", "dpo", "wspo", "auxconf"):  # train_max_steps=2
        assert smoke[stage]["max_steps"] == 2
    gpu = services.offline_params(real_preset("gpu", tmp_path, check_models=False))
    assert "max_prompts" not in gpu and "lora_r" not in gpu["sft"]
    # Every mapped key is one a job accepts and applies: as a request (strict) and as the datasets'
    # recommendations, where each value reaches its stage in the resolved spec.
    from ml.resolve import resolve

    every = ["cong_s", "cong", "weak_sft", "wspo", "auxconf"]
    for p in (cpu, smoke, gpu):
        resolve("cong", {k: v for k, v in p.items() if k != "weak_align"}, methods=every)
        spec = resolve("cong", None, recommended=p, methods=every)
        for stage, vals in p.items():
            if isinstance(vals, dict) and stage != "weak_align":  # weak_align runs as its own job kind
                assert {k: spec["stages"][stage][k] for k in vals} == vals
        wa = resolve("weak_align", None, recommended=p)["stages"]["weak_align"]
        assert {k: wa[k] for k in p["weak_align"]} == p["weak_align"]
    # The preset labels read the size back from these params.
    for size, p in (("smoke", smoke), ("cpu", cpu), ("gpu", gpu)):
        assert selectors.offline_size_label(p) == f"{size} size"
    assert selectors.offline_size_label({"max_prompts": 5}) == "custom size"


# --- registration -------------------------------------------------------------------------------------
def test_offline_register_is_idempotent_and_sets_the_cpu_preset_defaults(registered, roots, offline_dir, tmp_path):
    from ml.offline.presets import real_preset

    m, d = registered["models"], registered["datasets"]
    assert (m["smollm2_135m_instruct"].name, m["smollm2_135m_instruct"].kind, m["smollm2_135m_instruct"].family) == (
        "smollm2-135m-instruct",
        "weak",
        "smollm2",
    )
    assert (m["gemma3_270m_base"].name, m["gemma3_270m_base"].kind, m["gemma3_270m_base"].family) == (
        "gemma3-270m-base",
        "strong",
        "gemma3",
    )
    assert all(e.owner is None and e.vocab_fingerprint for e in m.values())
    train, held = d["train"], d["heldout"]
    assert (train.name, held.name, train.gold, held.gold) == (
        "if-judge-train",
        "if-judge-heldout",
        "if:judge",
        "if:judge",
    )
    assert train.row_count + held.row_count == 500 and held.row_count > 50 and train.owner is None
    want = services.offline_params(real_preset("cpu", tmp_path / "x", check_models=False))
    assert train.defaults == want and held.defaults == want
    first = train.defaults
    again = services.offline_register(manifest=fake_manifest(offline_dir))
    assert {k: e.pk for k, e in again["models"].items()} == {k: e.pk for k, e in m.items()}
    assert again["datasets"]["train"].pk == train.pk
    assert (ModelEntry.objects.count(), Dataset.objects.count()) == (2, 2)
    # Another size replaces the defaults, nothing else.
    services.offline_register(manifest=fake_manifest(offline_dir), size="smoke")
    train.refresh_from_db()
    assert train.defaults["max_prompts"] == 8 and train.defaults != first and Dataset.objects.count() == 2


def test_offline_register_refuses_models_outside_the_roots_and_bad_input(roots, offline_dir, tmp_path):
    from django.core.exceptions import ValidationError

    roots.MODEL_ROOTS = [tmp_path / "elsewhere"]
    with pytest.raises(ValidationError, match="not under a model root"):
        services.offline_register(manifest=fake_manifest(offline_dir))
    with pytest.raises(ValidationError, match="size must be one of"):
        services.offline_register(manifest=fake_manifest(offline_dir), size="huge")
    with pytest.raises(ValidationError, match="lists no models"):
        services.offline_register(manifest={"version": 1, "root": str(offline_dir / "offline"), "models": {}})
    assert ModelEntry.objects.count() == 0 and Dataset.objects.count() == 0


def test_install_offline_models_command_registers_from_the_manifest(roots, offline_dir, capsys):
    with pytest.raises(CommandError, match="no offline models installed"):
        call_command("install_offline_models", "--no-install", data_dir=str(offline_dir.parent / "nothing-here"))
    manifest = offline_dir / "offline" / "manifest.json"
    manifest.write_text(json.dumps(fake_manifest(offline_dir)))
    try:
        call_command("install_offline_models", "--no-install", "--size", "smoke")  # data dir: settings.DATA_DIR
        out = capsys.readouterr().out
        assert "smollm2-135m-instruct" in out and "if-judge-train" in out and "smoke-size defaults" in out
        assert Dataset.objects.get(name="if-judge-train").defaults["max_new_tokens"] == 24
        call_command("install_offline_models", "--no-install")
        assert Dataset.objects.get(name="if-judge-train").defaults["max_new_tokens"] == 64
        assert ModelEntry.objects.count() == 2
    finally:
        manifest.unlink()


# --- presets ------------------------------------------------------------------------------------------
def _presets_page(client, user) -> list[dict]:
    client.force_login(user)
    html = client.get("/jobs/new/").content.decode()
    return json.loads(
        re.search(r'<script id="presets-data" type="application/json">(.*?)</script>', html, re.S).group(1)
    )


def test_offline_presets_appear_in_the_api_and_page_and_are_valid_requests(
    registered, roots, user, other_user, client, monkeypatch
):
    monkeypatch.setattr(services.dispatch, "send", lambda job_id: None)
    weak, strong = registered["models"]["smollm2_135m_instruct"], registered["models"]["gemma3_270m_base"]
    train, held = registered["datasets"]["train"], registered["datasets"]["heldout"]
    api = APIClient()
    api.force_authenticate(user)
    presets = api.get("/api/v1/presets/").json()
    names = [p["name"] for p in presets]
    assert names == ["SmolLM2 -> Gemma: 1. weak alignment (pi_pre -> pi_post)"]  # no pi_post yet
    wa_req = presets[0]["request"]
    assert wa_req == {"kind": "weak_align", "weak_base": weak.pk, "prompts": train.pk}
    job = services.job_create(user=user, **wa_req)
    wa_spec = job.config["spec"]["stages"]["weak_align"]
    assert wa_spec["k"] == 4 and wa_spec["max_prompts"] == 64

    # A pi_post of the same family and vocabulary (as a weak_align job registers it), owned by the user.
    # In that job's own run folder, under the "-aligned-job<N>" name reserved for it (system=True).
    aligned_dir = Path(roots.RUNS_DIR) / str(job.pk) / "weak_align" / "model"
    save_tiny_model(aligned_dir, seed=1)
    wa_name = f"smollm2-135m-instruct-aligned-job{job.pk}"
    wa = services.model_register(
        name=wa_name, path=str(aligned_dir), kind="weak", family="smollm2", owner=user, system=True
    )
    presets = api.get("/api/v1/presets/").json()
    by_name = {p["name"]: p["request"] for p in presets}
    cross = by_name[f"SmolLM2 -> Gemma: 2. ConG (cpu size), pi_post = {wa_name}"]
    self_ = by_name[f"SmolLM2 self-alignment: ConG (cpu size), pi_post = {wa_name}"]
    assert cross == {
        "kind": "cong",
        "weak_base": weak.pk,
        "weak_aligned": wa.pk,
        "strong": strong.pk,
        "prompts": train.pk,
        "alpha": 0.4,
        "methods": ["cong_s", "cong", "weak_sft", "wspo"],
    }
    assert self_ == {**cross, "strong": weak.pk}
    for req in (cross, self_):
        job = services.job_create(user=user, **req)
        p = job.config["spec"]
        assert job.config["eval_prompts"]["id"] == held.pk  # the held-out split, from the -train/-heldout names
        assert p["stages"]["sft"]["lora_r"] == 16 and p["top"]["max_eval_prompts"] == 32
        assert p["stages"]["evaluate"]["max_prompts"] == 32 and job.config["methods"] == req["methods"]
    # A job's own params beat the dataset defaults (a smoke-sized run of the same preset).
    job = services.job_create(
        user=user, **{**cross, "params": {"max_prompts": 4, "max_new_tokens": 8, "sft": {"max_steps": 1}}}
    )
    p = job.config["spec"]
    assert (
        p["top"]["max_prompts"],
        p["top"]["max_new_tokens"],
        p["stages"]["sft"]["max_steps"],
        p["stages"]["sft"]["lora_r"],
    ) == (4, 8, 1, 16)

    # Someone else does not see this user's pi_post, so gets only step 1.
    api.force_authenticate(other_user)
    assert [p["name"] for p in api.get("/api/v1/presets/").json()] == names
    # The new-job page carries the same presets and prefills from ?preset=.
    page = _presets_page(client, user)
    assert [p["name"] for p in page] == [p["name"] for p in presets]
    html = client.get("/jobs/new/", {"preset": next(iter(by_name))}).content.decode()
    assert re.search(r'<option value="weak_align" selected>', html)
    html = client.get(
        "/jobs/new/", {"preset": f"SmolLM2 -> Gemma: 2. ConG (cpu size), pi_post = {wa_name}"}
    ).content.decode()
    assert re.search(rf'<option value="{strong.pk}" selected>', html) and re.search(
        rf'<option value="{wa.pk}" selected>', html
    )


# --- weak_align registers pi_post ---------------------------------------------------------------------
def _logged(job, text: str) -> bool:
    return any(text in str(e.data.get("message", "")) for e in JobEvent.objects.filter(job=job, type="log"))


def _weak_align_job(user, weak, prompts, **params):
    return services.job_create(
        user=user,
        kind="weak_align",
        weak_base=weak.pk,
        prompts=prompts.pk,
        params={"max_prompts": 4, "max_new_tokens": 8, "weak_align": {"max_steps": 1}, **params},
    )


def test_weak_align_job_registers_its_pi_post_and_the_cong_presets_follow(registered, user, roots):
    """The weak alignment preset, run in-process (claim, runner, finish) on the tiny SmolLM2 stand-in with
    the real if:judge gold, registers pi_post; the ConG presets then offer it."""
    from jobs.runner import _register_aligned, run_job

    weak, train = registered["models"]["smollm2_135m_instruct"], registered["datasets"]["train"]
    job = _weak_align_job(user, weak, train)
    assert run_job(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    reg = job.results["registered_model"]
    entry = ModelEntry.objects.get(pk=reg["id"])
    assert reg["name"] == entry.name == f"smollm2-135m-instruct-aligned-job{job.pk}"
    assert entry.aligned_from_id == weak.pk  # the weak pair is recorded, so presets never guess it from names
    assert (entry.kind, entry.family, entry.owner, entry.vocab_fingerprint) == (
        "weak",
        "smollm2",
        user,
        weak.vocab_fingerprint,
    )
    assert Path(entry.path) == (Path(roots.RUNS_DIR) / str(job.pk) / "weak_align" / "model").resolve()
    assert (Path(entry.path) / "config.json").is_file() and job.results["n_pairs"] >= 1
    assert _logged(job, f"registered pi_post as model {entry.pk}")
    # Idempotent (a redelivered attempt): the same entry, nothing new.
    from jobs.progress import ProgressReporter

    again = _register_aligned(job, ProgressReporter(job.pk), entry.path)
    assert again["registered_model"]["id"] == entry.pk and ModelEntry.objects.count() == 3
    names = [p["name"] for p in selectors.presets(user=user)]
    assert f"SmolLM2 -> Gemma: 2. ConG (cpu size), pi_post = {entry.name}" in names


def test_weak_align_job_outside_the_roots_still_succeeds_and_says_why(registered, user, roots):
    from jobs.runner import run_job

    weak, train = registered["models"]["smollm2_135m_instruct"], registered["datasets"]["train"]
    roots.MODEL_ROOTS = [p for p in roots.MODEL_ROOTS if p != roots.RUNS_DIR]
    job = _weak_align_job(user, weak, train)
    assert run_job(job_id=job.pk) == "succeeded"
    job.refresh_from_db()
    assert job.results["registered_model"] is None and "not under a model root" in job.results["registered_model_error"]
    assert ModelEntry.objects.count() == 2
    assert _logged(job, "add RUNS_DIR to MODEL_ROOTS")


def test_default_model_roots_include_runs_dir():
    from django.conf import settings

    assert settings.RUNS_DIR in settings.MODEL_ROOTS  # the configured default (tests do not override it here)


# --- the real models, when installed ------------------------------------------------------------------
# Skips without them, like tests/ml/offline's `realmodels` tests (that marker is registered by their conftest,
# which a run of tests/jobs alone does not load, so this test skips by itself instead).
def test_register_the_real_installed_models(settings, tmp_path):
    from ml.offline.install import read_manifest

    settings.VAR_DIR = tmp_path  # the datasets' copies go here, not into the real var/

    manifest = read_manifest(settings.DATA_DIR)
    if manifest is None or not all((Path(m["path"]) / "config.json").exists() for m in manifest["models"].values()):
        pytest.skip("converted offline models not found; run python manage.py install_offline_models")
    out = services.offline_register(manifest=manifest)
    assert (
        out["models"]["smollm2_135m_instruct"].vocab_fingerprint
        == manifest["models"]["smollm2_135m_instruct"]["vocab_fingerprint"]
    )
    assert (
        out["models"]["gemma3_270m_base"].vocab_fingerprint
        == manifest["models"]["gemma3_270m_base"]["vocab_fingerprint"]
    )
    assert out["datasets"]["train"].row_count + out["datasets"]["heldout"].row_count == 500


# --- the staff install button (a Celery task on the default queue, state in a status file) -------------
@pytest.fixture
def sent_installs(monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr(services.dispatch, "send_named", lambda task, size="cpu": sent.append(size))
    return sent


def test_install_button_is_staff_only_and_queues_one_task(roots, client, user, staff_user, sent_installs):
    client.force_login(user)
    assert 'id="offline-install-btn"' not in client.get("/jobs/new/").content.decode()
    assert client.post("/models/offline/install/").status_code == 403 and sent_installs == []
    with pytest.raises(Exception, match="only staff"):
        services.offline_install_request(user=user)
    client.force_login(staff_user)
    html = client.get("/jobs/new/").content.decode()
    assert 'data-state="none"' in html and "Install offline models" in html
    r = client.post("/models/offline/install/", {"size": "cpu"}, follow=True)
    assert sent_installs == ["cpu"] and "Installing the offline models in the background" in r.content.decode()
    assert services.offline_install_status()["state"] == "queued"
    html = r.content.decode()
    assert 'data-state="queued"' in html and 'id="offline-install-btn"' not in html  # no second click
    r = client.post("/models/offline/install/", follow=True)
    assert sent_installs == ["cpu"] and "already queued" in r.content.decode()


def test_offline_install_records_its_outcome(roots, offline_dir, tmp_path, capsys):
    """install=False never calls pip: where the model packages are installed (this dev machine) the stand-in
    folders are reused, verified and registered; where they are not (CI) it fails with pip's command to run.
    Either way the status file says what happened."""
    import shutil

    from ml.offline.install import InstallError

    data = tmp_path / "data"
    shutil.copytree(offline_dir / "offline", data / "offline")
    roots.MODEL_ROOTS = [data.resolve(), roots.RUNS_DIR]
    try:
        out = services.offline_install(install=False, data_dir=data)
    except InstallError as exc:
        st = services.offline_install_status(data)
        assert st["state"] == "failed" and "is not installed" in st["error"] and str(exc)[:40] in st["error"]
        assert ModelEntry.objects.count() == 0
    else:
        st = services.offline_install_status(data)
        assert st["state"] == "done" and st["models"] == ["gemma3-270m-base", "smollm2-135m-instruct"]
        assert st["datasets"] == ["if-judge-heldout", "if-judge-train"] and st["message"] == "installed and registered"
        assert out["models"]["smollm2_135m_instruct"].name == "smollm2-135m-instruct"
    assert services.offline_install_status(tmp_path / "nowhere") is None
