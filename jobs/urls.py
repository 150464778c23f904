from django.urls import path

from . import (
    dataset_views,
    experiment_views,
    memory_views,
    notification_views,
    playground_views,
    review_views,
    views,
)

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("", views.dashboard, name="dashboard"),
    path("jobs/new/", views.job_new, name="job_new"),
    path("jobs/new/memory/", memory_views.job_memory_estimate, name="job_memory_estimate"),
    path("jobs/compare/", views.compare, name="compare"),
    path("experiments/", experiment_views.experiments, name="experiments"),
    path("experiments/<int:experiment_id>/", experiment_views.experiment_detail, name="experiment_detail"),
    path("experiments/<int:experiment_id>/cancel/", experiment_views.experiment_cancel, name="experiment_cancel"),
    path("experiments/<int:experiment_id>/retry/", experiment_views.experiment_retry, name="experiment_retry"),
    path("datasets/new/", dataset_views.dataset_new, name="dataset_new"),
    path("settings/notifications/", notification_views.notifications, name="notifications"),
    path("models/offline/install/", views.offline_install, name="offline_install"),
    path("jobs/<int:job_id>/", views.job_detail, name="job_detail"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="job_cancel_page"),
    path("jobs/<int:job_id>/retry/", views.job_retry, name="job_retry_page"),
    path("jobs/<int:job_id>/playground/", playground_views.playground_page, name="playground"),
    path("jobs/<int:job_id>/playground/start/", playground_views.playground_start, name="playground_start"),
    path("jobs/<int:job_id>/review/", review_views.review_desk, name="review_desk"),
    path("jobs/<int:job_id>/review/state/", review_views.review_state, name="review_state"),
    path("jobs/<int:job_id>/review/act/", review_views.review_act, name="review_act"),
    path("jobs/<int:job_id>/review/bulk/", review_views.review_bulk, name="review_bulk"),
    path("jobs/<int:job_id>/review/guidelines/", review_views.review_guidelines, name="review_guidelines"),
]
