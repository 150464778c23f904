"""The fast path to the browser: push one stored event to the job's channel group (best effort).

The JobEvent row is the reliable record (written first, by jobs.services.events); this only wakes the page
up. channels_redis drops messages when a group is full and a broker can be down: neither may fail a job.
"""

from __future__ import annotations

import logging

from jobs.models import JobEvent

log = logging.getLogger(__name__)


def group_name(job_id: int) -> str:
    return f"job-{job_id}"


def notify(job_id: int, event: JobEvent) -> bool:
    """group_send one event to the job's group; False (and a log line) when the layer is unreachable."""
    try:
        from asgiref.sync import async_to_sync
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        if layer is None:
            return False
        async_to_sync(layer.group_send)(group_name(job_id), {"type": "job.event", "event": event.as_message()})
        return True
    except Exception as exc:  # best effort by design: the DB row is already written
        log.warning("live update for job %s (seq %s) not sent: %s", job_id, event.seq, exc)
        return False
