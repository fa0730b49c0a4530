"""Helpers for the chat tests: logged-in clients and JSON calls with the CSRF header."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.helpers import get_csrf, login


async def login_api(client: TestClient, email: str) -> str:
    """Log `client` in and return its CSRF token for fetch-style calls."""
    await login(client, email)
    return await get_csrf(client, "/messages")


async def post_json(client: TestClient, token: str, path: str, body: Any) -> Any:
    """POST JSON like the browser pages do (session cookie + X-CSRF-Token)."""
    return await client.post(path, json=body, headers={"X-CSRF-Token": token})
