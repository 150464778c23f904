"""Small helpers every service module shares."""

from __future__ import annotations

import logging
import math
from typing import Any

from django.core.exceptions import ValidationError

from jobs.models import Job

log = logging.getLogger("jobs.services")

S = Job.Status


def _err(field: str, msg: str) -> ValidationError:
    return ValidationError({field: [msg]})


def _is_number(x: Any) -> bool:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:  # a JSON integer beyond float range (e.g. 10**400) is not a usable number
        return False
