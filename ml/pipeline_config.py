"""The pipeline's methods and its config (``PipelineConfig``), apart from the stages' runner in ml.pipeline (which
re-exports every name here), so that both modules stay readable and under the project's 500-line limit."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ml.cd_config import plain_field
from ml.distributed import DEFAULT_MODE

# The paper's methods (the default) and the options this project measures beside them.
DEFAULT_METHODS = ("strong_base", "weak_sft", "wspo", "auxconf", "cong_s", "cong", "weak_post")
# Measured references beside the paper's (ml.pipeline_refs): the best of N by implicit reward, the gold-picked
# ceiling that pgr is measured against, and WeakSFT for one epoch.
REFERENCE_METHODS = ("best_of_n", "ceiling", "weak_sft_1ep")
METHODS = (*DEFAULT_METHODS, "cong_filtered", *REFERENCE_METHODS)
PLAIN_METHODS = frozenset({"weak_sft", "wspo", "auxconf", "weak_sft_1ep"})  # trained on plain pi_post samples
PICKED_METHODS = frozenset({"best_of_n", "ceiling"})  # trained on the best of several pi_post samples
WSPO_DATA = ("weak_chosen", "plain")  # PipelineConfig.wspo_data
CD_METHODS = frozenset({"cong_s", "cong", "cong_filtered"})  # trained on CD samples: the job's pairs
PAIRS_METHODS = frozenset({"cong_s", "cong"})  # what reviewed pairs (PipelineConfig.pairs) can train
LABELS = {
    "strong_base": "Strong (untrained)",
    "weak_sft": "WeakSFT",
    "wspo": "WSPO",
    "auxconf": "AuxConf",
    "cong_s": "ConG-S",
    "cong": "ConG",
    "weak_post": "Weak aligned (pi_post)",
    "cong_filtered": "ConG + implicit-reward filter",
    "best_of_n": "Best-of-N (implicit reward)",
    "ceiling": "Ceiling (gold best-of-k)",
    "weak_sft_1ep": "WeakSFT (1 epoch)",
}
_PATH_FIELDS = ("weak_base", "weak_aligned", "strong", "train_prompts", "eval_prompts", "output_dir", "judge")
JUDGE_REFERENCE = "weak_sft"  # the method a pairwise judge compares every other method with (its evaluation samples)


def judge_problem(methods: list[str]) -> str | None:
    """Why a pairwise judge (PipelineConfig.judge) has nothing to compare in these methods, or None."""
    if JUDGE_REFERENCE not in methods or len(methods) < 2:
        return (
            f"the judge compares each method's answers with {JUDGE_REFERENCE}'s: run {JUDGE_REFERENCE} and at least "
            "one other method (kind=cong's methods)"
        )
    return None


_STAGE_FIELDS = ("weak_align", "generate", "sft", "self_sample", "dpo", "wspo", "auxconf", "evaluate")


@dataclass(kw_only=True)
class PipelineConfig:
    weak_base: str = field(metadata={"internal": True, "help": "pi_pre: the weak base model's folder."})
    strong: str = field(metadata={"internal": True, "help": "The strong model's folder (trained by every method)."})
    train_prompts: str = field(
        metadata={"internal": True, "help": "Prompt JSONL for weak alignment, generation and training."}
    )
    eval_prompts: str = field(metadata={"internal": True, "help": "Held-out prompt JSONL for evaluation."})
    gold: str = field(
        metadata={"internal": True, "help": "Registered gold reward name, e.g. 'toy:review' (python -m ml golds)."}
    )
    output_dir: str = field(metadata={"internal": True, "help": "Run folder; each stage gets a subfolder."})
    eval_gold: str = field(
        default="",
        metadata={
            "internal": True,
            "help": "Gold reward of the evaluations when it differs from gold (which labels weak alignment's "
            "samples); empty = gold. A registered name or rm:<reward model folder>.",
        },
    )
    weak_aligned: str = field(
        default="",
        metadata={
            "internal": True,
            "help": "pi_post folder. Empty: make it first by DPO of weak_base on gold-labelled samples.",
        },
    )
    alpha: float = field(default=0.4, metadata={"help": "CD weight of pi_post (reference 0.4)."})
    methods: list[str] = field(
        default_factory=lambda: list(DEFAULT_METHODS),
        metadata={
            "help": f"Which methods to train and evaluate, any of: {', '.join(METHODS)} (default: all but "
            "cong_filtered, ConG's DPO on only the pairs whose chosen has the higher implicit reward)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed for every stage."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N training prompts."})
    max_eval_prompts: int | None = field(default=None, metadata={"help": "Use only the first N eval prompts."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest generated response (all stages)."})
    train_max_steps: int = field(
        default=-1,
        metadata={"help": "Cap every training stage at this many steps (-1 = epochs as configured); for smoke runs."},
    )
    lora_r: int = field(default=0, metadata={"help": "LoRA rank for strong-model training (0 = full fine-tune)."})
    use_chat_template: bool = field(default=True, metadata={"help": "Use chat templates where tokenizers have one."})
    plain: bool = plain_field()
    wspo_data: str = field(
        default="weak_chosen",
        metadata={
            "help": "What WSPO trains on: 'weak_chosen' = the chosen side of the weak preference data pi_post was "
            "aligned on (the reference's; used when pi_post was made by weak_align, else plain samples, logged), "
            "'plain' = plain pi_post samples."
        },
    )
    best_of_n_samples: int = field(
        default=2,
        metadata={
            "help": "best_of_n: plain pi_post samples per prompt, the best by implicit reward trains the strong model "
            "(2 costs what CD costs: two forwards per token)."
        },
    )
    ceiling_samples: int = field(
        default=4, metadata={"help": "ceiling: plain pi_post samples per prompt, the best by the evaluation gold."}
    )
    pairs: str = field(
        default="",
        metadata={
            "internal": True,
            "help": "Reviewed preference JSONL (prompt/chosen/rejected) that replaces the weak pair's generation: "
            "ConG-S is SFT on its chosen side, ConG then DPO on its pairs (a train job's pairs_from).",
        },
    )
    judge: str = field(
        default="",
        metadata={
            "internal": True,
            "help": f"Folder of a causal LM that judges each method's evaluation answers against {JUDGE_REFERENCE}'s, "
            "both orders (ml.judge.pairwise); empty = no judge.",
        },
    )
    device: str | None = field(
        default=None, metadata={"internal": True, "help": "'cpu', 'cuda'...; None = CUDA when present."}
    )
    distributed: str = field(
        default=DEFAULT_MODE,
        metadata={
            "internal": True,
            "help": "How a training stage on several processes shares the model (ml.distributed).",
        },
    )
    # Per-stage overrides: dicts of that stage config's fields (see docs/ML.md).
    weak_align: dict[str, Any] = field(default_factory=dict, metadata={"help": "WeakAlignConfig overrides."})
    generate: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "CDConfig overrides for cd_generate and plain_generate (temperature, top_p, batch_size, ...)."
        },
    )
    sft: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "SFTStageConfig overrides (ConG-S and WeakSFT)."}
    )
    self_sample: dict[str, Any] = field(default_factory=dict, metadata={"help": "SelfSampleConfig overrides."})
    dpo: dict[str, Any] = field(default_factory=dict, metadata={"help": "DPOStageConfig overrides (ConG's DPO)."})
    wspo: dict[str, Any] = field(default_factory=dict, metadata={"help": "WSPOConfig overrides."})
    auxconf: dict[str, Any] = field(default_factory=dict, metadata={"help": "AuxConfConfig overrides."})
    evaluate: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "EvaluateConfig overrides (n_samples, ...)."}
    )

    def __post_init__(self) -> None:
        for name in ("weak_base", "strong", "train_prompts", "eval_prompts", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required")
        if not (self.gold or self.eval_gold):  # weak alignment, when it runs, needs gold itself (WeakAlignConfig)
            raise ValueError("gold is required")
        if isinstance(self.methods, str):
            self.methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        if self.wspo_data not in WSPO_DATA:
            raise ValueError(f"wspo_data must be one of {', '.join(WSPO_DATA)}, got {self.wspo_data!r}")
        if self.best_of_n_samples < 1 or self.ceiling_samples < 1:
            raise ValueError("best_of_n_samples and ceiling_samples must be >= 1")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (got {self.alpha})")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        for name in _STAGE_FIELDS:
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a mapping of that stage's settings")
        if self.pairs and not set(self.methods) <= PAIRS_METHODS:
            raise ValueError(
                f"training on reviewed pairs runs {' and '.join(sorted(PAIRS_METHODS))} only (SFT on the chosen "
                f"side, then DPO on the pairs); {', '.join(sorted(set(self.methods) - PAIRS_METHODS))} sample the "
                "weak pair instead"
            )
        if self.judge and (why := judge_problem(self.methods)):
            raise ValueError(why)
        self._check_stage_keys()

    def _check_stage_keys(self) -> None:
        """Every per-stage key is a setting of that stage's config class (files, folders and devices are the
        pipeline's to wire): a typo fails here, naming stage.key, not as a TypeError stages later."""
        from dataclasses import fields as dc_fields

        from ml.spec import _classes, is_internal

        classes = _classes()
        cls_of = {"generate": classes["cd"], **{n: classes[n] for n in _STAGE_FIELDS if n != "generate"}}
        for name in _STAGE_FIELDS:
            known = {f.name for f in dc_fields(cls_of[name]) if not is_internal(f)}
            unknown = sorted(set(getattr(self, name)) - known)
            if unknown:
                raise ValueError(
                    f"unknown {name} setting(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
                    f"known: {', '.join(sorted(known))} (files, folders and the device are set at the top level)"
                )

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: str | Path | None = None) -> PipelineConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown pipeline setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        data = dict(data)
        if base_dir is not None:
            for k in _PATH_FIELDS:
                if data.get(k) and not Path(str(data[k])).is_absolute():
                    data[k] = str((Path(base_dir) / str(data[k])).resolve())
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineConfig:
        """Load a YAML config; relative paths in it are relative to the YAML file's folder."""
        import yaml

        path = Path(path)
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the top level must be a mapping of settings")
        return cls.from_dict(data, base_dir=path.parent)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
