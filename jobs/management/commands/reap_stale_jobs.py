"""Requeue (or fail, when out of attempts) running jobs whose worker stopped heartbeating, and re-send
queued jobs whose task never reached the broker (send_pending). Prints one line per job it touched:
"job 12: requeued", "job 13: resent", "job 14: resend failed" (the broker is still down).

python manage.py reap_stale_jobs            # once
python manage.py reap_stale_jobs --loop 30  # every 30 s until stopped (an alternative to celery beat)
"""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand

from jobs.services import jobs_reap_stale


class Command(BaseCommand):
    help = (
        "Requeue or fail jobs whose heartbeat is older than JOB_STALE_AFTER_SECONDS; "
        "re-send queued jobs whose send to the broker failed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--loop", type=float, default=0, help="repeat every N seconds")

    def handle(self, *args, loop, **opts):
        while True:
            for job_id, what in jobs_reap_stale():
                self.stdout.write(f"job {job_id}: {what}")
            if not loop:
                return
            time.sleep(loop)
