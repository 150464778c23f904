"""The pair review desk in the Django admin: staff only, texts side by side, reviews through
jobs.services.pair_review (status + reviewer), reward range filters; the other models' pages load."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission

from jobs.models import GeneratedPair, Job, JobEvent

pytestmark = pytest.mark.django_db

LIST = "/admin/jobs/generatedpair/"


@pytest.fixture
def reviewer(django_user_model):
    """Staff with only the permissions a reviewer needs (not a superuser)."""
    u = django_user_model.objects.create_user(username="rev", password="pw-rev-123", is_staff=True)
    u.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="jobs", codename__in=["view_generatedpair", "change_generatedpair"]
        )
    )
    return u


@pytest.fixture
def pairs(user):
    job = Job.objects.create(owner=user, kind="cd_generate", config={}, status="succeeded")
    other = Job.objects.create(owner=user, kind="cd_generate", config={}, status="succeeded")
    rows = [
        dict(
            job=job,
            prompt_index=0,
            prompt="the movie zero was",
            chosen="good good film",
            plain="bad plot",
            rejected="awful acting",
            implicit_reward_sum=-2.0,
            gold_reward=0.1,
        ),
        dict(
            job=job,
            prompt_index=1,
            prompt="the movie one was",
            chosen="great acting",
            plain="not good",
            rejected=None,
            implicit_reward_sum=0.5,
            gold_reward=0.6,
        ),
        dict(
            job=job,
            prompt_index=2,
            prompt="the movie two was",
            chosen="very good plot",
            plain=None,
            rejected=None,
            implicit_reward_sum=3.0,
            gold_reward=None,
        ),
        dict(
            job=other,
            prompt_index=0,
            prompt="another prompt",
            chosen="the film",
            plain="a film",
            rejected=None,
            implicit_reward_sum=1.0,
            gold_reward=0.9,
        ),
    ]
    return [GeneratedPair.objects.create(**r) for r in rows]


def _listed_ids(html: str) -> set[int]:
    return {int(x) for x in re.findall(r'name="_selected_action" value="(\d+)"', html)}


def test_non_staff_is_sent_to_admin_login(client, user, pairs):
    client.force_login(user)
    for url in (LIST, f"{LIST}{pairs[0].pk}/change/"):
        r = client.get(url)
        assert r.status_code == 302 and "/admin/login/" in r["Location"]
    r = client.post(LIST, {"action": "approve_pairs", "_selected_action": [pairs[0].pk]})
    assert r.status_code == 302 and "/admin/login/" in r["Location"]
    pairs[0].refresh_from_db()
    assert pairs[0].review_status == "pending"


def test_list_shows_texts_in_columns(client, reviewer, pairs):
    client.force_login(reviewer)
    html = client.get(LIST).content.decode()
    headers = re.findall(r'<th scope="col" class="[^"]*column-(\w+)', html)
    assert headers[:7] == ["id", "job_link", "prompt_col", "chosen_col", "plain_col", "rejected_col", "implicit_col"]
    assert "good good film" in html and "awful acting" in html and "jobs/admin.css" in html
    assert _listed_ids(html) == {p.pk for p in pairs}


def test_change_form_puts_prompt_and_responses_side_by_side(client, reviewer, pairs):
    client.force_login(reviewer)
    html = client.get(f"{LIST}{pairs[0].pk}/change/").content.decode()
    grid = re.search(r'<div class="pair-columns" id="pair-columns">(.*?)</fieldset>', html, re.S).group(1)
    cols = re.findall(r'<div class="pair-col" data-col="(\w+)">', grid)
    assert cols == ["prompt", "chosen", "plain", "rejected"]  # one row of four columns, not stacked fields
    for text in ("the movie zero was", "good good film", "bad plot", "awful acting"):
        assert text in grid
    assert 'name="_approve"' in html and 'name="_reject"' in html and 'name="edited_text"' in html


def test_bulk_approve_and_reject_record_status_and_reviewer(client, reviewer, pairs):
    client.force_login(reviewer)
    r = client.post(LIST, {"action": "approve_pairs", "_selected_action": [pairs[0].pk, pairs[1].pk], "index": 0})
    assert r.status_code == 302
    r = client.post(LIST, {"action": "reject_pairs", "_selected_action": [pairs[2].pk], "index": 0})
    assert r.status_code == 302
    got = {p.pk: p for p in GeneratedPair.objects.all()}
    assert got[pairs[0].pk].review_status == got[pairs[1].pk].review_status == "approved"
    assert got[pairs[2].pk].review_status == "rejected"
    assert got[pairs[3].pk].review_status == "pending" and got[pairs[3].pk].reviewer is None
    for pk in (pairs[0].pk, pairs[1].pk, pairs[2].pk):
        assert got[pk].reviewer == reviewer and got[pk].reviewed_at is not None


def test_editing_chosen_text_marks_pair_edited(client, reviewer, pairs):
    client.force_login(reviewer)
    url = f"{LIST}{pairs[1].pk}/change/"
    r = client.post(url, {"edited_text": "great acting and a good plot", "_save": "Save"})
    assert r.status_code == 302, r.content.decode()[:3000]
    p = GeneratedPair.objects.get(pk=pairs[1].pk)
    assert p.review_status == "edited" and p.edited_text == "great acting and a good plot"
    assert p.reviewer == reviewer and p.chosen == "great acting"  # the original stays
    # The change form's Reject button goes through the service too.
    r = client.post(f"{LIST}{pairs[0].pk}/change/", {"edited_text": "", "_reject": "Reject"})
    assert r.status_code == 302
    p0 = GeneratedPair.objects.get(pk=pairs[0].pk)
    assert p0.review_status == "rejected" and p0.reviewer == reviewer


def test_reward_range_filters(client, reviewer, pairs):
    client.force_login(reviewer)
    a, b, c, d = (p.pk for p in pairs)
    assert _listed_ids(client.get(f"{LIST}?implicit=0:1.5").content.decode()) == {b, d}
    assert _listed_ids(client.get(f"{LIST}?implicit=:0").content.decode()) == {a}
    assert _listed_ids(client.get(f"{LIST}?implicit=1:").content.decode()) == {c, d}
    assert _listed_ids(client.get(f"{LIST}?gold=0.5:").content.decode()) == {b, d}
    assert _listed_ids(client.get(f"{LIST}?gold=none").content.decode()) == {c}
    assert _listed_ids(client.get(f"{LIST}?gold=0:1&implicit=0:").content.decode()) == {b, d}
    # Combined with the job filter and search.
    job_id = pairs[0].job_id
    assert _listed_ids(client.get(f"{LIST}?job__id__exact={job_id}&implicit=0:").content.decode()) == {b, c}
    assert _listed_ids(client.get(f"{LIST}?q=great").content.decode()) == {b}
    # The offered choices are quartile ranges of the stored values, plus "no value".
    html = client.get(LIST).content.decode()
    assert "?implicit=none" in html and "?gold=none" in html and "implicit=%3A" in html


def test_implicit_filters_name_the_sum_and_the_mean_and_empty_pairs_are_marked(client, reviewer, pairs):
    """``implicit`` ranges over the implicit reward (the sum over tokens), ``implicit_mean`` over the per-token
    mean: a pair with a large sum over many tokens has a small mean, and each filter sees its own number."""
    client.force_login(reviewer)
    a, b, c, d = pairs
    for p, mean in ((a, -0.1), (b, 0.05), (c, 0.1), (d, 0.5)):
        p.implicit_reward_mean = mean
        p.save(update_fields=["implicit_reward_mean"])
    assert _listed_ids(client.get(f"{LIST}?implicit=1:").content.decode()) == {c.pk, d.pk}
    assert _listed_ids(client.get(f"{LIST}?implicit_mean=0.2:").content.decode()) == {d.pk}
    assert _listed_ids(client.get(f"{LIST}?implicit_mean=:0").content.decode()) == {a.pk}
    html = client.get(LIST).content.decode().lower()
    assert "implicit (sum)" in html and "per token" in html and "0.500" in html
    # An empty response is flagged in its column and can be listed on its own.
    b.chosen, b.empty_response = " ", True
    b.save(update_fields=["chosen", "empty_response"])
    assert _listed_ids(client.get(f"{LIST}?empty_response__exact=1").content.decode()) == {b.pk}
    assert "empty response" in client.get(f"{LIST}?empty_response__exact=1").content.decode()
    form = client.get(f"{LIST}{b.pk}/change/").content.decode()
    assert "empty response" in form and "per token 0.050" in form and "implicit 0.500" in form


def test_other_admin_pages_load_for_superuser(client, django_user_model, pairs):
    su = django_user_model.objects.create_superuser(username="su", password="pw-su-123")
    client.force_login(su)
    job = pairs[0].job
    JobEvent.objects.create(job=job, seq=1, type="log", data={"message": "hello"})
    for url in (
        "/admin/jobs/job/",
        f"/admin/jobs/job/{job.pk}/change/",
        "/admin/jobs/jobevent/",
        "/admin/jobs/modelentry/",
        "/admin/jobs/dataset/",
        "/admin/jobs/artifact/",
    ):
        assert client.get(url).status_code == 200, url
    assert client.get("/admin/jobs/job/add/").status_code == 403  # jobs come from job_create
    html = client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert f"/jobs/{job.pk}/" in html and f"jobevent/?job__id__exact={job.pk}" in html


def test_webhooks_deliveries_and_experiments_in_the_admin(client, django_user_model, user):
    """Staff see a user's webhooks with their last deliveries and can pause one; the signing secret never appears,
    and nothing is added by hand (webhooks and experiments come through their services' checks)."""
    import uuid

    from jobs.models import Experiment, Webhook, WebhookDelivery

    su = django_user_model.objects.create_superuser(username="su", password="pw-su-123")
    client.force_login(su)
    hook = Webhook.objects.create(
        owner=user, url="https://hooks.example.org/congweb", secret="s3cret-value-never-shown", events=["job.failed"]
    )
    job = Job.objects.create(owner=user, kind="cd_generate", config={}, status="failed")
    WebhookDelivery.objects.create(
        webhook=hook, job=job, event="job.failed", delivery_id=uuid.uuid4(), state="failed", status_code=410
    )
    exp = Experiment.objects.create(owner=user, name="alpha grid", grid={"alpha": [0.2, 0.4]}, baseline="weak_sft")
    pages = {
        "/admin/jobs/webhook/": "hooks.example.org",
        f"/admin/jobs/webhook/{hook.pk}/change/": "410",  # its deliveries, inline
        "/admin/jobs/webhookdelivery/": "job.failed",
        "/admin/jobs/experiment/": "alpha grid",
        f"/admin/jobs/experiment/{exp.pk}/change/": "weak_sft",
    }
    for url, shown in pages.items():
        res = client.get(url)
        html = res.content.decode()
        assert res.status_code == 200 and shown in html, url
        assert "s3cret-value-never-shown" not in html, url
    for model in ("webhook", "webhookdelivery", "experiment"):
        assert client.get(f"/admin/jobs/{model}/add/").status_code == 403, model
    res = client.post(f"/admin/jobs/webhook/{hook.pk}/change/", {"active": "", **_inline_management(hook)})
    assert res.status_code == 302, res.content.decode()[:2000]
    hook.refresh_from_db()
    assert hook.active is False and hook.url == "https://hooks.example.org/congweb"


def _inline_management(hook) -> dict[str, str]:
    """The delivery inline's management form, as the change page posts it back."""
    n = str(hook.deliveries.count())
    prefix = "deliveries"
    return {
        f"{prefix}-TOTAL_FORMS": n,
        f"{prefix}-INITIAL_FORMS": n,
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "0",
        **{f"{prefix}-{i}-id": str(d.pk) for i, d in enumerate(hook.deliveries.order_by("-created", "-id"))},
        **{f"{prefix}-{i}-webhook": str(hook.pk) for i in range(int(n))},
    }
