"""Runs one playground session inside a worker (the body of jobs.tasks.playground_task): load the model(s), stream
the response with ml.playground, and hand every event to the session's socket(s).

Events, in order (each with ``seq`` 1, 2, ...): ``status`` (loading, then generating), ``delta`` {stream, text} as
tokens come, ``finish`` {stream, text, n_tokens, finish_reason} per stream, then ``done`` {stopped}; or ``error``
{message} in place of what is left. Each is appended to the session's list in Redis first (a socket that
connects late replays it, jobs.playground_consumer) and then sent to the channel group ``playground-<id>``.

Models stay loaded in the worker process for the next session on the same folders; at most one set (a model, or a
weak pair) is held, the previous one is dropped before another loads. (With the default one task per pool child,
CELERY_WORKER_MAX_TASKS_PER_CHILD=1, each session runs in a fresh child and loads again; the cache pays off under
a worker that keeps its processes, e.g. ``--pool solo``.)
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

from jobs.services import playground

log = logging.getLogger(__name__)

_loaded: tuple[tuple[str, str], Any] | None = None  # ((model folder, base folder or ""), (tokenizer, model, base))


def group_name(sid: str) -> str:
    return f"playground-{sid}"


class Publisher:
    """Appends events to the session's list and sends them to its group; one event loop for the whole session,
    so channels_redis keeps one connection pool instead of opening one per token."""

    def __init__(self, sid: str) -> None:
        from channels.layers import get_channel_layer

        self.sid, self.seq = sid, 0
        self.layer = get_channel_layer()
        self.loop = asyncio.new_event_loop()

    def send(self, event: dict[str, Any]) -> None:
        self.seq += 1
        message = {"seq": self.seq, **event}
        playground.session_append(self.sid, message)
        if self.layer is None:
            return
        try:
            self.loop.run_until_complete(
                self.layer.group_send(group_name(self.sid), {"type": "playground.event", "event": message})
            )
        except Exception as exc:  # the list holds it: a socket that reconnects replays it
            log.warning("playground %s: event %s not pushed: %s", self.sid, self.seq, exc)

    def close(self) -> None:
        try:
            close = getattr(self.layer, "close_pools", None)
            if close is not None:
                self.loop.run_until_complete(close())
        finally:
            self.loop.close()


def _load(model_path: str, base_path: str | None) -> tuple[Any, Any, Any]:
    global _loaded
    key = (model_path, base_path or "")
    if _loaded is not None and _loaded[0] == key:
        return _loaded[1]  # type: ignore[no-any-return]
    if _loaded is not None:  # one set at a time: free the previous before loading the next
        _loaded = None
        gc.collect()
        _empty_cuda_cache()
    from ml.modeling import check_same_vocab, load_causal_lm, load_tokenizer, pick_device

    dev = pick_device(None)
    tok = load_tokenizer(model_path)
    base = None
    if base_path:
        check_same_vocab(tok, load_tokenizer(base_path))
        base = load_causal_lm(base_path, device=dev)
    model = load_causal_lm(model_path, device=dev)
    _loaded = (key, (tok, model, base))
    return tok, model, base


def _empty_cuda_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def run_session(sid: str) -> str:
    """Stream session ``sid``; returns what happened (for the worker log)."""
    from celery.exceptions import SoftTimeLimitExceeded

    session = playground.session_get(sid)
    if session is None:
        return "expired"
    pub = Publisher(sid)
    stopped = False
    try:
        if playground.stop_requested(sid):
            pub.send({"type": "done", "stopped": True})
            return "stopped before it started"
        pub.send({"type": "status", "message": "loading the model" + ("s" if session["base"] else "")})
        tok, model, base = _load(session["model"], session["base"])
        events = _events(session, tok, model, base)
        pub.send({"type": "status", "message": "generating", "streams": session["streams"]})
        try:
            for ev in events:
                pub.send(ev.as_dict())
                if playground.stop_requested(sid):
                    stopped = True
                    break
        finally:
            events.close()
        pub.send({"type": "done", "stopped": stopped})
        return "stopped" if stopped else "done"
    except SoftTimeLimitExceeded:
        pub.send({"type": "error", "message": f"stopped at the playground's time limit ({playground.TIME_LIMIT} s)"})
        return "time limit"
    except Exception as exc:  # bad settings for this model (a prompt too long for it), a missing folder ...
        log.exception("playground session %s failed", sid)
        pub.send({"type": "error", "message": f"{type(exc).__name__}: {exc}"})
        return "failed"
    finally:
        playground.session_end(sid=sid, user_id=session["user"])
        pub.close()


def _events(session: dict[str, Any], tok: Any, model: Any, base: Any) -> Any:
    from ml.cd_config import CDConfig
    from ml.playground import side_by_side, stream

    config = CDConfig(**session["config"], batch_size=1)
    prompt = session["prompt"]
    if session["mode"] == playground.PAIR:
        return side_by_side(aligned=model, base=base, tokenizer=tok, prompt=prompt, config=config)
    return stream(model=model, tokenizer=tok, prompt=prompt, config=config, mode="model")
