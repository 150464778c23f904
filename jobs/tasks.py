"""Celery tasks: thin. Fetch the id, call the runner/services, nothing else.

job_run_task is routed to the ``gpu`` queue by settings (CELERY_TASK_ROUTES). acks_late and
reject_on_worker_lost come from settings too: a worker that dies mid-job has its message redelivered,
and the attempt counter on the Job row (job_claim) decides whether to run it again or give up.
"""

from __future__ import annotations

from celery import shared_task
from celery.signals import celeryd_after_setup, worker_init, worker_ready, worker_shutdown

_announcer = None
_reaper = None


@worker_init.connect
def _quiet_libraries(**_):
    # A worker's log is a file (make serve, CI): no progress bars that redraw with carriage returns, and no known
    # harmless library warnings (ml.reporter.quiet_libraries). Forked pool children inherit both.
    from ml.reporter import quiet_libraries

    quiet_libraries()


@worker_init.connect
def _preload_ml(**_):
    # Import torch/transformers once in the worker's parent: each job runs in a fresh forked child
    # (max_tasks_per_child=1), which then starts in a second instead of re-importing for ~5 s.
    # Importing starts no threads, so forking afterwards is safe on CPU and before CUDA is touched.
    try:
        import transformers  # noqa: F401
        from transformers import AutoModelForCausalLM  # noqa: F401

        import ml.modeling  # noqa: F401
        import ml.stages.generate  # noqa: F401
    except Exception:  # a worker without the ml extras still serves the other queues
        pass


@celeryd_after_setup.connect
def _capacity_queues(sender=None, instance=None, **_):
    # Capacity routing (jobs.workers): a worker of the generation queue with G devices also takes the jobs that
    # train on 2..G of them. Added here, before the consumers start, so no -Q flag has to know the host's GPUs.
    from jobs.workers import GENERATION_QUEUE, capacity_queues, device_count

    queues = instance.app.amqp.queues
    if GENERATION_QUEUE in queues.consume_from:
        for name in capacity_queues(device_count()):
            queues.select_add(name)


@worker_ready.connect
def _announce(sender=None, **_):
    # The worker registry (jobs.workers): `shards: auto` counts the live workers of the generation queue.
    global _announcer
    from jobs.workers import Announcer

    queues = sorted(sender.app.amqp.queues.consume_from) if sender is not None else []
    _announcer = Announcer(getattr(sender, "hostname", "") or "worker", queues)
    _announcer.start()


@worker_ready.connect
def _start_reaper(sender=None, **_):
    # Every worker of the generation queue reaps stale jobs itself (jobs.workers.Reaper), so a job whose worker was
    # killed is requeued and finished by the next worker with no celery beat running; beat's task below duplicates
    # it harmlessly. Workers of the other queues only (offline installs) run none: they cannot run the job anyway.
    global _reaper
    from jobs.services import jobs_reap_stale
    from jobs.workers import GENERATION_QUEUE, Reaper

    if sender is not None and GENERATION_QUEUE in sender.app.amqp.queues.consume_from:
        _reaper = Reaper(getattr(sender, "hostname", "") or "worker", jobs_reap_stale)
        _reaper.start()


@worker_shutdown.connect
def _withdraw(**_):
    if _announcer is not None:
        _announcer.stop()
    if _reaper is not None:
        _reaper.stop()


@shared_task(name="jobs.tasks.job_run_task", bind=True, acks_late=True, reject_on_worker_lost=True)
def job_run_task(self, job_id: int) -> str:
    from jobs.runner import run_job
    from jobs.workers import apply_torch_threads

    apply_torch_threads(self.request.hostname or "")
    return run_job(job_id=job_id, task_id=self.request.id or "", worker=self.request.hostname or "")


@shared_task(name="jobs.tasks.shard_run_task", bind=True, acks_late=True, reject_on_worker_lost=True)
def shard_run_task(self, shard_id: int) -> str:
    # One part of a sharded generation stage (jobs.sharding); its job's coordinator merges the parts.
    from jobs.sharding import run_shard_task
    from jobs.workers import apply_torch_threads

    apply_torch_threads(self.request.hostname or "")
    return run_shard_task(shard_id=shard_id, task_id=self.request.id or "", worker=self.request.hostname or "")


@shared_task(name="jobs.tasks.offline_install_task")
def offline_install_task(size: str = "cpu") -> str:
    # Default queue (not gpu): pip + GGUF conversion need no accelerator. Errors are recorded in the
    # install status by the service, so there is nothing to retry here.
    from jobs.services import offline_install

    out = offline_install(size=size)
    return ", ".join(m.name for m in out["models"].values())


@shared_task(name="jobs.tasks.playground_task", bind=True, acks_late=False)
def playground_task(self, session_id: str) -> str:
    # Sent to the generation queue by jobs.services.playground, with its own time limits. Acked on receipt: a chat
    # reply is not worth running twice after a lost worker.
    from jobs.playground_runner import run_session
    from jobs.workers import apply_torch_threads

    apply_torch_threads(self.request.hostname or "")
    return run_session(session_id)


@shared_task(name="jobs.tasks.webhook_deliver_task", acks_late=False)
def webhook_deliver_task(delivery_id: int) -> str:
    # Default queue. One attempt of one webhook delivery; the service records it and schedules the next attempt
    # itself (a new row, sent with a countdown), so there is no Celery retry here. Acked on receipt: a worker
    # dying mid-POST loses that attempt rather than posting it twice (receivers dedupe on the delivery id anyway).
    from jobs.services.webhooks import delivery_attempt

    return delivery_attempt(delivery_id=delivery_id)


@shared_task(name="jobs.tasks.job_email_task")
def job_email_task(job_id: int) -> bool:
    # Default queue: the job-ended e-mail, through settings.EMAIL_BACKEND (console unless configured).
    from jobs.services.webhooks import job_email

    return job_email(job_id=job_id)


@shared_task(name="jobs.tasks.jobs_reap_stale_task")
def jobs_reap_stale_task() -> list:
    from jobs.services import jobs_reap_stale

    return jobs_reap_stale()


def _reap_interval() -> float:
    from jobs.workers import reap_interval

    return reap_interval()


try:
    from congweb.celery import app as _app

    @_app.on_after_finalize.connect
    def _schedule_reaper(sender, **kwargs):
        # Runs under `celery beat` (or `worker -B`); `manage.py reap_stale_jobs --loop` is the alternative. Optional:
        # every worker of the generation queue runs the same reaper itself (jobs.workers.Reaper).
        sender.add_periodic_task(
            _reap_interval(), jobs_reap_stale_task.s(), name="reap stale jobs", expires=_reap_interval()
        )
except ImportError:  # pragma: no cover
    pass
