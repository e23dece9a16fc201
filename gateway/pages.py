"""The live Plan DAG page: `GET /` and `GET /static/<name>`, from gateway/static.

The page is a handful of static files (HTML, CSS, ES modules) with no build step, so they
are served as they are. They are read once, the first time the page is asked for, and kept
in memory: a request never touches the disk on the event loop, and a file edited under a
running server shows after a restart.

Every answer carries an ETag and `Cache-Control: no-cache`: a browser keeps its copy and
asks again each time (a 304 costs a few bytes), so a new version is picked up at once
without fingerprinted names. Names are flat (no directories), so anything that is not a
plain file name is refused before it comes near the file system.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from http import HTTPStatus
from pathlib import Path

from websockets.datastructures import Headers
from websockets.http11 import Response

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PREFIX = "/static/"
INDEX = "index.html"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}

# The page loads only its own files and talks only to its own origin.
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    (
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
)

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9]+)+")


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


@cache
def static_files() -> dict[str, StaticFile]:
    """Every servable file of gateway/static, by name (read once per process)."""
    files: dict[str, StaticFile] = {}
    if not STATIC_DIR.is_dir():  # an install without the page's files: every name is a 404
        return files
    for path in sorted(STATIC_DIR.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix)
        if not path.is_file() or content_type is None or not _SAFE_NAME.fullmatch(path.name):
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        files[path.name] = StaticFile(body, content_type, etag)
    return files


def respond(path: str, request_headers: Headers | None = None) -> Response:
    """The answer to a GET of `path` ("/" or "/static/<name>")."""
    if path == "/":
        name = INDEX
    elif path.startswith(STATIC_PREFIX):
        name = path[len(STATIC_PREFIX) :]
        if not _SAFE_NAME.fullmatch(name):
            return _text(
                HTTPStatus.BAD_REQUEST,
                f"refused {path}: a page file is a plain name under {STATIC_PREFIX} "
                "(letters, digits, '-', '_' and an extension; no directories, no '..', "
                "no escapes)\n",
            )
    else:
        return _text(HTTPStatus.NOT_FOUND, f"nothing at {path}\n")
    file = static_files().get(name)
    if file is None:
        names = ", ".join(sorted(static_files())) or "none"
        return _text(
            HTTPStatus.NOT_FOUND,
            f"no page file {name!r} at {path} (the page's files are: {names})\n",
        )
    headers = Headers(
        [
            ("Content-Type", file.content_type),
            ("Cache-Control", "no-cache"),
            ("ETag", file.etag),
            *SECURITY_HEADERS,
        ]
    )
    if request_headers is not None and _matches(request_headers.get("If-None-Match"), file.etag):
        return Response(HTTPStatus.NOT_MODIFIED.value, HTTPStatus.NOT_MODIFIED.phrase, headers, b"")
    headers["Content-Length"] = str(len(file.body))
    return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, file.body)


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


def _text(status: HTTPStatus, text: str) -> Response:
    body = text.encode()
    headers = Headers(
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("X-Content-Type-Options", "nosniff"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)
