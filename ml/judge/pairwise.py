"""A pairwise LLM judge: a local causal LM says which of two responses better answers an instruction.

For each (instruction, ours, reference) the judge reads one judging prompt (``judge_prompt``) and its next-token
logits for the answer tokens "A" and "B" (no sampling: p(A) is the softmax over the two). Each pair is judged in
both orders, ours as A then ours as B, and the two preferences for ours are averaged, so a judge that favours a
position (most small ones do) contributes nothing: one that always says "A" gives exactly 0.5 on every pair.

From the per-pair preferences p_i in [0, 1] come:

- the **win rate**, mean p_i, with a Student-t 95% interval over prompts (a prompt's several samples are one
  observation; ml.stats.clustered_mean_ci);
- the **length-controlled win rate** (AlpacaEval 2, Dubois et al. 2024, arXiv:2404.04475): a logistic GLM of p_i
  on a model term (the intercept), tanh(Δlen_i / std(Δlen)) with Δlen = len(ours) - len(reference) in characters,
  and, when the caller has one, an instruction-difficulty term; the LC win rate is the fitted model's mean predicted
  preference with the length term set to 0: "what would the judge say if both answers were as long". Its interval
  is a percentile bootstrap over prompts, refitting each resample.

alpaca_eval itself is not a dependency: it pulls in openai, pandas, scikit-learn, scipy and patsy, and its GLM
downloads AlpacaEval's own instruction difficulties and gamed-baseline annotations from the Hugging Face Hub at fit
time, which fit its 805 instructions and not ours (and the workers are offline). The GLM here is the same model
fitted by Newton's method with a light L2 penalty (the C=100 of alpaca_eval's non-CV fit), which keeps the fit finite
when every preference is 0 or 1. The difficulty term is left out unless given: AlpacaEval estimates it from hundreds
of models on each instruction; one comparison per prompt cannot.

A toy judge's verdicts mean nothing (a random tiny model reads unknown words); the tests check the plumbing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ml.stats import clustered_mean_ci

ANSWERS = ("A", "B")
DEFAULT_BATCH_SIZE = 8  # judging prompts per forward pass: each holds an instruction and two responses
DEFAULT_BOOTSTRAP = 200  # resamples for the LC interval: each refits a 2-3 parameter GLM, milliseconds
MAX_BOOTSTRAP = 10_000
# The L2 penalty on the GLM's coefficients: alpaca_eval's LogisticRegression(C=100) without cross-validation.
GLM_L2 = 1.0 / 100.0
_SLACK = 8  # tokens kept free when responses are cut to fit the judge's context (retokenising at the joins)

JUDGE_TEMPLATE = (
    "Compare two responses to the same instruction.\n\n"
    "Instruction:\n{instruction}\n\n"
    "Response A:\n{a}\n\n"
    "Response B:\n{b}\n\n"
    "Which response better answers the instruction? Answer with A or B."
)


def judge_prompt(instruction: str, a: str, b: str) -> str:
    return JUDGE_TEMPLATE.format(instruction=instruction, a=a, b=b)


def answer_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The token ids that mean "A" and those that mean "B": each letter alone and after a space (a chat template's
    assistant turn starts with "A", a plain "Answer:" with " A"), wherever that is one known token. ValueError when a
    letter has none of its own: the judge could not say it."""
    unk = getattr(tokenizer, "unk_token_id", None)
    found: list[list[int]] = []
    for letter in ANSWERS:
        ids = set()
        for text in (letter, f" {letter}"):
            enc = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(enc) == 1 and enc[0] != unk:
                ids.add(int(enc[0]))
        found.append(sorted(ids))
    a, b = found
    if not a or not b or set(a) & set(b):
        raise ValueError(
            "the judge's tokenizer has no token of its own for the answers 'A' and 'B'; a pairwise judge must be able "
            "to say either (pick a causal LM whose vocabulary has them)"
        )
    return a, b


def check_judge_folder(path: str | Path) -> str | None:
    """Why the HF folder at ``path`` cannot judge, or None: its tokenizer must have the answer tokens. Reads the
    tokenizer only (the web app asks at submit); the model is loaded when the judging starts."""
    from ml.modeling import load_tokenizer

    try:
        answer_ids(load_tokenizer(path))
    except ValueError as exc:
        return str(exc)
    except Exception as exc:  # no usable tokenizer in the folder
        return f"could not load the tokenizer in {path}: {exc}"
    return None


def _fair_shares(lengths: Sequence[int], room: int) -> list[int]:
    """Token caps for pieces that must share ``room``: short pieces keep everything, the long ones split the rest
    evenly. Depends only on the lengths, so swapping the two responses swaps their caps (both orders cut alike)."""
    caps = [0] * len(lengths)
    left, todo = room, sorted(range(len(lengths)), key=lambda i: lengths[i])
    while todo:
        share = left // len(todo)
        i = todo.pop(0)
        caps[i] = min(lengths[i], share)
        left -= caps[i]
    return caps


class PairwiseJudge:
    """A local causal LM (``AutoModelForCausalLM``, trust_remote_code off) that answers "A" or "B", batched."""

    def __init__(
        self,
        path: str | Path,
        *,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        use_chat_template: bool = True,
    ) -> None:
        from ml.modeling import context_of, load_causal_lm, load_tokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.path, self.batch_size = str(path), batch_size
        self.tokenizer = load_tokenizer(path)
        self.a_ids, self.b_ids = answer_ids(self.tokenizer)
        self.chat = bool(use_chat_template and getattr(self.tokenizer, "chat_template", None))
        self.model = load_causal_lm(path, device=device, dtype=dtype)
        self.limit = context_of(self.model.config)
        self.truncated = 0  # judging prompts whose texts were cut to fit the context

    def _render(self, instruction: str, a: str, b: str) -> list[int]:
        from ml.cd_prompts import encode_prompt

        text = judge_prompt(instruction, a, b)
        return encode_prompt(self.tokenizer, text if self.chat else f"{text}\nAnswer:", use_chat_template=self.chat)

    def encode(self, instruction: str, a: str, b: str) -> list[int]:
        """The judging prompt's ids; when too long for the judge, the three texts are cut (fair shares of what the
        template leaves) rather than the prompt's start, which would lose the instruction."""
        ids = self._render(instruction, a, b)
        if self.limit is None or len(ids) <= self.limit:
            return ids
        self.truncated += 1
        from ml.cd_prompts import encode_response

        pieces = [encode_response(self.tokenizer, t) for t in (instruction, a, b)]
        room = max(self.limit - len(self._render("", "", "")) - _SLACK, len(pieces))
        caps = _fair_shares([len(p) for p in pieces], room)
        cut = [self.tokenizer.decode(p[:c]) for p, c in zip(pieces, caps)]
        return self._render(*cut)[-self.limit :]  # the answer cue is at the end: it must stay

    def prob_first(
        self, triples: Sequence[tuple[str, str, str]], progress: Callable[[int, int], bool] | None = None
    ) -> list[float] | None:
        """p("A") for each (instruction, A, B); None when ``progress`` (called after each batch with done, total)
        returns False: the caller asked to stop."""
        import torch

        from ml.modeling import pad_batch

        seqs = [self.encode(*t) for t in triples]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = next(self.model.parameters()).device
        out = [0.5] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))  # similar lengths share a batch: less padding
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                ids, mask = pad_batch([seqs[i] for i in idx], int(pad), side="left")
                pos = (mask.cumsum(-1) - 1).clamp_min(0)
                logits = self.model(
                    input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device)
                ).logits[:, -1, :]
                logits = logits.float()
                # Several ids can spell one letter (with and without a space): the letter's mass is their sum.
                la = torch.logsumexp(logits[:, self.a_ids], dim=-1)
                lb = torch.logsumexp(logits[:, self.b_ids], dim=-1)
                for i, p in zip(idx, torch.sigmoid(la - lb).tolist()):
                    out[i] = float(p)
                if progress is not None and not progress(min(s + self.batch_size, len(order)), len(order)):
                    return None
        return out

    def preferences(
        self,
        prompts: Sequence[str],
        ours: Sequence[str],
        refs: Sequence[str],
        progress: Callable[[int, int], bool] | None = None,
    ) -> list[float] | None:
        """The judge's preference for ours over the reference, per pair, averaged over both orders."""
        n = len(prompts)
        if not (len(ours) == len(refs) == n):
            raise ValueError(f"{n} prompts, {len(ours)} responses and {len(refs)} references; they must pair up")
        first = [(p, o, r) for p, o, r in zip(prompts, ours, refs)]
        second = [(p, r, o) for p, o, r in zip(prompts, ours, refs)]
        probs = self.prob_first(first + second, progress)
        if probs is None:
            return None
        # 0.5 * (p(A | ours first) + p(B | ours second)), written so that equal p(A) in both orders is exactly 0.5.
        return [0.5 + 0.5 * (probs[i] - probs[n + i]) for i in range(n)]

    def close(self) -> None:
        """Free the model (the stage that loaded it is done with it)."""
        import torch

        cuda = next(self.model.parameters()).is_cuda
        del self.model
        if cuda:
            torch.cuda.empty_cache()


# --- the GLM of AlpacaEval 2's length-controlled win rate ------------------------------------------------------
def _logistic(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.exp(-np.logaddexp(0.0, -x))  # 1 / (1 + e^-x) without overflow
    return out


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = GLM_L2, iters: int = 100) -> np.ndarray:
    """Coefficients of a logistic regression of targets ``y`` in [0, 1] (probabilities, not only labels: the
    cross-entropy is the same convex loss) on ``X``, with penalty l2/2 * |beta|^2, by Newton's method."""
    beta = np.zeros(X.shape[1])
    eye = l2 * np.eye(X.shape[1])
    for _ in range(iters):
        mu = _logistic(X @ beta)
        grad = X.T @ (mu - y) + l2 * beta
        hess = (X * (mu * (1.0 - mu))[:, None]).T @ X + eye
        step = np.linalg.solve(hess, grad)
        beta = beta - step
        if float(np.max(np.abs(step))) < 1e-10:
            break
    return beta


def _length_feature(delta_len: np.ndarray) -> tuple[np.ndarray, float]:
    std = float(np.std(delta_len, ddof=1)) if len(delta_len) > 1 else 0.0
    # All differences equal: the length cannot explain anything apart from the model term; the feature is 0.
    return (np.tanh(delta_len / std) if std > 0 else np.zeros_like(delta_len)), std


def lc_win_rate(
    prefs: Sequence[float],
    len_ours: Sequence[float],
    len_ref: Sequence[float],
    difficulty: Sequence[float] | None = None,
) -> dict[str, Any]:
    """AlpacaEval 2's length-controlled win rate of one model against its reference: the GLM p ~ model + tanh(Δlen /
    std) [+ difficulty] fitted to the preferences, then its mean prediction with the length term at 0. Returns
    {"lc_win_rate", "model", "length", "difficulty" (coefficients), "length_std"}."""
    y = np.clip(np.asarray(prefs, dtype=np.float64), 0.0, 1.0)
    if len(y) == 0:
        nan = float("nan")
        return {"lc_win_rate": nan, "model": nan, "length": nan, "difficulty": None, "length_std": nan}
    z, std = _length_feature(np.asarray(len_ours, dtype=np.float64) - np.asarray(len_ref, dtype=np.float64))
    cols = [np.ones_like(y), z]
    if difficulty is not None:
        cols.append(np.asarray(difficulty, dtype=np.float64))
    beta = fit_logistic(np.stack(cols, axis=1), y)
    eta = beta[0] + (beta[2] * cols[2] if difficulty is not None else 0.0)
    return {
        "lc_win_rate": float(np.mean(_logistic(np.broadcast_to(eta, y.shape)))),
        "model": float(beta[0]),
        "length": float(beta[1]),
        "difficulty": float(beta[2]) if difficulty is not None else None,
        "length_std": std,
    }


def lc_bootstrap(
    prefs: Sequence[float],
    len_ours: Sequence[float],
    len_ref: Sequence[float],
    clusters: Sequence[Any],
    *,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    difficulty: Sequence[float] | None = None,
) -> tuple[float, float]:
    """95% percentile interval of the LC win rate, resampling clusters (prompts: their samples together) with
    replacement and refitting each time; widened to hold the point estimate. The point itself with n_boot = 0 or one
    cluster."""
    point = lc_win_rate(prefs, len_ours, len_ref, difficulty)["lc_win_rate"]
    groups: dict[Any, list[int]] = {}
    for i, c in enumerate(clusters):
        groups.setdefault(c, []).append(i)
    keys = list(groups)
    if n_boot <= 0 or len(keys) < 2 or not math.isfinite(point):
        return point, point
    rng = np.random.default_rng(seed)
    p, lo_, lr_ = (np.asarray(v, dtype=np.float64) for v in (prefs, len_ours, len_ref))
    d = np.asarray(difficulty, dtype=np.float64) if difficulty is not None else None
    stats = []
    for _ in range(n_boot):
        idx = np.concatenate([groups[keys[k]] for k in rng.integers(0, len(keys), size=len(keys))])
        stats.append(lc_win_rate(p[idx], lo_[idx], lr_[idx], d[idx] if d is not None else None)["lc_win_rate"])
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return min(float(lo), point), max(float(hi), point)


def win_summary(
    prefs: Sequence[float],
    len_ours: Sequence[float],
    len_ref: Sequence[float],
    clusters: Sequence[Any],
    *,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """The judge's metrics from per-pair preferences: win rate (t interval over prompts, inside [0, 1]) and LC win
    rate (bootstrap interval), as the evaluate stage reports them."""
    w = clustered_mean_ci(prefs, clusters)
    lc = lc_win_rate(prefs, len_ours, len_ref)
    lo, hi = lc_bootstrap(prefs, len_ours, len_ref, clusters, n_boot=n_boot, seed=seed)
    return {
        "judge_win_rate": w.mean,
        "judge_win_ci": [max(0.0, w.lo), min(1.0, w.hi)] if w.n else [w.lo, w.hi],
        "judge_lc_win_rate": lc["lc_win_rate"],
        "judge_lc_win_ci": [lo, hi],
        "judge_n": len(prefs),
        "judge_glm": {k: lc[k] for k in ("model", "length", "length_std")} | {"bootstrap": n_boot},
    }


# --- the evaluate stage's hook ---------------------------------------------------------------------------------
class JudgeSettings(Protocol):
    """What the hook reads from ml.stages.evaluate.EvaluateConfig."""

    judge: str
    judge_batch_size: int
    judge_bootstrap: int
    seed: int
    device: str | None
    use_chat_template: bool
    name: str


def judge_against(
    config: JudgeSettings,
    rows: list[dict[str, Any]],
    reference: list[dict[str, Any]],
    reporter: Any,
    key: Callable[[dict[str, Any]], Any],
) -> dict[str, Any] | None:
    """Judge each row's response against the reference row with the same ``key`` (prompt, sample number), set each
    judged row's ``judge_pref``, and return the judge's metrics (None when the reporter asked to stop)."""
    from ml.gold import release_gold_models

    ref_of = {key(r): str(r["response"]) for r in reference}
    pairs = [r for r in rows if key(r) in ref_of]
    if not pairs:  # nothing pairs up: no model to load, no numbers to give
        return {**win_summary([], [], [], []), "judge_name": Path(config.judge).name, "judge_truncated": 0}
    release_gold_models()  # a reward-model gold has scored already: its memory is the judge's now
    reporter.log(f"evaluate/{config.name}: judging {len(pairs)} responses against the reference, both orders")
    judge = PairwiseJudge(
        config.judge,
        device=config.device,
        batch_size=config.judge_batch_size,
        use_chat_template=config.use_chat_template,
    )
    try:

        def progress(done: int, total: int) -> bool:
            reporter.progress(f"evaluate/{config.name}/judge", done, total)
            return not reporter.should_stop()

        prefs = judge.preferences(
            [str(r["prompt"]) for r in pairs],
            [str(r["response"]) for r in pairs],
            [ref_of[key(r)] for r in pairs],
            progress,
        )
    finally:
        judge.close()
    if prefs is None:
        return None
    for r, p in zip(pairs, prefs):
        r["judge_pref"] = p
    out = win_summary(
        prefs,
        [len(str(r["response"])) for r in pairs],
        [len(ref_of[key(r)]) for r in pairs],
        [r.get("index", r["prompt"]) for r in pairs],
        n_boot=config.judge_bootstrap,
        seed=config.seed,
    )
    return {**out, "judge_name": Path(config.judge).name, "judge_truncated": judge.truncated}
