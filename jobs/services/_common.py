"""Small helpers every service module shares."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError

from jobs.models import Job

log = logging.getLogger("jobs.services")

S = Job.Status


def _err(field: str, msg: str) -> ValidationError:
    return ValidationError({field: [msg]})
