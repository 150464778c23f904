"""ASGI entry point: HTTP through Django, websockets through Channels.

Websockets are wrapped in AuthMiddlewareStack (session cookie -> scope["user"]) inside
AllowedHostsOriginValidator (rejects cross-origin pages), as DESIGN.md asks.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "congweb.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import get_resolver  # noqa: E402

from congweb.embedded import ensure_embedded_redis  # noqa: E402
from jobs.routing import websocket_urlpatterns  # noqa: E402

ensure_embedded_redis()

# Every view module now, not in the first request (the URLconf pulls in the API's serializers, whose job-kind
# settings schema imports ml and torch: seconds). A server that says it is ready then answers at once, and
# congweb.web's gunicorn master imports all of it once (--preload): its workers share those pages.
get_resolver().url_patterns  # noqa: B018 - the access imports

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
