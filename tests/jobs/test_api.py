"""REST API: auth, ownership (others' jobs are 404), validation 400s that create nothing, schema."""

from __future__ import annotations

import io
import json
import os

import pytest
from rest_framework.test import APIClient

from jobs import services
from jobs.models import Dataset, GeneratedPair, Job, JobEvent, ModelEntry

from .conftest import make_prompts, save_tiny_model

pytestmark = pytest.mark.django_db


def _client(user=None) -> APIClient:
    c = APIClient()
    if user is not None:
        c.force_authenticate(user)
    return c


def _state():
    return (Job.objects.count(), JobEvent.objects.count(), ModelEntry.objects.count(), Dataset.objects.count())


def _upload(c, payload: bytes, **extra):
    f = io.BytesIO(payload)
    f.name = "prompts.jsonl"
    return c.post("/api/v1/datasets/", {"name": "up", "file": f, **extra}, format="multipart")


@pytest.fixture
def job_body(weak_pair, prompts_ds):
    wb, wa = weak_pair
    return {
        "kind": "cd_generate",
        "weak_base": wb.pk,
        "weak_aligned": wa.pk,
        "prompts": prompts_ds.pk,
        "alpha": 0.4,
        "params": {"max_prompts": 2},
    }


def test_token_auth_flow(user):
    c = APIClient()
    anonymous = c.get("/api/v1/jobs/")
    assert anonymous.status_code == 401 and isinstance(anonymous.json()["detail"], str)
    bad = c.post("/api/v1/auth/token/", {"username": "alice", "password": "nope"}, format="json")
    assert bad.status_code == 400 and bad.json() == {"detail": "wrong username or password"}
    res = c.post("/api/v1/auth/token/", {"username": "alice", "password": "pw-alice-123"}, format="json")
    assert res.status_code == 200
    c.credentials(HTTP_AUTHORIZATION=f"Token {res.json()['token']}")
    assert c.get("/api/v1/jobs/").status_code == 200


def test_create_list_detail_and_filters(user, job_body):
    c = _client(user)
    res = c.post("/api/v1/jobs/", job_body, format="json")
    assert res.status_code == 201, res.json()
    job = res.json()
    assert job["status"] == "queued" and job["config"]["params"] == {"max_prompts": 2}
    listing = c.get("/api/v1/jobs/?status=queued&kind=cd_generate").json()
    assert listing["count"] == 1 and listing["results"][0]["id"] == job["id"]
    assert c.get("/api/v1/jobs/?status=running").json()["count"] == 0
    assert c.get(f"/api/v1/jobs/{job['id']}/").json()["kind"] == "cd_generate"
    events = c.get(f"/api/v1/jobs/{job['id']}/events/?after=0").json()
    assert [e["seq"] for e in events] == [1] and events[0]["data"]["status"] == "queued"
    assert c.get(f"/api/v1/jobs/{job['id']}/events/?after=1").json() == []


@pytest.mark.parametrize("limit", ["0", "5001", "-1"])
def test_events_limit_out_of_range_is_a_400_naming_the_bounds(user, job_body, limit):
    c = _client(user)
    job_id = c.post("/api/v1/jobs/", job_body, format="json").json()["id"]
    res = c.get(f"/api/v1/jobs/{job_id}/events/?limit={limit}")
    assert res.status_code == 400 and res.json() == {"limit": [f"limit must be between 1 and 5000, got {limit}"]}
    assert len(c.get(f"/api/v1/jobs/{job_id}/events/?limit=5000").json()) == 1


def test_other_users_jobs_are_404_and_staff_sees_all(user, other_user, staff_user, job_body):
    job_id = _client(user).post("/api/v1/jobs/", job_body, format="json").json()["id"]
    bob = _client(other_user)
    for path in ("", "events/", "pairs/", "pairs/export/", "results/"):
        assert bob.get(f"/api/v1/jobs/{job_id}/{path}").status_code == 404, path
    assert bob.post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 404
    assert bob.post(f"/api/v1/jobs/{job_id}/retry/").status_code == 404
    assert bob.get("/api/v1/jobs/").json()["count"] == 0
    assert Job.objects.get(pk=job_id).status == "queued"  # bob's cancel did nothing
    staff = _client(staff_user)
    assert staff.get(f"/api/v1/jobs/{job_id}/").status_code == 200
    assert staff.get("/api/v1/jobs/").json()["count"] == 1
    # bob cannot use alice's models either
    res = bob.post("/api/v1/jobs/", job_body, format="json")
    assert res.status_code == 400 and "no model" in res.json()["weak_base"][0]


@pytest.mark.parametrize(
    "change,field,needle",
    [
        ({"alpha": 1.01}, "alpha", "between 0 and 1"),
        ({"alpha": -1}, "alpha", "between 0 and 1"),
        ({"alpha": "lots"}, "alpha", "number"),
        ({"alpha": [0.4]}, "alpha", "number"),
        ({"weak_aligned": 424242}, "weak_aligned", "no model"),
        ({"kind": "teleport"}, "kind", "unknown job kind"),
        ({"kind": "train", "strong": None, "method": "yolo"}, "method", "sft"),
        ({"kind": "cong", "methods": ["cong", "magic"]}, "methods", "magic"),
        ({"params": {"max_prompts": -3}}, "params.max_prompts", "max_prompts"),
        # ids and alpha are typed: a string is refused, not converted
        ({"weak_base": "1"}, "weak_base", "must be an integer"),
        ({"prompts": True}, "prompts", "must be an integer"),
        ({"strong": 1.5, "kind": "cong"}, "strong", "must be an integer"),
        ({"alpha": "0.4"}, "alpha", "must be a number"),
        ({"methods": "cong", "kind": "cong"}, "methods", "list of strings"),
    ],
)
def test_job_validation_400_creates_nothing(user, job_body, change, field, needle):
    before = _state()
    res = _client(user).post("/api/v1/jobs/", {**job_body, **change}, format="json")
    assert res.status_code == 400
    assert needle in " ".join(res.json()[field]), res.json()
    assert _state() == before


def test_vocab_mismatch_400_names_both(user, model_root, prompts_ds):
    c = _client(user)
    a = c.post(
        "/api/v1/models/", {"name": "pre-X", "path": str(model_root / "weak_base"), "kind": "weak"}, format="json"
    )
    b = c.post(
        "/api/v1/models/", {"name": "post-Y", "path": str(model_root / "other_vocab"), "kind": "weak"}, format="json"
    )
    assert a.status_code == b.status_code == 201
    before = _state()
    res = c.post(
        "/api/v1/jobs/",
        {"kind": "cd_generate", "weak_base": a.json()["id"], "weak_aligned": b.json()["id"], "prompts": prompts_ds.pk},
        format="json",
    )
    assert res.status_code == 400
    msg = res.json()["weak_aligned"][0]
    assert "pre-X" in msg and "post-Y" in msg
    assert _state() == before


def test_empty_dataset_400(user, job_body, prompts_ds):
    Dataset.objects.filter(pk=prompts_ds.pk).update(row_count=0)
    res = _client(user).post("/api/v1/jobs/", job_body, format="json")
    assert res.status_code == 400 and "empty" in res.json()["prompts"][0]


def test_cancel_finished_and_retry_running_are_400(user, job_body):
    c = _client(user)
    job_id = c.post("/api/v1/jobs/", job_body, format="json").json()["id"]
    services.job_claim(job_id=job_id, task_id="t")
    res = c.post(f"/api/v1/jobs/{job_id}/retry/")
    assert res.status_code == 400 and "only failed or cancelled" in res.json()["status"][0]
    services.job_finish(job_id=job_id, results={"ok": 1}, task_id="t")
    res = c.post(f"/api/v1/jobs/{job_id}/cancel/")
    assert res.status_code == 400 and "already finished" in res.json()["status"][0]
    assert c.get(f"/api/v1/jobs/{job_id}/results/").json()["results"] == {"ok": 1}
    assert Job.objects.get(pk=job_id).status == "succeeded"


def test_cancel_then_retry(user, job_body):
    c = _client(user)
    job_id = c.post("/api/v1/jobs/", job_body, format="json").json()["id"]
    assert c.post(f"/api/v1/jobs/{job_id}/cancel/").json()["status"] == "cancelled"
    assert c.post(f"/api/v1/jobs/{job_id}/retry/").json()["status"] == "queued"


# --- models ---------------------------------------------------------------------------------------------------
def test_model_register_and_path_checks(user, model_root, tmp_path):
    c = _client(user)
    ok = c.post("/api/v1/models/", {"name": "m1", "path": str(model_root / "weak_base")}, format="json")
    assert ok.status_code == 201 and len(ok.json()["vocab_fingerprint"]) == 16
    outside = save_tiny_model(tmp_path / "elsewhere")
    link = model_root / "api_link"
    if not link.exists():
        os.symlink(outside, link)
    before = _state()
    for bad in (f"{model_root}/../elsewhere", str(outside), str(link), "/etc", "weak_base"):
        res = c.post("/api/v1/models/", {"name": "bad", "path": bad}, format="json")
        assert res.status_code == 400 and "path" in res.json(), bad
    assert _state() == before
    assert [m["name"] for m in c.get("/api/v1/models/").json()["results"]] == ["m1"]


# --- datasets --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "payload,needle",
    [
        (b"", "empty"),
        (b'{"prompt": "\xff\xfe"}\n', "UTF-8"),
        (b'{"question": "where is prompt"}\n', "missing field"),
        (b'{"prompt": "' + b"y" * (10 * 1024 * 1024) + b'"}\n', "1 MB"),
        (b"not json\n", "not valid JSON"),
    ],
)
def test_dataset_upload_rejects_bad_files(user, model_root, payload, needle):
    before = _state()
    res = _upload(_client(user), payload)
    assert res.status_code == 400
    assert needle in " ".join(res.json()["file"]), res.json()
    assert _state() == before


def test_dataset_upload_over_size_limit(user, model_root, settings):
    settings.UPLOAD_MAX_BYTES = 50
    res = _upload(_client(user), make_prompts(20))
    assert res.status_code == 400 and "upload limit" in res.json()["file"][0]
    assert not Dataset.objects.exists()


def test_dataset_upload_ok_and_preferences(user, model_root):
    c = _client(user)
    res = _upload(c, make_prompts(5), gold="toy:review")
    assert res.status_code == 201 and res.json()["row_count"] == 5 and res.json()["gold"] == "toy:review"
    prefs = b'{"prompt": "p", "chosen": "c", "rejected": "r"}\n'
    res = _upload(c, prefs, kind="preferences")
    assert res.status_code == 201 and res.json()["kind"] == "preferences"
    assert c.get("/api/v1/datasets/").json()["count"] == 2


# --- pairs --------------------------------------------------------------------------------------------------------
def test_pairs_list_review_export(user, other_user, job_body):
    c = _client(user)
    job_id = c.post("/api/v1/jobs/", job_body, format="json").json()["id"]
    for i in range(3):
        services.pair_store(
            job_id=job_id, row={"index": i, "prompt": f"p{i}", "response": f"r{i}", "implicit_reward_mean": float(i)}
        )
        services.pair_side_store(job_id=job_id, prompt_index=i, side="plain", text=f"plain{i}")
    page = c.get(f"/api/v1/jobs/{job_id}/pairs/?min_reward_mean=1").json()
    assert [p["prompt_index"] for p in page["results"]] == [1, 2]
    pair_id = page["results"][0]["id"]
    assert (
        _client(other_user)
        .post(f"/api/v1/jobs/{job_id}/pairs/{pair_id}/review/", {"action": "reject"}, format="json")
        .status_code
        == 404
    )
    res = c.post(f"/api/v1/jobs/{job_id}/pairs/{pair_id}/review/", {"action": "reject"}, format="json")
    assert res.status_code == 200 and res.json()["review_status"] == "rejected"
    assert c.get(f"/api/v1/jobs/{job_id}/pairs/?review_status=rejected").json()["count"] == 1
    # Once a pair is reviewed, pending ones are out of the export unless asked for (docs/DATA.md).
    assert b"".join(c.get(f"/api/v1/jobs/{job_id}/pairs/export/").streaming_content) == b""
    res = c.get(f"/api/v1/jobs/{job_id}/pairs/export/?include_pending=1")
    assert res.status_code == 200 and res["Content-Type"] == "application/jsonl"
    rows = [json.loads(line) for line in b"".join(res.streaming_content).decode().splitlines()]
    assert rows == [
        {"prompt": "p0", "chosen": "r0", "rejected": "plain0"},
        {"prompt": "p2", "chosen": "r2", "rejected": "plain2"},
    ]
    # The schema's second media type, for clients that read a download as bytes: the same body.
    res = c.get(f"/api/v1/jobs/{job_id}/pairs/export/?include_pending=1", HTTP_ACCEPT="application/octet-stream")
    assert res["Content-Type"] == "application/octet-stream"
    assert [json.loads(line)["prompt"] for line in b"".join(res.streaming_content).splitlines()] == ["p0", "p2"]
    # ... and an error under that Accept is still the declared JSON body.
    res = c.get(f"/api/v1/jobs/{job_id}/pairs/export/?include_empty=maybe", HTTP_ACCEPT="application/octet-stream")
    assert res.status_code == 400 and res["Content-Type"] == "application/json" and "include_empty" in res.json()
    assert GeneratedPair.objects.filter(job_id=job_id).count() == 3


def test_schema_and_docs(user):
    c = _client(user)
    res = c.get("/api/v1/schema/")
    assert res.status_code == 200
    body = res.content.decode()
    for p in ("/api/v1/jobs/", "/api/v1/jobs/{id}/cancel/", "/api/v1/datasets/", "/api/v1/auth/token/"):
        assert p in body
    assert c.get("/api/v1/docs/").status_code == 200


# --- the schema as a contract (tests/jobs/test_generated_client.py runs a generated client against it) ----------
AUTHED = {401, 403}
# Every operation's declared error statuses: 400 where input is read, 401/403 where a user is needed, 404 where
# the path names an object or the answer is a page, 429 where a lock or a cap applies.
DECLARED_ERRORS = {
    "auth_token_create": {400, 429},
    "models_list": AUTHED | {404},
    "models_create": AUTHED | {400},
    "datasets_list": AUTHED | {404},
    "datasets_create": AUTHED | {400},
    "datasets_preview_create": AUTHED | {400},
    "presets_list": AUTHED,
    "kinds_retrieve": AUTHED,
    "jobs_list": AUTHED | {400, 404},
    "jobs_create": AUTHED | {400, 429},
    "jobs_retrieve": AUTHED | {404},
    "jobs_cancel_create": AUTHED | {400, 404},
    "jobs_retry_create": AUTHED | {400, 404},
    "jobs_events_list": AUTHED | {400, 404},
    "jobs_shards_list": AUTHED | {404},
    "jobs_pairs_list": AUTHED | {400, 404},
    "jobs_pairs_review_create": AUTHED | {400, 404},
    "jobs_pairs_export_retrieve": AUTHED | {400, 404},
    "jobs_results_retrieve": AUTHED | {404},
    "jobs_artifacts_list": AUTHED | {404},
    "jobs_artifacts_download_retrieve": AUTHED | {404},
    "experiments_list": AUTHED | {404},
    "experiments_create": AUTHED | {400, 429},
    "experiments_retrieve": AUTHED | {404},
    "experiments_cancel_create": AUTHED | {400, 404},
    "experiments_retry_create": AUTHED | {400, 404},
    "webhooks_list": AUTHED,
    "webhooks_create": AUTHED | {400},
    "webhooks_retrieve": AUTHED | {404},
    "webhooks_destroy": AUTHED | {400, 404},
    "webhooks_deliveries_list": AUTHED | {404},
    "webhooks_test_create": AUTHED | {400, 404},
}


def _schema(user) -> dict:
    return _client(user).get("/api/v1/schema/", {"format": "json"}).json()


def _operations(schema) -> dict[str, dict]:
    return {op["operationId"]: op for item in schema["paths"].values() for op in item.values()}


def _refs(fragment) -> set[str]:
    if isinstance(fragment, dict):
        own = {fragment["$ref"].rsplit("/", 1)[1]} if "$ref" in fragment else set()
        return own.union(*(_refs(v) for v in fragment.values()))
    if isinstance(fragment, list):
        return set().union(*(_refs(v) for v in fragment))
    return set()


def test_schema_bodies_are_json_except_the_upload_whose_file_is_binary(user):
    schema = _schema(user)
    for op_id, op in _operations(schema).items():
        media = list(op.get("requestBody", {}).get("content", {}))
        multipart = op_id in ("datasets_create", "datasets_preview_create")
        expected = ["multipart/form-data"] if multipart else [["application/json"], []]
        assert media in expected or media == expected, (op_id, media)
    upload = schema["components"]["schemas"]["DatasetUploadRequest"]["properties"]["file"]
    assert (upload["type"], upload["format"]) == ("string", "binary")


def test_schema_declares_one_error_shape_on_every_operation(user):
    schema = _schema(user)
    ops = _operations(schema)
    assert set(ops) == set(DECLARED_ERRORS)
    for op_id, op in ops.items():
        errors = {int(code) for code in op["responses"] if code.startswith("4")}
        assert errors == DECLARED_ERRORS[op_id], op_id
        for code in errors:
            body = op["responses"][str(code)]["content"]["application/json"]["schema"]
            assert body == {"$ref": f"#/components/schemas/{'ValidationError' if code == 400 else 'Error'}"}
    components = schema["components"]["schemas"]
    assert components["Error"]["properties"]["detail"]["type"] == "string"
    assert components["ValidationError"]["properties"]["detail"]["type"] == "string"
    assert components["ValidationError"]["additionalProperties"] == {"type": "array", "items": {"type": "string"}}


def test_error_bodies_are_the_declared_shapes(user, job_body, settings):
    import jsonschema

    components = _schema(user)["components"]["schemas"]
    c = _client(user)
    field_400 = c.post("/api/v1/jobs/", {**job_body, "weak_base": "1"}, format="json")
    whole_400 = c.post("/api/v1/jobs/", "{not json", content_type="application/json")
    login_400 = APIClient().post("/api/v1/auth/token/", {"username": "alice", "password": "x"}, format="json")
    no_user_401 = APIClient().get("/api/v1/models/")
    missing_404 = c.get("/api/v1/jobs/424242/")
    settings.JOB_MAX_ACTIVE_PER_USER = 1
    assert c.post("/api/v1/jobs/", job_body, format="json").status_code == 201
    capped_429 = c.post("/api/v1/jobs/", job_body, format="json")
    for res, status, component in (
        (field_400, 400, "ValidationError"),
        (whole_400, 400, "ValidationError"),
        (login_400, 400, "ValidationError"),
        (no_user_401, 401, "Error"),
        (missing_404, 404, "Error"),
        (capped_429, 429, "Error"),
    ):
        assert res.status_code == status, res.content
        jsonschema.validate(res.json(), components[component])
    assert list(field_400.json()) == ["weak_base"] and isinstance(whole_400.json()["detail"], str)


def test_schema_types_the_json_it_passes_through(user):
    schema = _schema(user)
    comp, ops = schema["components"]["schemas"], _operations(schema)
    assert "JobConfig" in _refs(comp["Job"]["properties"]["config"])
    assert "JobSpec" in _refs(comp["Job"]["properties"]["spec"])
    assert "EventData" in _refs(comp["JobEvent"]["properties"]["data"])
    assert "Results" in _refs(comp["JobResults"]["properties"]["results"])
    assert {"ModelRef", "DatasetRef", "JobSpec"} <= _refs(comp["JobConfig"])
    assert "results_version" in comp["Results"]["properties"]
    assert "MethodResult" in _refs(comp["Results"]["properties"]["methods"])
    ok = {op_id: op["responses"][next(c for c in op["responses"] if c.startswith("2"))] for op_id, op in ops.items()}
    assert _refs(ok["presets_list"]) == {"Preset"} and "PresetBody" in _refs(comp["Preset"])
    assert _refs(ok["kinds_retrieve"]) == {"Kind"} and _refs(ok["jobs_results_retrieve"]) == {"JobResults"}
    assert _refs(ok["auth_token_create"]) == {"AuthToken"}
    # The export: a media type that client generators read (bytes), beside application/jsonl.
    export = ok["jobs_pairs_export_retrieve"]["content"]
    assert export["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}
    assert list(export) == ["application/jsonl", "application/octet-stream"]
    # Ids in a job request are integers (strings are refused: test_job_validation_400_creates_nothing).
    for field in ("weak_base", "weak_aligned", "strong", "prompts", "eval_prompts"):
        assert comp["JobCreateRequest"]["properties"][field]["type"] == ["integer", "null"], field
    limit = next(p for p in ops["jobs_events_list"]["parameters"] if p["name"] == "limit")["schema"]
    assert (limit["minimum"], limit["maximum"]) == (1, 5000)


def test_every_operation_has_its_own_summary_and_description(user):
    """Not a base class's docstring repeated on every operation: each says what that call does."""
    ops = _operations(_schema(user))
    summaries = [op.get("summary") for op in ops.values()]
    descriptions = [op.get("description") for op in ops.values()]
    assert all(summaries) and len(set(summaries)) == len(ops)
    assert all(descriptions) and len(set(descriptions)) == len(ops)


def test_presets_from_shared_toy_models(user, model_root):
    wb = services.model_register(name="toy-review-s0-tiny-weak-base", path=str(model_root / "weak_base"))
    wa = services.model_register(name="toy-review-s0-tiny-weak-aligned", path=str(model_root / "weak_aligned"))
    ds = services.dataset_create(name="toy-review-s0-tiny-train", chunks=[make_prompts(3)], gold="toy:review")
    presets = _client(user).get("/api/v1/presets/").json()
    cd = next(p for p in presets if p["request"]["kind"] == "cd_generate")
    assert cd["request"]["weak_base"] == wb.pk and cd["request"]["weak_aligned"] == wa.pk
    res = _client(user).post("/api/v1/jobs/", cd["request"], format="json")
    assert res.status_code == 201, res.json()
    assert res.json()["config"]["prompts"]["id"] == ds.pk


def test_job_list_query_count_does_not_grow_with_jobs(django_assert_max_num_queries, user, weak_pair, prompts_ds):
    wb, wa = weak_pair
    for _ in range(12):
        services.job_create(
            user=user, kind="cd_generate", weak_base=wb.pk, weak_aligned=wa.pk, prompts=prompts_ds.pk, alpha=0.4
        )
    client = APIClient()
    client.force_authenticate(user)
    with django_assert_max_num_queries(4):  # count + page (+ auth/session bookkeeping), not one per job
        res = client.get("/api/v1/jobs/")
    assert res.status_code == 200 and res.json()["count"] == 12
    assert all(j["pair_count"] == 0 for j in res.json()["results"])


def test_job_list_rows_leave_config_to_the_detail_view(user, weak_pair, prompts_ds):
    wb, wa = weak_pair
    job = services.job_create(
        user=user, kind="cd_generate", weak_base=wb.pk, weak_aligned=wa.pk, prompts=prompts_ds.pk, alpha=0.4
    )
    client = APIClient()
    client.force_authenticate(user)
    row = client.get("/api/v1/jobs/").json()["results"][0]
    assert row["id"] == job.pk and row["status"] == "queued" and "config" not in row
    assert client.get(f"/api/v1/jobs/{job.pk}/").json()["config"]["alpha"] == 0.4
