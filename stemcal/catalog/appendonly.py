"""Append-only catalog server: keys other than the admin key can add runs, never change them.

tiled's scopes cannot say "may add a run and finish it, may not change or
delete it": ``TiledWriter`` needs ``write:metadata`` (it adds the stop
document to the run's metadata, and updates the data source of a detector
file for every ``StreamDatum``), and the same scope allows replacing any
metadata (``PUT /metadata/UID?drop_revision=true``). So
:class:`AppendOnlyMiddleware`, an ASGI middleware around the server's app,
checks every request that may write; the admin key (compared by SHA-256 in
constant time) passes unchecked. For every other key:

* reads pass (GET/HEAD, and the POST read routes ``container/full``,
  ``table/full``, ``table/partition``, ``awkward/buffers``), and so do login
  and session requests (tiled answers them; no password gets in);
* ``POST /api/v1/metadata/`` (a new run at the top) passes; tiled itself
  answers 409 to a uid that exists;
* ``DELETE /api/v1/stream/close/...`` passes (it closes a live stream);
* a write below a run (new stream or array, registering a file, its data
  source, table rows, array blocks, metadata of a stream) passes only while
  the run has no ``stop`` document; a PATCH of the run node itself may only
  *add* ``stop`` and ``notes``;
* everything else is refused with 403: replacing or deleting metadata, deleting
  nodes or revisions, writing into a finished run, key and principal
  administration.

Detector files registered with a run must lie in the server's data
directories; one outside is refused at registration with 400 naming the
directory, instead of failing with 500 when it is read.

The state of a run is read through the app itself with the caller's
credentials; a run seen finished is remembered. The middleware sits inside
the catalog's write lock (:mod:`stemcal.catalog.writelock`), so the check and
the write are one step for every writer of the catalog.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlparse

__all__ = ["AppendOnlyMiddleware", "RUN_PATCH_KEYS"]

_READ_POST_ROUTES = {"container/full", "table/full", "table/partition", "awkward/buffers"}
_WRITE_ROUTES = {  # (method, route) a writer uses below a run
    ("POST", "metadata"), ("POST", "register"), ("PUT", "data_source"),
    ("PUT", "array/full"), ("PATCH", "array/full"), ("PUT", "array/block"),
    ("PUT", "table/full"), ("PUT", "table/partition"), ("PATCH", "table/partition"),
    ("PUT", "awkward/full"), ("PUT", "ragged/full"), ("PATCH", "ragged/full"),
    ("PUT", "ragged/block"), ("PATCH", "metadata"),
}
#: Logging in and out (tiled answers them itself; stemcal's server accepts no passwords).
_LOGIN_ROUTES = ("/api/v1/auth/provider/", "/api/v1/auth/session/")
#: What a PATCH of a run's own metadata may add.
RUN_PATCH_KEYS = {"stop", "notes"}
_ROUTE = re.compile(r"^/api/v1/(container/full|table/full|table/partition|awkward/buffers|"
                    r"array/full|array/block|awkward/full|ragged/full|ragged/block|node/full|"
                    r"stream/close|metadata|register|data_source|revisions|asset)(/.*)?$")


def _presented_key(scope: dict) -> str | None:
    headers = dict(scope.get("headers") or ())
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth.lower().startswith("apikey "):
        return auth[7:].strip()
    for part in scope.get("query_string", b"").decode("latin-1").split("&"):
        if part.startswith("api_key="):
            return unquote(part[8:])
    return None


def _under(uri: str, roots: list[str]) -> bool:
    """``uri`` is a file URI (``file://localhost/abs`` or ``file:///abs``) below one of ``roots``."""
    p = urlparse(uri)
    if p.scheme != "file" or p.netloc not in ("", "localhost"):
        return False
    path = os.path.realpath(unquote(p.path))
    return any(os.path.commonpath([path, r]) == r for r in roots)


def _asset_uris(route: str, req: Any) -> list[str]:
    sources = (req.get("data_sources") or []) if route == "register" else [
        req.get("data_source") or {}]
    return [a.get("data_uri", "") for ds in sources if isinstance(ds, dict)
            for a in ds.get("assets") or [] if isinstance(a, dict)]


def _run_patch_ok(body: bytes) -> bool:
    """Whether a PATCH of a run's metadata only adds :data:`RUN_PATCH_KEYS`."""
    try:
        req = json.loads(body)
    except ValueError:
        return False
    if not isinstance(req, dict) or req.get("specs") is not None \
            or req.get("access_tags") is not None:
        return False
    patch, ctype = req.get("metadata"), req.get("content-type")
    if ctype == "application/json-patch+json" and isinstance(patch, list):
        return all(isinstance(op, dict) and op.get("op") == "add"
                   and str(op.get("path", "")).count("/") == 1
                   and str(op.get("path", "")).lstrip("/") in RUN_PATCH_KEYS for op in patch)
    if ctype == "application/merge-patch+json" and isinstance(patch, dict):
        return set(patch) <= RUN_PATCH_KEYS
    return False


class AppendOnlyMiddleware:
    """ASGI middleware enforcing the rules of the module docstring.

    Parameters
    ----------
    app : ASGI app
    admin_sha256 : str, optional
        SHA-256 (hex) of the admin key's bytes; None: no key may change or delete.
    data_dirs : iterable of str
        Directories detector files may be registered from; a refusal names the first.
    """

    def __init__(self, app: Any, admin_sha256: str | None,
                 data_dirs: Iterable[str] = ()) -> None:
        self.app = app
        self.admin = bytes.fromhex(admin_sha256) if admin_sha256 else None
        self.data_dirs = [os.path.realpath(d) for d in data_dirs]
        self.stopped: set[str] = set()

    def _is_admin(self, scope: dict) -> bool:
        key = _presented_key(scope)
        if not key or self.admin is None:
            return False
        try:
            secret = bytes.fromhex(key)
        except ValueError:
            return False
        return hmac.compare_digest(hashlib.sha256(secret).digest(), self.admin)

    @staticmethod
    async def _refuse(send: Any, why: str, status: int = 403) -> None:
        body = json.dumps({"detail": f"append-only catalog: {why}"}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _run_is_open(self, scope: dict, uid: str) -> bool | None:
        """True: the run exists without a stop document; False: it has one; None: no such run."""
        import httpx

        if uid in self.stopped:
            return False
        headers = [(k, v) for k, v in scope["headers"] if k in (b"authorization", b"cookie")]
        # through the whole application: the stack below expects what Starlette adds to scope
        transport = httpx.ASGITransport(app=scope.get("app", self.app))
        async with httpx.AsyncClient(transport=transport, base_url="http://internal") as c:
            r = await c.get(f"/api/v1/metadata/{uid}", headers=headers,
                            params={"fields": "metadata"})
        if r.status_code == 404:
            return None
        r.raise_for_status()
        if r.json()["data"]["attributes"]["metadata"].get("stop") is not None:
            self.stopped.add(uid)
            return False
        return True

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        method = scope["method"]
        m = _ROUTE.match(scope["path"])
        route = m.group(1) if m else None
        rest = [p for p in ((m.group(2) or "") if m else "").split("/") if p]
        if method == "POST" and (route in _READ_POST_ROUTES
                                 or scope["path"].startswith(_LOGIN_ROUTES)):
            return await self.app(scope, receive, send)
        check_assets = route in ("register", "data_source") and bool(self.data_dirs)
        if self._is_admin(scope) and not check_assets:
            return await self.app(scope, receive, send)
        if not self._is_admin(scope):
            refusal = await self._writer_refusal(scope, method, route, rest)
            if refusal is not None:
                return await self._refuse(send, refusal)
        check_patch = method == "PATCH" and route == "metadata" and len(rest) == 1
        if not (check_patch or check_assets):
            return await self.app(scope, receive, send)
        messages, body = [], b""
        while True:
            msg = await receive()
            messages.append(msg)
            body += msg.get("body", b"")
            if not msg.get("more_body", False):
                break
        if check_patch and not self._is_admin(scope) and not _run_patch_ok(body):
            return await self._refuse(send, "a run's metadata may only gain 'stop' and 'notes'; "
                                            "'start' cannot be changed")
        if check_assets:
            try:
                uris = _asset_uris(route, json.loads(body))
            except (ValueError, AttributeError):
                return await self._refuse(send, "unreadable data source", 400)
            bad = [u for u in uris if u.startswith("file:") and not _under(u, self.data_dirs)]
            if bad:
                return await self._refuse(
                    send, f"detector file {bad[0]} is outside the server's data directories; "
                          f"write it below {self.data_dirs[0]}", 400)
        replay = iter(messages)

        async def receive_again() -> dict:
            try:
                return next(replay)
            except StopIteration:
                return await receive()
        return await self.app(scope, receive_again, send)

    async def _writer_refusal(self, scope: dict, method: str, route: str | None,
                              rest: list[str]) -> str | None:
        """Why a non-admin request must be refused, or None if it may go on."""
        if route is None:  # auth/apikey, principals, webhooks, anything new: admin only
            return f"{method} {scope['path']} needs the admin key"
        if method == "DELETE" and route == "stream/close":
            return None
        if method == "POST" and route == "metadata" and not rest:
            return None  # a new run
        if (method, route) not in _WRITE_ROUTES or not rest:
            return (f"{method} /{route} is not allowed with this key (runs cannot be changed or "
                    "deleted)")
        state = await self._run_is_open(scope, rest[0])
        if state is False:
            return f"run {rest[0]} is complete (has a stop document) and cannot be changed"
        return None  # open, or no such run (tiled answers 404)
