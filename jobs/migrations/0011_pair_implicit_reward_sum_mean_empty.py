"""A pair's implicit reward as two named numbers, its token count, and a flag for empty responses.

``implicit_reward`` held the per-token mean while the docs define the implicit reward as the sum over response
tokens, so a filter on it read a number the docs did not describe. The column is renamed to
``implicit_reward_mean`` (its values are means, kept as they are); ``implicit_reward_sum`` and ``n_tokens`` are
new and stay null for stored rows (the token count was never stored, so the sum cannot be derived).
``empty_response`` is set for stored rows whose chosen response, or the rejected/plain one it is paired with, is
empty or whitespace only: the same rule as jobs.services.pair_store (ml.io.is_empty_response), copied here
because a migration must not change when that code does.
"""

from django.db import migrations, models


def _empty(text) -> bool:
    return text is None or not str(text).strip()


def flag_empty(apps, schema_editor):
    pair = apps.get_model("jobs", "GeneratedPair")
    ids = []
    for pk, chosen, rejected, plain in pair.objects.values_list("pk", "chosen", "rejected", "plain").iterator():
        other = rejected if rejected is not None else plain
        if _empty(chosen) or (other is not None and _empty(other)):
            ids.append(pk)
    for i in range(0, len(ids), 500):  # bounded IN lists (SQLite caps the number of parameters)
        pair.objects.filter(pk__in=ids[i : i + 500]).update(empty_response=True)


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0010_job_send_pending"),
    ]

    operations = [
        migrations.RenameField(model_name="generatedpair", old_name="implicit_reward", new_name="implicit_reward_mean"),
        migrations.AlterField(
            model_name="generatedpair",
            name="implicit_reward_mean",
            field=models.FloatField(
                blank=True, null=True, help_text="The implicit reward per token: the sum divided by n_tokens."
            ),
        ),
        migrations.AddField(
            model_name="generatedpair",
            name="implicit_reward_sum",
            field=models.FloatField(
                blank=True,
                null=True,
                help_text="Implicit reward: log pi_post - log pi_pre summed over the response tokens.",
            ),
        ),
        migrations.AddField(
            model_name="generatedpair",
            name="n_tokens",
            field=models.PositiveIntegerField(blank=True, null=True, help_text="Tokens in the generated response."),
        ),
        migrations.AddField(
            model_name="generatedpair",
            name="empty_response",
            field=models.BooleanField(
                default=False,
                help_text="A generated response (chosen, or the rejected/plain one it is paired with) is empty or "
                "whitespace only; the export leaves such pairs out unless asked (?include_empty=1).",
            ),
        ),
        migrations.RunPython(flag_empty, migrations.RunPython.noop),
    ]
