"""The live event stream: auth on connect, ownership, replay after=SEQ, and events written by the
ProgressReporter reaching the socket through a real Redis channel layer."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from jobs.models import Job, JobEvent
from jobs.progress import ProgressReporter
from jobs.routing import websocket_urlpatterns

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)  # database_sync_to_async closes connections


def _app(user):
    router = URLRouter(websocket_urlpatterns)

    async def app(scope, receive, send):  # stands in for AuthMiddlewareStack: the user is given
        return await router({**scope, "user": user}, receive, send)

    return app


@pytest.fixture
def channel_layer(redis_url, settings):
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url]}}
    }
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def job(user):
    return Job.objects.create(owner=user, kind="cd_generate", config={})


def _close_code(user, path):
    """The close code a refused client sees. Refusals accept first and then close: a close before the
    accept is an HTTP 403 at the handshake, where browsers see no code at all (they report 1006)."""

    async def go():
        comm = WebsocketCommunicator(_app(user), path)
        connected, _ = await comm.connect(timeout=5)
        assert connected, "refusals must accept first so the close code reaches the client"
        closed = await comm.receive_output(timeout=5)
        assert closed["type"] == "websocket.close", closed
        await comm.disconnect()
        return closed["code"]

    return async_to_sync(go)()


def test_anonymous_is_closed_with_4401(channel_layer, job):
    assert _close_code(AnonymousUser(), f"/ws/jobs/{job.pk}/") == 4401


def test_other_user_and_missing_job_are_closed_with_4404(channel_layer, job, other_user):
    assert _close_code(other_user, f"/ws/jobs/{job.pk}/") == 4404
    assert _close_code(other_user, "/ws/jobs/999999/") == 4404


def test_what_clients_send_is_ignored_not_parsed(channel_layer, job, user):
    async def go():
        comm = WebsocketCommunicator(_app(user), f"/ws/jobs/{job.pk}/")
        assert (await comm.connect(timeout=5))[0]
        await comm.send_to(text_data="[" * 100_000)  # would be a RecursionError in a JSON decoder
        await comm.send_to(text_data='{"a": "\\ud800"}')
        assert await comm.receive_nothing(timeout=0.3)
        await comm.disconnect()

    async_to_sync(go)()


def test_owner_gets_replay_then_live_events(channel_layer, job, user, staff_user):
    rep = ProgressReporter(job.pk, max_rate=1000)
    rep.log("before connect 1")
    rep.log("before connect 2")

    async def go():
        comm = WebsocketCommunicator(_app(user), f"/ws/jobs/{job.pk}/?after=1")
        connected, _ = await comm.connect(timeout=5)
        assert connected
        replay = await comm.receive_json_from(timeout=5)
        assert replay["seq"] == 2 and replay["data"]["message"] == "before connect 2"
        await sync_to_async(rep.progress)("cd_generate", 3, 10)
        await sync_to_async(rep.metric)("implicit_reward", 0.5, 3)
        await sync_to_async(rep.sample)({"index": 0, "response": "good movie", "token_ids": [1, 2]})
        live = [await comm.receive_json_from(timeout=5) for _ in range(3)]
        assert [e["seq"] for e in live] == [3, 4, 5]
        assert live[0]["type"] == "progress" and live[0]["data"]["done"] == 3
        assert live[1]["data"] == {"name": "implicit_reward", "value": 0.5, "step": 3}
        assert live[2]["type"] == "sample" and "token_ids" not in live[2]["data"]
        assert await comm.receive_nothing(timeout=0.3)
        await comm.disconnect()
        # staff may watch anyone's job
        staff = WebsocketCommunicator(_app(staff_user), f"/ws/jobs/{job.pk}/")
        assert (await staff.connect(timeout=5))[0]
        first = await staff.receive_json_from(timeout=5)
        assert first["seq"] == 1
        await staff.disconnect()

    async_to_sync(go)()
    job.refresh_from_db()
    assert job.stage == "cd_generate" and job.progress == pytest.approx(0.3)


def test_progress_is_throttled_but_last_always_written(job):
    rep = ProgressReporter(job.pk, max_rate=5)
    for i in range(1, 101):
        rep.progress("cd_generate", i, 100)
    events = list(JobEvent.objects.filter(job=job, type="progress").values_list("data", flat=True))
    assert 1 <= len(events) <= 5
    assert events[-1]["done"] == 100
    rep.progress("sft", 1, 10)
    rep.progress("sft", 2, 10)  # held back by the throttle ...
    rep.close()  # ... and flushed on close
    last = JobEvent.objects.filter(job=job).order_by("-seq").first()
    assert last.data["stage"] == "sft" and last.data["done"] == 2


def test_group_send_failure_does_not_fail_the_report(job, settings):
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]}}
    }
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    try:
        ProgressReporter(job.pk).log("still recorded")
    finally:
        channel_layers.backends.clear()
    assert JobEvent.objects.get(job=job).data == {"message": "still recorded"}


def test_should_stop_reads_cancel_flag_at_most_every_interval(job, django_assert_num_queries):
    rep = ProgressReporter(job.pk, stop_check_interval=3600)
    assert rep.should_stop() is False  # the first call reads the flag
    Job.objects.filter(pk=job.pk).update(cancel_requested=True)
    with django_assert_num_queries(0):  # cached for the interval: no query storm from tight loops
        assert not any(rep.should_stop() for _ in range(100))
    rep.stop_check_interval = 0.05  # once the interval has passed, the next call reads the flag again
    wait_for(rep.should_stop, timeout=10, interval=0.01, what="should_stop() to read the cancel flag")


def test_a_retry_reaches_a_page_that_is_already_open(channel_layer, job, user, monkeypatch):
    """The queued event of a retry is pushed like every status event: another open page of the job follows the
    new attempt at once instead of at its next poll."""
    from jobs import services

    monkeypatch.setattr(services.dispatch, "send", lambda job_id: True)  # no worker here: the message stays unsent
    Job.objects.filter(pk=job.pk).update(status="cancelled")

    async def go():
        comm = WebsocketCommunicator(_app(user), f"/ws/jobs/{job.pk}/")
        connected, _ = await comm.connect(timeout=5)
        assert connected
        assert await comm.receive_nothing(timeout=0.3)  # nothing written yet
        await sync_to_async(services.job_retry)(job=job)
        pushed = await comm.receive_json_from(timeout=5)
        assert pushed["type"] == "status" and pushed["data"] == {"status": "queued", "message": "retry requested"}
        await comm.disconnect()

    async_to_sync(go)()
