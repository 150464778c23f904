"""The new-job form's rules, through the page (Django's test client, the real service): each error on its own
field, every error at once, names not ids, the alpha box and its slider, at least one method for cong, method
labels in words."""

from __future__ import annotations

import re

import pytest

from jobs.forms import METHOD_LABELS, JobForm
from jobs.models import Job
from ml.pipeline import METHODS

pytestmark = pytest.mark.django_db


def _errors(html: str, field: str) -> str:
    """The text of the error list the page renders under one field (data-field is the input's name)."""
    found = re.findall(rf'<ul class="errorlist[^"]*" data-field="{re.escape(field)}">(.*?)</ul>', html, re.S)
    assert len(found) == 1, (field, found)
    return found[0]


def _field_box(html: str, field: str) -> str:
    """A top-level field's box (id="field-<name>"), up to the next field's label."""
    m = re.search(rf'<div class="field[^"]*" id="field-{field}">(.*?)<label class="field-label', html, re.S)
    assert m, field
    return m.group(1)


@pytest.fixture
def cong_post(pipeline_inputs):
    """A valid cong request as the page posts it."""
    return dict(pipeline_inputs)


def test_a_service_error_on_a_setting_lands_on_its_input(client, user, cong_post):
    client.force_login(user)
    r = client.post("/jobs/new/", {**cong_post, "p__max_prompts": "200000"})
    assert r.status_code == 400
    html = r.content.decode()
    assert "over the limit" in _errors(html, "p__max_prompts")
    assert 'value="200000"' in html  # what was typed stays in the input
    assert not Job.objects.exists()


def test_every_error_comes_back_at_once(client, user, cong_post):
    """A setting the form cannot read no longer hides what the service says about the rest of the request."""
    client.force_login(user)
    bad = {**cong_post, "p__sft__num_train_epochs": "two", "strong": "", "alpha": "1.5", "p__max_prompts": "200000"}
    r = client.post("/jobs/new/", bad)
    assert r.status_code == 400
    html = r.content.decode()
    assert "give a number" in _errors(html, "p__sft__num_train_epochs")  # the form's own
    assert "needs this model" in _errors(html, "strong")  # the service's, with it
    assert "between 0 and 1" in _errors(html, "alpha")
    assert "over the limit" in _errors(html, "p__max_prompts")
    assert not Job.objects.exists()  # judged, never stored


def test_an_over_limit_setting_does_not_hide_a_stage_error(client, user, cong_post):
    """Limits and stage checks are judged in one pass: the over-limit value is left out, the stages still checked."""
    client.force_login(user)
    r = client.post("/jobs/new/", {**cong_post, "p__max_prompts": "200000", "p__sft__learning_rate": "-1"})
    assert r.status_code == 400
    html = r.content.decode()
    assert "over the limit" in _errors(html, "p__max_prompts")
    assert "learning_rate must be &gt; 0" in _errors(html, "p__sft__learning_rate")


def test_a_field_the_form_refused_is_not_also_reported_empty(client, user, cong_post):
    client.force_login(user)
    r = client.post("/jobs/new/", {**cong_post, "strong": "987654", "p__sft__num_train_epochs": "two"})
    strong = _errors(r.content.decode(), "strong")
    assert "no longer available" in strong and "needs this model" not in strong


@pytest.mark.parametrize("field", ["weak_base", "weak_aligned", "strong", "prompts"])
def test_messages_about_models_and_datasets_name_them_not_their_ids(client, user, cong_post, field):
    client.force_login(user)
    for value in ("", "987654"):  # not chosen; chosen but gone (another user's, deleted)
        r = client.post("/jobs/new/", {**cong_post, field: value})
        text = _errors(r.content.decode(), field)
        assert not re.search(r"\bids?\b|987654", text), text
    assert "prompt dataset" in _errors(
        client.post("/jobs/new/", {**cong_post, "prompts": ""}).content.decode(), "prompts"
    )
    assert not Job.objects.exists()


def test_alpha_is_a_number_box_with_a_slider_beside_it(client, user, cong_post):
    client.force_login(user)
    html = client.get("/jobs/new/").content.decode()
    box = re.search(r'<input[^>]*name="alpha"[^>]*>', html).group(0)
    assert 'type="number"' in box and 'step="any"' in box and 'min="0"' in box and 'max="1"' in box
    slider = re.search(r'<input type="range" id="alpha-slider"[^>]*>', html).group(0)
    assert "name=" not in slider  # never sent: the box is the field
    # Any value in [0, 1], not only steps of 0.05.
    r = client.post("/jobs/new/", {**cong_post, "alpha": "0.37"})
    assert r.status_code == 302 and Job.objects.get().config["alpha"] == 0.37


def test_alpha_out_of_range_comes_back_as_typed_with_its_error(client, user, cong_post):
    client.force_login(user)
    html = client.post("/jobs/new/", {**cong_post, "alpha": "1.5"}).content.decode()
    box = _field_box(html, "alpha")
    assert re.search(r'<input[^>]*name="alpha"[^>]*value="1.5"', box)
    assert 'id="alpha-slider" min="0" max="1" step="0.01" value="1.0"' in box  # the slider at its end
    assert "between 0 and 1" in _errors(box, "alpha")


def test_cong_needs_at_least_one_method(client, user, cong_post):
    client.force_login(user)
    no_methods = {k: v for k, v in cong_post.items() if k != "methods"}
    r = client.post("/jobs/new/", no_methods)
    assert r.status_code == 400
    assert "at least one method" in _errors(_field_box(r.content.decode(), "methods"), "methods")
    assert not Job.objects.exists()  # never the defaults, silently
    r = client.post("/jobs/new/", {**no_methods, "methods": ["cong"]})
    assert r.status_code == 302 and Job.objects.get().config["methods"] == ["cong"]


def test_kinds_without_methods_do_not_ask_for_one(user, weak_pair, prompts_ds):
    wb, wa = weak_pair
    data = {"kind": "cd_generate", "weak_base": wb.pk, "weak_aligned": wa.pk, "prompts": prompts_ds.pk}
    form = JobForm(data, user=user)
    assert form.is_valid(), form.errors


def test_methods_are_labelled_in_words(client, user):
    client.force_login(user)
    box = _field_box(client.get("/jobs/new/").content.decode(), "methods")
    labels = re.findall(r'<input type="checkbox" name="methods" value="(\w+)"[^>]*> ([^<]+)</label>', box)
    assert [value for value, _ in labels] == list(METHODS)
    for value, label in labels:
        assert label.strip() == METHOD_LABELS[value] and label.strip() != value
    assert {"Strong (untrained)", "ConG-S", "ConG", "WeakSFT", "WSPO", "AuxConf"} <= {lb for _, lb in labels}


def test_train_on_reviewed_pairs_opens_filled_and_reads_its_job_numbers(client, user, cong_post):
    """The "train on reviewed pairs" links land on a train job with pairs_from filled; the box takes numbers."""
    client.force_login(user)
    html = client.get("/jobs/new/?pairs_from=7").content.decode()
    assert re.search(r'<option value="train" selected>', html) and 'name="pairs_from" value="7"' in html
    train = {**cong_post, "kind": "train", "method": "dpo", "methods": [], "include_pending": "yes"}
    r = client.post("/jobs/new/", {**train, "pairs_from": "7, seven"})
    assert r.status_code == 400
    assert "give job numbers separated by commas" in _errors(r.content.decode(), "pairs_from")
    r = client.post("/jobs/new/", {**train, "pairs_from": "999999"})  # parsed, then judged by the service
    assert "job 999999 does not exist or is not yours" in _errors(r.content.decode(), "pairs_from")
    assert not Job.objects.exists()


def test_golds_are_picked_by_name_and_reward_models_only_judge(client, user, cong_post, model_root):
    """A reward model is offered as a gold (labelling or evaluation), never as a model to generate with or train;
    the picked golds reach the job's config."""
    from jobs import services
    from tests.ml._reward_fixtures import save_reward_model

    from .conftest import WORDS

    rm = services.model_register(
        name="judge", path=str(save_reward_model(model_root / "rm", WORDS, {"good": 1.0})), kind="reward", owner=user
    )
    client.force_login(user)
    html = client.get("/jobs/new/").content.decode()
    for field in ("weak_base", "weak_aligned", "strong"):
        assert f'value="{rm.pk}"' not in _field_box(html, field)
    for field in ("gold", "eval_gold"):
        box = _field_box(html, field)
        assert f'value="rm:{rm.pk}"' in box and "judge (reward model)" in box and 'value="toy:review"' in box
    r = client.post("/jobs/new/", {**cong_post, "eval_gold": f"rm:{rm.pk}"})
    assert r.status_code == 302, r.content.decode()[-2000:]
    job = Job.objects.get()
    assert job.config["eval_gold"]["label"] == "rm:judge" and job.config["gold"]["name"] == "toy:review"
