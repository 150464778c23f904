"""Celery tasks: thin. Fetch the id, call the runner/services, nothing else.

job_run_task is routed to the ``gpu`` queue by settings (CELERY_TASK_ROUTES). acks_late and
reject_on_worker_lost come from settings too: a worker that dies mid-job has its message redelivered,
and the attempt counter on the Job row (job_claim) decides whether to run it again or give up.
"""

from __future__ import annotations

from celery import shared_task


@shared_task(name="jobs.tasks.job_run_task", bind=True, acks_late=True, reject_on_worker_lost=True)
def job_run_task(self, job_id: int) -> str:
    from jobs.runner import run_job

    return run_job(job_id=job_id, task_id=self.request.id or "")


@shared_task(name="jobs.tasks.jobs_reap_stale_task")
def jobs_reap_stale_task() -> list:
    from jobs.services import jobs_reap_stale

    return jobs_reap_stale()
