"""Build (if needed) a toy world and register its models and prompt sets as shared entries.

python manage.py register_toyworld --world review --seed 0 --size tiny
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from jobs.services import toyworld_register


class Command(BaseCommand):
    help = "Build a toy world (cached) and register its models/datasets for everyone (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--world", default="review")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--size", default="default", choices=["default", "tiny"])
        parser.add_argument("--data-dir", default=None, help="default: DATA_DIR (must be under MODEL_ROOTS)")

    def handle(self, *args, world, seed, size, data_dir, **opts):
        from ml.reporter import ConsoleReporter
        from ml.toyworld.build import build

        data_dir = Path(data_dir or settings.DATA_DIR)
        manifest = build(world, seed=seed, data_dir=data_dir, size=size, reporter=ConsoleReporter())
        if manifest.get("stopped"):
            self.stderr.write("build stopped before it finished")
            return
        out = toyworld_register(manifest=manifest)
        for role, m in out["models"].items():
            self.stdout.write(f"model   {m.pk:>4}  {m.name}  ({role})")
        for split, d in out["datasets"].items():
            self.stdout.write(f"dataset {d.pk:>4}  {d.name}  ({split}, {d.row_count} prompts, gold {d.gold})")
