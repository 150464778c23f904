"""The new-job page's memory panel (jobs.memory_views): the job is built as submit builds it, nothing is stored or
sent, and each training stage's numbers are ml.memory's for the settings the spec resolves to."""

from __future__ import annotations

import re

import pytest

from jobs import services
from jobs.models import Job
from ml.memory import ModelShape, estimate

pytestmark = pytest.mark.django_db
URL = "/jobs/new/memory/"


@pytest.fixture(autouse=True)
def sent(monkeypatch):
    """job_create sends the Celery task on commit: the estimate must never get that far."""
    calls: list[int] = []
    monkeypatch.setattr(services.dispatch, "send", lambda job_id: calls.append(job_id))
    return calls


@pytest.fixture
def cong_form(pipeline_inputs):
    """A cong job's form (ConG-S: one SFT stage on the strong model), as the page posts it."""
    return {**pipeline_inputs, "p__sft__per_device_train_batch_size": "2", "p__sft__max_length": "64"}


def _post(client, user, data, django_capture_on_commit_callbacks):
    client.force_login(user)
    with django_capture_on_commit_callbacks() as callbacks:
        r = client.post(URL, data)
    assert callbacks == []  # nothing would be sent to a worker
    assert not Job.objects.exists()  # nothing stored
    return r


def test_the_view_s_numbers_are_ml_memory_s(
    client, user, cong_form, model_root, sent, django_capture_on_commit_callbacks
):
    r = _post(client, user, cong_form, django_capture_on_commit_callbacks)
    assert r.status_code == 200, r.content
    data = r.json()
    assert data["valid"] is True and data["kind"] == "cong" and list(data["stages"]) == ["sft_cong_s"]
    want = estimate(
        ModelShape.from_folder(model_root / "other_vocab"), per_device_train_batch_size=2, max_length=64
    ).as_dict()
    got = data["stages"]["sft_cong_s"]
    for key in ("weights", "gradients", "optimizer", "activations", "logits", "total", "parameters", "trainable"):
        assert got[key] == want[key], key
    assert data["max"]["stage"] == "sft_cong_s" and data["max"]["total"] == want["total"]
    assert data["text"] == f"sft_cong_s: {want['text']}" and "GiB per GPU" in data["text"]
    assert sent == []


def test_each_setting_reaches_the_estimate(client, user, cong_form, django_capture_on_commit_callbacks):
    def stage(**extra):
        r = _post(client, user, {**cong_form, **extra}, django_capture_on_commit_callbacks)
        assert r.status_code == 200, r.content
        return r.json()["stages"]["sft_cong_s"]

    base = stage()
    bigger = stage(p__sft__per_device_train_batch_size="4")
    assert bigger["activations"] == 2 * base["activations"] and bigger["logits"] == 2 * base["logits"]
    assert bigger["weights"] == base["weights"]
    assert stage(p__sft__max_length="128")["activations"] == 2 * base["activations"]
    ckpt = stage(p__sft__gradient_checkpointing="true")
    # One tiny layer: keeping its input and recomputing it costs more than keeping it (ml.memory's formula).
    assert ckpt["settings"]["gradient_checkpointing"] is True and ckpt["activations"] != base["activations"]
    lora = stage(p__sft__lora_r="4")
    assert lora["trainable"] < base["trainable"] and lora["optimizer"] < base["optimizer"]
    # The execution settings (ml.execution): 4 devices in fsdp hold a quarter of the weights, gradients, states.
    fsdp = stage(p__gpus="4", p__distributed="fsdp")
    assert fsdp["settings"]["gpus"] == 4 and fsdp["settings"]["distributed"] == "fsdp"
    assert fsdp["optimizer"] * 4 == base["optimizer"] and fsdp["gradients"] * 4 == base["gradients"]


def test_every_training_stage_of_a_job_is_estimated_dpo_with_twice_the_batch(
    client, user, cong_form, model_root, django_capture_on_commit_callbacks
):
    form = {**cong_form, "methods": ["cong"], "p__dpo__per_device_train_batch_size": "2", "p__dpo__max_length": "64"}
    r = _post(client, user, form, django_capture_on_commit_callbacks)
    assert r.status_code == 200, r.content
    stages = r.json()["stages"]
    assert list(stages) == ["sft_cong_s", "dpo_cong"]
    # dpo_cong trains the SFT'd strong model (not there yet): the strong model's shape, chosen + rejected.
    assert stages["dpo_cong"]["activations"] == 2 * stages["sft_cong_s"]["activations"]
    assert stages["dpo_cong"]["settings"]["preference"] is True
    assert r.json()["max"]["stage"] == "dpo_cong"


def test_weak_align_is_estimated_on_the_weak_base(
    client, user, weak_pair, model_root, django_capture_on_commit_callbacks
):
    from .conftest import make_prompts

    wb, _ = weak_pair
    gold = services.dataset_create(name="g2", chunks=[make_prompts(4)], gold="toy:review", owner=user)
    form = {"kind": "weak_align", "weak_base": wb.pk, "prompts": gold.pk, "p__weak_align__max_length": "32"}
    r = _post(client, user, form, django_capture_on_commit_callbacks)
    assert r.status_code == 200, r.content
    got = r.json()["stages"]["weak_align"]
    shape = ModelShape.from_folder(model_root / "weak_base")
    assert got["parameters"] == shape.parameters()
    assert got["total"] == estimate(shape, max_length=32, preference=True).total


def test_a_kind_without_training_says_so(client, user, weak_pair, prompts_ds, django_capture_on_commit_callbacks):
    wb, wa = weak_pair
    form = {"kind": "cd_generate", "weak_base": wb.pk, "weak_aligned": wa.pk, "prompts": prompts_ds.pk, "alpha": "0.4"}
    r = _post(client, user, form, django_capture_on_commit_callbacks)
    assert r.status_code == 200
    assert r.json()["stages"] == {} and "trains no model" in r.json()["text"]


def test_a_bad_form_is_answered_with_the_form_s_errors(client, user, cong_form, django_capture_on_commit_callbacks):
    # A 200 saying "not valid": a form being filled in is mostly incomplete, and the page posts it on every edit.
    r = _post(client, user, {**cong_form, "p__sft__max_length": "long"}, django_capture_on_commit_callbacks)
    assert r.status_code == 200 and r.json()["valid"] is False and "stages" not in r.json()
    assert r.json()["text"] == "Fix the form to see an estimate."
    assert any("p__sft__max_length" in m or "params.sft.max_length" in m for m in r.json()["errors"]["__all__"])
    # The service's rules too (here: a cong job needs a strong model), on the field they name.
    r = _post(client, user, {**cong_form, "strong": ""}, django_capture_on_commit_callbacks)
    assert r.json()["valid"] is False and "strong" in r.json()["errors"]
    # And the spec's: a value a stage config refuses.
    r = _post(client, user, {**cong_form, "p__sft__max_length": "1"}, django_capture_on_commit_callbacks)
    assert r.json()["valid"] is False and "max_length" in str(r.json()["errors"])


def test_post_only_and_login_required(client, user):
    assert client.post(URL, {}).status_code == 302  # to the log-in page
    client.force_login(user)
    assert client.get(URL).status_code == 405


def test_the_panel_is_on_the_new_job_page(client, user):
    client.force_login(user)
    html = client.get("/jobs/new/").content.decode()
    assert re.search(r'<div class="card" id="memory-panel" data-url="/jobs/new/memory/">', html)
    assert 'id="memory-text"' in html and 'id="memory-stages"' in html
    assert re.search(r'<script src="[^"]*jobs/memory\.js"></script>', html)
