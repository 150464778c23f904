"""Dataset and model privacy (docs/API.md, docs/SECURITY.md): a user's private models and datasets are in
no list another user sees - GET /api/v1/models/ and /datasets/, the new-job page's select options, the
presets (API and page) - and cannot be used in a job (400 "no model with id" / "no dataset with id"), at
submit nor when a worker starts it. Shared ones (owner None) are visible to and usable by everyone; staff
see all.

Every list is compared with the exact set of ids it must hold, so dropping the owner filter anywhere
(jobs.selectors.visible, the form's choices, the presets, job_create's lookups) fails here.

Alice (``user``) owns the weak pair and a prompts dataset; Bob (``other_user``) has his own private
model, dataset and an aligned weak pair of the offline family; ``staff_user`` is the operator.
"""

from __future__ import annotations

import re

import pytest
from rest_framework.test import APIClient

from jobs import page_selectors, selectors, services
from jobs.models import Dataset, Job, ModelEntry
from jobs.names import OFFLINE_STRONG, OFFLINE_TRAIN, OFFLINE_WEAK

from .conftest import make_prompts

pytestmark = pytest.mark.django_db

BOB_MARK = "bobsecret"  # in the name of everything Bob owns: no page Alice sees may contain it


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    """job_create sends the Celery task on commit; these tests need no worker or broker."""
    monkeypatch.setattr(services.dispatch, "send", lambda job_id: None)


def _api(user) -> APIClient:
    c = APIClient()
    c.force_authenticate(user)
    return c


def _entry(name: str, path, owner, *, kind: str = "weak", family: str = "", fp: str = "", **kw) -> ModelEntry:
    return ModelEntry.objects.create(
        name=name, path=str(path), kind=kind, family=family, vocab_fingerprint=fp, owner=owner, **kw
    )


@pytest.fixture
def world(model_root, user, other_user, weak_pair, prompts_ds):
    """Shared (owner None), Alice's and Bob's models and datasets, set so that every list would show Bob's
    entries to Alice if it did not filter by owner: the offline presets list every visible model of the
    shared SmolLM2's family and vocabulary, and the page's family presets every visible pi_post that
    records its pi_pre."""
    wb, wa = weak_pair
    fp = wb.vocab_fingerprint
    shared_weak = _entry(OFFLINE_WEAK, model_root / "weak_base", None, family="smollm2", fp=fp)
    shared_strong = _entry(OFFLINE_STRONG, model_root / "weak_base", None, kind="strong", family="gemma3", fp=fp)
    shared_ds = services.dataset_create(name=OFFLINE_TRAIN, chunks=[make_prompts(3)], gold="toy:review")
    # Alice's own pi_post of the shared family (offline presets) and a family of her own (page presets).
    alice_post = _entry("alice-post", model_root / "weak_aligned", user, family="smollm2", fp=fp)
    alice_fam_strong = _entry("alice-fam-strong", model_root / "weak_base", user, kind="strong", family="afam")
    alice_fam_pre = _entry("alice-fam-pre", model_root / "weak_base", user, family="afam")
    alice_fam_post = _entry(
        "alice-fam-post", model_root / "weak_aligned", user, family="afam", aligned_from=alice_fam_pre
    )
    # Bob's: a plain private model and dataset (registered the ordinary way), and the same two shapes.
    bob_model = services.model_register(
        name=f"{BOB_MARK}-model", path=str(model_root / "weak_base"), kind="weak", owner=other_user
    )
    bob_ds = services.dataset_create(
        name=f"{BOB_MARK}-prompts", chunks=[make_prompts(5)], gold="toy:review", owner=other_user
    )
    bob_post = _entry(f"{BOB_MARK}-post", model_root / "weak_aligned", other_user, family="smollm2", fp=fp)
    bob_fam_strong = _entry(f"{BOB_MARK}-strong", model_root / "weak_base", other_user, kind="strong", family="bfam")
    bob_fam_pre = _entry(f"{BOB_MARK}-pre", model_root / "weak_base", other_user, family="bfam")
    bob_fam_post = _entry(
        f"{BOB_MARK}-fam-post", model_root / "weak_aligned", other_user, family="bfam", aligned_from=bob_fam_pre
    )
    shared_models = {shared_weak.pk, shared_strong.pk}
    alice_models = {wb.pk, wa.pk, alice_post.pk, alice_fam_strong.pk, alice_fam_pre.pk, alice_fam_post.pk}
    bob_models = {bob_model.pk, bob_post.pk, bob_fam_strong.pk, bob_fam_pre.pk, bob_fam_post.pk}
    assert ModelEntry.objects.count() == len(shared_models | alice_models | bob_models)
    assert Dataset.objects.count() == 3
    return {
        "models": {"shared": shared_models, "alice": alice_models, "bob": bob_models},
        "datasets": {"shared": {shared_ds.pk}, "alice": {prompts_ds.pk}, "bob": {bob_ds.pk}},
        "bob_model": bob_model,
        "bob_ds": bob_ds,
        "alice_post": alice_post,
        "alice_fam_post": alice_fam_post,
    }


def _visible_to(world, who: str, what: str) -> set[int]:
    groups = world[what]
    if who == "staff":
        return set().union(*groups.values())
    return groups["shared"] | groups[who]


def _all_pages(c: APIClient, url: str) -> list[dict]:
    rows: list[dict] = []
    while url:
        res = c.get(url)
        assert res.status_code == 200, res.content
        rows += res.json()["results"]
        url = res.json()["next"]
    return rows


# --- lists ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("who", ["alice", "bob", "staff"])
def test_model_and_dataset_lists_hold_exactly_own_and_shared(world, user, other_user, staff_user, who):
    c = _api({"alice": user, "bob": other_user, "staff": staff_user}[who])
    for what in ("models", "datasets"):
        got = [r["id"] for r in _all_pages(c, f"/api/v1/{what}/")]
        assert len(got) == len(set(got)) and set(got) == _visible_to(world, who, what), (who, what)
    # The selectors every other surface builds on agree.
    u = {"alice": user, "bob": other_user, "staff": staff_user}[who]
    assert set(selectors.models_visible(user=u).values_list("pk", flat=True)) == _visible_to(world, who, "models")
    assert set(selectors.datasets_visible(user=u).values_list("pk", flat=True)) == _visible_to(world, who, "datasets")


def test_anonymous_sees_no_private_entry(world):
    assert selectors.models_visible(user=None).filter(owner__isnull=False).count() == 0
    assert selectors.datasets_visible(user=None).filter(owner__isnull=False).count() == 0
    assert APIClient().get("/api/v1/models/").status_code in (401, 403)


def _select_values(html: str, name: str) -> set[int]:
    m = re.search(rf'<select name="{name}"[^>]*>(.*?)</select>', html, re.S)
    assert m, f"no <select name={name}> on the page"
    return {int(v) for v in re.findall(r'<option value="(\d+)"', m.group(1))}


@pytest.mark.parametrize("who", ["alice", "staff"])
def test_new_job_page_offers_exactly_own_and_shared(world, client, user, staff_user, who):
    client.force_login({"alice": user, "staff": staff_user}[who])
    res = client.get("/jobs/new/")
    assert res.status_code == 200
    html = res.content.decode()
    for name in ("weak_base", "weak_aligned", "strong"):
        assert _select_values(html, name) == _visible_to(world, who, "models"), name
    assert _select_values(html, "prompts") == _visible_to(world, who, "datasets")
    assert (BOB_MARK in html) is (who == "staff")


# --- presets -------------------------------------------------------------------------------------------------
def _preset_ids(presets: list[dict]) -> tuple[set[int], set[int]]:
    models, datasets = set(), set()
    for p in presets:
        req = p["request"]
        models |= {req[k] for k in ("weak_base", "weak_aligned", "strong") if req.get(k) is not None}
        datasets |= {req[k] for k in ("prompts", "eval_prompts") if req.get(k) is not None}
    return models, datasets


def test_presets_offer_only_own_and_shared_entries(world, client, user, other_user):
    alice_post, fam_post = world["alice_post"], world["alice_fam_post"]
    api = _api(user).get("/api/v1/presets/")
    assert api.status_code == 200
    presets = api.json()
    names = [p["name"] for p in presets]
    # Not vacuous: Alice's own pi_posts are offered (offline family and her own family) ...
    assert f"SmolLM2 self-alignment: ConG (custom size), pi_post = {alice_post.name}" in names, names
    assert f"afam: ConG with {fam_post.name}" in [p["name"] for p in page_selectors.job_presets(user=user)]
    # ... and nothing of Bob's, by name or by id.
    assert not any(BOB_MARK in n for n in names), names
    models, datasets = _preset_ids(presets)
    assert alice_post.pk in models
    assert not models & world["models"]["bob"] and not datasets & world["datasets"]["bob"]
    # The new-job page's presets (the API's plus the family ones) and its HTML.
    client.force_login(user)
    html = client.get("/jobs/new/").content.decode()
    page = client.get("/jobs/new/").context["presets"]
    assert [p["name"] for p in page][: len(presets)] == names
    models, datasets = _preset_ids(page)
    assert fam_post.pk in models
    assert models <= _visible_to(world, "alice", "models") and datasets <= _visible_to(world, "alice", "datasets")
    assert BOB_MARK not in html
    # Bob's presets are his: his pi_posts, none of Alice's.
    bob_page = page_selectors.job_presets(user=other_user)
    bob_names = [p["name"] for p in bob_page]
    assert f"bfam: ConG with {BOB_MARK}-fam-post" in bob_names
    assert not any("alice" in n for n in bob_names), bob_names
    models, datasets = _preset_ids(bob_page)
    assert not models & world["models"]["alice"] and not datasets & world["datasets"]["alice"]


def test_a_preset_names_no_entry_its_user_cannot_use(world, user):
    """Every preset Alice is offered is a request job_create accepts from her (no hidden id in it)."""
    for p in selectors.presets(user=user):
        assert services.job_create(user=user, **p["request"]).status == "queued", p["name"]


# --- use in a job --------------------------------------------------------------------------------------------
@pytest.fixture
def body(world, weak_pair, prompts_ds):
    wb, wa = weak_pair
    return {"kind": "cd_generate", "weak_base": wb.pk, "weak_aligned": wa.pk, "prompts": prompts_ds.pk, "alpha": 0.4}


@pytest.mark.parametrize("field", ["weak_base", "weak_aligned"])
def test_another_users_model_cannot_be_used(world, user, body, field):
    pk = world["bob_model"].pk
    before = Job.objects.count()
    res = _api(user).post("/api/v1/jobs/", {**body, field: pk}, format="json")
    assert res.status_code == 400 and res.json()[field] == [f"no model with id {pk}"], res.json()
    # The same answer as for an id that does not exist: nothing tells Alice Bob's model is there.
    missing = _api(user).post("/api/v1/jobs/", {**body, field: 987654}, format="json")
    assert missing.json()[field] == ["no model with id 987654"]
    assert Job.objects.count() == before


def test_another_users_dataset_cannot_be_used(world, user, body):
    pk = world["bob_ds"].pk
    res = _api(user).post("/api/v1/jobs/", {**body, "prompts": pk}, format="json")
    assert res.status_code == 400 and res.json()["prompts"] == [f"no dataset with id {pk}"], res.json()
    res = _api(user).post(
        "/api/v1/jobs/", {**body, "kind": "cong", "strong": body["weak_base"], "eval_prompts": pk}, format="json"
    )
    assert res.status_code == 400 and any(f"no dataset with id {pk}" in m for m in res.json()["eval_prompts"])
    assert not Job.objects.exists()


def test_new_job_page_refuses_another_users_model_and_dataset(world, client, user, body):
    client.force_login(user)
    for field, pk in (("weak_base", world["bob_model"].pk), ("prompts", world["bob_ds"].pk)):
        res = client.post("/jobs/new/", {**body, field: str(pk)})
        assert res.status_code == 400 and field in res.context["form"].errors, field
    assert not Job.objects.exists()


def test_shared_entries_are_usable_by_everyone_and_staff_may_use_any(world, user, other_user, staff_user, body):
    shared_ds = next(iter(world["datasets"]["shared"]))
    shared_weak = ModelEntry.objects.get(name=OFFLINE_WEAK, owner__isnull=True)
    for u in (user, other_user):
        req = {**body, "weak_base": shared_weak.pk, "weak_aligned": shared_weak.pk, "prompts": shared_ds}
        res = _api(u).post("/api/v1/jobs/", req, format="json")
        assert res.status_code == 201, res.json()
    res = _api(staff_user).post(
        "/api/v1/jobs/", {**body, "weak_base": world["bob_model"].pk, "prompts": world["bob_ds"].pk}, format="json"
    )
    assert res.status_code == 201, res.json()


def test_worker_recheck_refuses_a_job_naming_another_users_entry(world, user, body):
    """A stored config that names Bob's model (submitted before it went private, or not via job_create)
    fails the worker's check before it runs."""
    job = services.job_create(user=user, **body)
    services.job_check_access(job=job)  # Alice's own entries: fine
    bob = world["bob_model"]
    job.config = {**job.config, "weak_base": {"id": bob.pk, "name": bob.name, "path": bob.path}}
    with pytest.raises(ValueError, match="weak_base: model .* not available to the job's owner"):
        services.job_check_access(job=job)
