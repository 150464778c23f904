from django.urls import path

from . import memory_views, views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("", views.dashboard, name="dashboard"),
    path("jobs/new/", views.job_new, name="job_new"),
    path("jobs/new/memory/", memory_views.job_memory_estimate, name="job_memory_estimate"),
    path("jobs/compare/", views.compare, name="compare"),
    path("models/offline/install/", views.offline_install, name="offline_install"),
    path("jobs/<int:job_id>/", views.job_detail, name="job_detail"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="job_cancel_page"),
    path("jobs/<int:job_id>/retry/", views.job_retry, name="job_retry_page"),
]
