"""congweb: the Django project (settings, urls, ASGI app, Celery app)."""

from .celery import app as celery_app

__all__ = ("celery_app",)
