"""The Celery app. Settings come from Django's (CELERY_* names); tasks live in jobs.tasks."""

import os

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "congweb.settings")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

app = Celery("congweb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _start_embedded_redis(**_):
    # A worker started on its own (`make worker`) with no REDIS_URL brings the embedded server up.
    from congweb.embedded import ensure_embedded_redis

    ensure_embedded_redis()
