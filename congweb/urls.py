from django.contrib import admin
from django.shortcuts import redirect
from django.templatetags.static import static
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from jobs.api.middleware import csp_extend
from jobs.forms import ThrottledAdminAuthenticationForm
from jobs.views import ThrottledLoginView

# The admin's log-in says when the log-in throttle refuses (jobs.api.login_guard).
admin.site.login_form = ThrottledAdminAuthenticationForm

FAVICON = "congweb/favicon.svg"

# The API docs load their files from /static/ (drf_spectacular_sidecar, SPECTACULAR_SETTINGS "SIDECAR"),
# so they work offline and the site policy's 'self' covers every script, style and image. What the two
# pages still need beyond it: Swagger UI's page has an inline <style> (the split view serves its start-up
# script as a file, so no inline script); Redoc injects its styles as <style> elements (styled-components)
# and runs its search index in a worker it builds from a blob: URL.
swagger_view = csp_extend({"style-src": "'unsafe-inline'"})(SpectacularSwaggerSplitView.as_view(url_name="schema"))
redoc_view = csp_extend({"style-src": "'unsafe-inline'", "worker-src": "blob:"})(
    # Our template: drf-spectacular's, without its Google Fonts links.
    SpectacularRedocView.as_view(url_name="schema", template_name="api/redoc.html")
)


def favicon(request):
    """Browsers and crawlers ask for /favicon.ico whatever the page says: send them to the site's icon. Not a
    permanent redirect: in production the target is a hashed name that changes with the icon."""
    return redirect(static(FAVICON))


urlpatterns = [
    path("favicon.ico", favicon, name="favicon"),
    path("admin/", admin.site.urls),
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),  # before the auth URLs' own
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/v1/docs/", swagger_view, name="api-docs"),
    path("api/v1/redoc/", redoc_view, name="api-redoc"),
    path("api/v1/", include("jobs.api.urls")),
    path("", include("jobs.urls")),
]
