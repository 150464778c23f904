"""A playground session's stream: ws://HOST/ws/playground/<session>/ (docs/API.md "Playground").

On connect: anonymous users are closed with 4401; a session that does not exist (expired) or was started by
someone else, 4404 (accepted first, then closed, as jobs.consumers does, so the code reaches the browser). Then
the socket joins the group ``playground-<session>`` FIRST and replays the events stored so far SECOND (no event
falls in the gap); an event that arrives both ways is sent once (by ``seq``), and one the channel layer dropped (a
full channel during a burst of tokens) is read back from the stored list when the next one shows the gap.

The client may send one thing, ``{"action": "stop"}``: the session's task stops at its next token. Closing the
socket stops it too: nobody is left to read the reply.
"""

from __future__ import annotations

import json

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from jobs.playground_runner import group_name
from jobs.services import playground

MAX_MESSAGE = 256  # bytes: the only message a client sends is {"action": "stop"}


class PlaygroundConsumer(AsyncJsonWebsocketConsumer):
    sid: str | None = None
    user_id: int | None = None
    last_seq = 0

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self._refuse(4401)
            return
        sid = self.scope["url_route"]["kwargs"]["session"]
        session = await sync_to_async(playground.session_get)(sid)
        if session is None or session.get("user") != user.pk:
            await self._refuse(4404)
            return
        self.sid, self.user_id = sid, user.pk
        await self.channel_layer.group_add(group_name(sid), self.channel_name)
        await self.accept()
        for event in await sync_to_async(playground.session_events)(sid):
            await self._send_once(event)

    async def _refuse(self, code: int) -> None:
        await self.accept()
        await self.close(code=code)

    async def _send_once(self, event: dict) -> None:
        seq = event.get("seq", 0)
        if seq <= self.last_seq:
            return
        if seq > self.last_seq + 1 and self.sid is not None:
            for missed in await sync_to_async(playground.session_events)(self.sid, start=self.last_seq):
                if self.last_seq < missed["seq"] < seq:
                    self.last_seq = missed["seq"]
                    await self.send_json(missed)
        self.last_seq = seq
        await self.send_json(event)

    async def disconnect(self, code) -> None:
        if self.sid is None or self.user_id is None:
            return
        await self.channel_layer.group_discard(group_name(self.sid), self.channel_name)
        await sync_to_async(playground.session_stop)(sid=self.sid, user_id=self.user_id)

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        if self.sid is None or self.user_id is None or not text_data or len(text_data) > MAX_MESSAGE:
            return
        try:
            message = json.loads(text_data)
        except ValueError:
            return
        if isinstance(message, dict) and message.get("action") == "stop":
            await sync_to_async(playground.session_stop)(sid=self.sid, user_id=self.user_id)

    async def playground_event(self, message) -> None:
        await self._send_once(message["event"])
