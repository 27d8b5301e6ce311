"""Serve an export folder and neuroglancer's own client over HTTP on the loopback address.

``ExportServer(folder, port)`` answers, on ``http://127.0.0.1:PORT``:

- ``/NAME/...``: the export's files (precomputed layers, ``state.json``), with CORS headers so a
  neuroglancer served from elsewhere may read them too;
- ``/v/emtools/``: the neuroglancer client that the ``neuroglancer`` Python package ships
  (``neuroglancer/static/client``: the viewer works offline). That build is the one neuroglancer's
  Python integration serves: its page gets a stand-in for the Python server's event stream (the
  state comes from the URL), and its state posts to ``/state/emtools`` are acknowledged;
- ``/``: a redirect to the viewer with the export's state.

Every request is logged at debug level (``-v``) and kept in :attr:`ExportServer.requests` as
``(method, path, status)``. Stop it with :meth:`ExportServer.shutdown` from another thread, or
Ctrl-C in the thread that runs :meth:`ExportServer.serve_forever`.
"""

from __future__ import annotations

import errno
import http.server
import importlib.util
import json
import logging
import os
import re
import threading
import urllib.parse

from emtools.errors import EmError
from emtools.export.state import change_base_url, state_url

__all__ = ["CLIENT_TOKEN", "ExportServer", "client_folder", "read_state"]

log = logging.getLogger("emtools")

CLIENT_TOKEN = "emtools"
_CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*\.(?:js|map|css|wasm|html)$")
_TYPES = {".js": "application/javascript", ".map": "application/json", ".css": "text/css",
          ".wasm": "application/wasm", ".html": "text/html", ".json": "application/json"}
# The bundled client is the build neuroglancer's Python integration serves: it would open an
# event stream to a Python server for state updates (and show "Disconnected from Python server"
# without one). Here the state comes from the URL, so the page gets a stand-in stream that
# "connects" and never sends: no request stays open (headless screenshots wait for those).
_NO_PYTHON_SERVER = (
    b"<script>window.EventSource = class {constructor(url) {this.url = url; this.readyState = 1; "
    b"setTimeout(() => this.onopen && this.onopen(), 0);} close() {this.readyState = 2;} "
    b"addEventListener() {} removeEventListener() {}};</script>"
)


def client_folder() -> str | None:
    """The folder of the neuroglancer client in the installed ``neuroglancer`` package, or None.

    Found without importing the package (which would load tornado and more).
    """
    try:
        spec = importlib.util.find_spec("neuroglancer")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        folder = os.path.join(root, "static", "client")
        if os.path.isfile(os.path.join(folder, "index.html")):
            return folder
    return None


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: "_Server"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=kwargs.pop("directory"), **kwargs)

    # -- headers and logs
    def end_headers(self):
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, POST, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "x-requested-with, range, content-type")
        self.send_header("Access-Control-Expose-Headers", "content-range, content-length")
        super().end_headers()

    def log_request(self, code="-", size="-"):
        status = int(getattr(code, "value", code)) if str(getattr(code, "value", code)).isdigit() else 0
        self.server.owner.record(self.command, urllib.parse.unquote(self.path.split("?", 1)[0]), status)
        log.debug("%s %s %s", self.command, self.path.split("?", 1)[0][:200], status)

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        log.debug("%s %s", self.address_string(), format % args)

    def guess_type(self, path):
        name = os.path.basename(path)
        ext = os.path.splitext(name)[1].lower()
        if ext in _TYPES:
            return _TYPES[ext]
        if name == "info" or name.endswith(":0") or name == "provenance":
            return "application/json"
        return "application/octet-stream"

    # -- routes
    def do_OPTIONS(self):
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        path = urllib.parse.unquote(self.path.split("?", 1)[0])
        prefix = f"/v/{CLIENT_TOKEN}/"
        if path == "/" and self.server.owner.state is not None and self.server.owner.client is not None:
            self.send_response(302)
            self.send_header("Location", self.server.owner.viewer_link())
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == f"/v/{CLIENT_TOKEN}":
            self.send_response(301)
            self.send_header("Location", prefix)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path.startswith(prefix):
            self._client_file(path[len(prefix):] or "index.html")
        else:
            super().do_GET()

    def do_POST(self):
        path = urllib.parse.unquote(self.path.split("?", 1)[0])
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if path == f"/state/{CLIENT_TOKEN}":  # the client's state, acknowledged and dropped
            self._send(200, b'{"g": "0"}', "application/json")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _client_file(self, name: str) -> None:
        folder = self.server.owner.client
        path = os.path.join(folder, name) if folder is not None and _CLIENT_NAME.match(name) else None
        if path is None or not os.path.isfile(path):
            self._send(404, b"not found\n", "text/plain")
            return
        with open(path, "rb") as handle:
            body = handle.read()
        if name == "index.html":
            body = body.replace(b"<script", _NO_PYTHON_SERVER + b"<script", 1)
        self._send(200, body, _TYPES.get(os.path.splitext(name)[1].lower(), "application/octet-stream"))

class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: "ExportServer"


class ExportServer:
    """An HTTP server for one export folder (see the module's docstring)."""

    def __init__(self, folder: str, port: int = 9000, host: str = "127.0.0.1", client: str | None = None,
                 state: dict | None = None, state_base_url: str | None = None):
        if not os.path.isdir(folder):
            raise EmError(f"no such export folder: {folder}")
        if not 0 <= int(port) <= 65535:
            raise EmError(f"--port must lie in 0..65535, got {port}")
        self.folder = os.path.abspath(folder)
        self.client = client
        self.requests: list[tuple[str, str, int]] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()

        def handler(*args, **kwargs):
            return _Handler(*args, directory=self.folder, **kwargs)

        try:
            self._server = _Server((host, int(port)), handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EmError(f"port {port} is in use on {host}; choose another with --port (0: any free port)") from exc
            raise EmError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc
        self._server.owner = self
        self.host, self.port = self._server.server_address[:2]
        self.base_url = f"http://{self.host}:{self.port}"
        self.viewer_url = f"{self.base_url}/v/{CLIENT_TOKEN}/"
        self.state = None if state is None else (
            change_base_url(state, state_base_url, self.base_url) if state_base_url else state)

    def record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    def viewer_link(self) -> str:
        """The URL that opens the export's state in the served client."""
        return state_url(self.state or {}, self.viewer_url)

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` (from another thread) and close the socket."""
        self.stopping.set()
        self._server.shutdown()
        self.close()

    def close(self) -> None:
        self.stopping.set()
        self._server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_state(folder: str) -> tuple[dict, str | None]:
    """(state, the base URL its sources were written for) of an export folder.

    ``state.json`` is the neuroglancer state itself; ``export.json`` (em-export's manifest) says
    which base URL its layer sources use.
    """
    records = []
    for name in ("state.json", "export.json"):
        path = os.path.join(folder, name)
        try:
            with open(path) as handle:
                records.append(json.load(handle))
        except FileNotFoundError:
            raise EmError(f"{folder} is not an em-export folder (no {name})") from None
        except (OSError, ValueError) as exc:
            raise EmError(f"cannot read {path}: {exc}") from exc
    state, manifest = records
    if not isinstance(state, dict) or not isinstance(manifest, dict) or manifest.get("tool") != "em-export":
        raise EmError(f"{folder} is not an em-export folder (its state.json or export.json is not em-export's)")
    return state, manifest.get("base_url")
