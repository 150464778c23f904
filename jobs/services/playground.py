"""The playground's rules: what of a finished job one may chat with, the decoding knobs and their bounds, the
sessions (one running per user, a few started per minute) and the stop flag. docs/UI.md "Playground", docs/API.md.

A session is started by the page (jobs.playground_views.playground_start): its settings are checked here, stored
in Redis under a random id for ``SESSION_TTL`` seconds, and a short task (jobs.tasks.playground_task) is sent to
the generation queue. That task (jobs.playground_runner) streams the events into the session's channel group AND
appends them to the session's list in Redis, so a socket that connects after the first tokens (the page connects
once the start answered) replays what it missed (jobs.playground_consumer).

State lives in the broker's Redis (jobs.workers' client), keys ``congweb:playground:...``:
``session:<id>`` the settings (JSON), ``events:<id>`` the events so far, ``stop:<id>`` the stop flag,
``active:<user>`` the user's running session, ``rate:<user>`` sessions started this minute.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import fields
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

from jobs import selectors
from jobs.models import Job
from jobs.services._common import _err, log
from jobs.services.artifacts import artifact_target
from ml.cd_config import CDConfig

TASK = "jobs.tasks.playground_task"  # declared under this name in jobs.tasks; sent by name (no import circle)
PREFIX = "congweb:playground:"
SESSION_TTL = 900  # seconds a session's settings and events are kept (its task may wait behind a job)
ACTIVE_TTL = 900  # the longest a user's session blocks the next one if its task never ends it
TIME_LIMIT = 600  # seconds a session's task may run (soft limit; the hard one is 30 s later)
PER_MINUTE = 12  # sessions one user may start per minute
PROMPT_MAX_CHARS = 8000
PAIR = "pair"  # the target naming the job's weak pair: CD beside plain pi_post
PAIR_LABEL = "weak pair (CD vs plain pi_post)"
PAIR_STREAMS = ("cd", "plain")  # ml.playground.side_by_side's stream names
MODEL_STREAMS = ("model",)
# The knobs the page offers, in its order: CDConfig's fields, so their defaults, help and checks are CDConfig's.
KNOBS = ("alpha", "temperature", "top_p", "max_new_tokens", "repetition_penalty", "do_sample", "seed")
CD_ONLY = ("alpha",)


class PlaygroundBusy(Exception):
    """The user has a session running, or started too many this minute (the view answers 429)."""


def _redis() -> Any:
    from jobs.workers import _client

    return _client()


def max_new_tokens_cap() -> int:
    """The most tokens one response may ask for: the job limit (settings.JOB_LIMITS, ml.spec.DEFAULT_LIMITS)."""
    from ml.spec import DEFAULT_LIMITS

    return int((getattr(settings, "JOB_LIMITS", None) or DEFAULT_LIMITS)["max_new_tokens"])


def knob_fields() -> list[dict[str, Any]]:
    """The knobs as the page draws them: name, type, default and help from CDConfig; bounds where there are."""
    by_name = {f.name: f for f in fields(CDConfig)}
    out = []
    for name in KNOBS:
        f = by_name[name]
        default = f.default
        kind = "bool" if isinstance(default, bool) else ("int" if isinstance(default, int) else "float")
        row: dict[str, Any] = {"name": name, "type": kind, "default": default, "help": f.metadata.get("help", "")}
        row["cd_only"] = name in CD_ONLY
        if name == "max_new_tokens":
            row.update(min=1, max=max_new_tokens_cap())
        out.append(row)
    return out


def job_targets(job: Job) -> list[dict[str, Any]]:
    """What the playground of ``job`` offers: its weak pair (when it names one) and every model it trained that
    lies inside its own run folder (jobs.services.artifacts.artifact_target: a tampered path is left out)."""
    out: list[dict[str, Any]] = []
    config = job.config or {}
    if all((config.get(f) or {}).get("path") for f in ("weak_base", "weak_aligned")):
        out.append({"id": PAIR, "label": PAIR_LABEL, "streams": list(PAIR_STREAMS)})
    for art in job.artifacts.filter(kind="model").order_by("id"):
        target = artifact_target(art)
        if target is not None and target.is_dir:
            out.append(
                {"id": f"model:{art.pk}", "label": f"{art.stage} ({target.name})", "streams": list(MODEL_STREAMS)}
            )
    return out


def _pair_paths(job: Job) -> tuple[str, str]:
    """(pi_post, pi_pre) folders, when the job's owner may still use both as recorded at submit (the checks of
    jobs.services.creation.job_check_access, for these two)."""
    from jobs.validation import run_folder_allowed

    paths = []
    for f in ("weak_aligned", "weak_base"):
        ref = (job.config or {}).get(f) or {}
        ident = ref.get("id")
        entry = selectors.models_visible(user=job.owner).filter(pk=ident).first() if isinstance(ident, int) else None
        if entry is None or entry.path != ref.get("path") or not run_folder_allowed(entry.path, job.owner):
            raise _err("target", f"the job's {f} model is no longer available to its owner")
        paths.append(entry.path)
    return paths[0], paths[1]


def _resolve_target(job: Job, target: Any) -> dict[str, Any]:
    offered = {t["id"]: t for t in job_targets(job)}
    if not isinstance(target, str) or target not in offered:
        raise _err("target", f"pick one of: {', '.join(offered) or 'nothing (this job has no models)'}")
    if target == PAIR:
        aligned, base = _pair_paths(job)
        return {"mode": PAIR, "model": aligned, "base": base, "streams": list(PAIR_STREAMS)}
    art = job.artifacts.get(pk=int(target.split(":", 1)[1]))
    found = artifact_target(art)
    assert found is not None  # offered just above
    return {"mode": "model", "model": str(found.path), "base": None, "streams": list(MODEL_STREAMS)}


def _coerce(name: str, kind: str, value: Any) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be true or false")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number")
    if kind == "int":
        if float(value) != int(value):
            raise ValueError(f"{name} must be a whole number")
        return int(value)
    return float(value)


def knobs_parse(data: dict[str, Any]) -> dict[str, Any]:
    """The knobs given (missing ones take CDConfig's defaults), each checked by CDConfig itself; max_new_tokens
    also against the job limit. ValidationError keyed by knob."""
    errors: dict[str, list[str]] = {}
    out: dict[str, Any] = {}
    for row in knob_fields():
        name = row["name"]
        if name not in data or data[name] is None:
            continue
        try:
            value = _coerce(name, row["type"], data[name])
            CDConfig(**{name: value})  # the setting's own check
        except ValueError as exc:
            errors[name] = [str(exc).removeprefix("CDConfig: ")]
            continue
        if "max" in row and value > row["max"]:
            errors[name] = [f"{name} must be at most {row['max']} (the job limit), got {value}"]
            continue
        out[name] = value
    if errors:
        raise ValidationError(errors)
    return out


def _prompt(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _err("prompt", "type a prompt")
    if len(value) > PROMPT_MAX_CHARS:
        raise _err("prompt", f"the prompt is {len(value)} characters; at most {PROMPT_MAX_CHARS}")
    return value


def playground_start(*, user, job: Job, data: dict[str, Any]) -> dict[str, Any]:
    """Check the request {"target", "prompt", knobs...}, store the session and send its task. Answers
    {"session", "ws_path", "streams"}. ValidationError (400) for bad input, PlaygroundBusy (429) when the user
    has a session running or started PER_MINUTE this minute; a broker that cannot be reached raises."""
    if job.status != Job.Status.SUCCEEDED:
        raise _err("job", "the playground opens on a succeeded job")
    errors: dict[str, list[str]] = {}
    resolved: dict[str, Any] = {}
    knobs: dict[str, Any] = {}
    prompt = ""
    for check in ("target", "prompt", "knobs"):
        try:
            if check == "target":
                resolved = _resolve_target(job, data.get("target"))
            elif check == "prompt":
                prompt = _prompt(data.get("prompt"))
            else:
                knobs = knobs_parse(data)
        except ValidationError as exc:
            errors.update(exc.message_dict)
    if errors:
        raise ValidationError(errors)
    if resolved["mode"] != PAIR:
        knobs = {k: v for k, v in knobs.items() if k not in CD_ONLY}

    r = _redis()
    sid = secrets.token_urlsafe(16)
    rate_key = f"{PREFIX}rate:{user.pk}"
    if r.incr(rate_key) == 1:
        r.expire(rate_key, 60)
    if int(r.get(rate_key) or 0) > PER_MINUTE:
        raise PlaygroundBusy(f"at most {PER_MINUTE} playground sessions a minute; wait a little")
    active_key = f"{PREFIX}active:{user.pk}"
    if not r.set(active_key, sid, nx=True, ex=ACTIVE_TTL):
        raise PlaygroundBusy("you have a playground session running; stop it or wait for it to end")
    session = {"user": user.pk, "job": job.pk, "prompt": prompt, "config": knobs, **resolved}
    r.set(f"{PREFIX}session:{sid}", json.dumps(session), ex=SESSION_TTL)
    try:
        from congweb.celery import app
        from jobs.workers import GENERATION_QUEUE

        app.send_task(
            TASK,
            (sid,),
            queue=GENERATION_QUEUE,
            soft_time_limit=TIME_LIMIT,
            time_limit=TIME_LIMIT + 30,
            expires=SESSION_TTL,  # a message that waited longer finds no session: the worker drops it
            retry=True,
            retry_policy={"max_retries": 2},
        )
    except Exception:
        log.exception("could not send playground session %s", sid)
        session_end(sid=sid, user_id=user.pk)
        raise
    return {"session": sid, "ws_path": f"/ws/playground/{sid}/", "streams": resolved["streams"]}


def session_get(sid: str) -> dict[str, Any] | None:
    raw = _redis().get(f"{PREFIX}session:{sid}")
    return json.loads(raw) if raw else None


def session_events(sid: str, start: int = 0) -> list[dict[str, Any]]:
    """The session's events so far from the ``start``-th on (event seq n is the n-th, seq = index + 1)."""
    return [json.loads(x) for x in _redis().lrange(f"{PREFIX}events:{sid}", start, -1)]


def session_append(sid: str, event: dict[str, Any]) -> None:
    key = f"{PREFIX}events:{sid}"
    pipe = _redis().pipeline()
    pipe.rpush(key, json.dumps(event))
    pipe.expire(key, SESSION_TTL)
    pipe.execute()


def session_stop(*, sid: str, user_id: int) -> None:
    """Ask the session's task to stop (it checks at every token), and free the user for a new session at once: a
    task still waiting in the queue finds the flag when it starts and ends there."""
    r = _redis()
    r.set(f"{PREFIX}stop:{sid}", "1", ex=SESSION_TTL)
    _release(r, sid, user_id)


def stop_requested(sid: str) -> bool:
    return bool(_redis().exists(f"{PREFIX}stop:{sid}"))


def session_end(*, sid: str, user_id: int) -> None:
    """The session's task is over: the user may start the next one."""
    _release(_redis(), sid, user_id)


# Compare-and-delete in one step: an old session must not free the slot of the user's newer one.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


def _release(r: Any, sid: str, user_id: int) -> None:
    r.eval(_RELEASE, 1, f"{PREFIX}active:{user_id}", sid)
