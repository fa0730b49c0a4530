"""Room commands sent to the process that holds a call (request/reply over the bus).

Every process listens on its own channel `call-node:<owner>`. A request carries a command name,
its arguments and an id; the owner runs the handler registered for the name and publishes the
reply (an HTTP-like status and a JSON body) on the asker's channel. No reply within the timeout
is `OwnerUnavailable` (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from panda.bus import RESYNC_TYPE, Bus, BusUnavailable, Subscription
from panda.errors import PandaError
from panda.web.call_placement import PLACEMENT

log = logging.getLogger(__name__)

REPLY_TIMEOUT = 5.0
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class OwnerUnavailable(PandaError):
    """The process holding the call did not answer in time."""

    status = 503


class RemoteError(PandaError):
    """The owner refused the command; carries its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def node_channel(owner: str) -> str:
    """The channel on which the process `owner` receives room commands and replies."""
    return f"call-node:{owner}"


class RoomCommands:
    """Ask the owner of a room to act on it; answer such questions for the rooms held here."""

    def __init__(self, bus: Bus, owner: str, *, timeout: float = REPLY_TIMEOUT) -> None:
        self.bus = bus
        self.owner = owner
        self.timeout = timeout
        self.handlers: dict[str, Handler] = {}
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._work: set[asyncio.Task[None]] = set()

    def register(self, command: str, handler: Handler) -> None:
        """Run `handler(args)` when another process sends `command`; it returns the JSON body.

        A PandaError raised by the handler goes back with its status and message.
        """
        self.handlers[command] = handler

    async def start(self) -> None:
        """Listen on this process's channel."""
        self._sub = await self.bus.subscribe(node_channel(self.owner))
        self._task = asyncio.create_task(self._read(self._sub), name="call-commands")

    async def close(self) -> None:
        """Stop listening; pending questions fail."""
        for task in [self._task, *self._work]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._sub is not None:
            await self._sub.close()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(OwnerUnavailable("This server is shutting down."))
        self._pending.clear()

    async def ask(
        self, owner: str, command: str, *, wait_s: float | None = None, **args: Any
    ) -> dict[str, Any]:
        """Run `command` on the process `owner`; its body, or RemoteError / OwnerUnavailable."""
        request_id = secrets.token_hex(8)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        try:
            sent = await self.bus.publish(
                node_channel(owner),
                {
                    "type": "request",
                    "id": request_id,
                    "reply_to": self.owner,
                    "command": command,
                    "args": args,
                },
            )
            if not sent:
                raise OwnerUnavailable("The server holding this call cannot be reached.")
            try:
                reply = await asyncio.wait_for(fut, wait_s or self.timeout)
            except TimeoutError:
                raise OwnerUnavailable(
                    "The server holding this call did not answer; try again in a few seconds."
                ) from None
        finally:
            self._pending.pop(request_id, None)
        status = int(reply.get("status", 500))
        if status >= 400:
            raise RemoteError(status, str(reply.get("error") or "The command failed."))
        body = reply.get("body")
        return body if isinstance(body, dict) else {}

    async def _read(self, sub: Subscription) -> None:
        async for msg in sub:
            kind = msg.get("type")
            if kind == "reply":
                fut = self._pending.get(str(msg.get("id")))
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            elif kind == "request":
                task = asyncio.create_task(self._answer(msg))
                self._work.add(task)
                task.add_done_callback(self._work.discard)
            elif kind != RESYNC_TYPE:
                log.debug("ignored a call command message of type %r", kind)

    async def _answer(self, msg: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"type": "reply", "id": msg.get("id")}
        handler = self.handlers.get(str(msg.get("command")))
        args = msg.get("args")
        if handler is None or not isinstance(args, dict):
            reply.update(status=400, error="Unknown command.")
        else:
            try:
                reply.update(status=200, body=await handler(args))
            except PandaError as exc:
                reply.update(status=exc.status, error=exc.message)
            except Exception:
                log.exception("call command %s failed", msg.get("command"))
                reply.update(status=500, error="The server holding this call hit a problem.")
        reply_to = msg.get("reply_to")
        if isinstance(reply_to, str):
            await self.bus.publish(node_channel(reply_to), reply)


COMMANDS: web.AppKey[RoomCommands] = web.AppKey("call_commands", RoomCommands)


async def owner_elsewhere(app: web.Application, booking_id: int) -> str | None:
    """The process holding a session's room when that is another one; None when here or nowhere.

    Raises OwnerUnavailable when the shared store cannot say.
    """
    placement = app.get(PLACEMENT)
    if placement is None or not placement.enabled or COMMANDS not in app:
        return None
    if placement.holds(booking_id):
        return None
    try:
        owner = await placement.owner_of(booking_id)
    except BusUnavailable:
        raise OwnerUnavailable(
            "Which server holds this call cannot be told right now; try again shortly."
        ) from None
    return owner if owner is not None and owner != placement.owner else None
