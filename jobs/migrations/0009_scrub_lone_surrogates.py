"""Rows poisoned before JSON input was checked (docs/SECURITY.md, finding 7): a lone UTF-16 surrogate stored in a
job's config or results, an event, a pair or a name made every page showing it answer 500. Replace each lone
surrogate with U+FFFD so those pages render again. (PostgreSQL never accepted them; SQLite did.)"""

import re
from typing import Any

from django.db import migrations

LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        # In a Python str a valid pair is one code point, so any surrogate code point left is a lone one.
        return LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


FIELDS = {
    "Job": ("config", "results", "error"),
    "JobEvent": ("data",),
    "GeneratedPair": ("prompt", "chosen", "rejected", "plain", "edited_text", "score_error"),
    "ModelEntry": ("name", "family"),
    "Dataset": ("name", "gold"),
}


def scrub(apps, schema_editor):
    for model_name, fields in FIELDS.items():
        model = apps.get_model("jobs", model_name)
        for row in model.objects.all().iterator():
            changed = []
            for f in fields:
                old = getattr(row, f)
                new = _clean(old)
                if new != old:
                    setattr(row, f, new)
                    changed.append(f)
            if changed:
                row.save(update_fields=changed)


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0008_model_aligned_from"),
    ]

    operations = [migrations.RunPython(scrub, migrations.RunPython.noop)]
