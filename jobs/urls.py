from django.contrib.staticfiles.views import serve as static_serve
from django.urls import path, re_path

from . import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("", views.dashboard, name="dashboard"),
    path("jobs/new/", views.job_new, name="job_new"),
    path("jobs/compare/", views.compare, name="compare"),
    path("jobs/<int:job_id>/", views.job_detail, name="job_detail"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="job_cancel_page"),
    path("jobs/<int:job_id>/retry/", views.job_retry, name="job_retry_page"),
    # daphne serves no static files: serve them through the staticfiles finders (app + static/ dirs).
    # Fine for this app's handful of small files; behind a real proxy, serve STATIC_ROOT there instead.
    re_path(r"^static/(?P<path>.*)$", static_serve, {"insecure": True}),
]
