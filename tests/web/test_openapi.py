"""/api/openapi.json documents every /api/ route the application serves, and nothing else."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient

METHODS = {"get", "post", "put", "patch", "delete"}


def api_routes(app: web.Application) -> set[tuple[str, str]]:
    """(path template, method) of every /api/ route in the router."""
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        method = route.method.lower()
        if path and path.startswith("/api/") and method in METHODS:
            routes.add((path, method))
    return routes


async def test_every_api_route_is_documented(client: TestClient) -> None:
    resp = await client.get("/api/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    served = api_routes(client.app)
    assert ("/api/auth/token", "post") in served and ("/api/me", "get") in served
    documented = {
        (path, method)
        for path, item in doc["paths"].items()
        if path.startswith("/api/")
        for method in item
        if method in METHODS
    }
    missing = served - documented - {("/api/openapi.json", "get")}
    assert not missing, f"undocumented API routes: {sorted(missing)}"
    stale = documented - served
    assert not stale, f"documented routes that do not exist: {sorted(stale)}"


async def test_every_operation_has_responses_and_known_refs(client: TestClient) -> None:
    doc = await (await client.get("/api/openapi.json")).json()
    schemas = set(doc["components"]["schemas"])
    text = str(doc)
    import re

    for ref in re.findall(r"#/components/schemas/([A-Za-z0-9_]+)", text):
        assert ref in schemas, ref
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                assert op.get("summary"), (path, method)
                assert op.get("responses"), (path, method)
