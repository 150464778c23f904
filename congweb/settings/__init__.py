"""Development/default settings. Production: ``congweb.settings.production``."""

from .base import *  # noqa: F401,F403
