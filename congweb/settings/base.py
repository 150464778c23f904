"""congweb settings, all from the environment (12-factor) with defaults that need no services.

Defaults: SQLite under VAR_DIR, an embedded Redis on a unix socket under VAR_DIR (started by
`make serve`/`make demo`, or on demand by the web and worker processes), runs and models under
VAR_DIR. Set DATABASE_URL / REDIS_URL to use PostgreSQL and a real Redis.
"""

from __future__ import annotations

import os
from pathlib import Path

import environ

from ml.spec import DEFAULT_LIMITS as _SPEC_LIMITS

BASE_DIR = Path(__file__).resolve().parent.parent.parent
env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")  # optional; a missing file is fine

DEBUG = env.bool("DEBUG", default=True)
VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var"))).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

if DEBUG:
    SECRET_KEY = env.str("SECRET_KEY", default="dev-only-insecure-key-never-use-in-production")
else:
    SECRET_KEY = env.str("SECRET_KEY")  # no default: production must set it

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# --- where things live --------------------------------------------------------------------------
RUNS_DIR = Path(env.str("RUNS_DIR", default=str(VAR_DIR / "runs"))).resolve()
DATA_DIR = Path(env.str("CONGWEB_DATA_DIR", default=str(VAR_DIR / "data"))).resolve()
# Model folders may only be registered from under these roots (path checks resolve symlinks).
# RUNS_DIR too: a weak_align job registers the pi_post it writes there as a model (jobs.runner).
MODEL_ROOTS = [
    Path(p).resolve() for p in env.list("MODEL_ROOTS", default=[str(DATA_DIR), str(VAR_DIR / "models"), str(RUNS_DIR)])
]
UPLOAD_MAX_BYTES = env.int("UPLOAD_MAX_BYTES", default=50 * 1024 * 1024)
# Everything in a request body that is not an uploaded file (JSON bodies, form fields): Django
# enforces it for forms, jobs.api.parsers for the API's JSON and form bodies (413 beyond it).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=1024 * 1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
# A whole request may carry one upload plus its form fields; a bigger Content-Length is refused
# before anything parses it (jobs.api.middleware.RequestLimitsMiddleware).
REQUEST_MAX_BYTES = UPLOAD_MAX_BYTES + DATA_UPLOAD_MAX_MEMORY_SIZE
# JSON from users (API bodies, JSON form fields, dataset rows) is nested at most this deep; deeper
# input is refused with 400 (jobs.api.json_checks), never parsed into a RecursionError.
JSON_MAX_DEPTH = env.int("JSON_MAX_DEPTH", default=32)

# --- who sits in front ---------------------------------------------------------------------------
# How many reverse proxies stand in front of the app (0 = clients connect directly). Only then are
# X-Forwarded-Proto (is_secure) and X-Forwarded-For (the client address the login throttle counts)
# believed, and only as far as those proxies set them: a client can send either header itself.
TRUSTED_PROXY = env.int("TRUSTED_PROXY", default=0)
if TRUSTED_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Content-Security-Policy on every response (jobs.api.middleware) ---------------------------
# Scripts and styles come only from our static files: no inline <script>, no style="" attributes, no
# eval. 'self' in connect-src covers the job page's same-origin websocket.
CONTENT_SECURITY_POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "connect-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}

# --- log-in throttle (jobs.api.login_guard) -----------------------------------------------------
# After this many failed log-ins for one username, or from one client address, within the window
# (seconds), every further attempt is refused - the right password too - until the window ends.
LOGIN_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=10)
LOGIN_FAILURE_WINDOW = env.int("LOGIN_FAILURE_WINDOW", default=15 * 60)

# --- web tier (congweb.web) ----------------------------------------------------------------------
# Web processes (gunicorn with uvicorn workers) that `make serve`, `make demo`, `make web` and the docker web
# service run. Django serves one request at a time per process, so this is how many it serves at once.
# Default: one per CPU this process may use, at most 4 (the workers and Redis need some too).
WEB_CONCURRENCY = env.int(
    "WEB_CONCURRENCY",
    default=min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1),
)

# --- apps ---------------------------------------------------------------------------------------
INSTALLED_APPS = [
    "daphne",  # its runserver serves HTTP and websockets from one ASGI app
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's and Redoc's files as static files: the API docs work offline
    "channels",
    "jobs",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Oversized bodies (413) and non-UTF-8 charsets (400) are refused before anything parses them;
    # every response gets a Content-Security-Policy header.
    "jobs.api.middleware.RequestLimitsMiddleware",
    "jobs.api.middleware.ContentSecurityPolicyMiddleware",
    # The ASGI servers (uvicorn, daphne) serve no files: WhiteNoise serves /static/ from the finders in DEBUG
    # and from STATIC_ROOT (collectstatic) in production, with far-future caching of hashed names.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "congweb.urls"
WSGI_APPLICATION = None
ASGI_APPLICATION = "congweb.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'congweb.sqlite3'}")}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Web processes, workers and event writers share one SQLite file: wait for locks instead of failing at
    # once, and write-ahead logging, so readers (every web process's pages) never wait for a writer nor it
    # for them; only writers queue, one at a time.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 30, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL"}
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# ModelBackend plus the log-in throttle: every authenticate() call (log-in page, admin, token
# endpoint) is refused while its username or address is locked, and failures are counted.
AUTHENTICATION_BACKENDS = ["jobs.api.login_guard.ThrottledModelBackend"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise expects it (collectstatic fills it in production)
STATICFILES_DIRS = [p for p in [BASE_DIR / "static"] if p.exists()]
WHITENOISE_USE_FINDERS = DEBUG

# --- Redis: broker and channel layer ------------------------------------------------------------
EMBEDDED_REDIS = "REDIS_URL" not in os.environ
REDIS_URL = env.str("REDIS_URL", default=f"unix://{VAR_DIR / 'redis' / 'redis.sock'}")

from congweb.redis_urls import celery_url  # noqa: E402

# The log-in throttle's counters must be shared by every web process: they live in Redis, which the
# app needs anyway (broker, channel layer). jobs.api.login_guard falls back to per-process memory,
# with a warning, while Redis cannot be reached.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "throttle": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "congweb-throttle",
        "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
    },
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "capacity": 1500, "expiry": 30},
    }
}

# --- Celery (see DESIGN.md: settings that matter for long GPU jobs) ----------------------------
JOB_HARD_TIME_LIMIT = env.int("JOB_HARD_TIME_LIMIT", default=24 * 3600)
JOB_SOFT_TIME_LIMIT = env.int("JOB_SOFT_TIME_LIMIT", default=JOB_HARD_TIME_LIMIT - 300)
JOB_MAX_ATTEMPTS = env.int("JOB_MAX_ATTEMPTS", default=3)
JOB_HEARTBEAT_SECONDS = env.int("JOB_HEARTBEAT_SECONDS", default=15)
JOB_STALE_AFTER_SECONDS = env.int("JOB_STALE_AFTER_SECONDS", default=120)
# A sharded stage's coordinator runs a shard it sent to the queue itself once no worker took it for this long
# (docs/SCALING.md): long enough for an idle worker to pick it up, short enough that one busy worker is no wait.
JOB_SHARD_STEAL_AFTER_SECONDS = env.float("JOB_SHARD_STEAL_AFTER_SECONDS", default=10.0)
# Upper bounds on what one job request may ask for (ml.spec.DEFAULT_LIMITS names them and says which settings
# each bounds); each is overridable as JOB_LIMIT_<NAME>, e.g. JOB_LIMIT_MAX_NEW_TOKENS=8192.
JOB_LIMITS = {
    name: env.int(f"JOB_LIMIT_{name.upper()}", default=int(default)) for name, default in _SPEC_LIMITS.items()
}
# Jobs one user may have queued or running at once; one more is a 429 (0 = no cap).
JOB_MAX_ACTIVE_PER_USER = env.int("JOB_MAX_ACTIVE_PER_USER", default=20)

CELERY_BROKER_URL = celery_url(REDIS_URL)
CELERY_RESULT_BACKEND = None  # the database is the source of truth for job state, not Celery
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True  # a job's message is acked only after it finished ...
CELERY_TASK_REJECT_ON_WORKER_LOST = True  # ... and is redelivered if the worker died mid-job
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # a GPU worker holds one job, never a backlog
CELERY_WORKER_MAX_TASKS_PER_CHILD = 1  # fresh process per job: GPU memory is returned
CELERY_TASK_TIME_LIMIT = JOB_HARD_TIME_LIMIT
CELERY_TASK_SOFT_TIME_LIMIT = JOB_SOFT_TIME_LIMIT
# Redis redelivers unacked messages after the visibility timeout: keep it above the hard limit so
# a long job is never handed to a second worker while the first still runs it.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": JOB_HARD_TIME_LIMIT + 3600}
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {"jobs.tasks.job_run_task": {"queue": "gpu"}, "jobs.tasks.shard_run_task": {"queue": "gpu"}}
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)

# --- notifications: webhooks and e-mail when a job ends (jobs.services.webhooks, docs/NOTIFICATIONS.md) ---------
# The address links in webhook payloads and e-mails start with (the server's own name as its users reach it).
SITE_URL = env.str("SITE_URL", default="http://127.0.0.1:8000").rstrip("/")
# Seconds to wait for a receiver's answer (connect and read).
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=10.0)
# A failed attempt (no answer, 429, 5xx) is retried after these many seconds, one after the other; so a delivery
# is tried at most len(...) + 1 times.
WEBHOOK_RETRY_DELAYS = env.list("WEBHOOK_RETRY_DELAYS", cast=int, default=[30, 120, 600, 3600])
WEBHOOKS_MAX_PER_USER = env.int("WEBHOOKS_MAX_PER_USER", default=10)
# Webhooks to private, loopback or link-local addresses (SSRF: the server's own network). Unset: allowed exactly
# when DEBUG is on (development); the production settings force DEBUG off, so there they are refused.
WEBHOOKS_ALLOW_PRIVATE = env.bool("WEBHOOKS_ALLOW_PRIVATE", default=None)
# E-mail: printed to the process's console unless configured, e.g. EMAIL_URL=smtp+tls://user:pw@host:587 (or
# EMAIL_BACKEND, EMAIL_HOST, EMAIL_PORT, EMAIL_HOST_USER, EMAIL_HOST_PASSWORD, EMAIL_USE_TLS one by one).
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
if "EMAIL_URL" in os.environ:
    globals().update(env.email_url("EMAIL_URL"))
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="congweb <congweb@localhost>")

# --- experiment tracking: every job an MLflow run (jobs.tracking, docs/TRACKING.md) ------------------------------
TRACKING_ENABLED = env.bool("TRACKING_ENABLED", default=True)
# Embedded default: a SQLite store under VAR_DIR (its artifacts in mlflow-artifacts/ beside it), no server needed.
# http(s)://host:port is a real MLflow server (`mlflow server`), which keeps the artifacts itself.
MLFLOW_TRACKING_URI = env.str("MLFLOW_TRACKING_URI", default=f"sqlite:///{VAR_DIR / 'mlflow.db'}")
MLFLOW_EXPERIMENT = env.str("MLFLOW_EXPERIMENT", default="congweb")
# The MLflow UI in front of that store (e.g. http://127.0.0.1:5000): job pages and the API link their run there.
MLFLOW_UI_URL = env.str("MLFLOW_UI_URL", default="").rstrip("/")
# Also write TensorBoard event files into the job's run folder (needs the tensorboard package, not a requirement).
TRACKING_TENSORBOARD = env.bool("TRACKING_TENSORBOARD", default=False)
# At most this often (seconds) a job's buffered metrics go to MLflow in one batch (and at each stage's end).
TRACKING_FLUSH_SECONDS = env.float("TRACKING_FLUSH_SECONDS", default=5.0)

# --- REST ---------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON with lone surrogates, too deep or with out-of-range numbers is a 400 before any view runs;
    # bodies over DATA_UPLOAD_MAX_MEMORY_SIZE are a 413 (jobs.api.parsers).
    "DEFAULT_PARSER_CLASSES": [
        # JSON only by default; the dataset upload sets its own multipart parser (the schema declares each
        # operation's one content type, so generated clients send what the view reads).
        "jobs.api.parsers.SafeJSONParser",
    ],
    # Only the proxies counted in TRUSTED_PROXY may name the client in X-Forwarded-For (DRF's default,
    # None, would believe any client's header).
    "NUM_PROXIES": TRUSTED_PROXY,
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "congweb API",
    "DESCRIPTION": "Contrastive weak-to-strong generalization jobs: models, datasets, jobs, events, pairs.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Request bodies get their own components (JobCreateRequest ...), so a file field is a binary string in
    # the upload's form and read-only fields stay out of requests: what client generators need.
    "COMPONENT_SPLIT_REQUEST": True,
    # 3.1: the params schemas (ml.spec_schema) say "may be null" as JSON Schema does, {"type": "null"},
    # which 3.0 does not allow.
    "OAS_VERSION": "3.1.0",
    # Three models have a "kind" field with different choices: name each enum after its model.
    "ENUM_NAME_OVERRIDES": {
        "ModelKindEnum": "jobs.models.ModelEntry.Kind",
        "DatasetKindEnum": "jobs.models.Dataset.Kind",
        "JobKindEnum": "jobs.models.Job.Kind",
        "StatusEnum": "jobs.models.Job.Status",  # the name clients had before shards brought a second status
        "ShardStatusEnum": "jobs.models.JobShard.Status",
    },
    # Swagger UI and Redoc from drf_spectacular_sidecar's static files, not a CDN: the product runs offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"daphne": {"level": "WARNING"}, "django.channels.server": {"level": "WARNING"}},
}
