"""Reward-model judges: a local ``AutoModelForSequenceClassification`` folder with one output as a gold reward.

``rm:<folder>`` names one anywhere a gold is named (ml.gold.get_gold): the web app resolves a registered reward
model's id to its folder at submit, ml only ever sees the path. The model is scored by ml.scoring.RewardModelJudge
(its own tokenizer; its chat template when it has one, user = prompt and assistant = response; batched; the stage's
device) and loaded lazily, on the first pair it scores: naming or checking a gold never loads a model (the web
process checks names at submit).

Scores are cached per (prompt, response): in this process (an LRU per folder, shared by every stage that scores
with the same model, so a resumed or repeated evaluation does not rescore) and, when the stage gives one, in a
JSONL file next to its outputs (``CACHE_FILE``: a stage resumed in a new process reads it back first).

One reward model is kept loaded per process: loading another frees the first, and ``unload()`` frees it for a
stage that needs the memory (weak alignment trains right after labelling).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml.gold import RM_PREFIX, GoldReward
from ml.io import append_jsonl, repair_jsonl

CACHE_FILE = "gold_cache.jsonl"  # next to a stage's outputs: {"gold", "prompt", "response", "score"} per line
CACHE_ENTRIES = 1 << 16  # scores kept in memory per reward model (the LRU's size)
DEFAULT_BATCH_SIZE = 16  # pairs per forward pass when the stage names none

_lock = threading.RLock()  # the mirror (a progress hook) and a stage may score in turn from different threads
_loaded: dict[tuple[str, str, str | None], Any] = {}  # (folder, device, dtype) -> RewardModelJudge; one at most
_scores: dict[str, OrderedDict[tuple[str, str], float]] = {}  # folder -> LRU of (prompt, response) -> score


def check_reward_folder(path: str | Path) -> str | None:
    """Why the HF folder at ``path`` cannot serve as a reward model, or None when it can: it must hold a
    sequence-classification architectures' config (read with trust_remote_code=False: a folder is data, never
    code) with exactly one label. Reads config.json only; no weights are loaded."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    path = Path(path)
    if not (path / "config.json").is_file():
        return f"{path} is not a Hugging Face model folder (no config.json in it)"
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except Exception as exc:  # an unknown model_type (custom code) or a malformed config
        return f"could not read the model config in {path}: {exc}"
    archs = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in archs) or type(config) not in (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING
    ):
        return (
            f"{path} is not a sequence-classification model (architectures: {', '.join(archs) or 'none'}); a reward "
            "model is an AutoModelForSequenceClassification folder with one label"
        )
    if config.num_labels != 1:
        return (
            f"{path} has {config.num_labels} labels; a reward model has exactly one (num_labels=1): its one output "
            "is the score"
        )
    return None


def _judge(path: str, device: str | None, dtype: str | None) -> Any:
    from ml.modeling import pick_device
    from ml.scoring import RewardModelJudge

    key = (path, str(pick_device(device)), dtype)
    judge = _loaded.get(key)
    if judge is None:
        unload()  # one reward model in memory at a time
        judge = _loaded[key] = RewardModelJudge(path, device=device, dtype=dtype)
    return judge


def unload() -> None:
    """Free the loaded reward model (its scores stay cached); the next score loads it again."""
    with _lock:
        if not _loaded:
            return
        _loaded.clear()
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _lru(path: str) -> OrderedDict[tuple[str, str], float]:
    return _scores.setdefault(path, OrderedDict())


def _remember(cache: OrderedDict[tuple[str, str], float], key: tuple[str, str], score: float) -> None:
    cache[key] = score
    cache.move_to_end(key)
    while len(cache) > CACHE_ENTRIES:
        cache.popitem(last=False)


class RewardGold:
    """The scorer behind one ``rm:<folder>`` GoldReward: batched, cached, the model loaded on first use."""

    def __init__(
        self,
        path: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | None = None,
        cache_file: str | Path | None = None,
    ) -> None:
        self.path, self.device, self.dtype = path, device, dtype
        self.batch_size = int(batch_size or DEFAULT_BATCH_SIZE)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self.name = f"{RM_PREFIX}{path}"
        self.cache_file = Path(cache_file) if cache_file else None
        self._file_read = False
        self.computed = 0  # pairs this scorer ran through the model (the rest came from a cache)

    def _read_file(self) -> None:
        # Once per scorer, before its first lookup: what an earlier run of the same stage scored.
        if self._file_read or self.cache_file is None:
            return
        self._file_read = True
        cache = _lru(self.path)
        for row in repair_jsonl(self.cache_file):
            if row.get("gold") == self.name and isinstance(row.get("score"), (int, float)):
                _remember(cache, (str(row["prompt"]), str(row["response"])), float(row["score"]))

    def score_many(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        with _lock:
            self._read_file()
            cache = _lru(self.path)
            keys = [(str(p), str(r)) for p, r in pairs]
            # Held here, not read back from the LRU at the end: a call with more pairs than the LRU holds evicts some.
            known = {k: cache[k] for k in keys if k in cache}
            todo = [k for k in dict.fromkeys(keys) if k not in known]  # each distinct missing pair once
            for s in range(0, len(todo), self.batch_size):
                chunk = todo[s : s + self.batch_size]
                judge = _judge(self.path, self.device, self.dtype)
                judge.batch_size = self.batch_size
                scores = [float(v) for v in judge.score_batch([p for p, _ in chunk], [r for _, r in chunk])]
                self.computed += len(chunk)
                known.update(zip(chunk, scores))
                if self.cache_file is not None:  # per batch: a stage killed mid-way keeps what it scored
                    rows = [{"prompt": p, "response": r, "score": v} for (p, r), v in zip(chunk, scores)]
                    append_jsonl(self.cache_file, [{"gold": self.name, **row} for row in rows])
            for k in keys:
                _remember(cache, k, known[k])
            return [known[k] for k in keys]

    def __call__(self, prompt: str, response: str) -> float:
        return self.score_many([(prompt, response)])[0]


def reward_gold(
    path: str | Path,
    *,
    device: str | None = None,
    batch_size: int | None = None,
    cache_file: str | Path | None = None,
) -> GoldReward:
    """The GoldReward of the reward model in ``path`` (named ``rm:<path>``); ValueError at once when the folder
    cannot be one (check_reward_folder), without loading it."""
    path = str(Path(path).resolve())
    why = check_reward_folder(path)
    if why:
        raise ValueError(f"gold {RM_PREFIX}{path}: {why}")
    scorer = RewardGold(path, device=device, batch_size=batch_size, cache_file=cache_file)
    return GoldReward(name=scorer.name, score=scorer, batch=scorer.score_many)
