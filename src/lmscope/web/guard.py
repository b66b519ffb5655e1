"""The studio's front door: which Host headers it answers, and how large a body it reads.

`Guard` is a plain ASGI middleware, so it runs before FastAPI parses anything:

* Host check. Binding to 127.0.0.1 is not enough on its own: a web page could reach the studio
  through DNS rebinding, and its requests carry the attacker's name in `Host`. A loopback IP
  literal (any of 127.0.0.0/8, `[::1]`) or `localhost` cannot be such a name, so they are all
  accepted: whatever loopback address `lmscope studio --host` was given, the URL it prints works.
* Body size. A request body past `max_body` bytes is refused with 413 before it is parsed
  (the largest valid body, 16 edits and a 4,000-character prompt, is a few tens of kB).

Both answers are JSON `{"error": message}`, like every other studio error.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

#: Host header values accepted besides loopback literals; "testserver" is TestClient's.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "testserver")


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1, with or without brackets)."""
    h = host.strip().removeprefix("[").removesuffix("]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host part of a Host header: `127.0.0.2:8765` -> `127.0.0.2`, `[::1]:80` -> `[::1]`."""
    h = header.strip()
    if h.startswith("["):
        return h[: h.find("]") + 1] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def host_allowed(header: str, names: tuple[str, ...] | None) -> bool:
    """Whether the studio answers a request with this Host header (`names=None`: any)."""
    if names is None:
        return True
    host = host_name(header)
    return host.lower() in names or is_loopback(host)


def short(text: str, n: int = 60) -> str:
    """`repr` of at most `n` characters of `text` (for messages and log lines: a user's input is
    never logged or echoed whole, and lone surrogates come out escaped)."""
    return repr(text[:n]) + (f"…(+{len(text) - n} chars)" if len(text) > n else "")


class Guard:
    """ASGI middleware: refuse foreign Host headers (400) and oversized bodies (413)."""

    def __init__(self, app, *, allowed_hosts: tuple[str, ...] | None, max_body: int) -> None:
        self.app = app
        self.names = None if allowed_hosts is None else tuple(h.lower() for h in allowed_hosts)
        self.max_body = max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan; the studio has no websockets
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if not host_allowed(host, self.names):
            return await _error(send, 400, (
                f"Host header {short(host, 80)} is not served: the studio answers only loopback names (127.0.0.1, "
                "127.x.y.z, localhost, [::1]), so a web page cannot reach it through DNS rebinding. Open the URL "
                "`lmscope studio` printed, or start it with --allow-remote to serve other names."))
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        # Read the whole body first (at most max_body bytes), then hand it on: a declared
        # Content-Length can be refused at once, a chunked body once it has grown too large.
        too_big = (f"The request body is over {self.max_body:,} bytes; the studio's largest valid body is a few "
                   "tens of kB (see /api/info for the limits).")
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_body:
            return await _error(send, 413 if declared.isdigit() else 400,
                                too_big if declared.isdigit() else "The Content-Length header is not a number.")
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":  # the client went away
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return await _error(send, 413, too_big)
            if not msg.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _error(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


#: A sidecar is a small JSON object; anything larger is not one, and is not read.
MAX_SIDECAR_BYTES = 2**20
#: How far a folder listing looks: depth below each folder, folders read, entries found.
MAX_DEPTH, MAX_DIRS, MAX_FOUND = 4, 4000, 200
SKIP_DIRS = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", ".cache"})


def read_sidecar(path: Path) -> dict | None:
    """The JSON object in the sidecar of artifact `path` (`path.json`), or None when it is missing,
    over `MAX_SIDECAR_BYTES`, not UTF-8 JSON, or not an object. For listings and checks only: loading
    an artifact validates it fully."""
    side = Path(f"{path}.json")
    try:
        if side.stat().st_size > MAX_SIDECAR_BYTES:
            return None
        meta = json.loads(side.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def sidecar_kind(path: Path) -> str | None:
    """The `kind` an artifact's sidecar declares ("vector", "lre", ...), or None."""
    meta = read_sidecar(path)
    return meta.get("kind") if meta is not None else None


class Folders:
    """The server folders a request's path may point into; relative paths start at the first.
    Subclasses say which paths count (`accepts`) and what to tell a user who gave another."""

    what = "folder"

    def __init__(self, folders) -> None:
        if not folders:
            raise ValueError(f"Give at least one {self.what} folder.")
        self.folders = [Path(f).expanduser().resolve() for f in folders]

    def __str__(self) -> str:
        return ", ".join(map(str, self.folders))

    def accepts(self, p: Path) -> bool:  # pragma: no cover - every subclass says
        raise NotImplementedError

    def refusal(self, name: str) -> str:  # pragma: no cover - every subclass says
        raise NotImplementedError

    def quiet(self, e):
        """`e` (an `LmscopeError`) with the folders' own paths cut out of its message (they are the server's)."""
        msg = str(e)
        for f in self.folders:
            msg = msg.replace(f"{f}{os.sep}", "").replace(str(f), ".")
        return type(e)(msg)

    def shown(self, p: Path) -> str:
        """`p` as a request would give it: relative to the first folder when inside it."""
        return str(p.relative_to(self.folders[0]) if p.is_relative_to(self.folders[0]) else p)

    def walk(self) -> Iterator[tuple[Path, list[str]]]:
        """(folder, its file names) below the folders, sorted, skipping hidden and tool folders
        (`SKIP_DIRS`), at most `MAX_DEPTH` levels deep and `MAX_DIRS` folders in all."""
        seen = 0
        for root in self.folders:
            for here, dirs, files in os.walk(root):
                seen += 1
                depth = len(Path(here).relative_to(root).parts)
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")) \
                    if depth < MAX_DEPTH else []
                yield Path(here), sorted(files)
                if seen >= MAX_DIRS:
                    return

    def artifacts(self, describe: Callable[[Path, dict], dict | None]) -> list[dict]:
        """The listing entries of the `.safetensors` artifacts below the folders: `describe(path,
        sidecar)` for each one with a sidecar object, kept when not None, with its "path" as a
        request gives it; at most `MAX_FOUND`."""
        found: list[dict] = []
        for here, files in self.walk():
            for f in files:
                if f.endswith(".safetensors") and f"{f}.json" in files:
                    meta = read_sidecar(here / f)
                    entry = describe(here / f, meta) if meta is not None else None
                    if entry is not None:
                        found.append({"path": self.shown(here / f), **entry})
                        if len(found) >= MAX_FOUND:
                            return found
        return found

    def resolve(self, name: str) -> Path:
        """The path `name` names inside one of the folders (links followed: out is out), if
        `accepts` takes it; else ArtifactError with `refusal`."""
        from lmscope.engine.errors import ArtifactError

        try:
            p = Path(name).expanduser()
            p = (p if p.is_absolute() else self.folders[0] / p).resolve()
            ok = any(p.is_relative_to(f) for f in self.folders) and self.accepts(p)
        except (OSError, ValueError, RuntimeError):  # name too long, NUL byte, link loop
            ok = False
        if not ok:
            raise ArtifactError(self.refusal(name))
        return p
