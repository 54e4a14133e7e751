"""Resolve a FastAPI app's dependency overrides once, instead of at every request.

tiled's app overrides one dependency (``get_settings`` by the settings it was
built with) through ``app.dependency_overrides``. While that dict is not
empty, FastAPI rebuilds every sub-dependency of every request from its
callable's signature (``get_dependant`` per sub-dependency, whether overridden
or not): on the embedded catalog that was about a sixth of a record write (one
image: 0.29-0.32 -> 0.24-0.26 s over four pairs of processes; four images: 541 ->
483 ms, benchmarks/catalog_requests.py; measured 2026-12-06 with FastAPI 0.165).

:func:`resolve_overrides` puts each override's callable into the route
dependants that name the overridden one, once, and leaves the app with a
:class:`ResolvedOverrides` dict: it still maps each overridden callable to its
override (tiled looks its settings up there), but is false while nothing
changed since, so FastAPI takes its plain path. It falls back to FastAPI's own
handling (the dict is true again) as soon as the app's routes change, and
puts the original callables back when the dict is changed. Only parameterless
overrides of parameterless dependencies are resolved (the dependant's shape
stays the same); with any other, or where a route's dependants cannot be
reached, nothing is changed.
"""
from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["ENV", "ResolvedOverrides", "resolve_overrides"]

#: Set to ``0`` to leave the overrides to FastAPI.
ENV = "STEMCAL_RESOLVE_OVERRIDES"


class ResolvedOverrides(dict):
    """``app.dependency_overrides`` after :func:`resolve_overrides`: the same mapping,
    false while the overrides it holds are in the route dependants and the routes are
    the ones they were put into (FastAPI then skips its per-request override pass).

    Any change to the mapping first puts the original callables back into the
    dependants, and from then on it is a plain dict to FastAPI.
    """

    def __init__(self, mapping: dict, version: Callable[[], Any], undo: list):
        super().__init__(mapping)
        self._version = version
        self._at = version()
        self._undo = undo   # (dependant, its original callable)

    def __bool__(self) -> bool:
        if not self._undo or self._version() != self._at:
            return len(self) > 0
        return False

    def _restore(self) -> None:
        for dep, call in self._undo:
            dep.call = call
        self._undo = []

    def __setitem__(self, key, value):
        self._restore()
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self._restore()
        super().__delitem__(key)

    def __ior__(self, other):
        self._restore()
        return super().__ior__(other)

    def clear(self):
        self._restore()
        super().clear()

    def pop(self, *args):
        self._restore()
        return super().pop(*args)

    def popitem(self):
        self._restore()
        return super().popitem()

    def setdefault(self, *args):
        self._restore()
        return super().setdefault(*args)

    def update(self, *args, **kwargs):
        self._restore()
        super().update(*args, **kwargs)


def _routes_version(app: Any) -> Callable[[], Any]:
    """A cheap fingerprint of the app's routes (FastAPI's own counter where it has one)."""
    router = app.router
    counter = getattr(router, "_get_routes_version", None)
    if callable(counter):
        return counter
    return lambda: tuple(map(id, router.routes))


def _contexts(router: Any) -> Iterator[Any]:
    """Every route object under ``router`` that may hold a dependant (each once): routes,
    and (FastAPI with included-router contexts) the effective route contexts of every
    included router at any depth, built now if not yet, and the routes FastAPI makes for
    some of them (``starlette_route``: the websocket routes of included routers)."""
    seen: set[int] = set()
    stack = list(getattr(router, "routes", ()))
    while stack:
        route = stack.pop()
        if id(route) in seen:
            continue
        seen.add(id(route))
        yield route
        own = getattr(route, "starlette_route", None)
        if own is not None:
            stack.append(own)
        if hasattr(route, "original_router"):          # an included router (FastAPI >= 0.13x)
            for name in ("effective_candidates", "effective_low_priority_routes"):
                build = getattr(route, name, None)
                if callable(build):
                    stack.extend(build())
            stack.extend(getattr(route.original_router, "routes", ()))


def _dependants(app: Any) -> list[Any]:
    """Every dependant reachable from the app's routes (each once)."""
    out: dict[int, Any] = {}
    stack = [getattr(r, "dependant", None) for r in _contexts(app.router)]
    while stack:
        dep = stack.pop()
        if dep is None or id(dep) in out:
            continue
        out[id(dep)] = dep
        stack.extend(getattr(dep, "dependencies", ()))
    return list(out.values())


def _parameterless(call: Any) -> bool:
    try:
        return not inspect.signature(call).parameters
    except (TypeError, ValueError):
        return False


def _overridden(call: Any, overrides: dict) -> bool:
    try:
        return call in overrides
    except TypeError:   # an unhashable callable is no key of the dict
        return False


def resolve_overrides(app: Any) -> int:
    """Put ``app.dependency_overrides`` into the route dependants (module docstring).

    Returns how many dependants were changed; 0 where nothing was done (no overrides,
    already resolved, an override this cannot resolve, no dependants found, or
    :data:`ENV` set to ``0``).
    """
    overrides = app.dependency_overrides
    if (not overrides or isinstance(overrides, ResolvedOverrides)
            or os.environ.get(ENV, "").strip() == "0"):
        return 0
    if not all(_parameterless(k) and _parameterless(v) for k, v in overrides.items()):
        log.debug("dependency overrides left to FastAPI: one takes parameters")
        return 0
    try:
        deps = _dependants(app)
    except Exception as exc:   # another FastAPI's internals: leave the app as it is
        log.debug("dependency overrides left to FastAPI: %r", exc)
        return 0
    targets = [d for d in deps if _overridden(getattr(d, "call", None), overrides)]
    if not targets or any(d.dependencies or d.path_params or d.query_params or d.header_params
                          or d.cookie_params or d.body_params for d in targets):
        return 0
    undo = [(dep, dep.call) for dep in targets]
    for dep in targets:
        dep.call = overrides[dep.call]
    app.dependency_overrides = ResolvedOverrides(dict(overrides), _routes_version(app), undo)
    log.debug("resolved %d dependency override(s) in %d dependants", len(overrides), len(targets))
    return len(targets)
