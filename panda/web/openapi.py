"""`/api/openapi.json`: assembled from the `OPENAPI` path items each area module declares."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from aiohttp import web

from panda import __version__

OPENAPI_DOC: web.AppKey[dict[str, Any]] = web.AppKey("openapi_doc")

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "fields": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def build_document(areas: list[ModuleType]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for every area's declared paths."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    for area in areas:
        for path, item in getattr(area, "OPENAPI", {}).items():
            paths.setdefault(path, {}).update(item)
        schemas.update(getattr(area, "OPENAPI_SCHEMAS", {}))
    return {
        "openapi": "3.1.0",
        "info": {"title": "Panda Professor API", "version": __version__},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "panda_session"},
            },
        },
        "security": [{"bearer": []}, {"session": []}],
        "paths": dict(sorted(paths.items())),
    }


async def openapi_json(request: web.Request) -> web.Response:
    """The API description."""
    return web.json_response(request.app[OPENAPI_DOC])


def setup(app: web.Application, areas: list[ModuleType]) -> None:
    """Build the document once and serve it."""
    app[OPENAPI_DOC] = build_document(areas)
    app.router.add_get("/api/openapi.json", openapi_json)
