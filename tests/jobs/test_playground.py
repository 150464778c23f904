"""The playground (issue 16): a succeeded job's page starts a session, a REAL Celery worker streams the tokens, and
a websocket (channels' WebsocketCommunicator through a real Redis channel layer) receives them: several deltas per
stream before done, the text equal to a non-streamed generation of the same models (greedy), CD and plain pi_post
for the weak pair; stop ends a session at the next token. Permissions (page, start, socket) and limits (knobs named
in 400s, one running session per user) run without a worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from jobs.models import Artifact, Job
from jobs.routing import websocket_urlpatterns
from jobs.services import playground
from jobs.services.catalog import _model_ref

from .conftest import purge_broker, save_tiny_model, use_test_broker

pytestmark = pytest.mark.django_db(transaction=True)

GREEDY = {"do_sample": False, "max_new_tokens": 12, "repetition_penalty": 1.3, "alpha": 0.3}
CANDIDATES = ["the movie was", "a good film", "the plot", "very bad acting", "the film is not"]


def _app(user):
    router = URLRouter(websocket_urlpatterns)

    async def app(scope, receive, send):  # stands in for AuthMiddlewareStack: the user is given
        return await router({**scope, "user": user}, receive, send)

    return app


@pytest.fixture
def layer(settings, redis_url):
    """The test process on the test Redis (sessions, flags, channel layer), with empty broker queues."""
    from channels.layers import channel_layers

    use_test_broker(settings, redis_url)
    purge_broker(redis_url)
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()
    _flush_playground(redis_url)
    purge_broker(redis_url)


def _flush_playground(redis_url: str) -> None:
    import redis as redis_lib

    r = redis_lib.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=playground.PREFIX + "*"))
    if keys:
        r.delete(*keys)


def _endless(path: Path) -> Path:
    """A tiny model that never predicts EOS (so only max_new_tokens or a stop ends it): the final layer norm sends
    every position to one direction, and EOS's output row points the other way."""
    import torch
    from transformers import AutoModelForCausalLM

    save_tiny_model(path, seed=5)
    model = AutoModelForCausalLM.from_pretrained(str(path))
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(0.01)
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight[2] = -1.0  # tied with the input embedding of EOS, which is never an input
    model.save_pretrained(str(path))
    return path


@pytest.fixture
def done_job(user, weak_pair, settings, layer):
    """A succeeded job with the weak pair in its config and two trained models in its run folder."""
    from jobs.runner import run_dir

    wb, wa = weak_pair
    job = Job.objects.create(
        owner=user,
        kind="cong",
        status="succeeded",
        config={"weak_base": _model_ref(wb), "weak_aligned": _model_ref(wa)},
    )
    model = save_tiny_model(run_dir(job) / "sft_cong_s" / "model", seed=3)
    endless = _endless(run_dir(job) / "dpo_cong" / "model")
    Artifact.objects.create(job=job, stage="sft_cong_s", kind="model", path=str(model.resolve()))
    Artifact.objects.create(job=job, stage="dpo_cong", kind="model", path=str(endless.resolve()))
    return job


def _target(job, stage: str) -> str:
    return f"model:{job.artifacts.get(stage=stage, kind='model').pk}"


def _start(client, job, **data):
    return client.post(f"/jobs/{job.pk}/playground/start/", data=json.dumps(data), content_type="application/json")


def _events(user, ws_path: str, *, stop_after: int | None = None, timeout: float = 90.0) -> list[dict]:
    """Every event of the session until done/error; with ``stop_after``, {"action": "stop"} after that many
    deltas."""

    async def go():
        comm = WebsocketCommunicator(_app(user), ws_path)
        connected, _ = await comm.connect(timeout=10)
        assert connected
        out: list[dict] = []
        deltas = 0
        while True:
            ev = await comm.receive_json_from(timeout=timeout)
            out.append(ev)
            if ev["type"] == "delta":
                deltas += 1
                if deltas == stop_after:
                    await comm.send_json_to({"action": "stop"})
            if ev["type"] in ("done", "error"):
                break
        await comm.disconnect()
        return out

    return async_to_sync(go)()


def _by_stream(events: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for ev in events:
        if ev["type"] in ("delta", "finish"):
            s = out.setdefault(ev["stream"], {"deltas": [], "finish": None})
            if ev["type"] == "delta":
                s["deltas"].append(ev["text"])
            else:
                s["finish"] = ev
    return out


def _reference(model_root: Path, prompt: str) -> dict[str, list[int]]:
    """The same prompt, not streamed: contrastive_generate (CD) and ml.plain_sampling (plain), greedy."""
    from ml.contrastive import CDConfig, contrastive_generate
    from ml.modeling import load_causal_lm, load_tokenizer

    tok = load_tokenizer(model_root / "weak_aligned")
    aligned = load_causal_lm(model_root / "weak_aligned", device="cpu")
    base = load_causal_lm(model_root / "weak_base", device="cpu")
    cfg = CDConfig(**GREEDY)
    [cd] = contrastive_generate(aligned=aligned, base=base, tokenizer=tok, prompts=[prompt], config=cfg)
    from ml.plain_sampling import sample_plain

    # Plain pi_post by its one definition (ml.plain_sampling: CD at alpha 1), as plain_generate samples it.
    [(plain, _, _)], _ = sample_plain(aligned, tok, [prompt], cfg, seed=0)
    return {
        "cd": cd.token_ids,
        "plain": plain,
        "cd_text": cd.text,
        "plain_text": tok.decode(plain, skip_special_tokens=True),
    }


def test_page_lists_the_models_and_the_knobs(done_job, user, client, settings):
    client.force_login(user)
    page = client.get(f"/jobs/{done_job.pk}/playground/")
    assert page.status_code == 200
    html = page.content.decode()
    cfg = json.loads(html.split('id="playground-config" type="application/json">')[1].split("</script>")[0])
    assert [t["id"] for t in cfg["targets"]] == ["pair", _target(done_job, "sft_cong_s"), _target(done_job, "dpo_cong")]
    assert cfg["targets"][0]["label"] == playground.PAIR_LABEL
    knobs = {k["name"]: k for k in cfg["knobs"]}
    assert set(knobs) >= {"alpha", "temperature", "top_p", "max_new_tokens", "repetition_penalty", "do_sample"}
    assert knobs["max_new_tokens"]["max"] == settings.JOB_LIMITS["max_new_tokens"] and knobs["alpha"]["cd_only"]
    assert "<script>" not in html.replace('<script id="playground-config"', "")  # CSP: no inline script
    # The job page links to it, only once the job succeeded.
    assert 'id="playground-link"' in client.get(f"/jobs/{done_job.pk}/").content.decode()
    Job.objects.filter(pk=done_job.pk).update(status="running")
    assert 'id="playground-link"' not in client.get(f"/jobs/{done_job.pk}/").content.decode()
    assert client.get(f"/jobs/{done_job.pk}/playground/").status_code == 404
    assert _start(client, done_job, target="pair", prompt="hi").status_code == 404


def test_another_user_gets_404_on_page_start_and_socket(done_job, user, other_user, staff_user, client):
    client.force_login(other_user)
    assert client.get(f"/jobs/{done_job.pk}/playground/").status_code == 404
    assert _start(client, done_job, target="pair", prompt="the movie").status_code == 404
    client.force_login(staff_user)  # staff see every job
    assert client.get(f"/jobs/{done_job.pk}/playground/").status_code == 200
    client.logout()
    assert client.get(f"/jobs/{done_job.pk}/playground/").status_code == 302  # to the log-in page
    assert _start(client, done_job, target="pair", prompt="the movie").status_code == 404

    client.force_login(user)
    r = _start(client, done_job, target="pair", prompt="the movie")
    assert r.status_code == 200, r.content
    path = r.json()["ws_path"]
    for who, code in ((other_user, 4404), (staff_user, 4404), (AnonymousUser(), 4401)):
        assert _close_code(who, path) == code
    assert _close_code(user, "/ws/playground/no-such-session/") == 4404


def _close_code(user, path):
    async def go():
        comm = WebsocketCommunicator(_app(user), path)
        connected, _ = await comm.connect(timeout=5)
        assert connected
        closed = await comm.receive_output(timeout=5)
        assert closed["type"] == "websocket.close", closed
        await comm.disconnect()
        return closed["code"]

    return async_to_sync(go)()


def test_limits_are_400s_naming_the_field(done_job, user, client, settings):
    client.force_login(user)
    cap = settings.JOB_LIMITS["max_new_tokens"]
    cases = [
        ({"max_new_tokens": cap + 1}, "max_new_tokens", f"at most {cap}"),
        ({"max_new_tokens": 0}, "max_new_tokens", ">= 1"),
        ({"max_new_tokens": 2.5}, "max_new_tokens", "whole number"),
        ({"alpha": 1.5}, "alpha", "[0, 1]"),
        ({"temperature": 0}, "temperature", "> 0"),
        ({"top_p": "high"}, "top_p", "number"),
        ({"do_sample": "yes"}, "do_sample", "true or false"),
        ({"target": "model:999999"}, "target", "pick one of"),
        ({"prompt": "   "}, "prompt", "type a prompt"),
        ({"prompt": "x" * (playground.PROMPT_MAX_CHARS + 1)}, "prompt", "at most"),
    ]
    for change, field, words in cases:
        r = _start(client, done_job, **{"target": "pair", "prompt": "the movie", **change})
        assert r.status_code == 400, (change, r.content)
        errors = r.json()["errors"]
        assert list(errors) == [field] and words in errors[field][0], (change, errors)
    assert playground._redis().get(f"{playground.PREFIX}active:{user.pk}") is None  # nothing was started
    assert (
        client.post(f"/jobs/{done_job.pk}/playground/start/", data="[1]", content_type="application/json").status_code
        == 400
    )


def test_one_running_session_per_user_and_stop_frees_it(done_job, user, other_user, client):
    client.force_login(user)
    first = _start(client, done_job, target="pair", prompt="the movie")
    assert first.status_code == 200
    second = _start(client, done_job, target="pair", prompt="the movie")
    assert second.status_code == 429 and "running" in second.json()["errors"]["__all__"][0]
    sid = first.json()["session"]
    playground.session_stop(sid=sid, user_id=other_user.pk)  # someone else's stop frees nothing
    assert _start(client, done_job, target="pair", prompt="the movie").status_code == 429

    async def stop():
        comm = WebsocketCommunicator(_app(user), first.json()["ws_path"])
        assert (await comm.connect(timeout=5))[0]
        await comm.send_json_to({"action": "stop"})
        await comm.send_to(text_data="[" * 10_000)  # anything else is ignored, not parsed
        assert await comm.receive_nothing(timeout=0.3)
        await comm.disconnect()

    async_to_sync(stop)()
    assert playground.stop_requested(sid)
    third = _start(client, done_job, target="pair", prompt="the movie")
    assert third.status_code == 200, third.content
    # The stopped session's task, when a worker takes it, ends at once and frees nothing of the new one.
    from jobs.playground_runner import run_session

    assert run_session(sid) == "stopped before it started"
    assert playground.session_events(sid)[-1] == {"seq": 1, "type": "done", "stopped": True}
    assert playground._redis().get(f"{playground.PREFIX}active:{user.pk}").decode() == third.json()["session"]


def test_a_model_outside_the_run_folder_is_not_offered(done_job, user, client, model_root):
    Artifact.objects.create(job=done_job, stage="evil", kind="model", path=str(model_root / "weak_base"))
    client.force_login(user)
    targets = playground.job_targets(done_job)
    assert "evil" not in " ".join(t["label"] for t in targets) and len(targets) == 3
    evil = done_job.artifacts.get(stage="evil").pk
    r = _start(client, done_job, target=f"model:{evil}", prompt="the movie")
    assert r.status_code == 400 and "target" in r.json()["errors"]


# The tests with the module's real worker come last: it stays up for the rest of the module once started, and
# would take the sessions the tests above leave queued.


def test_weak_pair_streams_cd_and_plain_from_a_real_worker(shared_celery_worker, done_job, user, client, model_root):
    # A prompt whose greedy answers run a few tokens on both sides (random tiny models may say EOS at once).
    refs = {}
    for prompt in CANDIDATES:
        refs = _reference(model_root, prompt)
        if len(refs["cd"]) >= 4 and len(refs["plain"]) >= 4:
            break
    assert len(refs["cd"]) >= 4 and len(refs["plain"]) >= 4, refs
    client.force_login(user)
    r = _start(client, done_job, target="pair", prompt=prompt, **GREEDY)
    assert r.status_code == 200, r.content
    started = r.json()
    assert started["streams"] == ["cd", "plain"] and started["ws_path"] == f"/ws/playground/{started['session']}/"

    events = _events(user, started["ws_path"])
    assert events[-1] == {"seq": len(events), "type": "done", "stopped": False}, (events, shared_celery_worker.tail())
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # each once, in order
    streams = _by_stream(events)
    assert set(streams) == {"cd", "plain"}
    for name in ("cd", "plain"):
        s = streams[name]
        assert len(s["deltas"]) >= 3, s  # streamed a token at a time, not in one piece
        assert "".join(s["deltas"]) == s["finish"]["text"] == refs[f"{name}_text"]
        assert s["finish"]["n_tokens"] == len(refs[name])
    # Side by side: the first deltas alternate between the columns.
    order = [e["stream"] for e in events if e["type"] == "delta"][:4]
    assert order == ["cd", "plain", "cd", "plain"], order
    # The session is over: the user may start the next one at once.
    assert playground._redis().get(f"{playground.PREFIX}active:{user.pk}") is None


def test_a_trained_model_streams_and_stop_ends_it_early(shared_celery_worker, done_job, user, client):
    client.force_login(user)
    r = _start(client, done_job, target=_target(done_job, "dpo_cong"), prompt="the movie was", max_new_tokens=1000)
    assert r.status_code == 200, r.content
    assert r.json()["streams"] == ["model"]
    events = _events(user, r.json()["ws_path"], stop_after=3)
    assert events[-1]["type"] == "done" and events[-1]["stopped"] is True, (events[-5:], shared_celery_worker.tail())
    deltas = [e for e in events if e["type"] == "delta"]
    assert 3 <= len(deltas) < 1000 and not [e for e in events if e["type"] == "finish"]
    assert {e["stream"] for e in deltas} == {"model"}
    # A prompt the model cannot hold with max_new_tokens is an error event with the reason, not a dead socket.
    r = _start(client, done_job, target=_target(done_job, "sft_cong_s"), prompt="the " * 30, max_new_tokens=1000)
    assert r.status_code == 200, r.content
    events = _events(user, r.json()["ws_path"])
    assert events[-1]["type"] == "error" and "exceeds the model's context" in events[-1]["message"], events
