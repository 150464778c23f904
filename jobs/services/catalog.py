"""Models and datasets: registration (names per owner, paths under the model roots), uploads, and the
shared entries the toy world registers."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from jobs.models import Dataset, ModelEntry
from jobs.selectors import visible as _visible
from jobs.services._common import _err
from jobs.validation import resolve_model_path, validate_jsonl
from ml.gold import RM_PREFIX
from ml.toyworld.manifest import ToyManifest


def _fingerprint(path: Path) -> str:
    from ml.modeling import load_tokenizer, vocab_fingerprint

    try:
        return vocab_fingerprint(load_tokenizer(path))
    except Exception as exc:  # a folder without a usable tokenizer cannot serve in a weak pair
        raise _err("path", f"could not load the tokenizer in {path}: {exc}") from None


# Model names are unique per owner; shared entries (owner None) have their own namespace. The names the
# app registers by itself are reserved, so no user can pre-empt them (docs/SECURITY.md section 3): toy
# worlds register "toy-<world>-s<seed>..." (toyworld_register), the offline install the ml.offline keys
# (offline_register), a weak_align job "<weak base>-aligned-job<N>" (jobs.runner._register_aligned).
RESERVED_MODEL_PREFIXES = ("toy-",)


ALIGNED_NAME_MARK = "-aligned-job"


# Registered names of the offline models: the manifest key with dashes (smollm2_135m_instruct -> smollm2-135m-instruct).
def offline_model_name(key: str) -> str:
    return key.replace("_", "-")


def _offline_model_names() -> set[str]:
    try:
        from ml.offline.install import MODELS
    except ImportError:  # without ml.offline there is no offline install to reserve names for
        return set()
    return {offline_model_name(k) for k in MODELS}


def _reserved_model_name(name: str) -> str | None:
    """Why a user may not take ``name`` (a message that depends on no one's private data), or None."""
    low = name.lower()
    head, mark, tail = low.rpartition(ALIGNED_NAME_MARK)
    if mark and tail.isdigit():
        return (
            f"names ending in '{ALIGNED_NAME_MARK}<number>' are reserved for the models weak_align jobs "
            "register; pick another name"
        )
    if (
        low.startswith(RESERVED_MODEL_PREFIXES)
        or low in _offline_model_names()
        or ModelEntry.objects.filter(owner__isnull=True, name__iexact=name).exists()
    ):
        return (
            f"{name!r} is a shared model name (names starting with {', '.join(RESERVED_MODEL_PREFIXES)} "
            "and the offline models' names are reserved too); pick another name"
        )
    return None


def model_register(
    *, name: str, path: str, kind: str = ModelEntry.Kind.ANY, family: str = "", owner=None, system: bool = False
) -> ModelEntry:
    """Register an HF folder under MODEL_ROOTS; its tokenizer's vocab fingerprint is stored.

    ``owner`` None registers a shared entry (the app itself: toy world, offline install). A user's entry
    may not take a reserved or shared name (see _reserved_model_name) unless ``system`` says the app
    registers it for that user (a weak_align job's pi_post), and may point into RUNS_DIR only inside one
    of the owner's own jobs' folders, unless the owner is staff (jobs.validation.run_folder_allowed).
    """
    name = (name or "").strip()
    if not name:
        raise _err("name", "give the model a name")
    if kind not in ModelEntry.Kind.values:
        raise _err("kind", f"kind must be one of {', '.join(ModelEntry.Kind.values)}")
    if owner is not None and not system:
        why = _reserved_model_name(name)
        if why:
            raise _err("name", why)
    # Only the owner's own namespace (or the shared one) is looked at: another user's private name is no
    # collision, and the answer must not tell whether it exists.
    taken = (
        f"a model named {name!r} already exists among your models; pick another name"
        if owner is not None
        else f"a shared model named {name!r} already exists; pick another name"
    )
    if ModelEntry.objects.filter(owner=owner, name=name).exists():  # owner=None filters IS NULL
        raise _err("name", taken)
    resolved = resolve_model_path(path, user=owner)
    if kind == ModelEntry.Kind.REWARD:
        from ml.judge.reward_model import check_reward_folder

        why = check_reward_folder(resolved)  # config.json only: nothing is loaded, no remote code ever
        if why:
            raise _err("path", why)
    fp = _fingerprint(resolved)
    try:
        with transaction.atomic():
            return ModelEntry.objects.create(
                name=name, path=str(resolved), kind=kind, family=family or "", vocab_fingerprint=fp, owner=owner
            )
    except IntegrityError:  # the same name registered meanwhile in the same namespace
        raise _err("name", taken) from None


def datasets_dir() -> Path:
    d = Path(settings.VAR_DIR) / "datasets"
    d.mkdir(parents=True, exist_ok=True)
    return d


def dataset_create(
    *,
    name: str,
    kind: str = Dataset.Kind.PROMPTS,
    chunks: Iterable[bytes] = (),
    rows: list[dict[str, str]] | None = None,
    format: str = "jsonl",
    gold: str = "",
    owner=None,
) -> Dataset:
    """Validate a JSONL (see jobs.validation) and store it under VAR_DIR/datasets/.

    ``rows``, instead of ``chunks``: rows already normalised from an upload in ``format`` (ml.data_formats, via
    jobs.services.dataset_files), stored as JSONL under the same checks; the upload limit applied to the file
    as sent, so not again to its JSONL (a Parquet file grows when written out as text)."""
    name = (name or "").strip()
    if not name:
        raise _err("name", "give the dataset a name")
    if kind not in Dataset.Kind.values:
        raise _err("kind", f"kind must be one of {', '.join(Dataset.Kind.values)}")
    gold = (gold or "").strip()
    if gold:
        _check_gold(gold, owner)
    max_bytes = None
    if rows is not None:
        chunks = ["".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")]
        max_bytes = len(chunks[0])
    data, count = validate_jsonl(chunks, kind=kind, max_bytes=max_bytes)
    # Write the file first under a unique name; the row points at it. If the row fails, remove the file.
    path = datasets_dir() / f"{uuid.uuid4().hex}.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    try:
        with transaction.atomic():
            return Dataset.objects.create(
                name=name, kind=kind, path=str(path), row_count=count, format=format, gold=gold, owner=owner
            )
    except Exception:
        path.unlink(missing_ok=True)
        raise


def _check_gold(gold: str, user=None, field: str = "gold") -> None:
    if gold.startswith(RM_PREFIX):  # a reward model the uploader may use; jobs check it again for their owner
        gold_pick(user, gold, field)
        return
    try:
        import ml.toyworld  # noqa: F401  (registers the toy golds)
        from ml.gold import get_gold

        get_gold(gold)
    except (KeyError, ValueError) as exc:
        raise _err(field, f"unknown gold reward {gold!r}: {exc}") from None
    except ImportError:  # the registry is not importable here: accept, the runner will check
        pass


def gold_pick(user, gold: str, field: str) -> dict[str, Any]:
    """A gold as a job stores it: {"name": what ml resolves (a registered name, or rm:<folder> for a reward model),
    "label": what pages and results show (rm:<model name>), "model": the reward model's ref (re-checked when the job
    runs, like the job's other models)}. ``gold`` is a registered name or rm:<model id> of a reward model ``user``
    may use; a ValidationError on ``field`` otherwise."""
    if not gold.startswith(RM_PREFIX):
        _check_gold(gold, field=field)
        return {"name": gold, "label": gold}
    ident = gold[len(RM_PREFIX) :].strip()
    if not ident.isdigit():
        raise _err(field, f"{gold!r}: a reward-model gold is rm:<model id>, e.g. rm:12 (register it with kind reward)")
    m = _pick_model(user, ident, field, reward=True)
    return {"name": f"{RM_PREFIX}{m.path}", "label": f"{RM_PREFIX}{m.name}", "model": _model_ref(m)}


def judge_pick(user, ident: Any, field: str = "judge") -> dict[str, Any]:
    """A pairwise judge as a job stores it (the model's ref, re-checked when the job runs like its other models): a
    causal LM ``user`` may use whose tokenizer can answer "A" or "B" (ml.judge.pairwise; the tokenizer is read, the
    model is not loaded)."""
    from ml.judge.pairwise import check_judge_folder

    m = _pick_model(user, ident, field)
    why = check_judge_folder(m.path)
    if why:
        raise _err(field, f"model {m.name!r} cannot judge: {why}")
    return _model_ref(m)


def _pick_model(user, ident: Any, field: str, *, reward: bool = False) -> ModelEntry:
    """A model ``user`` may use, by id: a reward model when ``reward`` (a gold), else any other kind (a model a job
    samples or trains; a reward model's one-number head cannot generate)."""
    if ident in (None, ""):
        raise _err(field, "this job kind needs this model; give its id")
    try:
        pk = int(ident)
    except (TypeError, ValueError):
        raise _err(field, f"model id must be an integer, got {ident!r}") from None
    from jobs.validation import run_folder_allowed

    m = _visible(ModelEntry.objects.all(), user).filter(pk=pk).first()
    if m is None:
        raise _err(field, f"no model with id {pk}")
    # Visible is not enough: an entry registered before run folders were checked (or one staff made
    # shared) may point into another user's job outputs. Checked before the disk, so nothing is said
    # about what is there.
    if not run_folder_allowed(m.path, user):
        raise _err(
            field,
            f"model {m.name!r} is in a job runs folder that is not one of your jobs'; use a "
            "model from your own jobs or a shared one",
        )
    if not (Path(m.path) / "config.json").is_file():
        raise _err(field, f"model {m.name!r} is no longer on disk at {m.path}")
    if reward and m.kind != ModelEntry.Kind.REWARD:
        raise _err(field, f"model {m.name!r} is not a reward model (kind {m.kind}); register one with kind reward")
    if not reward and m.kind == ModelEntry.Kind.REWARD:
        raise _err(
            field, f"model {m.name!r} is a reward model: it scores, it cannot generate; name it as gold rm:{m.pk}"
        )
    return m


def _pick_dataset(user, ident: Any, field: str = "prompts") -> Dataset:
    if ident in (None, ""):
        raise _err(field, "this job kind needs a prompt dataset; give its id")
    try:
        pk = int(ident)
    except (TypeError, ValueError):
        raise _err(field, f"dataset id must be an integer, got {ident!r}") from None
    d = _visible(Dataset.objects.all(), user).filter(pk=pk).first()
    if d is None:
        raise _err(field, f"no dataset with id {pk}")
    if d.row_count < 1 or not Path(d.path).is_file():
        raise _err(field, f"dataset {d.name!r} is empty; upload prompts first")
    return d


def _toyworld_defaults(manifest: ToyManifest) -> dict[str, Any]:
    """The settings a toy world was built for: its models' context fits its generation length, and its
    sub-million-parameter models need larger learning rates than the paper's (see the world recipes)."""
    out: dict[str, Any] = {}
    if manifest.generation.get("max_new_tokens"):
        out["max_new_tokens"] = int(manifest.generation["max_new_tokens"])
    try:
        from ml.toyworld.worlds import get_world

        stages = get_world(manifest.world).recipe(manifest.size).stages
    except (ImportError, KeyError, ValueError):
        return out
    for name, overrides in stages.items():
        # Recommendations: ml.resolve keeps, per job kind, only the stages that kind runs.
        out["cd_generate" if name == "generate" else name] = dict(overrides)
    return out


def _model_ref(m: ModelEntry) -> dict[str, Any]:
    return {"id": m.pk, "name": m.name, "path": m.path, "vocab_fingerprint": m.vocab_fingerprint}


def toyworld_register(*, manifest: dict[str, Any]) -> dict[str, Any]:
    """Register a built toy world's models and prompt sets as shared entries (owner None), idempotently. The
    manifest is read as ml.toyworld.manifest.ToyManifest: a wrong version or key is a 400 that says which."""
    from ml.toyworld.manifest import MODEL_ROLES

    try:
        m = ToyManifest.from_dict(manifest)
    except (TypeError, ValueError) as exc:
        raise _err("manifest", str(exc)) from None
    out: dict[str, Any] = {"models": {}, "datasets": {}}
    for role in MODEL_ROLES:
        path = m.models.get(role)
        if not path:
            continue
        name = f"{m.tag}-{role.replace('_', '-')}"
        # The shared namespace only: a user's entry of the same name (from before names were reserved)
        # must never become the toy world's.
        entry = ModelEntry.objects.filter(name=name, owner__isnull=True).first()
        if entry is None:
            kind = "strong" if role == "strong_base" else "weak"
            entry = model_register(name=name, path=str(path), kind=kind, family=f"toy-{m.world}", owner=None)
        out["models"][role] = entry
    defaults = _toyworld_defaults(m)
    for split in ("train", "heldout"):
        path = m.prompts.get(split)
        if path:
            out["datasets"][split] = _shared_prompts(
                name=f"{m.tag}-{split}", path=path, gold=m.gold_name, defaults=defaults
            )
    link_eval_split(out["datasets"])
    return out


def link_eval_split(splits: dict[str, Dataset]) -> None:
    """Jobs that train on the 'train' split evaluate on the 'heldout' one (stored, never guessed from names)."""
    train, held = splits.get("train"), splits.get("heldout")
    if train is not None and held is not None and train.eval_split_id != held.pk:
        train.eval_split = held
        train.save(update_fields=["eval_split"])


def _shared_prompts(*, name: str, path: str | Path, gold: str, defaults: dict[str, Any]) -> Dataset:
    """A shared (owner-less) prompt dataset from a file, created once; its recommended params follow the
    latest registration (a rebuilt world or another preset size)."""
    ds = Dataset.objects.filter(name=name, owner__isnull=True).first()
    if ds is None:
        with open(path, "rb") as fh:
            ds = dataset_create(
                name=name, kind=Dataset.Kind.PROMPTS, chunks=iter(lambda: fh.read(1 << 16), b""), gold=gold, owner=None
            )
    if ds.defaults != defaults:
        ds.defaults = defaults
        ds.save(update_fields=["defaults"])
    return ds
