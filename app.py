"""Gradio app: upload two images, see the registration. Thin UI over ``regcore``."""

from __future__ import annotations

import os

import gradio as gr
import numpy as np

import regcore


def run(source: np.ndarray | None, target: np.ndarray | None, method: str):
    if source is None or target is None:
        raise gr.Error("Upload a source and a target image.")
    try:
        result = regcore.register(source, target, method=None if method == "default" else method)
    except regcore.RegcoreError as err:
        raise gr.Error(str(err)) from None
    rows = [[k, result.before[k], result.after[k]] for k in ("mse", "ncc", "local_ncc")]
    return result.warped, rows


with gr.Blocks(title="regcore: deformable registration") as demo:
    gr.Markdown("# regcore: 2-D deformable image registration")
    with gr.Row():
        source = gr.Image(label="Source (moving)", type="numpy", image_mode="L")
        target = gr.Image(label="Target (fixed)", type="numpy", image_mode="L")
    method = gr.Dropdown(["default", *regcore.METHODS], value="default", label="Method")
    button = gr.Button("Register", variant="primary")
    warped = gr.Image(label="Warped source", format="png")
    scores = gr.Dataframe(headers=["score", "before", "after"], label="Scores")
    button.click(run, [source, target, method], [warped, scores], api_name="register")

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=2, max_size=32).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_file_size="20mb",
    )
