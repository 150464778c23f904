"""Fault tests reuse the jobs fixtures (real worker, tiny models, file-backed test DB)."""

from tests.jobs.conftest import *  # noqa: F401,F403
from tests.jobs.conftest import pytest_configure as _jobs_configure


def pytest_configure(config):
    _jobs_configure(config)
