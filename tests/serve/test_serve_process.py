"""The real `keras-unet serve` process over HTTP on a free port (slow): X-AnyLabeling's request by hand, and (where
x-anylabeling-cvhub is installed) X-AnyLabeling's own remote-server client against it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from keras_unet.data.rasterize import rasterize
from keras_unet.imaging.metrics import dice
from keras_unet.io.images import read_image
from keras_unet.io.labelme import labelme_document, read_labelme, write_labelme
from serve_fixtures import IMAGE, MODEL, TOKEN, data_uri, predictor, x_anylabeling_request

pytestmark = pytest.mark.slow
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
CLIENT = Path(__file__).with_name("xanylabeling_client.py")
XAL_ENV = "XANYLABELING_PYTHON"


@pytest.fixture(scope="module")
def server():
    from keras_unet.serve.server import ServerProcess

    with ServerProcess(["--model", MODEL, "--port", "0", "--token", TOKEN]) as running:
        yield running
    assert running.process.returncode == 130, running.output[-8:]  # Ctrl+C, as for every command
    assert running.output[-2:] == ["server stopped", "interrupted"]
    assert not [line for line in running.output if "Traceback" in line]


def assert_rasterises_to_the_masks(shapes, tmp_path):
    image = read_image(IMAGE)
    masks = predictor().segment(image)[1]
    path = tmp_path / "annotated.json"
    write_labelme(path, labelme_document(shapes, IMAGE.name, *image.shape))
    drawn, _ = rasterize(read_labelme(path), predictor().classes)
    for c, name in enumerate(predictor().classes):
        assert masks[..., c].any() and dice(drawn[..., c], masks[..., c]) >= 0.98, name


def test_the_server_process_answers_x_anylabeling_requests_over_http(server, tmp_path):
    assert server.url.startswith("http://127.0.0.1:")
    assert httpx.get(f"{server.url}/health").json()["status"] == "healthy"
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    models = httpx.get(f"{server.url}/v1/models", headers={"Token": TOKEN}).json()["data"]
    headers, payload = x_anylabeling_request(next(iter(models)), data_uri(IMAGE))
    answer = httpx.post(f"{server.url}/v1/predict", json=payload, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["replace"] is True
    assert_rasterises_to_the_masks(answer.json()["data"]["shapes"], tmp_path)
    raw = httpx.post(f"{server.url}/v1/segment", content=IMAGE.read_bytes(), timeout=60,
                     headers={"Token": TOKEN, "Content-Type": "image/png"})
    assert raw.status_code == 200 and set(raw.json()["data"]["masks"]) == set(models["keras_unet"]["classes"])


def x_anylabeling_python() -> str:
    """A Python with x-anylabeling-cvhub: $XANYLABELING_PYTHON, else this one if it has it; else the test skips."""
    candidate = os.environ.get(XAL_ENV) or sys.executable
    found = shutil.which(candidate) or candidate
    probe = subprocess.run([found, "-c", "import anylabeling.services.auto_labeling.remote_server"],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "QT_QPA_PLATFORM": "offscreen"}) if Path(found).exists() else None
    if probe is None or probe.returncode != 0:
        pytest.skip(f"x-anylabeling-cvhub not importable by {candidate} (set {XAL_ENV}: python3.12 -m venv /tmp/xal "
                    "&& /tmp/xal/bin/pip install x-anylabeling-cvhub)")
    return found


def test_x_anylabelings_own_client_gets_the_shapes_and_its_saved_file_reads_back_for_training(server, tmp_path):
    python = x_anylabeling_python()
    image = shutil.copy(IMAGE, tmp_path / IMAGE.name)
    out = subprocess.run([python, str(CLIENT), server.url, TOKEN, str(image), str(tmp_path)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["messages"] == [] and got["replace"] is True
    assert list(got["models"]) == ["keras_unet"]
    assert got["models"]["keras_unet"]["classes"] == predictor().classes
    assert got["file"] and got["file"] == got["canvas"]  # the file's bytes and Qt's re-encoded RGB PNG alike
    assert {s["shape_type"] for s in got["file"]} == {"polygon"}
    assert_rasterises_to_the_masks(got["file"], tmp_path)
    # the file X-AnyLabeling saved (its own keys: score, difficult, kie_linking, ...) as training reads it
    saved = read_labelme(got["saved"])
    assert saved.image_path == Path(image) and len(saved.shapes) == len(got["file"])
    masks = predictor().segment(read_image(image))[1]
    drawn, _ = rasterize(saved, predictor().classes)
    for c, name in enumerate(predictor().classes):
        assert dice(drawn[..., c], masks[..., c]) >= 0.98, name


def test_sigterm_stops_the_server_as_a_service_manager_does():
    import signal

    from keras_unet.serve.server import ServerProcess

    running = ServerProcess(["--model", MODEL, "--port", "0"])
    assert httpx.get(f"{running.url}/health", timeout=30).status_code == 200
    assert running.stop(sig=signal.SIGTERM) == 143  # 128 + SIGTERM, as a process ended by the signal
    assert running.output[-1] == "server stopped" and not [line for line in running.output if "Traceback" in line]


def test_a_keras_run_folder_serves_the_masks_it_gave_in_0_1_0():
    """Any artefact: the v0.1 run folder (model.keras, TensorFlow in the server process only), its /v1/segment
    masks equal to the ones 0.1.0 gave for the same image (tests/fixtures/v0_1/expected_masks.npz)."""
    import numpy as np

    from keras_unet.serve.protocol import decode_mask_png
    from keras_unet.serve.server import ServerProcess

    reference = np.load(MODEL.parents[1] / "expected_masks.npz")["keras__phantom_000"]
    with ServerProcess(["--model", MODEL.parents[1] / "run", "--port", "0"], timeout=300) as running:
        answer = httpx.post(f"{running.url}/v1/segment", content=IMAGE.read_bytes(), timeout=120)
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    got = np.stack([decode_mask_png(data["masks"][name]) for name in data["classes"]], axis=-1)
    assert data["classes"] == ["left_clavicle", "right_clavicle", "rib"] and np.array_equal(got, reference)
