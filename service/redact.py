"""Host paths out of messages meant for clients: a client learns what broke, not where.

The server's own log keeps the full text; what goes into a response or a job record passes
through here first.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# An absolute path: a slash, then path characters (quotes, spaces, commas and brackets end it).
_ABSOLUTE = re.compile(r"(?<![\w.~:/])/(?:[^\s'\"()\[\]{},;:]+/?)+")

_STORE_FILES = {
    "model.safetensors": "the weights file",
    "meta.json": "meta.json",
    "vocab.json": "the vocabulary file",
}


def _basename(match: re.Match[str]) -> str:
    name = os.path.basename(match.group(0).rstrip("/"))
    return f"<{name}>" if name else "<path>"


def without_paths(text: str) -> str:
    """`text` with each absolute path replaced by its last component in angle brackets."""
    return _ABSOLUTE.sub(_basename, text)


def version_message(text: str, model_dir: Path, name: str, version: int) -> str:
    """A store error about `name` v`version`, told without host paths.

    "/srv/models/lstm/3/model.safetensors: unreadable ..." becomes "the weights file of
    lstm v3: unreadable ...".
    """
    base = os.path.join(str(model_dir), name, str(version))
    for file, label in _STORE_FILES.items():
        text = text.replace(os.path.join(base, file), f"{label} of {name} v{version}")
    text = text.replace(base, f"{name} v{version}")
    return without_paths(text.replace(str(model_dir), "the model store"))


# `scheme://user:password@host` or `scheme://password@host`: everything from `//` to the
# authority's last `@` (a password may hold an unescaped `@`).
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s]+@")
# redis-py also takes the password as a query argument: `redis://host/0?password=...`.
_QUERY_SECRET = re.compile(r"(?P<key>[?&](?:password|username)=)[^&\s]*", re.I)


def without_credentials(text: str) -> str:
    """`text` with the user and password of every URL in it shown as `***`, so a store URL
    (`redis://:secret@host:6379/0`) can be logged, shown in `ps` or put in an error."""
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    return _QUERY_SECRET.sub(r"\g<key>***", text)
