"""Dependency overrides resolved once (stemcal.catalog.overrides), on real FastAPI apps."""
from __future__ import annotations

import fastapi.dependencies.utils as fastapi_deps
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient

from stemcal.catalog import open_catalog
from stemcal.catalog.overrides import ResolvedOverrides, _dependants, resolve_overrides


def setting() -> str:
    return "raw"


def configured() -> str:
    return "configured"


def _app() -> FastAPI:
    app = FastAPI()

    def nested(value: str = Depends(setting)) -> str:
        return value + "!"

    @app.get("/value")
    def value(v: str = Depends(setting), n: str = Depends(nested)) -> dict:
        return {"v": v, "n": n}

    app.dependency_overrides[setting] = configured
    return app


@pytest.fixture
def rebuilds(monkeypatch):
    """Counts FastAPI's per-request rebuilds of a dependant (``get_dependant`` calls)."""
    calls = []
    original = fastapi_deps.get_dependant

    def counting(*args, **kwargs):
        calls.append(kwargs.get("call"))
        return original(*args, **kwargs)

    monkeypatch.setattr(fastapi_deps, "get_dependant", counting)
    return calls


def test_resolved_overrides_give_the_same_answers_without_per_request_rebuilds(rebuilds):
    app = _app()
    client = TestClient(app)
    assert client.get("/value").json() == {"v": "configured", "n": "configured!"}
    assert rebuilds, "FastAPI rebuilds the overridden dependants at every request"
    assert resolve_overrides(app) == 2
    assert isinstance(app.dependency_overrides, ResolvedOverrides)
    assert not app.dependency_overrides and app.dependency_overrides[setting] is configured
    rebuilds.clear()
    assert client.get("/value").json() == {"v": "configured", "n": "configured!"}
    assert rebuilds == []
    assert resolve_overrides(app) == 0   # once


def test_routes_added_later_and_new_overrides_fall_back_to_fastapi(rebuilds):
    app = _app()
    resolve_overrides(app)

    @app.get("/later")
    def later(v: str = Depends(setting)) -> dict:
        return {"v": v}

    client = TestClient(app)
    assert app.dependency_overrides   # the routes changed: FastAPI's own pass again
    assert client.get("/later").json() == {"v": "configured"}
    assert client.get("/value").json() == {"v": "configured", "n": "configured!"}

    app2 = _app()
    resolve_overrides(app2)
    app2.dependency_overrides[setting] = lambda: "changed"
    assert app2.dependency_overrides
    assert TestClient(app2).get("/value").json() == {"v": "changed", "n": "changed!"}


def test_an_override_with_parameters_is_left_to_fastapi():
    app = _app()

    def with_request(request: Request) -> str:
        return request.url.path

    app.dependency_overrides[setting] = with_request
    assert resolve_overrides(app) == 0
    assert type(app.dependency_overrides) is dict
    assert TestClient(app).get("/value").json() == {"v": "/value", "n": "/value!"}


def test_the_embedded_catalog_resolves_tiled_settings_once(tmp_path, rebuilds):
    from tiled.server.settings import get_settings

    client = open_catalog(tmp_path / "cat")
    app = client.context.http_client.app
    assert isinstance(app.dependency_overrides, ResolvedOverrides)
    assert not app.dependency_overrides
    deps = _dependants(app)
    assert len(deps) > 100
    assert not [d for d in deps if d.call is get_settings]
    assert sum(d.call is app.dependency_overrides[get_settings] for d in deps) > 100
    rebuilds.clear()
    assert list(client) == []
    assert rebuilds == []
    _no_websocket_route_calls(app, get_settings)


def _no_websocket_route_calls(app, original) -> None:
    """tiled's websocket routes sit in included routers, for which FastAPI makes routes
    of its own (``starlette_route`` of an effective route context) with their own
    dependants: none of those may call ``original`` either."""
    from fastapi.routing import APIWebSocketRoute

    made = []
    stack = list(app.router.routes)
    while stack:
        route = stack.pop()
        if hasattr(route, "original_router"):
            stack.extend(route.effective_candidates())
            stack.extend(route.original_router.routes)
        own = getattr(route, "starlette_route", None)
        if isinstance(own, APIWebSocketRoute):
            made.append(own)
    assert made, "no websocket route of an included router found"
    seen, deps = set(), [r.dependant for r in made]
    while deps:
        dep = deps.pop()
        if id(dep) in seen:
            continue
        seen.add(id(dep))
        assert dep.call is not original, dep
        deps.extend(dep.dependencies)


def test_the_server_app_resolves_tiled_settings_once(tmp_path, rebuilds):
    """The app `stemcal serve` runs (built in process here): overrides resolved, no
    rebuild per request, and a request without a key still refused."""
    import json

    from tiled.config import parse_configs
    from tiled.server.settings import get_settings

    from stemcal.catalog import serverapp
    from stemcal.catalog.server import tiled_config

    catalog, state = tmp_path / "cat", tmp_path / "state"
    state.mkdir()
    serverapp._prepare_catalog(catalog, None, None)
    serverapp._build_auth_db(state / "auth.db", {})
    config = tiled_config(catalog, auth_db=state / "auth.db", host="127.0.0.1", port=9)
    (state / "config.json").write_text(json.dumps(config))
    app = serverapp._app(parse_configs(str(state / "config.json")), catalog, None, [])
    assert isinstance(app.dependency_overrides, ResolvedOverrides)
    assert not app.dependency_overrides
    assert not [d for d in _dependants(app) if d.call is get_settings]
    with TestClient(app) as client:
        rebuilds.clear()
        assert client.get("/api/v1/metadata/").status_code == 401
        assert rebuilds == []
    _no_websocket_route_calls(app, get_settings)


def test_the_environment_can_leave_the_overrides_to_fastapi(monkeypatch):
    monkeypatch.setenv("STEMCAL_RESOLVE_OVERRIDES", "0")
    app = _app()
    assert resolve_overrides(app) == 0
    assert type(app.dependency_overrides) is dict
    assert TestClient(app).get("/value").json() == {"v": "configured", "n": "configured!"}
