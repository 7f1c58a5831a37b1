"""The app side of regcore: the Gradio app's tabs, over the library (``regcore``), which never imports this.

- :mod:`webapp.compute`: the Learn and Compare computations (no UI);
- :mod:`webapp.register_tab`, :mod:`webapp.learn_tab`, :mod:`webapp.compare_tab`: one tab each,
  its handlers (computation -> pictures) and its builder (components and events);
- :mod:`webapp.common`: what the tabs share.

``app.py`` at the repository top parses the command line and launches :func:`build_demo`'s app.
"""

from __future__ import annotations

import gradio as gr

from regcore.io import MAX_PIXELS

from .common import CLEAN_EVERY_S, CPU_WORKERS, MAX_FILE_SIZE, OUTPUT_MAX_AGE_S, QUEUE_SIZE, SESSIONS_KEPT
from .compare_tab import build_compare_tab
from .learn_tab import build_learn_tab
from .register_tab import build_register_tab

__all__ = ["HEADER", "build_demo", "launch_options"]

HEADER = """# regcore: 2-D deformable image registration
Give a **source** (the image to move) and a **target**; a UNet predicts a displacement field that
warps the source onto the target. Images: PNG, JPEG, TIFF, BMP, WebP; colour or gray (converted to
gray); up to {mb} and {mp} megapixels; registered at up to 512 px on the longer side.
The **Learn** tab shows how it works, **Compare** pits it against classical methods.
Medical scans (NIfTI, DICOM, MetaImage, NRRD; a slice of a 3-D volume) and label maps (Dice before
and after) go in the **Medical scans** panel under the images."""


def build_demo() -> gr.Blocks:
    """The whole app, three tabs (not launched)."""
    # Gradio's cache (uploads, returned files) is cleaned every minute of what is five minutes old.
    with gr.Blocks(title="regcore: deformable image registration", delete_cache=(CLEAN_EVERY_S, OUTPUT_MAX_AGE_S)) as app:
        gr.Markdown(HEADER.format(mb=MAX_FILE_SIZE.upper(), mp=MAX_PIXELS // 1_000_000))
        with gr.Tabs():
            with gr.Tab("Register", id="register"):
                register = build_register_tab()
            with gr.Tab("Learn", id="learn"):
                build_learn_tab(app, register.model)
            with gr.Tab("Compare", id="compare"):
                build_compare_tab(register.source, register.target, register.model)
    # One CPU budget: the heavy events share one concurrency group of CPU_WORKERS (webapp.common.HEAVY);
    # the queue is bounded, and a full one answers "queue full" at once.
    app.queue(default_concurrency_limit=CPU_WORKERS, max_size=QUEUE_SIZE)
    return app


def launch_options() -> dict:
    """What :meth:`gradio.Blocks.launch` is given besides host and port."""
    return {
        "max_file_size": MAX_FILE_SIZE,
        "theme": gr.themes.Soft(),
        "footer_links": ["api", "gradio", "settings"],
        "show_error": True,
        "state_session_capacity": SESSIONS_KEPT,
    }
