"""em-export --serve: the export and neuroglancer's bundled client over HTTP on 127.0.0.1, CORS,
Ctrl-C, and a real headless Chromium that loads every layer (where Chromium is installed).

``EMTOOLS_SCREENSHOT=examples/em-export.png pytest tests/test_export_serve.py -k chromium``
also keeps the browser's screenshot there (the README's picture).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_data, tool_command
from emtools import io
from emtools.errors import EmError
from emtools.meta import Metadata
from emtools.tiling.geometry import Box

pytest.importorskip("zmesh", reason="zmesh (the view extra) is not installed")
pytest.importorskip("kimimaro", reason="kimimaro (the view extra) is not installed")

from emtools.export.jobs import ExportSettings, export_volumes, layer_inputs  # noqa: E402
from emtools.export.serve import ExportServer, client_folder, read_state  # noqa: E402

CLIENT = client_folder()
needs_client = pytest.mark.skipif(CLIENT is None, reason="the neuroglancer package (its viewer client) is not installed")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An export of a FIB-25 crop (32 x 80 x 80 voxels of 10 nm): image and bodies with meshes (not
    simplified: faster here) and skeletons."""
    bodies = shared_data("fib25", "train", "bodies.h5")
    images = shared_data("fib25", "train", "image")
    box = Box((40, 60, 60), (72, 140, 140))
    with io.open_volume(f"{bodies}:bodies") as source:
        labels = source.read(box)
    with io.open_volume(str(images)) as source:
        image = source.read(box)
    folder = tmp_path_factory.mktemp("serve")
    meta = Metadata(voxel_size_nm=(10, 10, 10), offset_nm=(400, 600, 600))
    io.write_volume(f"{folder}/raw.h5:/raw", image, meta)
    io.write_volume(f"{folder}/seg.h5:/seg", labels, meta)
    layers = layer_inputs(images=[f"{folder}/raw.h5:/raw"], segmentations=[f"{folder}/seg.h5:/seg"])
    out = folder / "view"
    export_volumes(layers, str(out), ExportSettings(min_voxels=200, show=12, mesh_reduction=0))
    return out


def _get(url, method="GET", body=None):
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, response.headers, data  # headers: case-insensitive


@pytest.fixture
def server(exported):
    state, base = read_state(str(exported))
    with ExportServer(str(exported), port=0, client=CLIENT, state=state, state_base_url=base) as served:
        thread = threading.Thread(target=served.serve_forever, daemon=True)
        thread.start()
        yield served
        served.shutdown()
        thread.join(10)


def test_serves_files_with_cors_and_nothing_outside(server, exported):
    status, headers, data = _get(f"{server.base_url}/raw/info")
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
    assert json.loads(data) == json.loads((exported / "raw" / "info").read_text())
    chunk = next(p for p in (exported / "seg" / "10_10_10").iterdir())
    status, headers, data = _get(f"{server.base_url}/seg/10_10_10/{chunk.name}")
    assert status == 200 and data == chunk.read_bytes() and headers["Content-Type"] == "application/octet-stream"
    manifest = next((exported / "seg" / "mesh").glob("*:0"))
    status, _, data = _get(f"{server.base_url}/seg/mesh/{urllib.parse.quote(manifest.name)}")
    assert status == 200 and json.loads(data) == json.loads(manifest.read_text())
    status, headers, _ = _get(f"{server.base_url}/raw/info", method="OPTIONS")
    assert status == 204 and "GET" in headers["Access-Control-Allow-Methods"]
    for outside in ("/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/v/emtools/../../../etc/passwd", "/nothing"):
        status, _, data = _get(server.base_url + outside)
        assert status == 404 and b"root:" not in data, outside
    assert ("GET", "/raw/info", 200) in server.requests


@needs_client
def test_serves_the_bundled_client_and_redirects_to_the_state(server):
    status, headers, page = _get(server.viewer_url)
    assert status == 200 and headers["Content-Type"] == "text/html"
    assert b"window.EventSource" in page and b"<script defer" in page  # the stand-in, then neuroglancer
    scripts = re.findall(rb'src="([^"]+\.js)"', page)
    assert scripts
    for script in scripts:
        status, headers, data = _get(server.viewer_url + script.decode())
        assert status == 200 and headers["Content-Type"] == "application/javascript"
        assert data == (Path(CLIENT) / script.decode()).read_bytes()
    wasm = next(Path(CLIENT).glob("*.wasm"))
    status, headers, _ = _get(server.viewer_url + wasm.name)
    assert status == 200 and headers["Content-Type"] == "application/wasm"
    status, headers, _ = _get(server.base_url + "/")
    assert status == 302 and headers["Location"].startswith(server.viewer_url + "#!")
    state = json.loads(urllib.parse.unquote(headers["Location"].split("#!", 1)[1]))
    assert state["layers"][0]["source"] == f"precomputed://{server.base_url}/raw"  # the port it really has
    status, _, data = _get(f"{server.base_url}/state/emtools", method="POST", body=b'{"s": {}}')
    assert status == 200 and "g" in json.loads(data)


def test_a_busy_port_is_one_line(server, exported):
    with pytest.raises(EmError, match=f"port {server.port} is in use on 127.0.0.1; choose another with --port"):
        ExportServer(str(exported), port=server.port)
    with pytest.raises(EmError, match="no such export folder"):
        ExportServer(str(exported / "missing"), port=0)


def _start(exported, *extra):
    """``em-export --serve -o EXPORTED --port 0 -v``: (process, the URL it printed)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(tool_command("export") + ["--serve", "-o", str(exported), "--port", "0", "-v", *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    ready, _, _ = select.select([process.stdout], [], [], 60)
    if not ready:
        process.kill()
        pytest.fail("em-export --serve printed no URL within 60 s")
    return process, process.stdout.readline().strip()


def _stop(process):
    """Ctrl-C: the server stops, exit 0; (stdout rest, stderr)."""
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err
    return out, err


@needs_client
def test_cli_serves_until_ctrl_c(exported):
    process, url = _start(exported)
    try:
        viewer, _, fragment = url.partition("#!")
        base = viewer.split("/v/", 1)[0]
        assert re.match(r"^http://127\.0\.0\.1:\d+/v/emtools/$", viewer) and not base.endswith(":0")
        state = json.loads(urllib.parse.unquote(fragment))
        assert [layer["source"] for layer in state["layers"]] == [f"precomputed://{base}/raw", f"precomputed://{base}/seg"]
        with urllib.request.urlopen(f"{base}/seg/info", timeout=10) as response:
            assert json.loads(response.read())["type"] == "segmentation"
    finally:
        out, err = _stop(process)
    assert out == ""  # the URL was the only line of data
    assert "GET /seg/info 200" in err


_READY = ("(() => { try { return JSON.stringify({ready: viewer.display.isReady(), layers: "
          "viewer.layerManager.managedLayers.map(l => [l.name, l.isReady()])}); } catch (e) { return 'error ' + e; } })()")


async def _browse(url: str, profile: Path, shot: Path, timeout_s: float = 90.0) -> dict:
    """Open ``url`` in headless Chromium (WebGL by SwiftShader), wait until neuroglancer says every
    panel and layer is ready, save a screenshot; returns the last readiness report.

    Driven over the DevTools protocol (tornado's websocket client: tornado comes with neuroglancer),
    because a one-shot ``chromium --screenshot`` may shoot before the segmentation is drawn.
    """
    import asyncio
    import base64

    import tornado.websocket

    browser = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        start = time.monotonic()
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            assert time.monotonic() - start < 60 and browser.poll() is None, "Chromium did not start"
            await asyncio.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            pages = json.load(response)
        socket = await tornado.websocket.websocket_connect(
            next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page"), max_message_size=1 << 28)
        calls = iter(range(1, 1 << 30))

        async def call(method, **params):
            number = next(calls)
            socket.write_message(json.dumps({"id": number, "method": method, "params": params}))
            while True:
                message = json.loads(await socket.read_message())
                if message.get("id") == number:
                    assert "error" not in message, message
                    return message["result"]

        width, height = (1200, 800) if os.environ.get("EMTOOLS_SCREENSHOT") else (800, 600)
        await call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        await call("Page.navigate", url=url)
        report: dict = {}
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            value = (await call("Runtime.evaluate", expression=_READY, returnByValue=True))["result"].get("value", "")
            report = json.loads(value) if value.startswith("{") else {"error": value}
            if report.get("ready") and all(ready for _, ready in report["layers"]):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # meshes and skeletons arrive after the chunks: let them draw
        shot.write_bytes(base64.b64decode((await call("Page.captureScreenshot", format="png"))["data"]))
        socket.close()
        return report
    finally:
        browser.kill()
        browser.wait(30)


@needs_client
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed (apt-get install chromium)")
def test_headless_chromium_loads_every_layer(exported, tmp_path):
    import asyncio

    process, url = _start(exported)
    shot = tmp_path / "view.png"
    try:
        report = asyncio.run(_browse(url, tmp_path / "profile", shot))
    finally:
        _, err = _stop(process)
    # neuroglancer itself says that both layers loaded and every panel is drawn
    assert report.get("ready") and report["layers"] == [["raw", True], ["seg", True]], report
    requests = re.findall(r"^em-export: (GET|POST) (\S+) (\d+)$", err, flags=re.MULTILINE)
    failed = [(path, status) for _, path, status in requests if status != "200" and path != "/favicon.ico"]
    assert not failed, failed
    paths = {urllib.parse.unquote(path) for _, path, _ in requests}
    # the viewer asked for the client, every layer's metadata, chunks of both layers, meshes, skeletons
    for wanted in ("/v/emtools/", "/raw/info", "/seg/info", "/seg/mesh/info", "/seg/skeletons/info",
                   "/seg/segment_properties/info"):
        assert wanted in paths, wanted
    state = read_state(str(exported))[0]
    shown = state["layers"][1]["segments"]
    assert {f"/seg/mesh/{s}:0" for s in shown} <= paths and {f"/seg/mesh/{s}.frag" for s in shown} <= paths
    assert {f"/seg/skeletons/{s}" for s in shown} <= paths
    assert any(re.match(r"^/raw/\d+_\d+_\d+/\d+-\d+_\d+-\d+_\d+-\d+$", p) for p in paths)
    assert any(re.match(r"^/seg/\d+_\d+_\d+/\d+-\d+_\d+-\d+_\d+-\d+$", p) for p in paths)
    # ... and each answer was the file on disk (the server's 200s are the export's bytes)
    data_paths = [p for p in paths if not p.startswith("/v/") and p not in ("/", "/favicon.ico")]
    state_server = ExportServer(str(exported), port=0)
    thread = threading.Thread(target=state_server.serve_forever, daemon=True)
    thread.start()
    try:
        for path in data_paths:
            status, _, data = _get(state_server.base_url + urllib.parse.quote(path))
            assert status == 200 and data == (exported / path.lstrip("/")).read_bytes(), path
    finally:
        state_server.shutdown()
        thread.join(10)
    # the picture shows coloured meshes and segments, not an empty or error page
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    saturated = (pixels.max(axis=1) - pixels.min(axis=1)) > 80
    assert saturated.mean() > 0.02 and len(np.unique(pixels[saturated], axis=0)) > 100
    keep = os.environ.get("EMTOOLS_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
