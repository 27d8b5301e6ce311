"""The neuroglancer state: layers in order, centre and units from the first layer, URL round trip."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from emtools.export.state import LayerView, change_base_url, layer_source, state_url, viewer_state

VIEWS = [
    LayerView("raw", "image", (40.0, 4.0, 4.0), (400.0, 40.0, 80.0), (10, 100, 200)),
    LayerView("affs", "prediction", (40.0, 4.0, 4.0), (400.0, 40.0, 80.0), (10, 100, 200), num_channels=3),
    LayerView("seg", "segmentation", (40.0, 8.0, 8.0), (400.0, 40.0, 80.0), (10, 50, 100), segments=(7, 2**40)),
]


def test_layers_sources_and_segments():
    state = viewer_state(VIEWS, "http://127.0.0.1:9000/")
    assert [layer["name"] for layer in state["layers"]] == ["raw", "affs", "seg"]
    assert [layer["type"] for layer in state["layers"]] == ["image", "image", "segmentation"]
    assert state["layers"][0]["source"] == "precomputed://http://127.0.0.1:9000/raw"
    assert state["layers"][2]["segments"] == ["7", str(2**40)]  # ids as strings: uint64 survives JSON
    assert "emitRGB" in state["layers"][1]["shader"] and state["layers"][1]["opacity"] == 0.5
    assert "shader" not in state["layers"][0]


def test_units_and_centre_come_from_the_first_layer():
    state = viewer_state(VIEWS, "http://h")
    assert state["dimensions"] == {"x": [pytest.approx(4e-9), "m"], "y": [pytest.approx(4e-9), "m"],
                                   "z": [pytest.approx(4e-8), "m"]}
    # centre in nm: z 400 + 200, y 40 + 200, x 80 + 400 -> in voxels of 4,4,40 (x,y,z)
    assert state["position"] == pytest.approx([480 / 4, 240 / 4, 600 / 40])
    assert state["crossSectionScale"] == pytest.approx(200 / 500)
    assert viewer_state([], "http://h")["layers"] == []


def test_url_round_trip_and_base_change():
    state = viewer_state(VIEWS, "http://127.0.0.1:9000")
    url = state_url(state, "http://127.0.0.1:9000/v/emtools/")
    viewer, _, fragment = url.partition("#!")
    assert viewer == "http://127.0.0.1:9000/v/emtools/"
    assert " " not in url and json.loads(urllib.parse.unquote(fragment)) == state
    moved = change_base_url(state, "http://127.0.0.1:9000", "https://example.org/data")
    assert moved["layers"][2]["source"] == layer_source("https://example.org/data", "seg")
    assert state["layers"][2]["source"].startswith("precomputed://http://127.0.0.1:9000/")  # a copy
