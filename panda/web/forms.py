"""Reading and validating form and JSON input."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from panda.errors import BadRequest

MAX_FIELD_LENGTH = 10_000


async def read_form(request: web.Request) -> dict[str, str]:
    """The submitted url-encoded/multipart text fields (files are left out), trimmed of NULs."""
    data = await request.post()
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, str):
            if len(value) > MAX_FIELD_LENGTH:
                raise BadRequest(f"The field {key!r} is too long.")
            out[key] = value.replace("\x00", "")
    return out


async def read_json(request: web.Request, max_bytes: int = 64 * 1024) -> dict[str, Any]:
    """The request's JSON object body; BadRequest for anything else."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise BadRequest("The request body is too large.")
    raw = await request.read()
    if len(raw) > max_bytes:
        raise BadRequest("The request body is too large.")
    try:
        data = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The request body must be valid JSON.") from None
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.")
    return data


def safe_next(url: str | None, default: str = "/dashboard") -> str:
    """A same-site path to go back to after login (never an external URL)."""
    if not url or not url.startswith("/") or url.startswith("//") or "\\" in url:
        return default
    return url
