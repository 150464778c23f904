"""The real offline models (ml.offline): registration as shared entries, and the staff install that runs as
a Celery task with its state in a small JSON file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from jobs.models import ModelEntry
from jobs.names import OFFLINE_GOLD, OFFLINE_HELDOUT, OFFLINE_TRAIN
from jobs.services import dispatch
from jobs.services._common import _err
from jobs.services.catalog import _fingerprint, _shared_prompts, link_eval_split, model_register, offline_model_name
from jobs.validation import resolve_model_path

# The PipelineConfig stage dicts that train the strong model (they get the preset's lora_r, as
# ml.pipeline's strong_kw does) and every training stage (they get train_max_steps as max_steps).
_STRONG_STAGES = ("sft", "dpo", "wspo", "auxconf")


_TRAIN_STAGES = ("weak_align", *_STRONG_STAGES)


def offline_params(config) -> dict[str, Any]:
    """A real-model preset (ml.offline.presets.real_preset's PipelineConfig) as web job params: what the
    runner maps back onto the same stage configs (jobs.runner._pipeline / run_weak_align)."""
    out: dict[str, Any] = {"max_new_tokens": int(config.max_new_tokens)}
    for key in ("max_prompts", "max_eval_prompts"):
        if getattr(config, key) is not None:
            out[key] = int(getattr(config, key))
    stages = {"cd_generate": dict(config.generate)}
    for name in ("weak_align", "sft", "self_sample", "dpo", "wspo", "auxconf", "evaluate"):
        stages[name] = dict(getattr(config, name))
    # The pipeline gives strong-model stages lora_r and every training stage train_max_steps; the web
    # params have no top-level key for either, so they travel inside each stage's dict.
    for name in _STRONG_STAGES:
        if config.lora_r > 0:
            stages[name].setdefault("lora_r", int(config.lora_r))
    if config.train_max_steps > 0:
        for name in _TRAIN_STAGES:
            stages[name].setdefault("max_steps", int(config.train_max_steps))
    out.update({k: v for k, v in stages.items() if v})
    return out


def offline_register(*, manifest: dict[str, Any], size: str = "cpu") -> dict[str, Any]:
    """Register the installed offline models (ml.offline manifest) and the judge's prompt splits as shared
    entries (owner None), idempotently. The datasets carry the ``size`` preset's settings as defaults, so
    a job on them runs like ``python -m ml models run --size <size>`` unless its own params say otherwise."""
    from ml.offline.presets import SIZES, ensure_prompts, real_preset

    if size not in SIZES:
        raise _err("size", f"size must be one of {', '.join(SIZES)}, got {size!r}")
    root = manifest.get("root")
    if not root or not manifest.get("models"):
        raise _err("manifest", "the offline manifest lists no models; run `python manage.py install_offline_models`")
    models_dir = Path(root).parent  # the manifest lives in <models_dir>/offline/
    out: dict[str, Any] = {"models": {}, "datasets": {}, "size": size}
    for key, m in sorted(manifest["models"].items()):
        name = offline_model_name(key)
        kind = m.get("role") if m.get("role") in ModelEntry.Kind.values else ModelEntry.Kind.ANY
        entry = ModelEntry.objects.filter(name=name, owner__isnull=True).first()  # shared only, as for toy worlds
        if entry is None:
            entry = model_register(name=name, path=str(m["path"]), kind=kind, family=m.get("family", ""), owner=None)
        elif Path(entry.path) != Path(m["path"]).resolve():
            # Installed again somewhere else: follow the manifest (checked like a new registration).
            entry.path = str(resolve_model_path(str(m["path"]), user=None))
            entry.vocab_fingerprint = _fingerprint(Path(entry.path))
            entry.save(update_fields=["path", "vocab_fingerprint"])
        out["models"][key] = entry
    prompts = ensure_prompts(models_dir)
    defaults = offline_params(real_preset(size, models_dir, check_models=False))
    for split, name in (("train", OFFLINE_TRAIN), ("heldout", OFFLINE_HELDOUT)):
        out["datasets"][split] = _shared_prompts(name=name, path=prompts[split], gold=OFFLINE_GOLD, defaults=defaults)
    link_eval_split(out["datasets"])
    return out


# Installing from the web app (the staff button): the slow install runs as a Celery task on the default
# queue, never inside a request. Its state lives in a small JSON file beside the models
# (<DATA_DIR>/offline/install_status.json), which the web and worker hosts share anyway (models are read
# from the same paths everywhere), so the page can show it without a new table.
OFFLINE_STATUS = "install_status.json"


# A state not updated for this long is a lost message or a dead worker: allow another try. "running"
# is updated at every step of the install (the slowest, Gemma's conversion, takes minutes).
OFFLINE_STALE_SECONDS = {"queued": 600, "running": 1800}


def _offline_status_path(data_dir: str | Path | None = None) -> Path:
    return Path(data_dir or settings.DATA_DIR) / "offline" / OFFLINE_STATUS


def offline_install_status(data_dir: str | Path | None = None) -> dict[str, Any] | None:
    from ml.io import read_json

    path = _offline_status_path(data_dir)
    try:
        return read_json(path) if path.exists() else None
    except ValueError:  # torn write: report nothing rather than fail the page
        return None


def _offline_status_write(data_dir: str | Path | None = None, **data: Any) -> dict[str, Any]:
    from ml.io import write_json

    status = {**(offline_install_status(data_dir) or {}), **data, "updated": timezone.now().isoformat()}
    path = _offline_status_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, status)
    return status


def offline_install_request(*, user, size: str = "cpu") -> dict[str, Any]:
    """Staff only: queue the install (jobs.tasks.offline_install_task) unless one is queued or running."""
    from ml.offline.presets import SIZES

    if user is None or not user.is_staff:
        raise _err("user", "only staff can install the offline models")
    if size not in SIZES:
        raise _err("size", f"size must be one of {', '.join(SIZES)}, got {size!r}")
    cur = offline_install_status() or {}
    if cur.get("state") in ("queued", "running"):
        from django.utils.dateparse import parse_datetime

        when = parse_datetime(cur.get("updated") or "")
        if when is not None and (timezone.now() - when).total_seconds() < OFFLINE_STALE_SECONDS[cur["state"]]:
            raise _err("state", f"an install is already {cur['state']} (since {cur.get('updated')})")
    status = _offline_status_write(
        state="queued", size=size, message="waiting for a worker", error="", requested_by=user.get_username()
    )
    try:
        dispatch.send_named(dispatch.OFFLINE_INSTALL_TASK, size)
    except Exception as exc:
        status = _offline_status_write(state="failed", error=f"could not reach the broker: {exc}")
    return status


class _StatusReporter:
    """ml Reporter that keeps the latest message in the status file (and echoes to a console reporter)."""

    def __init__(self, data_dir: Path, echo=None) -> None:
        from ml.reporter import or_null

        self.data_dir, self.echo = data_dir, or_null(echo)

    def progress(self, stage: str, done: int, total: int) -> None:
        self.echo.progress(stage, done, total)

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        self.echo.metric(name, value, step)

    def sample(self, data: dict[str, Any]) -> None:
        self.echo.sample(data)

    def log(self, msg: str) -> None:
        self.echo.log(msg)
        _offline_status_write(self.data_dir, message=str(msg)[:500])

    def should_stop(self) -> bool:
        return False


def offline_install(
    *, size: str = "cpu", install: bool = True, reporter=None, data_dir: str | Path | None = None
) -> dict[str, Any]:
    """ml.offline.install_offline into DATA_DIR (or data_dir), then offline_register; records the state
    for the page. ``install=False`` never calls pip (the packages must be there)."""
    from ml.offline.install import install_offline

    data_dir = Path(data_dir or settings.DATA_DIR)
    _offline_status_write(
        data_dir, state="running", size=size, message="starting", error="", started=timezone.now().isoformat()
    )
    try:
        manifest = install_offline(data_dir, _StatusReporter(data_dir, reporter), install=install)
        out = offline_register(manifest=manifest, size=size)
    except Exception as exc:
        msg = "; ".join(exc.messages) if isinstance(exc, ValidationError) else f"{type(exc).__name__}: {exc}"
        _offline_status_write(data_dir, state="failed", error=msg[:2000], finished=timezone.now().isoformat())
        raise
    _offline_status_write(
        data_dir,
        state="done",
        message="installed and registered",
        finished=timezone.now().isoformat(),
        models=sorted(m.name for m in out["models"].values()),
        datasets=sorted(d.name for d in out["datasets"].values()),
    )
    return out
