"""Production settings: everything secret or host-specific comes from the environment.

`python manage.py check --deploy --settings=congweb.settings.production` must report nothing with
SECRET_KEY, ALLOWED_HOSTS and DATABASE_URL set.
"""

from .base import *  # noqa: F401,F403
from .base import env

# base.py defaults DEBUG on for development; production never runs with it, whatever the env says.
DEBUG = False
SECRET_KEY = env.str("SECRET_KEY")  # required: no default secret in production

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")  # required: no default host in production
# SECURE_PROXY_SSL_HEADER comes from base.py, and only with TRUSTED_PROXY set: behind a TLS proxy set
# TRUSTED_PROXY=1 (else SECURE_SSL_REDIRECT redirects forever); without one no client may claim https.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

WHITENOISE_USE_FINDERS = False  # serve the collectstatic output (STATIC_ROOT) only
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
