from urllib.parse import urlsplit

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.settings import spectacular_settings
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from jobs.api.middleware import csp_extend
from jobs.forms import ThrottledAdminAuthenticationForm
from jobs.views import ThrottledLoginView

# The admin's log-in says when the log-in throttle refuses (jobs.api.login_guard).
admin.site.login_form = ThrottledAdminAuthenticationForm

# Swagger UI's files come from its CDN and its page has an inline <style>: only this page's policy
# allows them. The split view serves its start-up script as a file, so no inline script is needed.
_swagger = urlsplit(spectacular_settings.SWAGGER_UI_DIST)
_swagger_origin = f"{_swagger.scheme}://{_swagger.netloc}" if _swagger.netloc else ""
swagger_view = csp_extend(
    {"script-src": _swagger_origin, "style-src": f"{_swagger_origin} 'unsafe-inline'", "img-src": _swagger_origin}
)(SpectacularSwaggerSplitView.as_view(url_name="schema"))

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),  # before the auth URLs' own
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/v1/docs/", swagger_view, name="api-docs"),
    path("api/v1/", include("jobs.api.urls")),
    path("", include("jobs.urls")),
]
