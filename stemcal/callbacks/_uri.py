"""Local file paths of the ``file://localhost/...`` URIs in stream resources."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse


def local_path(uri: str) -> Path:
    """The path of a ``file://localhost/...`` (or ``file:///...``) URI; ``ValueError`` otherwise."""
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise ValueError(f"cannot read {uri!r}: only file://localhost/... URIs are supported")
    return Path(unquote(parsed.path))
