from django.urls import path

from jobs.api import artifacts, datasets, experiments, views, webhooks

app_name = "api"

urlpatterns = [
    path("auth/token/", views.TokenView.as_view(), name="token"),
    path("models/", views.ModelListView.as_view(), name="models"),
    path("datasets/", datasets.DatasetListView.as_view(), name="datasets"),
    path("datasets/preview/", datasets.DatasetPreviewView.as_view(), name="datasets-preview"),
    path("presets/", views.PresetListView.as_view(), name="presets"),
    path("kinds/", views.KindListView.as_view(), name="kinds"),
    path("jobs/", views.JobListView.as_view(), name="jobs"),
    path("jobs/<int:pk>/", views.JobDetailView.as_view(), name="job-detail"),
    path("jobs/<int:pk>/cancel/", views.JobCancelView.as_view(), name="job-cancel"),
    path("jobs/<int:pk>/retry/", views.JobRetryView.as_view(), name="job-retry"),
    path("jobs/<int:pk>/events/", views.JobEventsView.as_view(), name="job-events"),
    path("jobs/<int:pk>/shards/", views.JobShardsView.as_view(), name="job-shards"),
    path("jobs/<int:pk>/pairs/", views.JobPairsView.as_view(), name="job-pairs"),
    path("jobs/<int:pk>/pairs/export/", views.PairsExportView.as_view(), name="job-pairs-export"),
    path("jobs/<int:pk>/pairs/<int:pair_id>/review/", views.PairReviewView.as_view(), name="pair-review"),
    path("jobs/<int:pk>/results/", views.JobResultsView.as_view(), name="job-results"),
    path("jobs/<int:pk>/artifacts/", artifacts.JobArtifactsView.as_view(), name="job-artifacts"),
    path(
        "jobs/<int:pk>/artifacts/<int:artifact_id>/download/",
        artifacts.ArtifactDownloadView.as_view(),
        name="job-artifact-download",
    ),
    path("experiments/", experiments.ExperimentListView.as_view(), name="experiments"),
    path("experiments/<int:experiment_id>/", experiments.ExperimentDetailView.as_view(), name="experiment-detail"),
    path(
        "experiments/<int:experiment_id>/cancel/", experiments.ExperimentCancelView.as_view(), name="experiment-cancel"
    ),
    path("experiments/<int:experiment_id>/retry/", experiments.ExperimentRetryView.as_view(), name="experiment-retry"),
    path("webhooks/", webhooks.WebhookListView.as_view(), name="webhooks"),
    path("webhooks/<int:pk>/", webhooks.WebhookDetailView.as_view(), name="webhook-detail"),
    path("webhooks/<int:pk>/deliveries/", webhooks.WebhookDeliveriesView.as_view(), name="webhook-deliveries"),
    path("webhooks/<int:pk>/test/", webhooks.WebhookTestView.as_view(), name="webhook-test"),
]
