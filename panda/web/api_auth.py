"""JSON API for accounts: bearer tokens and the current user's profile."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from panda import keys
from panda.errors import BadRequest, Forbidden, NotAuthenticated, ValidationError
from panda.store.accounts import clean_bio, clean_interests, clean_name, is_timezone
from panda.store.models import User
from panda.store.users import normalise_email
from panda.web.accounts import authenticate
from panda.web.auth import issue_api_token, require_user
from panda.web.forms import read_json
from panda.web.profile import photo_url


def user_json(user: User) -> dict[str, Any]:
    """The public shape of the current user in the API."""
    return {
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "role": user.role,
        "timezone": user.timezone,
        "bio": user.bio,
        "interests": list(user.interests or []) if user.is_student else [],
        "verified": user.is_verified,
        "tutor_status": user.tutor_status,
        "photo_url": photo_url(user),
        "created_at": user.created_at.isoformat(),
    }


def _string(data: dict[str, Any], name: str, fields: dict[str, str]) -> str:
    value = data.get(name, "")
    if not isinstance(value, str):
        fields[name] = "Must be a string."
        return ""
    return value


async def create_token(request: web.Request) -> web.Response:
    """Exchange e-mail and password for a short-lived bearer token (throttled like login)."""
    data = await read_json(request)
    fields: dict[str, str] = {}
    email = normalise_email(_string(data, "email", fields))[:254]
    password = _string(data, "password", fields)[:1024]
    if not email and "email" not in fields:
        fields["email"] = "Required."
    if not password and "password" not in fields:
        fields["password"] = "Required."
    if fields:
        raise ValidationError("Please send your e-mail and password.", fields=fields)
    user = await authenticate(request, email, password)
    if user is None:
        raise NotAuthenticated("That e-mail and password do not match an account.")
    if not user.is_active:
        raise Forbidden("This account is deactivated.")
    token, expires_at = issue_api_token(request.app, user)
    return web.json_response(
        {"token": token, "expires_at": expires_at.isoformat()},
        headers={"Cache-Control": "no-store"},
    )


async def get_me(request: web.Request) -> web.Response:
    """The logged-in user."""
    user = require_user(request)
    return web.json_response(user_json(user))


async def patch_me(request: web.Request) -> web.Response:
    """Change name, time zone, bio or (students) interests; only the fields sent change."""
    user = require_user(request)
    data = await read_json(request)
    allowed = {"name", "timezone", "bio", "interests"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadRequest(f"Unknown field(s): {', '.join(unknown)[:200]}.")
    fields: dict[str, str] = {}
    changes: dict[str, Any] = {}
    if "name" in data:
        name, problem = clean_name(_string(data, "name", fields))
        if problem:
            fields.setdefault("name", problem)
        changes["name"] = name
    if "timezone" in data:
        zone = _string(data, "timezone", fields)
        if not is_timezone(zone):
            fields.setdefault("timezone", "Must be an IANA time zone such as Europe/Paris.")
        changes["timezone"] = zone
    if "bio" in data:
        bio, problem = clean_bio(_string(data, "bio", fields))
        if problem:
            fields.setdefault("bio", problem)
        changes["bio"] = bio
    if "interests" in data:
        raw = data["interests"]
        if not user.is_student:
            fields["interests"] = "Only students have subjects of interest."
        elif not isinstance(raw, list) or not all(isinstance(i, str) for i in raw):
            fields["interests"] = "Must be a list of strings."
        else:
            items, problem = clean_interests("\n".join(i.replace(",", " ") for i in raw))
            if problem:
                fields["interests"] = problem
            changes["interests"] = items
    if fields:
        raise ValidationError("Some fields are not valid.", fields=fields)
    async with request.app[keys.sessionmaker]() as db:
        fresh = await db.get(User, user.id)
        assert fresh is not None
        for key, value in changes.items():
            setattr(fresh, key, value)
        await db.commit()
    return web.json_response(user_json(fresh))


_USER_SCHEMA = {"$ref": "#/components/schemas/User"}
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _ERROR}


OPENAPI_SCHEMAS: dict[str, Any] = {
    "User": {
        "type": "object",
        "required": ["id", "email", "name", "role", "timezone", "verified"],
        "properties": {
            "id": {"type": "integer"},
            "email": {"type": "string", "format": "email"},
            "name": {"type": "string"},
            "role": {"type": "string", "enum": ["student", "tutor", "admin"]},
            "timezone": {"type": "string", "description": "IANA time zone"},
            "bio": {"type": "string"},
            "interests": {"type": "array", "items": {"type": "string"}},
            "verified": {"type": "boolean"},
            "tutor_status": {
                "type": ["string", "null"],
                "enum": ["pending", "approved", "rejected", None],
            },
            "photo_url": {"type": ["string", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "TokenRequest": {
        "type": "object",
        "required": ["email", "password"],
        "properties": {"email": {"type": "string"}, "password": {"type": "string"}},
    },
    "Token": {
        "type": "object",
        "required": ["token", "expires_at"],
        "properties": {
            "token": {"type": "string", "description": "Send as `Authorization: Bearer <token>`"},
            "expires_at": {"type": "string", "format": "date-time"},
        },
    },
    "UserPatch": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "maxLength": 120},
            "timezone": {"type": "string"},
            "bio": {"type": "string", "maxLength": 2000},
            "interests": {"type": "array", "items": {"type": "string", "maxLength": 40}},
        },
    },
}

OPENAPI: dict[str, Any] = {
    "/api/auth/token": {
        "post": {
            "summary": "Exchange e-mail and password for a bearer token",
            "description": "Short-lived (1 hour); revoked when the password changes. "
            "Failures are throttled per account and per client (429 with Retry-After).",
            "security": [],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/TokenRequest"}}
                },
            },
            "responses": {
                "200": {
                    "description": "A bearer token",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Token"}}
                    },
                },
                "400": _error("The body is not a JSON object"),
                "401": _error("The e-mail and password do not match"),
                "403": _error("The account is deactivated"),
                "422": _error("A field is missing"),
                "429": _error("Too many failed attempts"),
            },
        }
    },
    "/api/me": {
        "get": {
            "summary": "The current user",
            "responses": {
                "200": {
                    "description": "The user",
                    "content": {"application/json": {"schema": _USER_SCHEMA}},
                },
                "401": _error("Not logged in, or the token is invalid or expired"),
            },
        },
        "patch": {
            "summary": "Update the current user's profile",
            "description": "With a session cookie, send the X-CSRF-Token header.",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/UserPatch"}}
                },
            },
            "responses": {
                "200": {
                    "description": "The updated user",
                    "content": {"application/json": {"schema": _USER_SCHEMA}},
                },
                "400": _error("Malformed body or unknown field"),
                "401": _error("Not logged in"),
                "403": _error("Missing or wrong CSRF token (cookie sessions)"),
                "422": _error("A field is not valid (see `fields`)"),
            },
        },
    },
}


def setup(app: web.Application) -> None:
    """Register the account API routes."""
    app.router.add_post("/api/auth/token", create_token, name="api_token")
    app.router.add_get("/api/me", get_me, name="api_me")
    app.router.add_patch("/api/me", patch_me)
