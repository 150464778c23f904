"""Experiment tracking: every job is an MLflow run (docs/TRACKING.md).

``TrackingReporter`` wraps a job's ProgressReporter (the ml Reporter protocol) in the worker: every call goes on to
it unchanged, and metrics are also buffered and sent to the run in one ``log_batch`` at progress ticks (at most every
TRACKING_FLUSH_SECONDS, and at each stage's end), never one request per metric. At the start the run gets the job's
params (its resolved spec flattened to dotted keys, plus kind, alpha and the model names) and tags; at the end the
numbers of the job's results, its artifacts (results.json, results.md, plots, the first pairs, the log) and its
final status. The run's id is kept on the job (Job.tracking), so a retry resumes the same run.

Tracking never fails a job: the first MLflow error is logged (worker log and the job's own log) and tracking is
off for the rest of that job. mlflow is imported only in the worker, when a job starts; the web side
(``api_view``, ``run_url``) reads the job's row and the settings.

What is logged never names a filesystem path of the job's inputs: a store may be shared by all users (one MLflow
server), and the paths of models and datasets are the server's business (docs/SECURITY.md); models and datasets go
by name, as the job's results name them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings

from jobs.models import GeneratedPair, Job, JobEvent
from jobs.progress import ProgressReporter
from ml.io import DONE_MARKER, jsonable

log = logging.getLogger(__name__)

# The MLflow run status each final job status ends its run with; other statuses leave it RUNNING (a retry resumes it).
RUN_STATUS: dict[str, str] = {
    Job.Status.SUCCEEDED: "FINISHED",
    Job.Status.FAILED: "FAILED",
    Job.Status.CANCELLED: "KILLED",
}
# The model and dataset references a job's config holds (jobs.services.creation), logged by name.
NAMED_INPUTS = ("weak_base", "weak_aligned", "strong", "judge", "prompts", "eval_prompts")
PAIRS_SAMPLE = 50  # pairs in the run's pairs.jsonl artifact
PAIR_FIELDS = (
    "prompt_index",
    "prompt",
    "chosen",
    "rejected",
    "plain",
    "implicit_reward_sum",
    "implicit_reward_mean",
    "n_tokens",
    "gold_reward",
    "alpha",
    "review_status",
)
PLOT_SUFFIXES = (".png", ".svg")
PLOTS_MAX = 50
LOG_LINES_MAX = 5000
SUMMARY_METRICS_MAX = 500
# Environment defaults for MLflow in a worker (the operator's environment wins). Its HTTP client retries 7 times with
# exponential backoff and waits 120 s for an answer by default: a server that is down would hold a job for minutes
# before tracking gives up. Its usage telemetry is on by default: the product runs offline and reports nowhere.
MLFLOW_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. :/]")  # what MLflow refuses in a metric or param name


# --- web side: what a job's page and API show -------------------------------------------------------------------
def public_uri(uri: str) -> str:
    """The tracking URI as users may see it: no user:password, no query; a local store under VAR_DIR as $VAR_DIR/..."""
    local = _local_path(uri)
    if local is not None:
        var = str(Path(settings.VAR_DIR))
        shown = "$VAR_DIR" + local[len(var) :] if local.startswith(var + "/") else local
        return f"{uri.split(':', 1)[0]}://{'/' if uri.startswith('sqlite:') else ''}{shown}"
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))


def _local_path(uri: str) -> str | None:
    """The file a local store (sqlite:///PATH, file:///PATH) is in; None for a server or another database."""
    if uri.startswith("sqlite:///"):
        return uri[len("sqlite:///") :]
    if uri.startswith("file:"):
        return urlsplit(uri).path
    return None


def run_url(job: Job) -> str | None:
    """The job's run in the MLflow UI (MLFLOW_UI_URL), or None when no UI is set or the job has no run."""
    t = job.tracking or {}
    if not settings.MLFLOW_UI_URL or not t.get("run_id"):
        return None
    return f"{settings.MLFLOW_UI_URL}/#/experiments/{t['experiment_id']}/runs/{t['run_id']}"


def api_view(job: Job) -> dict[str, Any] | None:
    """The API's ``tracking`` field: where the job's run is, or None when it has none (tracking off, not started)."""
    t = job.tracking or {}
    if not t.get("run_id"):
        return None
    return {
        "uri": public_uri(t["uri"]),
        "experiment": t["experiment"],
        "experiment_id": t["experiment_id"],
        "run_id": t["run_id"],
        "url": run_url(job),
    }


# --- what a run records -------------------------------------------------------------------------------------------
def flatten(value: Any, prefix: str = "", *, lists: bool = True) -> dict[str, Any]:
    """Nested dicts as one level of dotted keys ("stages.sft.learning_rate"). Lists are leaves (``lists``) or
    dropped."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k), lists=lists))
        return out
    if isinstance(value, list | tuple) and not lists:
        return {}
    return {prefix: value} if prefix else {}


def clean_key(key: str) -> str:
    """A metric or param name MLflow takes: its characters, its length."""
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH

    return _KEY_UNSAFE.sub("_", key)[:MAX_ENTITY_KEY_LENGTH]


def run_params(job: Job) -> dict[str, str]:
    """The run's params: the job's resolved spec flattened, plus kind, alpha and the inputs by name."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    from jobs.selectors import job_spec_or_none

    config = job.config or {}
    out: dict[str, Any] = flatten(job_spec_or_none(job=job) or {})
    out.update(kind=job.kind, alpha=config.get("alpha"))
    for field in NAMED_INPUTS:
        ref = config.get(field)
        if isinstance(ref, dict) and ref.get("name"):
            out[field] = ref["name"]
    for field in ("gold", "eval_gold"):  # labels, never paths (jobs.runner._gold_labels)
        ref = config.get(field)
        if isinstance(ref, dict) and ref.get("label"):
            out[field] = ref["label"]
    return {
        clean_key(k): (v if isinstance(v, str) else json.dumps(jsonable(v)))[:MAX_PARAM_VAL_LENGTH]
        for k, v in out.items()
    }


def summary_metrics(job: Job) -> dict[str, float]:
    """The numbers a job ends with, logged once: its results' (gold means, win rates, pair counts ...; by dotted key,
    without the echoed "config" and without lists, which stay in results.json) and each finished stage's summary
    (its DONE.json: "cd_generate/tokens_per_s", "sft_cong_s/final_loss" ...)."""
    found: dict[str, Any] = flatten({k: v for k, v in (job.results or {}).items() if k != "config"}, lists=False)
    for done in sorted((Path(settings.RUNS_DIR) / str(job.pk)).glob(f"*/{DONE_MARKER}")):
        try:
            summary = json.loads(done.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        found.update({f"{done.parent.name}/{k}": v for k, v in flatten(summary, lists=False).items()})
    out: dict[str, float] = {}
    for k, v in found.items():
        if isinstance(v, int | float) and not isinstance(v, bool) and len(out) < SUMMARY_METRICS_MAX:
            out[clean_key(k)] = float(v)
    return out


def _artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite store (mlflow-artifacts/), under VAR_DIR for
    another database; None for a server (it keeps them itself) and for a file store (its own folder)."""
    scheme = urlsplit(uri).scheme
    if scheme == "sqlite":
        db = Path(_local_path(uri) or "mlflow.db")
        return (db.parent / "mlflow-artifacts").resolve().as_uri()
    if scheme in ("", "file", "http", "https") or scheme.startswith("databricks"):
        return None
    return (Path(settings.VAR_DIR) / "mlflow-artifacts").resolve().as_uri()


# --- worker side -------------------------------------------------------------------------------------------------
class TrackingReporter:
    """The ml Reporter a job runs with: ``inner`` (the job's ProgressReporter) plus its MLflow run and, when
    TRACKING_TENSORBOARD is on, TensorBoard event files in the job's run folder. Built in jobs.runner.run_job;
    ``end()`` there once the job's end is recorded."""

    def __init__(self, job: Job, inner: ProgressReporter) -> None:
        self.inner = inner
        self.job_id = job.pk
        self.client: Any = None  # an MlflowClient while tracking works
        self.run_id = ""
        self.tensorboard: Any = None  # a SummaryWriter
        self._metrics: list[tuple[str, float, int, int]] = []  # name, value, step, timestamp (ms)
        self._lock = threading.Lock()
        self._flushed = time.monotonic()
        self._off = False  # set at the first MLflow error: nothing more goes to MLflow for this job
        if settings.TRACKING_ENABLED:
            self._guard(self._start, job)
        if settings.TRACKING_TENSORBOARD:
            self._start_tensorboard()

    # -- Reporter protocol: everything goes on to the job's reporter ----------------------------------------------
    def progress(self, stage: str, done: int, total: int) -> None:
        self.inner.progress(stage, done, total)
        if (total and done >= total) or time.monotonic() - self._flushed >= settings.TRACKING_FLUSH_SECONDS:
            self.flush()

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        self.inner.metric(name, value, step)
        if self.client is not None or self.tensorboard is not None:
            with self._lock:
                self._metrics.append((clean_key(name), float(value), int(step or 0), int(time.time() * 1000)))

    def sample(self, data: dict[str, Any]) -> None:
        self.inner.sample(data)

    def log(self, msg: str) -> None:
        self.inner.log(msg)

    def should_stop(self) -> bool:
        return bool(self.inner.should_stop())

    def close(self) -> None:
        self.inner.close()
        self.flush()

    # -- the run ----------------------------------------------------------------------------------------------------
    def _start(self, job: Job) -> None:
        for name, value in MLFLOW_ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)
        from mlflow import MlflowClient
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        uri, name = settings.MLFLOW_TRACKING_URI, settings.MLFLOW_EXPERIMENT
        client = MlflowClient(tracking_uri=uri)
        tags = {
            "congweb.job_id": str(job.pk),
            "congweb.kind": job.kind,
            "congweb.owner": job.owner.get_username(),
            "congweb.attempt": str(job.attempts),
            "mlflow.user": job.owner.get_username(),  # the UI's "User" column
        }
        if getattr(job, "name", ""):
            tags["congweb.name"] = job.name
        prior = job.tracking or {}
        run = None
        if prior.get("run_id") and prior.get("uri") == uri and prior.get("experiment") == name:
            try:
                run = client.get_run(prior["run_id"])
            except MlflowException:  # deleted from the store since: a new run
                run = None
        if run is None:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                try:
                    exp_id = client.create_experiment(name, artifact_location=_artifact_location(uri))
                except MlflowException:  # another worker created it in between
                    exp = client.get_experiment_by_name(name)
                    if exp is None:
                        raise
                    exp_id = exp.experiment_id
            else:
                exp_id = exp.experiment_id
            run = client.create_run(exp_id, run_name=f"job-{job.pk}", tags=tags)
        else:
            client.update_run(run.info.run_id, status="RUNNING")
        self.client, self.run_id = client, run.info.run_id
        record = {"uri": uri, "experiment": name, "experiment_id": run.info.experiment_id, "run_id": self.run_id}
        if record != prior:
            Job.objects.filter(pk=job.pk).update(tracking=record)
        logged = run.data.params  # a resumed run has them: MLflow refuses a param logged twice with a new value
        params = [Param(k, v) for k, v in run_params(job).items() if k not in logged]
        run_tags = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, max(len(params), len(run_tags)), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = params[i : i + MAX_PARAMS_TAGS_PER_BATCH]
            client.log_batch(self.run_id, params=chunk, tags=run_tags if i == 0 else [])
        self.inner.log(f"tracking: MLflow run {self.run_id} in experiment {name!r} at {public_uri(uri)}")

    def _start_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.inner.log(
                "tracking: TRACKING_TENSORBOARD is on but the tensorboard package is not installed "
                "(pip install tensorboard); no TensorBoard event files are written"
            )
            return
        folder = Path(settings.RUNS_DIR) / str(self.job_id) / "tensorboard"
        self.tensorboard = SummaryWriter(log_dir=str(folder))
        self.inner.log(f"tracking: TensorBoard event files in {folder}")

    def flush(self) -> None:
        """Send the buffered metrics: one log_batch per MLflow's batch limit, and the TensorBoard writer's."""
        with self._lock:
            metrics, self._metrics = self._metrics, []
            self._flushed = time.monotonic()
        if not metrics:
            return
        if self.tensorboard is not None:
            for key, value, step, ts in metrics:
                self.tensorboard.add_scalar(key, value, step, walltime=ts / 1000)
            self.tensorboard.flush()
        if self.client is not None:
            self._guard(self._send, metrics)

    def _send(self, metrics: list[tuple[str, float, int, int]]) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        rows = [Metric(key, value, ts, step) for key, value, step, ts in metrics]
        for i in range(0, len(rows), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=rows[i : i + MAX_METRICS_PER_BATCH])

    def end(self) -> None:
        """After the job's end is recorded: the last metrics, the summary numbers, the artifacts, and the run's
        final status (a job that is not finished, e.g. handed back to the queue, leaves its run RUNNING)."""
        try:
            self.flush()
            if self.tensorboard is not None:
                self.tensorboard.close()
            if self.client is not None:
                self._guard(self._end)
        except Exception:  # the last line of "never fails a job"
            log.exception("tracking: ending job %s's run failed", self.job_id)

    def _end(self) -> None:
        job = Job.objects.get(pk=self.job_id)
        now = int(time.time() * 1000)
        final = [(key, value, 0, now) for key, value in summary_metrics(job).items()]
        if final:
            self._send(final)
        with tempfile.TemporaryDirectory(prefix="congweb-tracking-") as tmp:
            self.client.log_artifacts(self.run_id, str(self._write_artifacts(job, Path(tmp))))
        status = RUN_STATUS.get(job.status)
        if status:
            self.client.set_terminated(self.run_id, status=status)

    def _write_artifacts(self, job: Job, folder: Path) -> Path:
        """results.json, results.md, plots/, pairs.jsonl (the first PAIRS_SAMPLE pairs) and log.txt, in ``folder``."""
        out = Path(settings.RUNS_DIR) / str(job.pk)
        (folder / "results.json").write_text(json.dumps(jsonable(job.results or {}), indent=2), encoding="utf-8")
        if (out / "results.md").is_file():
            (folder / "results.md").write_text((out / "results.md").read_text(encoding="utf-8"), encoding="utf-8")
        plots = sorted(p for p in out.rglob("*") if p.suffix in PLOT_SUFFIXES and p.is_file())[:PLOTS_MAX]
        for p in plots:
            target = folder / "plots" / p.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(p.read_bytes())
        pairs = GeneratedPair.objects.filter(job_id=job.pk).order_by("prompt_index").values(*PAIR_FIELDS)
        rows = [json.dumps(jsonable(row)) + "\n" for row in pairs[:PAIRS_SAMPLE]]
        if rows:
            (folder / "pairs.jsonl").write_text("".join(rows), encoding="utf-8")
        events = JobEvent.objects.filter(job_id=job.pk, type=JobEvent.Type.LOG).order_by("seq")
        lines = [f"{e.created:%Y-%m-%d %H:%M:%S} {e.data.get('message', '')}\n" for e in events[:LOG_LINES_MAX]]
        (folder / "log.txt").write_text("".join(lines), encoding="utf-8")
        return folder

    def _guard(self, fn: Any, *args: Any) -> None:
        """Run one MLflow step; at its first error say so once and stop tracking this job."""
        if self._off:
            return
        try:
            fn(*args)
        except Exception as exc:
            self._off, self.client = True, None
            log.warning("tracking: MLflow failed for job %s; tracking is off for it", self.job_id, exc_info=True)
            try:
                self.inner.log(
                    f"tracking: MLflow failed ({type(exc).__name__}: {str(exc)[:500]}); the job goes on without "
                    "tracking"
                )
            except Exception:
                log.exception("tracking: could not say so in job %s's log", self.job_id)
