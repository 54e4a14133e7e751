"""Reading the Bluesky documents a test collected: by name, by run, and the files they name."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse


def of(docs: list, name: str) -> list[dict]:
    """The documents called ``name``, in order."""
    return [d for n, d, *_ in docs if n == name]


def runs(docs: list) -> list[dict]:
    """Per run: ``start``, ``stop`` (or None), its ``resources`` and its events by stream."""
    out: dict[str, dict] = {}
    names = {}
    for name, doc in docs:
        if name == "start":
            out[doc["uid"]] = {"start": doc, "stop": None, "resources": [], "streams": {}}
        elif name == "descriptor":
            names[doc["uid"]] = (doc["run_start"], doc["name"])
        elif name == "event":
            uid, stream = names[doc["descriptor"]]
            out[uid]["streams"].setdefault(stream, []).append(doc)
        elif name == "stream_resource":
            out[doc["run_start"]]["resources"].append(doc)
        elif name == "stop":
            out[doc["run_start"]]["stop"] = doc
    return list(out.values())


def path_of(resource: dict) -> Path:
    """The local file a stream resource names (a ``file://localhost/...`` URI)."""
    uri = urlparse(resource["uri"])
    assert uri.scheme == "file" and uri.netloc == "localhost"
    return Path(uri.path)
