"""The OpenAPI schema is a contract a generated client can use: openapi-python-client (requirements-dev.txt,
nothing is downloaded here) generates a client from the live server's schema without a warning, and that
client runs the documented flow against the live server and a real Celery worker: a token, models, datasets,
a multipart upload, a job with params polled to the end, pairs, events, a review, the export, cancel, retry,
results, and declared errors parsed as the generated error models.

Which part of the contract each step leans on is said beside it; tests/jobs/test_api.py checks the schema's
declarations one by one.
"""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import make_prompts, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PACKAGE = "congweb_client"
# post_hooks: [] - the default hooks run ruff on the generated code; the client needs no formatting to run.
GENERATOR_CONFIG = f"project_name_override: congweb-client\npackage_name_override: {PACKAGE}\npost_hooks: []\n"


def generate_client(schema: dict, workdir: Path) -> tuple[Path, str]:
    """Generate the client package; returns (the folder to put on sys.path, the generator's output)."""
    (workdir / "schema.json").write_text(json.dumps(schema))
    (workdir / "generator.yml").write_text(GENERATOR_CONFIG)
    generator = Path(sys.executable).parent / "openapi-python-client"  # the console script of requirements-dev
    done = subprocess.run(
        [
            str(generator),
            "generate",
            "--path",
            str(workdir / "schema.json"),
            "--output-path",
            str(workdir / "client"),
            "--config",
            str(workdir / "generator.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return workdir / "client", output


@pytest.fixture
def generated(live_server, tmp_path, user):
    """The generated package's modules, imported from a temporary folder (and forgotten afterwards)."""
    import httpx

    res = httpx.get(f"{live_server.url}/api/v1/schema/", params={"format": "json"}, timeout=60)
    assert res.status_code == 200, res.text[:500]
    folder, output = generate_client(res.json(), tmp_path)
    # The generator prints "Generating <folder>" and, for anything it had to leave out, a warning block.
    assert "warning" not in output.lower(), output
    assert output.strip().splitlines() == [f"Generating {folder}"], output
    sys.path.insert(0, str(folder))
    try:
        yield lambda name: importlib.import_module(f"{PACKAGE}.{name}")
    finally:
        sys.path.remove(str(folder))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def test_a_generated_client_runs_the_documented_flow(generated, live_server, celery_worker_proc, user, weak_pair):
    client_mod, m, types = generated("client"), generated("models"), generated("types")
    api = {name: generated(f"api.{tag}.{name}") for tag, name in _OPERATIONS}
    url = live_server.url
    anonymous = client_mod.Client(base_url=url, raise_on_unexpected_status=True)

    # Log-in: a wrong password is the declared 400, {"detail": message}, parsed as ValidationError.
    refused = api["auth_token_create"].sync(
        client=anonymous, body=m.CredentialsRequest(username="alice", password="wrong")
    )
    assert isinstance(refused, m.ValidationError) and refused.detail == "wrong username or password"
    token = api["auth_token_create"].sync(
        client=anonymous, body=m.CredentialsRequest(username="alice", password="pw-alice-123")
    )
    assert isinstance(token, m.AuthToken)
    # raise_on_unexpected_status: any status the schema does not declare fails the test.
    c = client_mod.AuthenticatedClient(base_url=url, token=token.token, prefix="Token", raise_on_unexpected_status=True)
    no_user = api["models_list"].sync(client=anonymous)
    assert isinstance(no_user, m.Error) and no_user.detail  # the declared 401

    wb, wa = weak_pair
    models = api["models_list"].sync(client=c)
    assert {x.id for x in models.results} == {wb.pk, wa.pk}

    # The upload is the one multipart body; the file is a binary part.
    upload = m.DatasetUploadRequest(
        name="gen-prompts",
        file=types.File(payload=io.BytesIO(make_prompts(3)), file_name="p.jsonl"),
        gold="toy:review",  # the sweep below scores with it
    )
    ds = api["datasets_create"].sync(client=c, body=upload)
    assert isinstance(ds, m.Dataset) and ds.row_count == 3
    assert [d.id for d in api["datasets_list"].sync(client=c).results] == [ds.id]

    # A JSON body with typed params; a string id is the declared 400 on that field.
    def job_request(**fields):
        ids = {"kind": m.JobKindEnum.CD_GENERATE, "weak_base": wb.pk, "weak_aligned": wa.pk, "prompts": ds.id}
        return m.JobCreateRequest(**{**ids, **fields})

    bad = api["jobs_create"].sync(client=c, body=job_request(weak_base=str(wb.pk)))
    assert isinstance(bad, m.ValidationError) and "must be an integer" in bad["weak_base"][0]
    params = m.JobCreateRequestParamsCdGenerate(max_new_tokens=4, batch_size=2)
    created = api["jobs_create"].sync(client=c, body=job_request(alpha=0.3, params=params))
    assert isinstance(created, m.Job), created
    assert created.config.params.to_dict() == {"max_new_tokens": 4, "batch_size": 2}
    assert created.config.weak_base.id == wb.pk and created.spec.stages["cd_generate"]["max_new_tokens"] == 4

    job = wait_for(
        lambda: _finished(api["jobs_retrieve"].sync(created.id, client=c)),
        120,
        what=f"the job to finish; worker log:\n{celery_worker_proc.tail()}",
    )
    assert job.status == m.StatusEnum.SUCCEEDED, (job.error, celery_worker_proc.tail())

    pairs = api["jobs_pairs_list"].sync(created.id, client=c)
    assert pairs.count == 3 and [p.prompt for p in pairs.results] == [f"the movie {i} was" for i in range(3)]
    events = api["jobs_events_list"].sync(created.id, client=c, after=0)
    statuses = [e.data.status for e in events if e.type_ == m.TypeEnum.STATUS]
    assert statuses == ["queued", "running", "succeeded"]
    out_of_range = api["jobs_events_list"].sync(created.id, client=c, limit=0)
    assert isinstance(out_of_range, m.ValidationError) and "between 1 and 5000" in out_of_range["limit"][0]

    rejected = api["jobs_pairs_review_create"].sync(
        created.id, pairs.results[0].id, client=c, body=m.PairReviewRequest(action=m.ActionEnum.REJECT)
    )
    assert rejected.review_status == m.ReviewStatusEnum.REJECTED
    # The export reads as bytes (application/octet-stream in the schema): JSONL without the rejected pair (the
    # pending rest asked for: once one pair is reviewed they are out by default).
    export = api["jobs_pairs_export_retrieve"].sync(created.id, client=c, include_pending=True)
    exported = [json.loads(line)["prompt"] for line in export.payload.read().splitlines()]
    kept = [p.prompt for p in pairs.results[1:] if not getattr(p, "empty_response", False)]
    assert exported == kept

    results = api["jobs_results_retrieve"].sync(created.id, client=c)
    assert results.results.results_version == 1 and results.results.kind == "cd_generate"
    assert results.results.n == 3 and results.artifacts[0].kind == "samples"
    not_retryable = api["jobs_retry_create"].sync(created.id, client=c)
    assert isinstance(not_retryable, m.ValidationError) and "only failed or cancelled" in not_retryable["status"][0]
    missing = api["jobs_retrieve"].sync(424242, client=c)
    assert isinstance(missing, m.Error) and missing.detail  # the declared 404

    # Cancel and retry: a sweep long enough that the cancel lands before it ends (queued or mid-run).
    sweep = job_request(
        kind=m.JobKindEnum.ALPHA_SWEEP,
        params=m.JobCreateRequestParamsAlphaSweep(
            alphas=[round(0.05 * i, 2) for i in range(21)], batch_size=1, max_new_tokens=12
        ),
    )
    long_job = api["jobs_create"].sync(client=c, body=sweep)
    assert isinstance(long_job, m.Job), long_job.to_dict()
    cancelled = api["jobs_cancel_create"].sync(long_job.id, client=c)
    assert cancelled.status == m.StatusEnum.CANCELLED or cancelled.cancel_requested
    wait_for(
        lambda: api["jobs_retrieve"].sync(long_job.id, client=c).status == m.StatusEnum.CANCELLED,
        120,
        what=f"the sweep to stop; worker log:\n{celery_worker_proc.tail()}",
    )
    retried = api["jobs_retry_create"].sync(long_job.id, client=c)
    assert isinstance(retried, m.Job) and retried.status == m.StatusEnum.QUEUED
    assert api["jobs_cancel_create"].sync(long_job.id, client=c).id == long_job.id  # leave nothing running


def _finished(job):
    return job if job.status.value in ("succeeded", "failed", "cancelled") else None


_OPERATIONS = [
    ("auth", "auth_token_create"),
    ("models", "models_list"),
    ("datasets", "datasets_create"),
    ("datasets", "datasets_list"),
    ("jobs", "jobs_create"),
    ("jobs", "jobs_retrieve"),
    ("jobs", "jobs_pairs_list"),
    ("jobs", "jobs_events_list"),
    ("jobs", "jobs_pairs_review_create"),
    ("jobs", "jobs_pairs_export_retrieve"),
    ("jobs", "jobs_results_retrieve"),
    ("jobs", "jobs_cancel_create"),
    ("jobs", "jobs_retry_create"),
]
