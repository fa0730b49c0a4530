"""Outgoing mail: SMTP when configured, otherwise .eml files in the outbox directory."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from email.message import EmailMessage
from pathlib import Path

from panda.config import Settings

log = logging.getLogger(__name__)


class Mailer:
    """Sends one message at a time; failures are logged, never raised into a request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def build(self, to: str, subject: str, body: str, *, html: str | None = None) -> EmailMessage:
        """A complete message from our sender address."""
        msg = EmailMessage()
        msg["From"] = self.settings.mail_from
        msg["To"] = to
        msg["Subject"] = subject
        msg.set_content(body)
        if html:
            msg.add_alternative(html, subtype="html")
        return msg

    async def send(self, to: str, subject: str, body: str, *, html: str | None = None) -> bool:
        """Deliver (or write to the outbox); True on success."""
        msg = self.build(to, subject, body, html=html)
        try:
            if self.settings.smtp_host:
                await self._send_smtp(msg)
            else:
                await asyncio.to_thread(self._write_outbox, msg)
        except Exception:
            log.exception("could not send mail %r to %s", subject, to)
            return False
        return True

    async def _send_smtp(self, msg: EmailMessage) -> None:
        import aiosmtplib

        s = self.settings
        await aiosmtplib.send(
            msg,
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_user,
            password=s.smtp_password,
            start_tls=s.smtp_starttls,
            timeout=30,
        )

    def _write_outbox(self, msg: EmailMessage) -> Path:
        outbox = self.settings.outbox_dir
        outbox.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}-{secrets.token_hex(4)}.eml"
        tmp = outbox / f".{name}.tmp"
        tmp.write_bytes(bytes(msg))
        # Atomic rename: a reader never sees half a message.
        os.replace(tmp, outbox / name)
        return outbox / name
