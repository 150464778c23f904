"""The ground everything stands on: settings from the environment, embedded Redis, deploy checks."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from congweb.redis_urls import celery_url, socket_path

ROOT = Path(__file__).resolve().parents[2]


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS")}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # > 5 s (--durations)
def test_check_deploy_is_clean_under_production_settings(tmp_path):
    res = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "DEBUG",
        "--settings=congweb.settings.production",
        env={
            "SECRET_KEY": secrets.token_urlsafe(64),
            "ALLOWED_HOSTS": "congweb.example.org",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "VAR_DIR": str(tmp_path),
        },
    )
    assert res.returncode == 0, res.stderr
    assert "no issues" in res.stdout


def test_production_refuses_to_start_without_secret_key(tmp_path):
    res = _manage(
        "check",
        "--settings=congweb.settings.production",
        env={"ALLOWED_HOSTS": "congweb.example.org", "VAR_DIR": str(tmp_path)},
    )
    assert res.returncode != 0
    assert "SECRET_KEY" in res.stderr


def test_production_ignores_debug_from_environment(tmp_path):
    res = _manage(
        "shell",
        "-c",
        "from django.conf import settings; print(settings.DEBUG)",
        "--settings=congweb.settings.production",
        env={"DEBUG": "True", "SECRET_KEY": "x" * 60, "ALLOWED_HOSTS": "h", "VAR_DIR": str(tmp_path)},
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "False"


def test_dev_defaults_need_no_services(tmp_path):
    env = {"VAR_DIR": str(tmp_path)}
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='congweb.settings';"
            "django.setup(); from django.conf import settings as s;"
            "print(s.DATABASES['default']['ENGINE'], s.EMBEDDED_REDIS, s.REDIS_URL, s.CELERY_BROKER_URL, s.RUNS_DIR)",
        ],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    engine, embedded, url, broker, runs = res.stdout.split()
    assert engine == "django.db.backends.sqlite3"
    assert embedded == "True"
    assert url == f"unix://{tmp_path}/redis/redis.sock"
    assert broker == f"redis+socket://{tmp_path}/redis/redis.sock"
    assert runs == str(tmp_path / "runs")


def test_redis_url_spellings():
    assert celery_url("unix:///v/r.sock") == "redis+socket:///v/r.sock"
    assert celery_url("redis://127.0.0.1:6379/1") == "redis://127.0.0.1:6379/1"
    assert socket_path("unix:///v/r.sock?db=2") == "/v/r.sock"
    assert socket_path("redis://h:1/0") is None


@pytest.mark.slow  # > 5 s (--durations)
def test_embedded_redis_serves_real_clients(tmp_path):
    from congweb import embedded_redis

    sock = tmp_path / "r" / "redis.sock"
    proc = embedded_redis.start(sock)
    try:
        assert proc is not None and proc.poll() is None
        client = redis.Redis.from_url(f"unix://{sock}")
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert embedded_redis.start(sock) is None  # already answering: no second server
    finally:
        assert embedded_redis.stop(sock)
        proc.wait(timeout=10)
    assert not embedded_redis.ping(sock)


@pytest.mark.django_db
def test_healthz_touches_the_database(client):
    res = client.get("/healthz")
    assert res.status_code == 200
    assert res.json() == {"ok": True}


def test_celery_is_configured_for_long_gpu_jobs():
    from django.conf import settings

    from congweb.celery import app

    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.task_routes["jobs.tasks.job_run_task"]["queue"] == "gpu"
    assert settings.CELERY_RESULT_BACKEND is None
