"""Server-rendered pages: sign-in required, visibility (own jobs; staff all; others' -> 404), the new-job
form going through jobs.services.job_create, results and compare views."""

from __future__ import annotations

import json
import re

import pytest

from jobs import page_selectors, services
from jobs.models import GeneratedPair, Job, JobEvent, ModelEntry

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    """job_create sends the Celery task on commit; these page tests need no worker or broker."""
    sent: list[int] = []
    monkeypatch.setattr(services.dispatch, "send", lambda job_id: sent.append(job_id))
    return sent


def _job(user, weak_pair, prompts_ds, **kw):
    wb, wa = weak_pair
    args = dict(user=user, kind="cd_generate", weak_base=wb.pk, weak_aligned=wa.pk, prompts=prompts_ds.pk, alpha=0.4)
    args.update(kw)
    return services.job_create(**args)


PIPELINE_RESULTS = {
    "config": {"gold": "toy:review", "alpha": 0.4},
    "methods": {
        "weak_sft": {
            "label": "WeakSFT",
            "gold_mean": 0.25,
            "gold_ci": [0.2, 0.3],
            "valid_rate": 0.9,
            "implicit_mean": -1.5,
            "n": 40,
            "win_rate_vs_weak_sft": 0.5,
        },
        "cong": {
            "label": "ConG",
            "gold_mean": 0.61,
            "gold_ci": [0.55, 0.67],
            "valid_rate": 1.0,
            "implicit_mean": 2.25,
            "n": 40,
            "win_rate_vs_weak_sft": 0.8,
        },
    },
}


@pytest.mark.parametrize("url", ["/", "/jobs/new/", "/jobs/1/", "/jobs/compare/?a=1&b=2"])
def test_pages_need_login(client, url):
    r = client.get(url)
    assert r.status_code == 302
    assert r["Location"].startswith("/accounts/login/?next=")


def test_login_page_renders_and_signs_in(client, user):
    r = client.get("/accounts/login/")
    assert r.status_code == 200
    assert b'name="username"' in r.content and b"csrfmiddlewaretoken" in r.content
    r = client.post("/accounts/login/", {"username": "alice", "password": "pw-alice-123", "next": "/"})
    assert r.status_code == 302 and r["Location"] == "/"
    assert client.get("/").status_code == 200
    r = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    assert b"didn&#x27;t match" in r.content or b"didn't match" in r.content


def test_dashboard_lists_only_own_jobs_newest_first(client, user, other_user, staff_user, weak_pair, prompts_ds):
    mine_old = _job(user, weak_pair, prompts_ds)
    mine_new = _job(user, weak_pair, prompts_ds)
    theirs = Job.objects.create(owner=other_user, kind="cd_generate", config={})
    client.force_login(user)
    html = client.get("/").content.decode()
    ids = [int(x) for x in re.findall(r'<tr data-job="(\d+)">', html)]
    assert ids == [mine_new.pk, mine_old.pk]
    assert theirs.pk not in ids
    client.force_login(staff_user)
    html = client.get("/").content.decode()
    ids = [int(x) for x in re.findall(r'<tr data-job="(\d+)">', html)]
    assert set(ids) == {mine_new.pk, mine_old.pk, theirs.pk}
    assert ids[0] == theirs.pk  # newest first across users


def test_dashboard_shows_status_and_progress(client, user, weak_pair, prompts_ds):
    job = _job(user, weak_pair, prompts_ds)
    Job.objects.filter(pk=job.pk).update(status="running", stage="cd_generate", progress=0.5)
    client.force_login(user)
    html = client.get("/").content.decode()
    # The bar's width is set from data-pct by static/jobs/pages.js (the CSP allows no style="" attributes).
    assert 'class="badge running"' in html and "cd_generate" in html and 'data-pct="50"' in html


def test_new_job_form_creates_job_through_service(
    client, user, weak_pair, prompts_ds, no_broker, django_capture_on_commit_callbacks
):
    wb, wa = weak_pair
    client.force_login(user)
    r = client.get("/jobs/new/")
    assert r.status_code == 200
    html = r.content.decode()
    assert 'type="range"' in html and 'name="methods"' in html and f'value="{wb.pk}"' in html
    assert 'value="cong_filtered"' in html and "ConG + implicit-reward filter" in html
    with django_capture_on_commit_callbacks(execute=True):
        r = client.post(
            "/jobs/new/",
            {
                "kind": "cd_generate",
                "weak_base": wb.pk,
                "weak_aligned": wa.pk,
                "prompts": prompts_ds.pk,
                "alpha": "0.3",
                "p__max_prompts": "2",
                "p__cd_generate__max_new_tokens": "",
                "p__do_sample": "",
            },
        )  # empty = unset
    assert r.status_code == 302, r.content.decode()[:2000]
    job = Job.objects.get()
    assert r["Location"] == f"/jobs/{job.pk}/"
    assert job.owner == user and job.config["alpha"] == 0.3 and job.config["params"] == {"max_prompts": 2}
    assert job.config["weak_base"]["id"] == wb.pk
    assert JobEvent.objects.filter(job=job, type="status").exists()  # the service's queued event
    assert no_broker == [job.pk]  # sent to the worker on commit


def test_new_job_form_shows_service_errors_next_to_fields(client, user, weak_pair, prompts_ds):
    wb, wa = weak_pair
    client.force_login(user)
    r = client.post(
        "/jobs/new/",
        {"kind": "cd_generate", "weak_base": wb.pk, "weak_aligned": wa.pk, "prompts": prompts_ds.pk, "alpha": "1.5"},
    )
    assert r.status_code == 400
    html = r.content.decode()
    alpha_errors = re.search(r'<ul class="errorlist" data-field="alpha">(.*?)</ul>', html, re.S)
    assert alpha_errors and "alpha must be between 0 and 1" in alpha_errors.group(1)
    assert not Job.objects.exists()
    # A missing model is reported on its own field; a setting that is not of its type on its own input.
    r = client.post(
        "/jobs/new/",
        {
            "kind": "cong",
            "weak_base": wb.pk,
            "weak_aligned": wa.pk,
            "prompts": prompts_ds.pk,
            "alpha": "0.4",
            "methods": ["cong"],
            "p__sft__num_train_epochs": "two",
        },
    )
    html = r.content.decode()
    assert re.search(r'data-field="p__sft__num_train_epochs"><li>give a number', html)  # on its input
    r = client.post(
        "/jobs/new/",
        {
            "kind": "cong",
            "weak_base": wb.pk,
            "weak_aligned": wa.pk,
            "prompts": prompts_ds.pk,
            "alpha": "0.4",
            "methods": ["cong"],
        },
    )
    html = r.content.decode()
    strong = re.search(r'<ul class="errorlist" data-field="strong">(.*?)</ul>', html, re.S)
    assert strong and "needs this model" in strong.group(1)
    assert not Job.objects.exists()


def test_new_job_form_stage_settings_reach_the_spec(client, user, pipeline_inputs):
    client.force_login(user)
    html = client.get("/jobs/new/").content.decode()
    assert 'name="params_json"' not in html  # the JSON textarea is gone: every setting has its own input
    r = client.post(
        "/jobs/new/",
        {
            **pipeline_inputs,
            "p__sft__num_train_epochs": "3",
            "p__use_chat_template": "false",
            "p__sft__lora_r": "",
            "p__cd_generate__stop_strings": "END, STOP",
        },
    )
    assert r.status_code == 302, re.findall(r'<ul class="errorlist"[^>]*>(.*?)</ul>', r.content.decode(), re.S)
    job = Job.objects.get()
    # Only what was filled is sent, typed by each field's annotation; the spec has it, defaults elsewhere.
    assert job.config["params"] == {
        "use_chat_template": False,
        "sft": {"num_train_epochs": 3.0},
        "cd_generate": {"stop_strings": ["END", "STOP"]},
    }
    spec = job.config["spec"]
    assert spec["stages"]["sft"]["num_train_epochs"] == 3.0 and spec["stages"]["sft"]["lora_r"] == 0
    assert spec["top"]["use_chat_template"] is False and spec["stages"]["evaluate"]["use_chat_template"] is False


def test_new_job_form_bad_setting_is_shown_on_its_input_and_creates_nothing(client, user, pipeline_inputs):
    client.force_login(user)
    r = client.post(
        "/jobs/new/", {**pipeline_inputs, "p__cd_generate__temperature": "-1", "p__sft__num_train_epochs": "3"}
    )
    assert r.status_code == 400 and not Job.objects.exists()
    html = r.content.decode()
    # The service's error keyed params.cd_generate.temperature sits on that input, its group open, the typed
    # values kept; it is listed at the top too, with its key path.
    cong = html[html.index('id="settings-cong"') : html.index('id="settings-train"')]
    group = re.search(r'<details class="settings-group" data-group="cd_generate" open>(.*?)</details>', cong, re.S)
    assert group, "the cd_generate group is open"
    assert re.search(r'name="p__cd_generate__temperature"[^>]*value="-1"', group.group(1))
    own = re.search(
        r'<div class="setting has-error"><input type="number" name="p__cd_generate__temperature".*?'
        r'<ul class="errorlist setting-errors" data-field="p__cd_generate__temperature"><li>([^<]*)</li>',
        group.group(1),
    )
    assert own and "temperature must be &gt; 0" in own.group(1), group.group(1)[:3000]
    assert 'name="p__sft__num_train_epochs"' in cong and 'value="3"' in cong
    top = re.search(r'<ul class="errorlist" id="form-errors">(.*?)</ul>', html, re.S).group(1)
    assert "params.cd_generate.temperature: CDConfig: temperature must be &gt; 0" in top
    # Types are checked before the service: a whole number too big for storage, a word for a number.
    r = client.post("/jobs/new/", {**pipeline_inputs, "p__seed": str(2**70), "p__dpo__beta": "much"})
    html = r.content.decode()
    assert r.status_code == 400 and not Job.objects.exists()
    assert re.search(r'data-field="p__seed"><li>out of range', html)
    assert re.search(r'data-field="p__dpo__beta"><li>give a number', html)


def test_setting_inputs_are_typed_by_the_field_annotation():
    from jobs.forms import coerce

    assert coerce(" 3 ", int) == 3 and coerce("3", float) == 3.0 and coerce("1e-5", float) == 1e-5
    assert coerce("False", bool) is False and coerce("none", int | None) is None and coerce("7", int | None) == 7
    assert coerce("a, b", list[str]) == ["a", "b"] and coerce("a, b\nc", list[str]) == ["a, b", "c"]
    assert coerce("0, 0.5", list[float]) == [0.0, 0.5]
    for text, tp, words in (
        ("3.5", int, "whole number"),
        ("9" * 5000, int, "out of range"),
        (str(-(2**63) - 1), int, "out of range"),
        ("nan", float, "finite"),
        ("1e999", float, "finite"),
        ("yes", bool, "true or false"),
        ("x", int | None, "whole"),
    ):
        with pytest.raises(ValueError, match=words):
            coerce(text, tp)


def test_new_job_form_needs_csrf(user, weak_pair, prompts_ds):
    from django.test import Client

    c = Client(enforce_csrf_checks=True)
    c.force_login(user)
    r = c.post("/jobs/new/", {"kind": "cd_generate"})
    assert r.status_code == 403


def test_job_detail_own_and_404_for_others(client, user, other_user, staff_user, weak_pair, prompts_ds):
    job = _job(user, weak_pair, prompts_ds)
    services.event_append(job_id=job.pk, type="progress", data={"stage": "cd_generate", "done": 1, "total": 4})
    services.event_append(
        job_id=job.pk, type="sample", data={"stage": "cd_generate", "prompt": "the movie", "response": "was good"}
    )
    client.force_login(user)
    r = client.get(f"/jobs/{job.pk}/")
    assert r.status_code == 200
    html = r.content.decode()
    live = json.loads(
        re.search(r'<script id="live-config" type="application/json">(.*?)</script>', html, re.S).group(1)
    )
    assert [e["seq"] for e in live["events"]] == [1, 2, 3]
    assert live["events_url"] == f"/api/v1/jobs/{job.pk}/events/" and live["ws_path"] == f"/ws/jobs/{job.pk}/"
    assert 'id="cancel-form"' in html and "jobs/job_live.js" in html
    client.force_login(other_user)
    assert client.get(f"/jobs/{job.pk}/").status_code == 404
    assert client.post(f"/jobs/{job.pk}/cancel/").status_code == 404
    assert client.get(f"/jobs/compare/?a={job.pk}&b={job.pk}").status_code == 404
    client.force_login(staff_user)
    assert client.get(f"/jobs/{job.pk}/").status_code == 200


def test_job_detail_shows_the_spec_table_with_changed_values(client, user, weak_pair, prompts_ds):
    job = _job(user, weak_pair, prompts_ds, params={"max_prompts": 3, "cd_generate": {"temperature": 0.7}})
    client.force_login(user)
    html = client.get(f"/jobs/{job.pk}/").content.decode()
    spec = html[html.index('<div class="card spec" id="spec">') : html.index("<h2>Progress</h2>")]
    top = re.search(r'<table class="grid spec-table" id="spec-top">(.*?)</table>', spec, re.S).group(1)
    assert re.search(r'<tr data-field="kind"><td[^>]*>kind</td><td>cd_generate</td>', top)
    assert re.search(r'<tr data-field="alpha"><td[^>]*>alpha</td><td>0.4</td>', top)
    stage = re.search(r'<details class="spec-stage" data-stage="cd_generate">(.*?)</details>', spec, re.S).group(1)
    assert "2 not default" in stage  # max_prompts (through its knob) and temperature
    # The changed value is highlighted, with the default beside it; an unchanged one is not.
    assert re.search(
        r'<tr data-field="temperature" class="changed"><td[^>]*>temperature</td><td>0.7</td>'
        r'<td class="muted">0.8</td>',
        stage,
    )
    assert re.search(r'<tr data-field="top_p"><td[^>]*>top_p</td>', stage)
    assert re.search(r'<tr data-field="max_prompts" class="changed"><td[^>]*>max_prompts</td><td>3</td>', stage)
    # The request itself as key path = value lines, not a Python dict.
    req = re.search(r'<div class="request" id="request-params">(.*?)</div>', html, re.S).group(1)
    assert re.findall(r"<code>(.*?)</code>", req) == ["cd_generate.temperature = 0.7", "max_prompts = 3"]
    assert "{&#x27;" not in html and "&#x27;cd_generate&#x27;:" not in html


def test_cancel_and_retry_fallback_posts_go_through_services(client, user, weak_pair, prompts_ds):
    job = _job(user, weak_pair, prompts_ds)
    client.force_login(user)
    assert client.post(f"/jobs/{job.pk}/cancel/").status_code == 302
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert client.post(f"/jobs/{job.pk}/retry/").status_code == 302
    job.refresh_from_db()
    assert job.status == "queued"


def test_job_detail_results_table_and_plots(client, user, weak_pair, prompts_ds):
    job = _job(user, weak_pair, prompts_ds)
    Job.objects.filter(pk=job.pk).update(kind="cong", status="succeeded", results=PIPELINE_RESULTS)
    for i, (imp, gold) in enumerate([(0.5, 0.2), (1.5, 0.7)]):
        GeneratedPair.objects.create(
            job=job, prompt_index=i, prompt=f"p{i}", chosen="c", implicit_reward_sum=imp, gold_reward=gold
        )
    client.force_login(user)
    html = client.get(f"/jobs/{job.pk}/").content.decode()
    table = re.search(r'<table class="grid" id="results">(.*?)</table>', html, re.S).group(1)
    assert "ConG" in table and "WeakSFT" in table and "0.610" in table and "[0.550, 0.670]" in table
    assert "80%" in table and "2.250" in table
    # The gap recovered, the share of answers cut at the limit and the judge's LC win rate, when results have them.
    rows = json.loads(json.dumps(PIPELINE_RESULTS))
    rows["methods"]["cong"].update(pgr=0.4567, truncated_rate=0.125, judge_lc_win_rate=0.61)
    Job.objects.filter(pk=job.pk).update(results=rows)
    table = re.search(
        r'<table class="grid" id="results">(.*?)</table>', client.get(f"/jobs/{job.pk}/").content.decode(), re.S
    ).group(1)
    cong = re.search(r"<tr><td>ConG</td>(.*?)</tr>", table, re.S).group(1)
    assert "0.46" in cong and "12%" in cong and "61%" in cong and "PGR" in table
    live = json.loads(
        re.search(r'<script id="live-config" type="application/json">(.*?)</script>', html, re.S).group(1)
    )
    assert live["scatter"] == {"unit": "pairs", "points": [[0.5, 0.2, ""], [1.5, 0.7, ""]]}
    assert live["finished"] is True
    assert 'id="scatter"' in html and f'id="cancel-form" method="post" action="/jobs/{job.pk}/cancel/" hidden' in html


def test_job_detail_shows_the_preflight_verdict(client, user, weak_pair, prompts_ds):
    job = _job(user, weak_pair, prompts_ds)
    row = lambda g: {"gold_mean": g, "gold_ci": [g - 0.01, g + 0.01], "n": 4, "valid_rate": 1.0}
    msg = "CD raises gold reward here: +0.150 gold at alpha 0.4 vs plain pi_post (95% interval +0.100..+0.200)"
    results = {
        "verdict": "raises",
        "message": msg,
        "gold_gain": 0.15,
        "sweep": {
            "pre": row(0.1),
            "plain_post": row(0.2),
            "cd": [{"alpha": a, **row(0.2 + 0.15 * (1 - a))} for a in (0.0, 0.4, 1.0)],
        },
    }
    Job.objects.filter(pk=job.pk).update(kind="preflight", status="succeeded", results=results)
    client.force_login(user)
    html = client.get(f"/jobs/{job.pk}/").content.decode()
    box = re.search(r'<div class="card verdict verdict-raises" id="verdict">(.*?)</div>', html, re.S).group(1)
    assert "Pre-flight verdict: raises" in box and "CD raises gold reward here: +0.150 gold" in box
    assert html.index('id="verdict"') < html.index("<h2>Progress</h2>")  # shown before everything else
    assert "pre-flight check" in html  # the kind's label in the title
    # A job without a verdict shows no box.
    Job.objects.filter(pk=job.pk).update(kind="cd_generate", results=PIPELINE_RESULTS)
    assert 'id="verdict"' not in client.get(f"/jobs/{job.pk}/").content.decode()


def test_results_table_reads_an_alpha_sweep():
    results = {
        "alphas": [
            {"alpha": 0.4, "name": "a0.40", "gold_mean": 0.5, "implicit_mean": 1.0},
            {"alpha": 0.0, "name": "a0.00", "gold_mean": 0.3, "implicit_mean": 2.0},
        ]
    }
    assert [r["method"] for r in page_selectors.results_table("alpha_sweep", results)] == ["alpha 0.4", "alpha 0"]
    assert page_selectors.alpha_sweep("alpha_sweep", results) == [
        {"alpha": 0.0, "gold": 0.3, "implicit": 2.0},
        {"alpha": 0.4, "gold": 0.5, "implicit": 1.0},
    ]
    # Read by kind: a pipeline's methods, never a sweep-like list inside them.
    assert [r["method"] for r in page_selectors.results_table("cong", PIPELINE_RESULTS)] == ["WeakSFT", "ConG"]
    assert page_selectors.results_table("cong", None) == [] and page_selectors.alpha_sweep("cong", {"x": 1}) == []


def test_scatter_falls_back_from_pairs_to_sweep_to_methods(user):
    job = Job.objects.create(
        owner=user,
        kind="alpha_sweep",
        config={},
        status="succeeded",
        results={"alphas": [{"alpha": 0.0, "name": "a0.00", "gold_mean": 0.3, "implicit_mean": 2.0}]},
    )
    assert page_selectors.scatter(job=job) == {"unit": "alphas", "points": [[2.0, 0.3, "alpha 0"]]}
    job.kind, job.results = "cong", PIPELINE_RESULTS
    assert page_selectors.scatter(job=job)["points"] == [[-1.5, 0.25, "WeakSFT"], [2.25, 0.61, "ConG"]]
    # A pair stored before sums were (only a per-token mean) is not a point: one unit, the sum, on the x axis.
    GeneratedPair.objects.create(
        job=job, prompt_index=1, prompt="p", chosen="c", implicit_reward_mean=0.1, gold_reward=0.5
    )
    assert page_selectors.scatter(job=job)["unit"] == "methods"
    GeneratedPair.objects.create(
        job=job,
        prompt_index=0,
        prompt="p",
        chosen="c",
        implicit_reward_sum=1.0,
        implicit_reward_mean=0.25,
        gold_reward=0.5,
    )
    assert page_selectors.scatter(job=job) == {"unit": "pairs", "points": [[1.0, 0.5, ""]]}


def test_compare_page_shows_both_jobs_side_by_side(client, user, weak_pair, prompts_ds):
    a = _job(user, weak_pair, prompts_ds)
    b = _job(user, weak_pair, prompts_ds)
    other = json.loads(json.dumps(PIPELINE_RESULTS))
    other["methods"]["cong"]["gold_mean"] = 0.71
    Job.objects.filter(pk=a.pk).update(kind="cong", status="succeeded", results=PIPELINE_RESULTS)
    Job.objects.filter(pk=b.pk).update(kind="cong", status="succeeded", results=other)
    client.force_login(user)
    r = client.get(f"/jobs/compare/?a={a.pk}&b={b.pk}")
    assert r.status_code == 200
    html = r.content.decode()
    merged = re.search(r'<table class="grid" id="merged">(.*?)</table>', html, re.S).group(1)
    row = re.search(r"<td>ConG</td>(.*?)</tr>", merged, re.S).group(1)
    assert "0.610" in row and "0.710" in row and "0.100" in row
    assert html.count('class="card side"') == 2
    # Without both ids: the picker.
    r = client.get("/jobs/compare/")
    assert r.status_code == 200 and b'name="a"' in r.content
    assert client.get(f"/jobs/compare/?a={a.pk}&b=999999").status_code == 404


def test_static_files_are_served(client):
    r = client.get("/static/jobs/job_live.js")
    assert r.status_code == 200
    assert b"congLive" in b"".join(r.streaming_content)


def test_new_job_presets_fill_the_form(client, user, model_root):
    from jobs.models import Dataset, ModelEntry

    from .conftest import make_prompts

    wb = services.model_register(name="toy-x-s0-weak-base", path=str(model_root / "weak_base"), kind="weak")
    wa = services.model_register(name="toy-x-s0-weak-aligned", path=str(model_root / "weak_aligned"), kind="weak")
    st = services.model_register(name="toy-x-s0-strong-base", path=str(model_root / "other_vocab"), kind="strong")
    ds = services.dataset_create(name="toy-x-s0-train", chunks=[make_prompts(3)], gold="toy:review")
    assert ModelEntry.objects.filter(owner__isnull=True).count() == 3 and Dataset.objects.count() == 1
    client.force_login(user)
    html = client.get("/jobs/new/").content.decode()
    presets = json.loads(
        re.search(r'<script id="presets-data" type="application/json">(.*?)</script>', html, re.S).group(1)
    )
    names = [p["name"] for p in presets]
    assert "toy-x-s0: full ConG pipeline" in names and 'class="btn secondary preset"' in html
    assert "toy-x-s0: pre-flight check" not in names  # needs the held-out split
    held = services.dataset_create(name="toy-x-s0-heldout", chunks=[make_prompts(3)], gold="toy:review")
    presets = json.loads(
        re.search(
            r'<script id="presets-data" type="application/json">(.*?)</script>',
            client.get("/jobs/new/").content.decode(),
            re.S,
        ).group(1)
    )
    pf = next(p for p in presets if p["name"] == "toy-x-s0: pre-flight check")["request"]
    assert pf == {"kind": "preflight", "weak_base": wb.pk, "weak_aligned": wa.pk, "prompts": held.pk}
    assert services.job_create(user=user, **pf).kind == "preflight"  # the preset is a valid request
    full = next(p for p in presets if p["name"] == "toy-x-s0: full ConG pipeline")["request"]
    assert (full["weak_base"], full["weak_aligned"], full["strong"], full["prompts"]) == (wb.pk, wa.pk, st.pk, ds.pk)
    # Server-side prefill (links can carry ?preset=...).
    html = client.get("/jobs/new/", {"preset": "toy-x-s0: full ConG pipeline"}).content.decode()
    assert re.search(rf'<option value="{st.pk}" selected>', html)
    assert re.search(r'<option value="cong" selected>', html)
    # A preset's params land in its kind's setting inputs (only that kind's section is enabled).
    html = client.get("/jobs/new/", {"preset": "toy-x-s0: contrastive decoding"}).content.decode()
    assert re.search(r'<fieldset class="kind-settings" id="settings-cd_generate" data-kind="cd_generate">', html)
    section = html[html.index('id="settings-cd_generate"') : html.index('id="settings-alpha_sweep"')]
    assert re.search(r'name="p__max_prompts"[^>]*value="64"', section)
    assert re.search(r'id="settings-cong" data-kind="cong" disabled hidden', html)


def test_family_presets_follow_the_recorded_weak_pair_not_names(user, model_root):
    """A pi_post a weak_align job registered records its pi_pre (aligned_from): the preset pairs them even when
    their names say nothing ('base'/'pre' were once looked for in names)."""
    pre = ModelEntry.objects.create(
        name="m1", path=str(model_root / "weak_base"), kind="weak", family="fam", owner=user
    )
    post = ModelEntry.objects.create(
        name="m2", path=str(model_root / "weak_aligned"), kind="weak", family="fam", owner=user, aligned_from=pre
    )
    strong = ModelEntry.objects.create(
        name="m3", path=str(model_root / "weak_base"), kind="strong", family="fam", owner=user
    )
    ModelEntry.objects.create(
        name="prebase-decoy", path=str(model_root / "weak_base"), kind="weak", family="fam", owner=user
    )
    presets = {p["name"]: p["request"] for p in page_selectors.job_presets(user=user)}
    req = presets["fam: ConG with m2"]
    assert (req["weak_base"], req["weak_aligned"], req["strong"], req["prompts"]) == (pre.pk, post.pk, strong.pk, None)
    assert [n for n in presets if n.startswith("fam:")] == ["fam: ConG with m2"]
