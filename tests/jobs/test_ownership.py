"""Who may use which model folder, and whose a model name is (docs/SECURITY.md sections 2 and 3).

2. RUNS_DIR is a model root (a weak_align job registers its pi_post from there), so every user's job outputs
   sit under a root: a folder under RUNS_DIR is usable only by the owner of the job whose folder it is
   (runs/<job id>/...) and by staff - at registration, at submit, and again in the worker.
3. Model names are unique per owner, not globally; the names the app registers by itself (toy worlds, the
   offline models, "<weak base>-aligned-job<N>") are reserved, and lookups of them only see the shared
   namespace or the job owner's own entry. "already exists" only ever speaks of the caller's own names.

Alice (``user``) is the victim, Bob (``other_user``) the attacker, ``staff_user`` the operator.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from rest_framework.test import APIClient

from jobs import runner, services
from jobs.models import Job, ModelEntry

from .conftest import make_prompts
from .test_offline import fake_manifest, offline_dir  # noqa: F401  (offline_dir: the stand-in models fixture)

pytestmark = pytest.mark.django_db


def _client(user) -> APIClient:
    c = APIClient()
    c.force_authenticate(user)
    return c


def _register(user, name: str, path, kind: str = "any"):
    return _client(user).post("/api/v1/models/", {"name": name, "path": str(path), "kind": kind}, format="json")


@pytest.fixture
def roots(model_root, settings):
    """The default layout: RUNS_DIR is one of MODEL_ROOTS (beside the tiny models' root)."""
    settings.RUNS_DIR = Path(settings.RUNS_DIR).resolve()
    settings.RUNS_DIR.mkdir(parents=True, exist_ok=True)
    settings.MODEL_ROOTS = [model_root, settings.RUNS_DIR]
    return settings


def _job_folder_model(job: Job, model_root: Path, stage: str = "sft_cong_s/model") -> Path:
    """A model folder where ``job`` would write it (a copy of a tiny model)."""
    dst = runner.run_dir(job) / stage
    shutil.copytree(model_root / "weak_aligned", dst)
    return dst


@pytest.fixture
def alice_run(roots, model_root, user):
    """Alice's finished cong job and the model folder it wrote: runs/<job id>/sft_cong_s/model."""
    job = Job.objects.create(owner=user, kind="cong", config={}, status="succeeded")
    return job, _job_folder_model(job, model_root)


# --- 2. other users' run folders --------------------------------------------------------------------
def test_another_users_run_folder_cannot_be_registered_and_the_answer_reveals_nothing(alice_run, other_user, roots):
    job, folder = alice_run
    before = ModelEntry.objects.count()
    res = _register(other_user, "stolen", folder)
    assert res.status_code == 400 and list(res.json()) == ["path"], res.json()
    msg = res.json()["path"][0]
    assert "not in a folder of one of your jobs" in msg and "alice" not in msg
    # The same answer (but for the path quoted back) whether Alice's job wrote that folder, wrote nothing
    # there, or there is no such job at all: nothing about her runs can be probed.
    runs = Path(roots.RUNS_DIR)
    for probe in (runs / str(job.pk) / "never_written" / "model", runs / "999999" / "model", runs / str(job.pk)):
        other = _register(other_user, "probe", probe)
        assert other.status_code == 400 and other.json()["path"][0].replace(str(probe), "P") == msg.replace(
            str(folder), "P"
        )
    # Folders under RUNS_DIR that belong to no job are nobody's to register either.
    (runs / "007").mkdir()
    shutil.copytree(folder, runs / "007" / "model")
    shutil.copytree(folder, runs / "loose")
    for path in (runs / "007" / "model", runs / "loose"):
        assert _register(other_user, "loose", path).status_code == 400
    # A symlink in Bob's own job folder pointing into Alice's is resolved first, and refused.
    bobs = Job.objects.create(owner=other_user, kind="cong", config={}, status="succeeded")
    runner.run_dir(bobs).mkdir(parents=True)
    link = runner.run_dir(bobs) / "link"
    os.symlink(folder, link)
    assert _register(other_user, "linked", link).json()["path"][0].startswith(f"{link} is in the job runs folder")
    assert ModelEntry.objects.count() == before


def test_the_owner_and_staff_can_register_a_run_folder(alice_run, user, staff_user, other_user, model_root):
    job, folder = alice_run
    mine = _register(user, "my-sft", folder, "strong")
    assert mine.status_code == 201, mine.json()
    assert ModelEntry.objects.get(pk=mine.json()["id"]).owner == user
    staff = _register(staff_user, "alice-sft", folder)
    assert staff.status_code == 201, staff.json()
    # Bob's own job folder is his to register.
    bobs = Job.objects.create(owner=other_user, kind="cong", config={}, status="succeeded")
    assert _register(other_user, "bob-sft", _job_folder_model(bobs, model_root)).status_code == 201
    # The app itself (owner None: toy world, offline install) may register any folder under a root.
    assert services.model_register(name="system-copy", path=str(folder), owner=None).owner is None


@pytest.fixture
def planted(alice_run, other_user, model_root):
    """An entry of Bob's pointing into Alice's run folder, as registration allowed before the fix (made
    directly in the database), with Bob's own weak base of the same vocabulary and a prompt set."""
    _, folder = alice_run
    wb = services.model_register(name="bob-base", path=str(model_root / "weak_base"), kind="weak", owner=other_user)
    bad = ModelEntry.objects.create(
        name="planted", path=str(folder), kind="weak", owner=other_user, vocab_fingerprint=wb.vocab_fingerprint
    )
    ds = services.dataset_create(name="bob-prompts", chunks=[make_prompts(3)], owner=other_user)
    return wb, bad, ds


def test_an_entry_into_another_users_run_folder_is_refused_at_submit(planted, other_user, staff_user, monkeypatch):
    monkeypatch.setattr(services.dispatch, "send", lambda job_id: None)
    wb, bad, ds = planted
    body = {"kind": "cd_generate", "weak_base": wb.pk, "weak_aligned": bad.pk, "prompts": ds.pk, "alpha": 0.4}
    before = Job.objects.count()
    res = _client(other_user).post("/api/v1/jobs/", body, format="json")
    assert res.status_code == 400 and list(res.json()) == ["weak_aligned"], res.json()
    assert "not one of your jobs'" in res.json()["weak_aligned"][0]
    res = _client(other_user).post(
        "/api/v1/jobs/", {"kind": "evaluate", "strong": bad.pk, "prompts": ds.pk}, format="json"
    )
    assert res.status_code == 400 and "not one of your jobs'" in res.json()["strong"][0]
    assert Job.objects.count() == before
    # Staff may use any folder.
    assert _client(staff_user).post("/api/v1/jobs/", body, format="json").status_code == 201


def test_the_worker_rechecks_every_model_and_dataset_before_running(
    planted, alice_run, other_user, user, staff_user, model_root, monkeypatch
):
    wb, bad, ds = planted
    ran: list[int] = []
    monkeypatch.setattr(runner, "run_spec", lambda job, rep, mirrors, **kw: ran.append(job.pk) or {})  # the stages

    def queued(owner, prompts, **models) -> Job:
        """A queued job as job_create records it, without job_create's checks (a job from before the fix)."""
        config = {
            "kind": "cd_generate",
            "alpha": 0.4,
            "params": {},
            **{k: services._model_ref(m) for k, m in models.items()},
            "prompts": {
                "id": prompts.pk,
                "name": prompts.name,
                "path": prompts.path,
                "kind": prompts.kind,
                "gold": "",
                "row_count": prompts.row_count,
            },
        }
        return Job.objects.create(owner=owner, kind="cd_generate", config=config)

    job = queued(other_user, ds, weak_base=wb, weak_aligned=bad)
    with pytest.raises(ValueError, match=r"weak_aligned: model 'planted' is in a job runs folder that is not one of"):
        services.job_check_access(job=job)
    assert runner.run_job(job_id=job.pk) == "failed" and ran == []  # refused before the stage started
    job.refresh_from_db()
    assert job.status == "failed" and "weak_aligned: model 'planted'" in job.error

    # The same config owned by staff passes (staff may use any folder), and so does Alice's own folder.
    services.job_check_access(job=queued(staff_user, ds, weak_base=wb, weak_aligned=bad))
    alice_wb = services.model_register(name="wb", path=str(model_root / "weak_base"), kind="weak", owner=user)
    alice_sft = services.model_register(name="sft", path=str(alice_run[1]), kind="weak", owner=user)
    alice_ds = services.dataset_create(name="p", chunks=[make_prompts(2)], owner=user)
    ok = queued(user, alice_ds, weak_base=alice_wb, weak_aligned=alice_sft)
    services.job_check_access(job=ok)
    assert runner.run_job(job_id=ok.pk) == "succeeded" and ran == [ok.pk]

    # Changed since submit: an entry moved to another folder, made someone else's, or a dataset too.
    fine = queued(other_user, ds, weak_base=wb)
    services.job_check_access(job=fine)
    ModelEntry.objects.filter(pk=wb.pk).update(path=str(model_root / "other_vocab"))
    with pytest.raises(ValueError, match="weak_base: model 'bob-base' now points at another file"):
        services.job_check_access(job=fine)
    ModelEntry.objects.filter(pk=wb.pk).update(path=wb.path, owner=user)
    with pytest.raises(ValueError, match=rf"weak_base: model {wb.pk} no longer exists or is not available"):
        services.job_check_access(job=fine)
    ModelEntry.objects.filter(pk=wb.pk).update(owner=other_user)
    type(ds).objects.filter(pk=ds.pk).update(owner=user)
    with pytest.raises(ValueError, match=rf"prompts: dataset {ds.pk} no longer exists or is not available"):
        services.job_check_access(job=fine)
    type(ds).objects.filter(pk=ds.pk).delete()
    ModelEntry.objects.filter(pk=wb.pk).delete()
    with pytest.raises(ValueError, match=r"weak_base: .*; prompts: "):
        services.job_check_access(job=fine)


# --- 3. names -----------------------------------------------------------------------------------------
def test_two_users_can_each_have_a_model_called_mine_and_collisions_reveal_nothing(user, other_user, model_root):
    a = _register(user, "mine", model_root / "weak_base")
    assert a.status_code == 201, a.json()
    # Bob takes a name Alice holds privately: simply succeeds, no word of hers.
    b = _register(other_user, "mine", model_root / "weak_aligned")
    assert b.status_code == 201, b.json()
    assert ModelEntry.objects.filter(name="mine").count() == 2
    assert [m["name"] for m in _client(other_user).get("/api/v1/models/").json()["results"]] == ["mine"]
    # His own second "mine" is the only collision he is told about.
    again = _register(other_user, "mine", model_root / "weak_base")
    assert again.status_code == 400 and again.json() == {
        "name": ["a model named 'mine' already exists among your models; pick another name"]
    }


def test_the_database_keeps_names_unique_per_owner_and_among_shared_entries(user, other_user, model_root):
    path = str(model_root / "weak_base")
    ModelEntry.objects.create(name="n", path=path, owner=user)
    ModelEntry.objects.create(name="n", path=path, owner=other_user)
    ModelEntry.objects.create(name="n", path=path, owner=None)
    for owner in (user, None):
        with pytest.raises(IntegrityError), transaction.atomic():
            ModelEntry.objects.create(name="n", path=path, owner=owner)


@pytest.mark.parametrize(
    "name",
    [
        "toy-review-s0-weak-base",
        "TOY-anything",
        "smollm2-135m-instruct",
        "Gemma3-270M-base",
        "shared-one",
        "wb-aligned-job12",
        "x-ALIGNED-JOB3",
    ],
)
def test_users_and_staff_cannot_take_shared_or_reserved_names(name, user, staff_user, model_root):
    services.model_register(name="shared-one", path=str(model_root / "weak_base"), owner=None)
    for who in (user, staff_user):
        res = _register(who, name, model_root / "weak_base")
        assert res.status_code == 400 and list(res.json()) == ["name"], res.json()
        assert "reserved" in res.json()["name"][0] or "shared model name" in res.json()["name"][0]
    # Not reserved: the mark in the middle, or without a job number.
    for ok in ("my-aligned-job-notes", "x-aligned-job", "toyota"):
        assert _register(user, ok, model_root / "weak_base").status_code == 201


def test_a_squatted_toy_name_does_not_capture_the_toy_world(user, other_user, model_root):
    """Bob registered the toy world's name before staff registered the world (made directly in the database,
    as registration allowed before the fix): the world gets its own shared entry, never Bob's."""
    squat = ModelEntry.objects.create(
        name="toy-review-s0-weak-base", path=str(model_root / "other_vocab"), owner=other_user
    )
    out = services.toyworld_register(
        manifest={"world": "review", "seed": 0, "models": {"weak_base": str(model_root / "weak_base")}}
    )
    entry = out["models"]["weak_base"]
    assert entry.pk != squat.pk and entry.owner is None and entry.path == str((model_root / "weak_base").resolve())
    again = services.toyworld_register(
        manifest={"world": "review", "seed": 0, "models": {"weak_base": str(model_root / "weak_base")}}
    )
    assert again["models"]["weak_base"].pk == entry.pk


def test_a_heldout_split_is_linked_never_found_by_name(user, other_user, staff_user, model_root, tmp_path, monkeypatch):
    """A toy world's -train split evaluates on its own -heldout split (stored link); Bob's dataset named like
    the held-out split is never picked, not even for staff who can see it."""
    monkeypatch.setattr(services.dispatch, "send", lambda job_id: None)
    paths = {}
    for split in ("train", "heldout"):
        paths[split] = tmp_path / f"{split}.jsonl"
        paths[split].write_bytes(make_prompts(3))
    squat = services.dataset_create(
        name="toy-review-s0-heldout", chunks=[make_prompts(2)], gold="toy:review", owner=other_user
    )
    out = services.toyworld_register(
        manifest={
            "world": "review",
            "seed": 0,
            "models": {
                "weak_base": str(model_root / "weak_base"),
                "weak_aligned": str(model_root / "weak_aligned"),
                "strong_base": str(model_root / "weak_base"),
            },
            "prompts": {"train": str(paths["train"]), "heldout": str(paths["heldout"])},
        }
    )
    train, held = out["datasets"]["train"], out["datasets"]["heldout"]
    assert train.eval_split_id == held.pk and held.pk != squat.pk
    m = out["models"]
    for who in (user, staff_user):
        job = services.job_create(
            user=who,
            kind="cong",
            weak_base=m["weak_base"].pk,
            weak_aligned=m["weak_aligned"].pk,
            strong=m["strong_base"].pk,
            prompts=train.pk,
        )
        assert job.config["eval_prompts"]["id"] == held.pk


def test_a_squatted_offline_name_does_not_capture_the_offline_install(settings, tmp_path, offline_dir, other_user):  # noqa: F811 (the imported fixture)
    settings.VAR_DIR, settings.RUNS_DIR, settings.DATA_DIR = tmp_path / "var", tmp_path / "var" / "runs", offline_dir
    settings.MODEL_ROOTS = [offline_dir.resolve()]
    manifest = fake_manifest(offline_dir)
    squat = ModelEntry.objects.create(
        name="smollm2-135m-instruct", owner=other_user, path=manifest["models"]["gemma3_270m_base"]["path"]
    )
    entry = services.offline_register(manifest=manifest)["models"]["smollm2_135m_instruct"]
    assert entry.pk != squat.pk and entry.owner is None
    assert entry.path == manifest["models"]["smollm2_135m_instruct"]["path"]


def test_a_squatted_aligned_name_does_not_capture_the_weak_align_registration(roots, model_root, user, other_user):
    from jobs.progress import ProgressReporter

    wb = services.model_register(name="wb", path=str(model_root / "weak_base"), kind="weak", family="tiny", owner=user)
    job = Job.objects.create(owner=user, kind="weak_align", config={"weak_base": services._model_ref(wb)})
    name = f"wb-aligned-job{job.pk}"
    # Bob cannot register the name the job will use ...
    res = _register(other_user, name, model_root / "weak_aligned")
    assert res.status_code == 400 and "reserved for the models weak_align jobs register" in res.json()["name"][0]
    # ... and an entry of that name he got before the fix (made directly in the database) is not taken.
    squat = ModelEntry.objects.create(name=name, path=str(model_root / "weak_aligned"), kind="weak", owner=other_user)
    model_dir = _job_folder_model(job, model_root, "weak_align/model")
    out = runner._register_aligned(job, ProgressReporter(job.pk), str(model_dir))
    entry = ModelEntry.objects.get(pk=out["registered_model"]["id"])
    assert entry.pk != squat.pk and (entry.name, entry.owner, entry.family) == (name, user, "tiny")
    assert entry.path == str(model_dir.resolve())
    # Idempotent for a redelivered attempt: the owner's own entry for this folder, nothing new.
    again = runner._register_aligned(job, ProgressReporter(job.pk), str(model_dir))
    assert again["registered_model"]["id"] == entry.pk and ModelEntry.objects.filter(name=name).count() == 2
    squat.refresh_from_db()
    assert (squat.owner, squat.path) == (other_user, str(model_root / "weak_aligned"))


def test_the_migration_renames_user_entries_holding_reserved_names(user, other_user, model_root):
    from django.apps import apps

    migration = importlib.import_module("jobs.migrations.0005_model_names_per_owner")
    path = str(model_root / "weak_base")
    alices = Job.objects.create(owner=user, kind="weak_align", config={})
    keep = [
        ModelEntry.objects.create(name=f"wb-aligned-job{alices.pk}", path=path, owner=user),
        ModelEntry.objects.create(name="toy-review-s0-weak-base", path=path, owner=None),
        ModelEntry.objects.create(name="mine", path=path, owner=other_user),
    ]
    renamed = [
        ModelEntry.objects.create(name=f"wb-aligned-job{alices.pk}", path=path, owner=other_user),
        ModelEntry.objects.create(name="toy-review-s0-weak-base", path=path, owner=other_user),
        ModelEntry.objects.create(name="smollm2-135m-instruct", path=path, owner=other_user),
    ]
    migration.rename_reserved_user_names(apps, None)
    assert [ModelEntry.objects.get(pk=e.pk).name for e in keep] == [e.name for e in keep]
    assert [ModelEntry.objects.get(pk=e.pk).name for e in renamed] == [f"{e.name}-renamed-{e.pk}" for e in renamed]


def test_a_deleted_users_entries_go_with_them_instead_of_becoming_shared(user, other_user, model_root):
    _register(user, "mine", model_root / "weak_base")
    _register(other_user, "mine", model_root / "weak_base")
    ds = services.dataset_create(name="private", chunks=[make_prompts(1)], owner=user)
    user.delete()
    other_user.delete()  # both "mine" turning shared would also collide
    assert not ModelEntry.objects.exists() and not type(ds).objects.exists()


def test_model_register_refuses_a_reserved_name_but_the_app_may_use_it(user, model_root):
    with pytest.raises(ValidationError, match="reserved"):
        services.model_register(name="x-aligned-job1", path=str(model_root / "weak_base"), owner=user)
    e = services.model_register(name="x-aligned-job1", path=str(model_root / "weak_base"), owner=user, system=True)
    assert e.owner == user
