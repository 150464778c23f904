"""Compiled contrastive decoding: static KV caches, per-row positions, refilled rows, torch.compile.

The eager loop (ml.contrastive) keeps a DynamicCache per model and drops finished rows. This path keeps,
per model, one preallocated K/V tensor per layer of shape [slots, kv_heads, width, head_dim] and gives
every slot (row) its own length: a decode step writes each row's new key/value at that row's own column
and attends through a per-row mask, so rows of different lengths share one fixed-shape step. A finished row
is therefore refilled with the next prompt (continuous batching) instead of idling until the batch ends:
its prompt is prefilled by the eager code (a DynamicCache, one batch of all the rows refilled at that
moment) and copied into columns [0, w) of its slot, its mask and position restart, and the shared step goes
on. Prompts are taken longest first, so a refill never needs a wider prompt area than the first fill.

Two functions are compiled (torch.compile, default inductor on CPU, CUDA graphs via "reduce-overhead"
on CUDA): the two model forwards of a step (reused for every config on the same models and shapes) and
``processed_scores`` of ml.contrastive (the CD score + processors, the very function the eager loop calls,
so the two paths cannot drift; it recompiles per distinct alpha/penalty/... up to dynamo's limit). Token
choice (``pick_next``), EOS checks and refills run eagerly. Compiled graphs, caches and buffers live in an
engine kept per process (up to ``MAX_ENGINES``, all for the last pair of models used; ``clear_engines``
frees them) and keyed by the models, slots and cache width (rounded up to ``WIDTH_BUCKET``), so later calls
in the same worker reuse them; the time the first calls of an engine (and of a new config) take is reported
as the metric ``cd_compile_seconds``.

Greedy output equals the eager path's. Sampling is reproducible (one generator per call, seeded with
``batch_seed(seed, 0)``) but draws differently from the eager loop, whose batches each seed their own.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ml.cd_config import CDConfig
from ml.contrastive import (
    STAGE,
    Generation,
    _finalize,
    _Processors,
    _Row,
    _Stepper,
    batch_seed,
    context_limit,
    model_vocab_size,
    pick_next,
    processed_scores,
)
from ml.modeling import pad_batch
from ml.reporter import Reporter, or_null

SUPPORTED_ATTENTION = ("sdpa", "eager")
WIDTH_BUCKET = 64  # cache widths round up to this: calls with similar prompt lengths share one engine and graph
MAX_ENGINES = 2  # engines (caches + compiled graphs) kept for the current models; the oldest is dropped beyond it
DEFAULT = "default"  # backend/mode sentinel: compile_settings(device) decides


def compile_settings(device: torch.device) -> tuple[str, str | None]:
    """(backend, mode): inductor; on CUDA with CUDA graphs, since a small-batch decode step is launch-bound."""
    return "inductor", ("reduce-overhead" if device.type == "cuda" else None)


def unsupported_reason(model: Any) -> str | None:
    """Why this model cannot run the static-cache step, or None. The step hands the model a 4D mask and
    a cache whose layers all attend over the full width, which sliding-window/linear layers would not do."""
    cfg = model.config
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    if impl not in SUPPORTED_ATTENTION:
        return f"attention implementation {impl!r} (supported: {', '.join(SUPPORTED_ATTENTION)})"
    if getattr(cfg, "is_encoder_decoder", False) or getattr(cfg, "add_cross_attention", False):
        return "an encoder-decoder model"
    if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or ()):
        return "sliding-window or linear attention layers"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return "a sliding attention window"
    return None


def use_compiled(mode: str, aligned: Any, base: Any, reporter: Reporter | None = None) -> bool:
    """CDConfig.compile -> whether contrastive_generate takes this path. 'auto' is a fixed rule, not a
    measurement: compiled on CUDA (launch-bound steps, where CUDA graphs pay), eager elsewhere (on CPU the
    compile time outweighs the gain for most jobs; docs/BENCHMARKS.md, "Compiled CD")."""
    if mode == "off":
        return False
    reasons = [r for r in (unsupported_reason(aligned), unsupported_reason(base)) if r]
    if mode == "on":
        if reasons:
            raise ValueError(f"compile='on' cannot compile these models: {reasons[0]}; use compile='off' or 'auto'")
        return True
    if next(aligned.parameters()).device.type != "cuda":
        return False
    if reasons:
        or_null(reporter).log(f"{STAGE}: compile=auto uses the eager loop: {reasons[0]}")
        return False
    return True


class _SlotLayer(CacheLayerMixin):  # type: ignore[no-untyped-call]  # transformers: untyped __init_subclass__
    """One layer's static K/V, [slots, kv_heads, width, head_dim]. A decode step writes each row's new key at
    that row's own column (``cols``, shared with the engine), so rows of different lengths share one tensor;
    the engine's 4D mask says which columns each row attends to."""

    is_compileable = True
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, cols: torch.Tensor) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.keys, self.values, self.cols = keys, values, cols
        self.device = keys.device
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Allocated up front by the engine."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.keys is not None and self.values is not None
        b, h, width, _ = self.keys.shape
        # Row r, head j goes to flat row (r * h + j) * width + cols[r] of the [b * h * width, head_dim] view.
        # index_copy_ rather than scatter_: inductor updates the buffer in place for it, while it copied the
        # whole cache for every scatter_ (measured: 2.5 ms of a 4 ms toy step).
        at = (torch.arange(b * h, device=self.keys.device).view(b, h) * width + self.cols.unsqueeze(1)).view(-1)
        self.keys.view(b * h * width, -1).index_copy_(0, at, key_states.reshape(b * h, -1))
        self.values.view(b * h * width, -1).index_copy_(0, at, value_states.reshape(b * h, -1))
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        assert self.keys is not None
        return int(self.keys.shape[2]), 0

    def get_seq_length(self) -> int:
        return 0  # no single length: every row has its own; the step always passes position ids

    def get_max_length(self) -> int:
        assert self.keys is not None
        return int(self.keys.shape[2])


class _Engine:
    """Static caches, per-row state and compiled step functions for one (models, slots, width); reused."""

    def __init__(self, aligned: Any, base: Any, slots: int, width: int, backend: str | None, mode: str | None):
        self.models = (aligned, base)
        self.slots, self.width, self.backend, self.mode = slots, width, backend, mode
        self.steppers = (_Stepper(aligned), _Stepper(base))
        dev = self.device = next(aligned.parameters()).device
        limits = [x for x in (context_limit(aligned), context_limit(base)) if x]
        self.max_pos = min([width, *limits]) - 1  # dead rows keep stepping: keep their positions embeddable
        self.cols = torch.zeros(slots, dtype=torch.long, device=dev)  # next cache column, per row
        self.pos = torch.zeros(slots, dtype=torch.long, device=dev)  # next position id, per row
        self.tok = torch.zeros(slots, dtype=torch.long, device=dev)  # the token each row feeds next
        self.mask = torch.zeros((slots, width), dtype=torch.bool, device=dev)  # the columns each row attends to
        with torch.inference_mode():
            self.caches = tuple(self._static_cache(s) for s in self.steppers)
        self.additive = [m.config._attn_implementation == "eager" for m in (aligned, base)]
        if dev.type == "cuda":  # fixed addresses, so CUDA graphs can replay over in-place updated state
            for t in (self.cols, self.pos, self.tok, self.mask, *self._buffers()):
                torch._dynamo.mark_static_address(t)
        if backend is None:  # the same static-cache logic, uncompiled (tests, debugging)
            self.forward: Any = self._forward
            self.score: Any = processed_scores
        else:
            self.forward = torch.compile(self._forward, backend=backend, mode=mode, dynamic=False)
            self.score = torch.compile(processed_scores, backend=backend, mode=mode, dynamic=False)
        self.compile_seconds = 0.0
        self.warm = False
        self.warm_logits: tuple[torch.Tensor, torch.Tensor] | None = None  # for the score's warm-up call

    def _static_cache(self, stepper: _Stepper) -> Any:
        one = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        stepper.prefill(one, torch.ones_like(one), one)  # a one-token probe gives each layer's K/V shape and dtype
        assert stepper.cache is not None
        layers: list[Any] = []
        probe: list[Any] = list(stepper.cache.layers)
        for layer in probe:
            k, v = layer.keys, layer.values
            shape = (self.slots, k.shape[1], self.width)
            keys = torch.zeros((*shape, k.shape[3]), dtype=k.dtype, device=self.device)
            values = torch.zeros((*shape, v.shape[3]), dtype=v.dtype, device=self.device)
            layers.append(_SlotLayer(keys, values, self.cols))
        return Cache(layers=layers)

    def _buffers(self) -> list[torch.Tensor]:
        return [t for c in self.caches for layer in c.layers for t in (layer.keys, layer.values)]

    def matches(self, aligned: Any, base: Any, slots: int, width: int, backend: str | None, mode: str | None) -> bool:
        key = (slots, width, backend, mode, next(aligned.parameters()).device, next(aligned.parameters()).dtype)
        return self.same_models(aligned, base) and key == (
            self.slots,
            self.width,
            self.backend,
            self.mode,
            self.device,
            self.caches[0].layers[0].keys.dtype,
        )

    def same_models(self, aligned: Any, base: Any) -> bool:
        return self.models[0] is aligned and self.models[1] is base

    def _forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One decode step of both models: every row feeds its token at its own column and position."""
        self.mask.scatter_(1, self.cols.unsqueeze(1), True)
        out = []
        for stepper, cache, additive in zip(self.steppers, self.caches, self.additive):
            m4: torch.Tensor = self.mask[:, None, None, :]
            if additive:  # the eager attention adds its mask; sdpa takes booleans
                dtype = cache.layers[0].keys.dtype
                m4 = torch.zeros(m4.shape, dtype=dtype, device=m4.device).masked_fill(~m4, torch.finfo(dtype).min)
            logits = stepper.model(
                input_ids=self.tok.unsqueeze(1),
                attention_mask=m4,
                position_ids=self.pos.unsqueeze(1),
                **{stepper.cache_kw: cache},
                **stepper.extra,
            ).logits[:, -1, :]
            out.append(logits)
        self.cols.add_(1).clamp_(max=self.width - 1)  # only dead rows reach the clamps (live ones fit by size)
        self.pos.add_(1).clamp_(max=self.max_pos)
        return out[0], out[1]

    def step(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.device.type == "cuda" and self.backend is not None:
            torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]  # last step's outputs are used
        la, lb = self.forward()
        return la, lb

    def reset(self) -> None:
        self.mask.zero_()
        self.mask[:, 0] = True  # a row never attends to nothing (sdpa would give NaN)
        self.cols.zero_()
        self.pos.zero_()
        self.tok.zero_()

    def load(self, slots: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> None:
        """Prefill new prompts (left padded, eager DynamicCache) and copy them into their slots' columns [0, w)."""
        w = ids.shape[1]
        for stepper, cache in zip(self.steppers, self.caches):
            assert stepper.cache is not None
            src_layers: list[Any] = list(stepper.cache.layers)
            for src, dst in zip(src_layers, cache.layers):
                dst.keys[slots, :, :w] = src.keys
                dst.values[slots, :, :w] = src.values
        self.mask[slots] = False
        self.mask[slots, :w] = mask.bool()
        self.cols[slots] = w
        self.pos[slots] = pos[:, -1] + 1


_ENGINES: list[_Engine] = []


def clear_engines() -> None:
    """Drop every kept engine (its caches, and its references to the models) to free their memory."""
    _ENGINES.clear()


def _engine_for(
    aligned: Any, base: Any, slots: int, width: int, backend: str | None, mode: str | None
) -> tuple[_Engine, bool]:
    for e in _ENGINES:
        if e.matches(aligned, base, slots, width, backend, mode):
            return e, True
    # Engines hold their models: keeping those of an earlier pair would keep its weights and caches in memory
    # for as long as the worker lives.
    _ENGINES[:] = [e for e in _ENGINES if e.same_models(aligned, base)]
    e = _Engine(aligned, base, slots, width, backend, mode)
    _ENGINES.insert(0, e)
    del _ENGINES[MAX_ENGINES:]
    return e, False


def compiled_generate(
    aligned: Any,
    base: Any,
    tokenizer: Any,
    rows: list[_Row],
    config: CDConfig,
    eos_list: list[int],
    pad_id: int,
    *,
    reporter: Reporter | None = None,
    backend: str | None = DEFAULT,
    mode: str | None = DEFAULT,
    stats: dict[str, Any] | None = None,
) -> list[Generation]:
    """contrastive_generate's compiled path (it checks the models and prepares ``rows`` first). backend=None
    runs the same static-cache loop uncompiled. ``stats``, when given, receives compile_seconds, steps,
    refills (rows loaded after the first fill), slots, width and engine_reused."""
    rep = or_null(reporter)
    if not rows:
        return []
    device = next(aligned.parameters()).device
    if backend == DEFAULT:
        backend, mode = compile_settings(device)
    T, vocab = config.max_new_tokens, model_vocab_size(aligned)
    queue = sorted(rows, key=lambda r: -len(r.ids))  # longest first: refills fit the first fill's prompt area
    slots = min(config.batch_size, len(rows))
    width = -(-(len(queue[0].ids) + T) // WIDTH_BUCKET) * WIDTH_BUCKET
    Wp = width - T  # the prompt area of `seen`; its shape depends only on (slots, width), as the graphs' do
    eng, reused = _engine_for(aligned, base, slots, width, backend, None if backend is None else mode)
    procs, log_rt = _Processors(config), math.log(config.relative_top)
    eos = torch.tensor(eos_list or [-1], dtype=torch.long, device=device)
    eos_set = set(eos_list)
    gen_t: torch.Generator | None = None
    if config.do_sample:
        gen_t = torch.Generator(device=device)
        gen_t.manual_seed(batch_seed(config.seed, 0))

    # Per-row outputs. `seen` holds each row's prompt right-aligned in [0, Wp), then its generated ids from Wp;
    # unused entries are `vocab`, which the repetition penalty ignores (as in the eager loop).
    seen = torch.full((slots, width), vocab, dtype=torch.long, device=device)
    gen = torch.zeros((slots, T), dtype=torch.long, device=device)
    ratios = torch.zeros((slots, T), dtype=torch.float32, device=device)
    gcol = torch.zeros(slots, dtype=torch.long, device=device)  # next generated index, per row
    hit = torch.zeros(slots, dtype=torch.bool, device=device)  # the row has produced an EOS
    rep_from = Wp if config.repetition_penalty_scope == "generated" else 0
    check_every = 1 if device.type == "cpu" else 8  # on GPUs a check is a host sync; do it less often
    row_of: list[_Row | None] = [None] * slots
    count = [0] * slots  # host copy of gcol for live rows (no sync needed to know who reached T)
    out: list[Generation] = []
    every = torch.arange(slots, device=device)
    n_steps = n_refills = nxt = 0

    def scored(la: torch.Tensor, lb: torch.Tensor, s: torch.Tensor, fn: Any) -> tuple[torch.Tensor, torch.Tensor]:
        rep_ids = s[:, rep_from:] if procs.rep is not None else None
        return pick_next(*fn(la, lb, rep_ids, s, procs, config, log_rt), do_sample=config.do_sample, generator=gen_t)

    def record(sl: torch.Tensor, tok: torch.Tensor, ratio: torch.Tensor) -> None:
        idx = gcol[sl]
        c = idx.clamp(max=T - 1)  # only dead rows reach the clamp
        gen[sl, c], ratios[sl, c], seen[sl, c + Wp] = tok, ratio, tok
        hit[sl] = hit[sl] | torch.isin(tok, eos)
        gcol[sl] = idx + 1
        eng.tok[sl] = tok

    def fill(free: list[int], first: bool = False) -> None:
        nonlocal n_refills, nxt
        new, nxt = queue[nxt : nxt + len(free)], nxt + len(free)
        if not new:
            return
        sl = torch.tensor(free[: len(new)], dtype=torch.long, device=device)
        ids, m = pad_batch([r.ids for r in new], pad_id, side="left")
        ids, m = ids.to(device), m.to(device)
        pos = (m.cumsum(-1) - 1).clamp_min(0)
        la, lb = (s.prefill(ids, m, pos) for s in eng.steppers)
        eng.load(sl, ids, m, pos)
        seen[sl] = vocab
        seen[sl, Wp - ids.shape[1] : Wp] = ids.masked_fill(m == 0, vocab)
        gcol[sl], hit[sl] = 0, False
        record(sl, *scored(la, lb, seen[sl], processed_scores))  # prefill logits: eager, k varies
        for s, r in zip(free, new):
            row_of[s], count[s] = r, 1
        n_refills += 0 if first else len(new)

    def harvest() -> list[int]:
        live = [s for s in range(slots) if row_of[s] is not None]
        hits = hit.tolist() if not config.ignore_eos else [False] * slots
        done = [s for s in live if count[s] >= T or hits[s]]
        if done:
            sel = torch.tensor(done, device=device)
            toks_all, lrs_all = gen[sel].tolist(), ratios[sel].tolist()
            for s, toks, lrs in zip(done, toks_all, lrs_all):
                toks, lrs = toks[: count[s]], lrs[: count[s]]
                if not config.ignore_eos:
                    j = next((j for j, t in enumerate(toks) if t in eos_set), None)
                    if j is not None:
                        toks, lrs = toks[: j + 1], lrs[: j + 1]
                row = row_of[s]
                assert row is not None
                out.append(_finalize(row, toks, lrs, tokenizer, config, eos_set))
                row_of[s] = None
        return done

    with torch.inference_mode():
        t0 = time.perf_counter()
        eng.reset()
        if not eng.warm:  # compile (and on CUDA record the graphs) before any real state is loaded
            for _ in range(3 if device.type == "cuda" else 1):
                la0, lb0 = eng.step()
            eng.warm_logits = (la0.clone(), lb0.clone())
            eng.warm, eng.compile_seconds = True, time.perf_counter() - t0
            eng.reset()
        t1 = time.perf_counter()
        assert eng.warm_logits is not None
        for _ in range(3 if device.type == "cuda" and backend is not None else 1):
            eng.score(*eng.warm_logits, seen[:, rep_from:] if procs.rep else None, seen, procs, config, log_rt)
        compile_s = (0.0 if reused else eng.compile_seconds) + time.perf_counter() - t1

        fill(list(range(slots)), first=True)
        reported, since = 0, 0
        while True:
            if since >= check_every or any(row_of[s] is not None and count[s] >= T for s in range(slots)):
                since = 0
                done = harvest()
                while done:  # refilled rows can finish at once (EOS first, or max_new_tokens == 1)
                    fill(done)
                    done = harvest()
                if len(out) - reported >= config.batch_size or len(out) == len(rows):
                    reported = len(out)
                    rep.progress(STAGE, reported, len(rows))
                    if reported < len(rows) and rep.should_stop():
                        rep.log(f"{STAGE}: stopped after {reported} of {len(rows)} prompts")
                        break
            if all(r is None for r in row_of):
                break
            la, lb = eng.step()
            record(every, *scored(la, lb, seen, eng.score))
            for s in range(slots):
                count[s] += 1
            n_steps, since = n_steps + 1, since + 1

    if backend is not None:
        rep.metric("cd_compile_seconds", compile_s)
        rep.log(f"{STAGE}: compiled decode, {compile_s:.1f} s compiling ({'reused' if reused else 'new'} graphs)")
    if stats is not None:
        stats.update(
            compile_seconds=compile_s,
            steps=n_steps,
            refills=n_refills,
            slots=slots,
            width=width,
            engine_reused=reused,
        )
    out.sort(key=lambda g: g.index)
    return out
