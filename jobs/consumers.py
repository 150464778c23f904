"""Live job events over a websocket: ws://HOST/ws/jobs/<id>/?after=SEQ

On connect: anonymous users are closed with 4401, users who may not see the job with 4404. The socket
is accepted first and then closed, because a close before the accept can only be sent as an HTTP 403
at the handshake, where the code is lost (browsers report 1006). Then the socket joins the group
``job-<id>`` FIRST and replays stored events with seq > after SECOND, so no event falls in the gap
between the two (one may arrive twice; clients dedupe by seq).

A page on another site (a bad Origin) is refused earlier, by congweb.asgi's
AllowedHostsOriginValidator, with the handshake's HTTP 403: such a page must learn nothing.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from jobs import selectors
from jobs.notify import group_name

REPLAY_LIMIT = 5000


class JobEventsConsumer(AsyncJsonWebsocketConsumer):
    group: str | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self._refuse(4401)
            return
        job_id = self.scope["url_route"]["kwargs"]["job_id"]
        job = await database_sync_to_async(selectors.job_get)(user=user, job_id=job_id)
        if job is None:
            await self._refuse(4404)
            return
        try:
            after = int(parse_qs(self.scope.get("query_string", b"").decode()).get("after", ["0"])[0])
        except ValueError:
            after = 0
        self.group = group_name(job.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        for message in await self._replay(job, after):
            await self.send_json(message)

    async def _refuse(self, code: int) -> None:
        await self.accept()  # so the close frame, and its code, reaches the client
        await self.close(code=code)

    @database_sync_to_async
    def _replay(self, job, after: int) -> list[dict]:
        return [e.as_message() for e in selectors.job_events(job=job, after=after, limit=REPLAY_LIMIT)]

    async def disconnect(self, code) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        pass  # the stream is one-way (actions go through the REST API): what clients send is not parsed

    async def job_event(self, message) -> None:
        await self.send_json(message["event"])
