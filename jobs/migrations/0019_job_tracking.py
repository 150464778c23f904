# Job.tracking: the job's MLflow run (jobs.tracking), so a retry resumes the same run.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0018_experiments_job_labels"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="tracking",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="Its MLflow run (jobs.tracking): uri, experiment, experiment_id, run_id; empty when none.",
            ),
        ),
    ]
