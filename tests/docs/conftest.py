"""Fixtures for the docs run: the jobs tests' real worker and tiny models (re-exported from tests/jobs, whose
conftest does not reach this folder), a live daphne on the test database, and one tiny toy world.

``pytest_configure`` is re-exported too: it puts SQLite's test database in a file, which the server and worker
subprocesses must open (pytest-django's default one lives in this process's memory).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daphne import daphne_server
from tests.jobs.conftest import (  # noqa: F401  (fixtures and the hook, registered by being names here)
    celery_worker_proc,
    model_root,
    pytest_configure,
    save_tiny_model,
    tiny_model_root,
    user,
    weak_pair,
    worker_env,
)


@pytest.fixture
def server(worker_env, real_password_hashers, tmp_path) -> str:  # noqa: F811
    """Base URL of daphne serving congweb.asgi on the test database and Redis (as `make web` serves it). Users
    created after this fixture can log in through it: real_password_hashers, the hashers the server knows."""
    with daphne_server(worker_env, tmp_path / "web.log") as base:
        yield base


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> dict:
    """The review toy world at size tiny (built in seconds; 64-position models): its manifest."""
    from ml.toyworld.build import build

    return build("review", seed=0, data_dir=tmp_path_factory.mktemp("toyworld"), size="tiny")


@pytest.fixture
def model_folder(model_root) -> Path:  # noqa: F811
    """A model folder under the test's MODEL_ROOTS for the examples that register one: the docs' path
    /srv/models/qwen-0.5b stands for it (a tiny GPT-2 with that folder name)."""
    path = model_root / "qwen-0.5b"
    if not (path / "config.json").is_file():
        save_tiny_model(path, seed=3)
    return path
