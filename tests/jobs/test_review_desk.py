"""The review desk (/jobs/<id>/review/, jobs/services/review.py, jobs/review_views.py): the filter and its order,
navigation and "next pending", counts, edit prefill, bulk actions with a confirmed count, guidelines; the page
and its JSON endpoints for the owner and staff only (404 for anyone else), CSRF on every write."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from jobs.models import GeneratedPair, Job
from jobs.services import review

pytestmark = pytest.mark.django_db

# prompt_index -> (prompt, chosen, implicit sum, per token, gold, review status, rejected, plain)
ROWS = {
    0: ("the movie zero was", "a good film", 2.0, 0.5, 0.9, "pending", "a bad film", None),
    1: ("the book one was", "a fine book", -1.0, -0.2, 0.1, "approved", None, "plain one"),
    2: ("the movie two was", "a great movie", 1.0, 0.25, 0.7, "pending", None, "plain two"),
    3: ("the movie three was", "nice", None, None, None, "pending", None, None),
    4: ("the book four was", "an okay book", 3.0, 0.6, 0.8, "rejected", None, None),
    5: ("the song five was", "a superb movie score", 0.5, 0.1, 0.4, "pending", None, None),
}


@pytest.fixture
def job(user):
    job = Job.objects.create(owner=user, kind="cd_generate", config={}, status="succeeded")
    for i, (prompt, chosen, s, m, g, status, rejected, plain) in ROWS.items():
        GeneratedPair.objects.create(
            job=job,
            prompt_index=i,
            prompt=prompt,
            chosen=chosen,
            implicit_reward_sum=s,
            implicit_reward_mean=m,
            gold_reward=g,
            review_status=status,
            rejected=rejected,
            plain=plain,
        )
    return job


def pair(job, i) -> GeneratedPair:
    return GeneratedPair.objects.get(job=job, prompt_index=i)


def indexes(qs) -> list[int]:
    return [p.prompt_index for p in qs]


def flt(**params) -> review.ReviewFilter:
    return review.ReviewFilter.parse({k: str(v) for k, v in params.items()})


# --- service ------------------------------------------------------------------------------------------------
def test_filter_parses_every_field_and_reports_every_error_at_once():
    f = flt(status="pending", q=" movie ", implicit_min="0.5", gold_max="0.8", mean_min="")
    assert (f.status, f.q, f.ranges) == ("pending", "movie", {"implicit_min": 0.5, "gold_max": 0.8})
    assert review.ReviewFilter.parse(f.query()) == f  # the query string gives the same filter back
    with pytest.raises(ValidationError) as exc:
        flt(status="maybe", implicit_min="lots", gold_max="nan", mean_max="inf", q="x" * 201)
    assert set(exc.value.message_dict) == {"status", "implicit_min", "gold_max", "mean_max", "q"}


def test_filtered_pairs_by_status_ranges_and_text(job):
    assert indexes(review.review_pairs(job=job, flt=flt())) == [0, 1, 2, 3, 4, 5]
    assert indexes(review.review_pairs(job=job, flt=flt(status="pending", implicit_min=0.5))) == [0, 2, 5]
    # Both ends inclusive; a pair without a gold reward never passes a gold bound.
    assert indexes(review.review_pairs(job=job, flt=flt(gold_min=0.4, gold_max=0.8))) == [2, 4, 5]
    assert indexes(review.review_pairs(job=job, flt=flt(mean_max=0.1))) == [1, 5]
    # Text in the prompt (0, 2, 3) or in the chosen response (5), case-insensitive.
    assert indexes(review.review_pairs(job=job, flt=flt(q="MOVIE"))) == [0, 2, 3, 5]


def test_counts_name_every_state(job, user):
    assert review.review_counts(job=job) == {"pending": 4, "approved": 1, "rejected": 1, "edited": 0, "total": 6}
    empty = Job.objects.create(owner=user, kind="cd_generate", config={})
    assert review.review_counts(job=empty) == {"pending": 0, "approved": 0, "rejected": 0, "edited": 0, "total": 0}


def test_navigation_follows_the_filter_and_next_pending_wraps(job):
    movie = flt(q="movie")  # order 0, 2, 3, 5
    nav = review.review_nav(job=job, flt=movie, pair=pair(job, 2))
    assert (nav["prev"], nav["next"], nav["next_pending"]) == (pair(job, 0).pk, pair(job, 3).pk, pair(job, 3).pk)
    assert (nav["position"], nav["matching"]) == (2, 4)
    last = review.review_nav(job=job, flt=movie, pair=pair(job, 5))
    assert last["next"] is None and last["next_pending"] == pair(job, 0).pk  # wraps to the first pending
    # Under a gold range the order is 2, 4, 5: 3 (no gold) is skipped, 4 (rejected) is a stop but not pending.
    gold = flt(gold_min=0.4, gold_max=0.8)
    nav = review.review_nav(job=job, flt=gold, pair=pair(job, 2))
    assert (nav["next"], nav["next_pending"]) == (pair(job, 4).pk, pair(job, 5).pk)
    # A pair the filter no longer matches (just approved under "pending") keeps its place in the order.
    p0 = pair(job, 0)
    p0.review_status = "approved"
    p0.save()
    nav = review.review_nav(job=job, flt=flt(status="pending"), pair=p0)
    assert (nav["prev"], nav["next"], nav["position"], nav["matching"]) == (None, pair(job, 2).pk, None, 3)
    assert review.review_start(job=job, flt=flt(status="pending")) == pair(job, 2)


def test_review_after_moves_to_the_next_pending_or_stays(job, user):
    only = flt(gold_min=0.85)  # pair 0 alone
    p0 = pair(job, 0)
    assert review.review_after(job=job, flt=only, pair=p0) == p0  # no other pending: stay
    assert review.review_after(job=job, flt=flt(), pair=p0) == pair(job, 2)


def test_edit_prefill_is_the_last_edit_else_the_chosen_text(job, user):
    from jobs import services

    p = pair(job, 2)
    assert review.pair_view(p)["edit_prefill"] == "a great movie"
    services.pair_review(pair=p, user=user, action="edit", edited_text="a truly great movie")
    services.pair_review(pair=p, user=user, action="approve")  # approving keeps the edit's text
    view = review.pair_view(pair(job, 2))
    assert (view["edit_prefill"], view["review_status"], view["reviewer"]) == (
        "a truly great movie",
        "approved",
        "alice",
    )
    assert view["rejected"] is None and view["plain"] == "plain two"  # "not generated" stays None, not ""


def test_bulk_reviews_what_the_filter_matches_when_the_count_still_holds(job, staff_user):
    f = flt(status="pending", q="movie")
    with pytest.raises(ValidationError) as exc:
        review.pairs_review_bulk(job=job, flt=f, user=staff_user, action="approve", expect=3)
    assert "matches 4 pairs, not 3" in exc.value.messages[0]
    assert review.review_counts(job=job)["approved"] == 1  # nothing changed
    with pytest.raises(ValidationError):
        review.pairs_review_bulk(job=job, flt=f, user=staff_user, action="edit")
    assert review.pairs_review_bulk(job=job, flt=f, user=staff_user, action="approve", expect=4) == 4
    approved = GeneratedPair.objects.filter(job=job, review_status="approved").exclude(prompt_index=1)
    assert indexes(approved.order_by("prompt_index")) == [0, 2, 3, 5]
    assert all(p.reviewer == staff_user and p.reviewed_at for p in approved)
    assert (
        review.pairs_review_bulk(job=job, flt=flt(status="approved", gold_max=0.5), user=staff_user, action="reject")
        == 2
    )
    assert pair(job, 1).review_status == pair(job, 5).review_status == "rejected"


def test_guidelines_are_stored_trimmed_and_bounded(job):
    review.job_guidelines_set(job=job, text="  Reject anything off-topic.\r\nEdit typos.  ")
    job.refresh_from_db()
    assert job.review_guidelines == "Reject anything off-topic.\nEdit typos."
    with pytest.raises(ValidationError):
        review.job_guidelines_set(job=job, text="x" * (review.GUIDELINES_MAX_CHARS + 1))
    job.refresh_from_db()
    assert job.review_guidelines == "Reject anything off-topic.\nEdit typos."


# --- views --------------------------------------------------------------------------------------------------
def url(job, what: str = "", **q) -> str:
    base = f"/jobs/{job.pk}/review/{what + '/' if what else ''}"
    return base + ("?" + "&".join(f"{k}={v}" for k, v in q.items()) if q else "")


def post(client, path: str, body: dict):
    return client.post(path, data=json.dumps(body), content_type="application/json")


def config(resp) -> dict:
    html = resp.content.decode()
    start = html.index('<script id="review-config" type="application/json">') + len(
        '<script id="review-config" type="application/json">'
    )
    return json.loads(html[start : html.index("</script>", start)])


def test_only_the_owner_and_staff_may_use_the_desk(client, job, user, other_user, staff_user):
    p = pair(job, 0)
    assert client.get(url(job)).status_code == 302  # signed out: to the log-in page
    assert client.get(url(job, "state")).status_code == 404
    client.force_login(other_user)
    assert client.get(url(job)).status_code == 404
    assert client.get(url(job, "state")).status_code == 404
    assert post(client, url(job, "act"), {"pair": p.pk, "action": "approve"}).status_code == 404
    assert post(client, url(job, "bulk"), {"action": "approve"}).status_code == 404
    assert post(client, url(job, "guidelines"), {"guidelines": "mine now"}).status_code == 404
    job.refresh_from_db()
    assert pair(job, 0).review_status == "pending" and job.review_guidelines == ""
    for who in (user, staff_user):
        client.force_login(who)
        assert client.get(url(job)).status_code == 200
    # A pair of another job is not reachable through this one.
    other_job = Job.objects.create(owner=user, kind="cd_generate", config={})
    foreign = GeneratedPair.objects.create(job=other_job, prompt_index=0, prompt="p", chosen="c")
    assert client.get(url(job, pair=foreign.pk)).status_code == 404
    assert post(client, url(job, "act"), {"pair": foreign.pk, "action": "approve"}).status_code == 404


def test_page_shows_counts_filters_legend_and_embeds_the_first_pending_pair(client, job, user):
    job.review_guidelines = "Prefer <short> answers."
    job.save()
    client.force_login(user)
    resp = client.get(url(job, status="pending", gold_min="0.5"))
    html = resp.content.decode()
    assert '<b data-count="pending">4</b>' in html and '<b data-count="approved">1</b>' in html
    assert "Prefer &lt;short&gt; answers." in html  # escaped
    assert 'name="gold_min" value="0.5"' in html and '<option value="pending" selected>' in html
    for key in ("<kbd>a</kbd>", "<kbd>ArrowRight</kbd>", "<kbd>n</kbd>", "<kbd>Esc</kbd>"):
        assert key in html
    cfg = config(resp)
    assert cfg["state"]["pair"]["prompt_index"] == 0
    assert cfg["state"]["nav"]["next"] == pair(job, 2).pk and cfg["state"]["nav"]["matching"] == 2
    assert cfg["filter"] == {"status": "pending", "gold_min": "0.5"}
    assert {"keys": ["j", "ArrowRight"], "action": "next"} in cfg["shortcuts"]
    assert "<script>" not in html.replace('<script id="review-config"', "")  # CSP: no inline script
    bad = client.get(url(job, gold_min="lots"))
    assert bad.status_code == 400 and "gold_min must be a number" in bad.content.decode()


def test_state_endpoint_navigates_under_the_filter(client, job, user):
    client.force_login(user)
    s = client.get(url(job, "state", q="movie", pair=pair(job, 3).pk)).json()
    assert s["pair"]["prompt_index"] == 3 and s["pair"]["rejected"] is None
    assert (s["nav"]["prev"], s["nav"]["next"], s["nav"]["position"]) == (pair(job, 2).pk, pair(job, 5).pk, 3)
    assert client.get(url(job, "state", implicit_max="x")).json()["errors"]["implicit_max"]


def test_act_reviews_and_moves_to_the_next_pending_under_the_filter(client, job, user):
    client.force_login(user)
    f = "status=pending&q=movie"
    out = post(client, f"{url(job, 'act')}?{f}", {"pair": pair(job, 0).pk, "action": "approve"}).json()
    assert out["reviewed"]["review_status"] == "approved" and out["reviewed"]["reviewer"] == "alice"
    assert out["pair"]["prompt_index"] == 2  # 1 is approved already: not pending
    assert out["counts"]["pending"] == 3 and out["counts"]["approved"] == 2
    out = post(
        client, f"{url(job, 'act')}?{f}", {"pair": pair(job, 2).pk, "action": "edit", "edited_text": "new"}
    ).json()
    assert out["pair"]["prompt_index"] == 3 and out["counts"]["edited"] == 1
    assert pair(job, 2).edited_text == "new"
    bad = post(client, url(job, "act"), {"pair": pair(job, 3).pk, "action": "edit", "edited_text": "  "})
    assert bad.status_code == 400 and "edited_text" in bad.json()["errors"]
    assert post(client, url(job, "act"), {"pair": pair(job, 3).pk, "action": "maybe"}).status_code == 400
    assert (
        post(client, url(job, "act"), {"pair": pair(job, 3).pk, "action": "edit", "edited_text": 5}).status_code == 400
    )
    assert client.post(url(job, "act"), data="[1", content_type="application/json").status_code == 400
    unstorable = post(client, url(job, "act"), {"pair": pair(job, 3).pk, "action": "edit", "edited_text": "\ud800"})
    assert unstorable.status_code == 400 and "body" in unstorable.json()["errors"]  # a lone surrogate
    assert pair(job, 3).review_status == "pending"
    assert client.get(url(job, "act")).status_code == 405
    # The last pending under the filter: the desk stays on it.
    out = post(client, f"{url(job, 'act')}?{f}", {"pair": pair(job, 5).pk, "action": "reject"}).json()
    out = post(client, f"{url(job, 'act')}?{f}", {"pair": pair(job, 3).pk, "action": "reject"}).json()
    assert out["pair"]["prompt_index"] == 3 and out["counts"]["pending"] == 0


def test_bulk_endpoint_confirms_the_count(client, job, staff_user):
    client.force_login(staff_user)
    refused = post(client, url(job, "bulk", gold_max="0.5"), {"action": "reject", "expect": 5})
    assert refused.status_code == 400 and "matches 2 pairs, not 5" in refused.json()["errors"]["expect"][0]
    assert post(client, url(job, "bulk", gold_max="0.5"), {"action": "reject", "expect": True}).status_code == 400
    out = post(client, url(job, "bulk", gold_max="0.5"), {"action": "reject", "expect": 2}).json()
    assert out["done"] == 2 and out["counts"]["rejected"] == 3
    assert pair(job, 5).reviewer == staff_user


def test_guidelines_endpoint_json_and_plain_form(client, job, user):
    client.force_login(user)
    assert post(client, url(job, "guidelines"), {"guidelines": " Approve on-topic answers. "}).json() == {
        "guidelines": "Approve on-topic answers."
    }
    resp = client.post(url(job, "guidelines"), {"guidelines": "Reject rude ones."})
    assert resp.status_code == 302 and resp["Location"] == url(job)
    job.refresh_from_db()
    assert job.review_guidelines == "Reject rude ones."
    too_long = post(client, url(job, "guidelines"), {"guidelines": "x" * (review.GUIDELINES_MAX_CHARS + 1)})
    assert too_long.status_code == 400
    assert post(client, url(job, "guidelines"), {"guidelines": ["list"]}).status_code == 400


def test_every_write_needs_the_csrf_token(job, user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    for what, body in (("act", {"pair": pair(job, 0).pk, "action": "approve"}), ("bulk", {"action": "approve"})):
        assert post(client, url(job, what), body).status_code == 403
    assert post(client, url(job, "guidelines"), {"guidelines": "x"}).status_code == 403
    assert review.review_counts(job=job)["pending"] == 4
    token = client.get(url(job)).cookies["csrftoken"].value
    ok = client.post(
        url(job, "act"),
        data=json.dumps({"pair": pair(job, 0).pk, "action": "approve"}),
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )
    assert ok.status_code == 200 and pair(job, 0).review_status == "approved"


def test_admin_links_to_the_desk(client, job, staff_user):
    staff_user.is_superuser = True
    staff_user.save()
    client.force_login(staff_user)
    desk = f'href="/jobs/{job.pk}/review/'
    assert desk in client.get("/admin/jobs/generatedpair/").content.decode()
    p = pair(job, 2)
    assert f'{desk}?pair={p.pk}"' in client.get(f"/admin/jobs/generatedpair/{p.pk}/change/").content.decode()
