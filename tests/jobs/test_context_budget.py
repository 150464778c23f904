"""A job whose token budget does not fit the context of a model it runs on is refused at submit (400, keyed by
the setting to lower, nothing created) through the API and the new-job page alike, instead of failing in the
worker. The contexts are read from the registered models' own config.json (64 positions here)."""

from __future__ import annotations

import re

import pytest
from rest_framework.test import APIClient

from jobs import services
from jobs.models import Job, JobEvent

from .conftest import make_prompts, save_tiny_model

pytestmark = pytest.mark.django_db

CTX = 64


@pytest.fixture
def small(model_root, settings, tmp_path, user):
    """A weak pair and a strong model of 64 positions (their own root), and a prompt set with a gold reward."""
    root = tmp_path / "small_models"
    save_tiny_model(root / "base", seed=0, n_positions=CTX)
    save_tiny_model(root / "aligned", seed=1, n_positions=CTX)
    settings.MODEL_ROOTS = [*settings.MODEL_ROOTS, root]
    register = services.model_register
    return {
        "weak_base": register(name="small-base", path=str(root / "base"), kind="weak", owner=user).pk,
        "weak_aligned": register(name="small-aligned", path=str(root / "aligned"), kind="weak", owner=user).pk,
        "strong": register(name="small-strong", path=str(root / "aligned"), kind="strong", owner=user).pk,
        "prompts": services.dataset_create(name="g", chunks=[make_prompts(4)], gold="toy:review", owner=user).pk,
    }


def _post(user, body):
    c = APIClient()
    c.force_authenticate(user)
    return c.post("/api/v1/jobs/", body, format="json")


def _cd(small, **params):
    return {"kind": "cd_generate", "weak_base": small["weak_base"], "weak_aligned": small["weak_aligned"],
            "prompts": small["prompts"], "params": params}  # fmt: skip


def test_new_tokens_filling_the_context_are_a_400_on_the_knob_and_create_nothing(user, small):
    r = _post(user, _cd(small, max_new_tokens=CTX))
    assert r.status_code == 400, r.json()
    assert r.json() == {
        "params.max_new_tokens": [
            "64 new tokens leave no room for a prompt in the context of weak_base 'small-base' (64 positions); "
            "lower max_new_tokens to less than 64, by at least the length of the longest prompt"
        ]
    }
    assert not Job.objects.exists() and not JobEvent.objects.exists()
    assert _post(user, _cd(small, max_new_tokens=CTX - 1)).status_code == 201  # the first budget that fits


def test_cut_prompts_count_against_the_context(user, small):
    r = _post(user, _cd(small, cd_generate={"max_new_tokens": 40, "max_prompt_tokens": 32}))
    assert r.status_code == 400 and list(r.json()) == ["params.cd_generate.max_new_tokens"], r.json()
    assert r.json()["params.cd_generate.max_new_tokens"][0].startswith(
        "40 new + 32 prompt tokens (max_prompt_tokens) exceed the context of weak_base 'small-base' (64 positions); "
        "lower max_new_tokens or max_prompt_tokens"
    )
    assert not Job.objects.exists()


def test_a_default_over_the_context_says_which_setting_to_lower(user, small):
    # cd_generate's default 256 new tokens cannot run on a 64-position model: the worker would fail every prompt.
    r = _post(user, _cd(small))
    assert r.status_code == 400 and list(r.json()) == ["params.cd_generate.max_new_tokens"], r.json()
    assert "256 new tokens leave no room for a prompt" in r.json()["params.cd_generate.max_new_tokens"][0]
    # A pipeline trains the strong model on sequences of up to max_length (512 by default) tokens.
    body = {**small, "kind": "cong", "methods": ["cong_s"], "params": {"max_new_tokens": 16}}
    r = _post(user, body)
    assert r.status_code == 400 and r.json() == {
        "params.sft.max_length": [
            "512 tokens exceed the context of strong 'small-strong' (64 positions); lower max_length to at most 64"
        ]
    }
    body["params"]["sft"] = {"max_length": CTX}
    assert _post(user, body).status_code == 201
    assert Job.objects.count() == 1


def test_the_new_job_page_shows_the_error_on_the_input_to_change(client, user, small):
    client.force_login(user)
    form = {"kind": "cd_generate", "alpha": "0.4", **{k: small[k] for k in ("weak_base", "weak_aligned", "prompts")}}
    r = client.post("/jobs/new/", {**form, "p__max_new_tokens": str(CTX)})
    assert r.status_code == 400
    html = r.content.decode()
    own = re.search(r'data-field="p__max_new_tokens"><li>([^<]*)</li>', html)
    assert own and "64 new tokens leave no room for a prompt" in own.group(1), html[:3000]
    # Left empty, the stage's default (256) is what does not fit: the error sits on that stage's input.
    r = client.post("/jobs/new/", form)
    own = re.search(r'data-field="p__cd_generate__max_new_tokens"><li>([^<]*)</li>', r.content.decode())
    assert r.status_code == 400 and own and "256 new tokens" in own.group(1)
    assert not Job.objects.exists()
