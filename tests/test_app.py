"""The Gradio app through its API: ``python app.py`` in a subprocess, called with ``gradio_client``.

Works with and without a trained checkpoint: with one it registers with the network ("net"),
without it with a short optimisation ("optimize").
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import gradio_client
import numpy as np
import pytest
from PIL import Image

import regcore
from regcore.warp import warp

ROOT = Path(__file__).resolve().parent.parent
SOURCE, TARGET = ROOT / "examples" / "camera_source.png", ROOT / "examples" / "camera_target.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(args: list[str], env: dict[str, str], timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """Start ``python app.py ARGS`` and wait until it answers HTTP; returns (process, url)."""
    port = args[args.index("--port") + 1] if "--port" in args else env["GRADIO_SERVER_PORT"]
    proc = subprocess.Popen([sys.executable, "app.py", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"app.py did not answer on {url} within {timeout} s")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    proc.stderr.close()


@pytest.fixture(scope="module")
def app_url():
    """The app started the way users start it: port from GRADIO_SERVER_PORT, host from --host (the browser test uses --port)."""
    env = {**os.environ, "GRADIO_SERVER_PORT": str(free_port()), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    env.pop("GRADIO_SERVER_NAME", None)
    proc, url = start_app(["--host", "127.0.0.1"], env)
    yield url
    stop_app(proc)


@pytest.fixture(scope="module")
def client(app_url):
    return gradio_client.Client(app_url, verbose=False)


def method_for_test() -> dict:
    """The network when a checkpoint is shipped, else a short optimisation (the test stays fast either way)."""
    return {"method": "net"} if regcore.available_models() else {"method": "optimize", "refine_steps": 20}


def test_register_endpoint_takes_source_and_target_first(client):
    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/register"]["parameters"]
    names = [p["parameter_name"] for p in params]
    assert names[:2] == ["source", "target"]
    assert not any(p["parameter_has_default"] for p in params[:2])
    assert all(p["parameter_has_default"] for p in params[2:])


def test_register_returns_the_warped_image_first_and_better_scores(client):
    out = client.predict(gradio_client.handle_file(SOURCE), gradio_client.handle_file(TARGET), **method_for_test(), api_name="/register")
    warped_path, checker, difference, quiver, grid, jacobian, scores, summary, files, dice, contours = out
    assert Path(warped_path).suffix == ".png"
    warped = np.asarray(Image.open(warped_path), np.float32) / 255
    source = regcore.load_image(SOURCE)
    target = regcore.load_image(TARGET)
    assert warped.shape == source.shape == (256, 256)

    rows = {row[0].split(" (")[0].split(",")[0]: row[1:] for row in scores["data"]}
    (mse_before, mse_after), (lncc_before, lncc_after) = rows["MSE"], rows["local NCC"]
    assert mse_after < 0.5 * mse_before and lncc_after > lncc_before + 0.1
    assert rows["global NCC"][1] > rows["global NCC"][0]
    # The returned picture is the source warped by the returned field, scored as the table says.
    by_name = {Path(f).name: f for f in files}
    assert set(by_name) == {"flow.npy", "warped.png", "metrics.json"}
    flow = np.load(by_name["flow.npy"])
    assert flow.shape == (2, 256, 256) and flow.dtype == np.float32
    import torch

    rewarped = warp(torch.from_numpy(source)[None, None], torch.from_numpy(flow)[None])[0, 0].numpy()
    assert np.abs(rewarped - warped).max() <= 1.5 / 255
    assert regcore.metrics.mse(warped, target) == pytest.approx(mse_after, rel=0.05, abs=1e-4)
    metrics = json.loads(Path(by_name["metrics.json"]).read_text())
    # The table shows 4 significant digits; metrics.json has the full values.
    assert metrics["after"]["mse"] == pytest.approx(mse_after, rel=1e-3) and metrics["method"] == method_for_test()["method"]

    assert len(checker) == 2 and all(Path(p).suffix == ".png" for p in [*checker, difference])
    assert Image.open(difference).size[0] > 2 * 256  # before | after, side by side
    for plot in (quiver, grid, jacobian):
        assert plot["type"] == "plotly" and json.loads(plot["plot"])["data"]
    assert "hover" in json.loads(quiver["plot"])["layout"]["title"]["text"]
    assert "folding" in json.loads(jacobian["plot"])["layout"]["title"]["text"]
    assert "local NCC" in summary
    assert dice["data"] == [] and contours is None  # no label maps given


def test_register_takes_medical_files_and_label_maps_and_gives_dice(client, tmp_path):
    """A NIfTI pair with label maps, and the same pair as DICOM: Dice before and after, outlines, warped labels."""
    import SimpleITK as sitk

    phantom = {role: ROOT / "examples" / f"phantom_{role}.nii.gz" for role in ("source", "target", "source_labels", "target_labels")}
    for role in ("source", "target"):
        sitk.WriteImage(sitk.ReadImage(str(phantom[role])), str(tmp_path / f"{role}.dcm"))
    results = []
    for source, target in ((phantom["source"], phantom["target"]), (tmp_path / "source.dcm", tmp_path / "target.dcm")):
        out = client.predict(
            gradio_client.handle_file(source),
            gradio_client.handle_file(target),
            method="net",
            source_labels=gradio_client.handle_file(phantom["source_labels"]),
            target_labels=gradio_client.handle_file(phantom["target_labels"]),
            api_name="/register",
        )
        summary, files, dice, contours = out[7], out[8], out[9], out[10]
        rows = {row[0]: row[1:] for row in dice["data"]}
        assert set(rows) == {"mean", "label 1", "label 2", "label 3", "label 4"}
        assert rows["mean"][1] > rows["mean"][0] + 0.05 and "Dice" in summary and "mm" in summary
        assert {Path(f).name for f in files} == {"flow.npy", "warped.png", "metrics.json", "warped_labels.png"}
        assert Image.open(contours).size[0] > 2 * 256  # before | after
        results.append(rows["mean"])
    assert results[0] == pytest.approx(results[1], abs=0.01)  # the same pair, as NIfTI and as DICOM


def test_bad_input_gives_a_one_line_error(client, tmp_path):
    # 5000 × 4000 px is over regcore's pixel limit; the error reaches the client as its one-line message.
    big = tmp_path / "big.png"
    Image.new("L", (5000, 4000)).save(big)
    with pytest.raises(gradio_client.exceptions.AppError, match="larger than the limit") as info:
        client.predict(gradio_client.handle_file(big), gradio_client.handle_file(TARGET), method="optimize", api_name="/register")
    assert "\n" not in str(info.value)
    with pytest.raises(gradio_client.exceptions.AppError, match="maximum value 300"):  # the slider's own check
        client.predict(gradio_client.handle_file(SOURCE), gradio_client.handle_file(TARGET), refine_steps=5000, api_name="/register")


BAD_UPLOADS = [(b"", "empty"), (b"\x89PNG\r\n\x1a\n garbage", "corrupt or truncated"), (b"GIF89a", "not an image")]


@pytest.mark.parametrize(("content", "message"), BAD_UPLOADS)
def test_bad_uploads_reach_regcore_and_get_its_message(client, tmp_path, content, message):
    # Without UploadedImage, gradio decoded the upload itself and answered "Could not preprocess input".
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    with pytest.raises(gradio_client.exceptions.AppError, match=message) as info:
        client.predict(gradio_client.handle_file(bad), gradio_client.handle_file(TARGET), method="optimize", api_name="/register")
    assert "\n" not in str(info.value) and "preprocess" not in str(info.value)


def test_learn_endpoints_deform_then_walk_through(client):
    """The Learn tab: deform a photo by a known field and recover it, then the four steps on that pair."""
    source, target, comparison, text = client.predict("camera", 6, 4, 0, None, api_name="/deform")  # (the State output stays on the server)
    assert Path(source).suffix == Path(target).suffix == ".png"
    titles = [a["text"] for a in json.loads(comparison["plot"])["layout"]["annotations"]]
    assert titles[:2] == ["true field", "predicted field"] and "endpoint error" in titles[2]
    assert "Endpoint error" in text and "doing nothing would score" in text
    step1, step2, step3, loss_text, step4, bars = client.predict(None, api_name="/walkthrough")  # the same session's pair
    figures = [json.loads(f["plot"]) for f in (step1, step2, step3, step4, bars)]
    assert "Step 1" in figures[0]["layout"]["title"]["text"] and "Step 4" in figures[3]["layout"]["title"]["text"]
    assert [a["text"] for a in figures[1]["layout"]["annotations"]] == ["source", "warped source", "target"]
    assert [a["text"] for a in figures[2]["layout"]["annotations"]] == ["local NCC before", "local NCC after"]
    assert "loss =" in loss_text
    assert figures[4]["data"][0]["type"] == "bar"
