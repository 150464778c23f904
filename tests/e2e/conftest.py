"""A real stack for browser tests: daphne (HTTP + websockets) on a loopback socket the test binds and
hands it, a Celery worker process, Redis (the suite's ``redis_url``), the test database as a file all
three processes share, and the tiny toy world registered as shared models. Headless Chromium is
Debian's /usr/bin/chromium driven by Playwright's Python package (never a downloaded browser).
Screenshots go to ``e2e_artifacts``: a temporary folder, or $E2E_ARTIFACTS; never the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.daphne import daphne_server
from tests.jobs.conftest import WorkerProc, db_url_for_worker, point_celery_at

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def pytest_configure(config):
    # Subprocesses must open the same test database: with SQLite it has to be a file (as in tests/jobs).
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3") and not db.get("TEST", {}).get("NAME"):
        import tempfile

        db.setdefault("TEST", {})["NAME"] = str(Path(tempfile.gettempdir()) / f"congweb-test-{os.getpid()}.sqlite3")


@pytest.fixture(scope="session")
def e2e_artifacts(tmp_path_factory, request) -> Path:
    """Where screenshots go: $E2E_ARTIFACTS if set, else a folder under this session's pytest temp dir
    (kept for the last few runs). Said once, at the end of the run."""
    given = os.environ.get("E2E_ARTIFACTS")
    path = Path(given).resolve() if given else tmp_path_factory.mktemp("e2e_artifacts")
    path.mkdir(parents=True, exist_ok=True)
    request.config.stash[_ARTIFACTS] = path
    return path


_ARTIFACTS = pytest.StashKey[Path]()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    path = config.stash.get(_ARTIFACTS, None)
    if path is not None:
        terminalreporter.write_line(f"e2e screenshots: {path}")


@pytest.fixture
def screenshot(e2e_artifacts):
    """``screenshot(page, name)``: a full-page PNG, ``<name>.png`` in the e2e artifacts folder."""

    def save(page, name: str) -> Path:
        path = e2e_artifacts / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return save


@pytest.fixture(scope="session")
def toy_world_dir(tmp_path_factory) -> Path:
    """The tiny review world (seconds to build), under a folder that serves as the model root."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ml.toyworld.build import build

    root = tmp_path_factory.mktemp("e2e_models")
    manifest = build("review", seed=0, data_dir=root, size="tiny")
    assert not manifest.get("stopped"), manifest
    return root


class Stack:
    def __init__(self, base_url: str, manifest: dict, web_log: Path, registered: dict) -> None:
        self.base_url, self.manifest, self.web_log, self.registered = base_url, manifest, web_log, registered
        self.worker: WorkerProc | None = None

    def web_tail(self, n: int = 4000) -> str:
        return self.web_log.read_bytes()[-n:].decode(errors="replace")


@pytest.fixture
def stack_env(redis_url, transactional_db, toy_world_dir, tmp_path, settings, real_password_hashers):
    """Settings and subprocess environment for one stack; the tiny toy world registered (shared). Users
    the test creates log in through daphne, which knows only the configured hashers: no fast test hasher."""
    from congweb.redis_urls import celery_url
    from jobs import services
    from ml.io import read_json

    manifest = read_json(next(toy_world_dir.rglob("manifest.json")))
    var = tmp_path / "var"
    settings.MODEL_ROOTS = [toy_world_dir.resolve()]
    settings.VAR_DIR = var
    settings.RUNS_DIR = var / "runs"
    registered = services.toyworld_register(manifest=manifest)
    settings.CELERY_BROKER_URL = celery_url(redis_url)
    point_celery_at(redis_url)
    import redis as redis_lib

    redis_lib.Redis.from_url(redis_url).delete("gpu", "default", "unacked", "unacked_index")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_SETTINGS"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "congweb.settings",
            "DATABASE_URL": db_url_for_worker(),
            "REDIS_URL": redis_url,
            "MODEL_ROOTS": str(toy_world_dir.resolve()),
            "VAR_DIR": str(var),
            "RUNS_DIR": str(var / "runs"),
            "OMP_WAIT_POLICY": "PASSIVE",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "WARNING",
            "DEBUG": "true",
        }
    )
    return env, manifest, registered


@pytest.fixture
def web_stack(stack_env, tmp_path):
    """daphne serving congweb.asgi on a loopback port it is handed already bound (HTTP + websockets), no
    worker."""
    env, manifest, registered = stack_env
    web_log = tmp_path / "web.log"
    with daphne_server(env, web_log) as base:
        yield Stack(base, manifest, web_log, registered)


@pytest.fixture
def live_stack(stack_env, web_stack, tmp_path):
    """web_stack plus a real Celery worker process on the same database and Redis."""
    env = stack_env[0]
    worker = WorkerProc(env, tmp_path / "worker.log")
    worker.start()
    web_stack.worker = worker
    try:
        yield web_stack
    finally:
        worker.stop()


@pytest.fixture
def browser_page(tmp_path):
    """A fresh headless Chromium page (Debian's binary); a trace of console errors is kept on the page."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (CI's .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.console_errors = []  # type: ignore[attr-defined]
        # Console errors and failed requests (by URL: the console only says "Failed to load resource").
        page.on(
            "console",
            lambda m: (
                m.type == "error"
                and not m.text.startswith("Failed to load resource")
                and page.console_errors.append(m.text)
            ),
        )
        page.on("response", lambda r: r.status >= 400 and page.console_errors.append(f"HTTP {r.status} {r.url}"))
        page.on("pageerror", lambda e: page.console_errors.append(str(e)))
        try:
            yield page
        finally:
            context.close()
            browser.close()


def login(page, base: str, username: str, password: str) -> None:
    """Sign in through the log-in page, as a user would, and land on the dashboard."""
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
