"""MLflow tracking (jobs.tracking, docs/TRACKING.md): a toy job run in-process is an MLflow run with its params,
its per-step metrics as the job reported them, its artifacts and its final status, in the embedded SQLite store
and, in CI's services leg, in a real `mlflow server`; the API and the job page point at it; a store that cannot be
reached never fails a job; a retry resumes the same run."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from jobs import services
from jobs.models import Job, JobEvent
from jobs.runner import run_job

from .conftest import make_prompts
from .test_runner import _register_tiny_gold

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch):
    monkeypatch.setattr(services.dispatch, "send", lambda job_id: None)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    """One SQLite store for the module: making a fresh one runs MLflow's migrations (seconds)."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def embedded(settings, model_root, store_dir, request) -> str:
    """Tracking on, to the embedded default's kind of store: SQLite under VAR_DIR (no server). An experiment per test:
    each test's database numbers its jobs from 1 again."""
    settings.VAR_DIR = store_dir
    settings.TRACKING_ENABLED = True
    settings.MLFLOW_TRACKING_URI = f"sqlite:///{store_dir / 'mlflow.db'}"
    settings.MLFLOW_EXPERIMENT = request.node.name[:100]
    return settings.MLFLOW_TRACKING_URI


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _job(user, weak_pair, kind: str = "cd_generate", **extra) -> Job:
    _register_tiny_gold()
    ds = services.dataset_create(name="p", chunks=[make_prompts(4)], gold="test:positive_words", owner=user)
    wb, wa = weak_pair
    return services.job_create(
        user=user, kind=kind, weak_base=wb.pk, weak_aligned=wa.pk, prompts=ds.pk, name="tracked", **extra
    )


def _reported(job: Job, name: str) -> list[tuple[int, float]]:
    """A metric's (step, value) as the job reported it (its JobEvent rows)."""
    rows = JobEvent.objects.filter(job=job, type=JobEvent.Type.METRIC).order_by("seq")
    return [(r.data["step"] or 0, r.data["value"]) for r in rows if r.data["name"] == name]


def _history(client, run_id: str, name: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, name)]


def _logs(job: Job) -> list[str]:
    return [e.data["message"] for e in JobEvent.objects.filter(job=job, type=JobEvent.Type.LOG).order_by("seq")]


def test_a_train_job_is_a_run_in_the_embedded_store_with_params_metrics_and_artifacts(
    user, weak_pair, embedded, settings, tmp_path
):
    job = _job(
        user,
        weak_pair,
        kind="train",
        method="sft",
        strong=weak_pair[0].pk,
        params={
            "max_new_tokens": 3,
            # drop_truncated off: 3 tokens cut every tiny-model sample (as in tests/jobs/test_specs.py).
            "sft": {"num_train_epochs": 3, "per_device_train_batch_size": 2, "drop_truncated": False},
        },
    )
    assert run_job(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    assert job.tracking["uri"] == embedded and job.tracking["experiment"] == settings.MLFLOW_EXPERIMENT
    client = _client(embedded)
    run = client.get_run(job.tracking["run_id"])
    assert run.info.status == "FINISHED" and run.info.experiment_id == job.tracking["experiment_id"]
    assert client.get_experiment(run.info.experiment_id).name == settings.MLFLOW_EXPERIMENT

    # Params: the resolved spec by dotted key, kind, alpha, the inputs by name (never their paths).
    params = run.data.params
    assert params["kind"] == "train" and params["alpha"] == json.dumps(job.config["alpha"])
    sft = job.config["spec"]["stages"]["sft"]
    assert params["stages.sft.num_train_epochs"] == json.dumps(sft["num_train_epochs"]) and sft["num_train_epochs"] == 3
    assert params["stages.sft.per_device_train_batch_size"] == "2"
    assert len(params) > len(sft)  # every stage's settings, not only the ones the request set
    assert (params["weak_base"], params["weak_aligned"], params["strong"], params["prompts"]) == ("wb", "wa", "wb", "p")
    assert not any(str(settings.MODEL_ROOTS[0]) in v for v in params.values())
    tags = run.data.tags
    assert (tags["congweb.job_id"], tags["congweb.kind"], tags["mlflow.user"]) == (str(job.pk), "train", "alice")
    assert tags["congweb.name"] == "tracked" and tags["mlflow.runName"] == f"job-{job.pk}"

    # Metrics: every step the job reported, as reported (the training loss, the generation's implicit reward).
    loss = next(n for n in run.data.metrics if n.endswith("/loss"))
    assert len(_history(client, run.info.run_id, loss)) >= 3
    assert _history(client, run.info.run_id, loss) == _reported(job, loss)
    reward = next(n for n in run.data.metrics if n.endswith("/implicit_reward_mean"))
    assert _history(client, run.info.run_id, reward) == _reported(job, reward)
    # ... and the numbers it ended with, once: the results' (the method's gold mean) and each stage's summary.
    metrics = run.data.metrics
    assert metrics["methods.cong_s.gold_mean"] == job.results["methods"]["cong_s"]["gold_mean"]
    done = json.loads((Path(settings.RUNS_DIR) / str(job.pk) / "cd_generate" / "DONE.json").read_text())
    assert metrics["cd_generate/tokens_per_s"] == done["tokens_per_s"] > 0
    assert metrics["sft_cong_s/final_loss"] == _reported(job, loss)[-1][1]
    assert not any(n.startswith("config.") for n in metrics)  # the results' echo of the settings: params already

    # Artifacts: results.json is the job's results; the first pairs; the job's log.
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "results.md", "pairs.jsonl", "log.txt"} <= names
    got = Path(client.download_artifacts(run.info.run_id, "results.json", str(tmp_path)))
    assert json.loads(got.read_text()) == job.results
    pairs = Path(client.download_artifacts(run.info.run_id, "pairs.jsonl", str(tmp_path))).read_text().splitlines()
    assert [json.loads(line)["prompt_index"] for line in pairs] == list(range(job.pairs.count()))
    log_txt = Path(client.download_artifacts(run.info.run_id, "log.txt", str(tmp_path))).read_text()
    assert f"tracking: MLflow run {run.info.run_id}" in log_txt

    # The API says where the run is (the local store's path as $VAR_DIR/...); with a UI set, a link, also on the page.
    api = APIClient()
    api.force_authenticate(user)
    want = {
        "uri": "sqlite:///$VAR_DIR/mlflow.db",
        "experiment": settings.MLFLOW_EXPERIMENT,
        "experiment_id": run.info.experiment_id,
        "run_id": run.info.run_id,
        "url": None,
    }
    assert api.get(f"/api/v1/jobs/{job.pk}/").json()["tracking"] == want
    assert 'id="mlflow-run-link"' not in _page(user, job)
    settings.MLFLOW_UI_URL = "http://mlflow.example:5000"
    link = f"http://mlflow.example:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert api.get(f"/api/v1/jobs/{job.pk}/").json()["tracking"] == {**want, "url": link}
    assert "tracking" not in api.get("/api/v1/jobs/").json()["results"][0]  # lists stay light (jobs.api.job_rows)
    assert f'id="mlflow-run-link" href="{link}"' in _page(user, job)


def _page(user, job: Job) -> str:
    from django.test import Client

    c = Client()
    c.force_login(user)
    res = c.get(f"/jobs/{job.pk}/")
    assert res.status_code == 200
    return res.content.decode()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_store_that_cannot_be_reached_never_fails_the_job_and_is_said_once(
    user, weak_pair, embedded, settings, monkeypatch, caplog
):
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{_closed_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the refusal at once, not after backoff
    job = _job(user, weak_pair, params={"max_new_tokens": 3})
    assert run_job(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    said = [m for m in _logs(job) if m.startswith("tracking: MLflow failed")]
    assert len(said) == 1 and "the job goes on without tracking" in said[0]
    assert [r for r in caplog.records if r.name == "jobs.tracking" and "MLflow failed" in r.getMessage()]
    assert job.tracking == {} and job.results["n"] == 4
    api = APIClient()
    api.force_authenticate(user)
    assert api.get(f"/api/v1/jobs/{job.pk}/").json()["tracking"] is None


def test_tracking_off_makes_no_run_and_tensorboard_without_its_package_says_so(user, weak_pair, embedded, settings):
    import importlib.util

    settings.TRACKING_ENABLED = False
    settings.TRACKING_TENSORBOARD = True
    job = _job(user, weak_pair, params={"max_new_tokens": 3})
    assert run_job(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    assert job.tracking == {} and not any(m.startswith("tracking: MLflow") for m in _logs(job))
    events = Path(settings.RUNS_DIR) / str(job.pk) / "tensorboard"
    if importlib.util.find_spec("tensorboard") is None:  # not a requirement (docs/TRACKING.md)
        assert any("tensorboard package is not installed" in m for m in _logs(job)) and not events.exists()
    else:
        assert any(p.name.startswith("events.out.tfevents") for p in events.iterdir())


def test_a_retried_job_resumes_its_run(user, weak_pair, embedded):
    job = _job(user, weak_pair, params={"max_new_tokens": 3})
    Job.objects.filter(pk=job.pk).update(cancel_requested=True)  # the first attempt stops at its first check
    assert run_job(job_id=job.pk) == "cancelled"
    job.refresh_from_db()
    first = job.tracking["run_id"]
    client = _client(embedded)
    assert client.get_run(first).info.status == "KILLED"

    services.job_retry(job=job)
    assert run_job(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    assert job.tracking["run_id"] == first
    run = client.get_run(first)
    assert run.info.status == "FINISHED" and run.data.params["kind"] == "cd_generate"
    runs = client.search_runs([run.info.experiment_id], filter_string=f"tags.`congweb.job_id` = '{job.pk}'")
    assert [r.info.run_id for r in runs] == [first]
    reward = next(n for n in run.data.metrics if n.endswith("/implicit_reward_mean"))
    assert _history(client, first, reward) == _reported(job, reward)


def test_a_run_lands_in_a_real_mlflow_server(user, weak_pair, model_root, settings, tmp_path):
    """CI's services leg starts `mlflow server` and sets MLFLOW_TRACKING_URI to it (.ci/run); the job logs there
    through the server's REST API, artifacts included (the server stores them)."""
    uri = settings.MLFLOW_TRACKING_URI
    if not uri.startswith(("http://", "https://")):
        pytest.skip("MLFLOW_TRACKING_URI names no MLflow server (CI's services leg starts one: .ci/run)")
    settings.TRACKING_ENABLED = True
    job = _job(user, weak_pair, params={"max_new_tokens": 3})
    assert run_job(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    assert job.tracking["uri"] == uri
    client = _client(uri)
    run = client.get_run(job.tracking["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["kind"] == "cd_generate"
    assert run.data.params["weak_aligned"] == "wa" and run.data.tags["congweb.job_id"] == str(job.pk)
    reward = next(n for n in run.data.metrics if n.endswith("/implicit_reward_mean"))
    assert _history(client, run.info.run_id, reward) == _reported(job, reward)
    got = Path(client.download_artifacts(run.info.run_id, "results.json", str(tmp_path)))
    assert json.loads(got.read_text()) == job.results


def test_the_api_shows_a_remote_store_without_its_credentials(settings):
    from jobs.tracking import public_uri

    assert public_uri("https://user:secret@mlflow.example:5000/base?token=x") == "https://mlflow.example:5000/base"
    assert public_uri(f"sqlite:///{settings.VAR_DIR}/mlflow.db") == "sqlite:///$VAR_DIR/mlflow.db"
    assert public_uri("sqlite:////elsewhere/m.db") == "sqlite:////elsewhere/m.db"
