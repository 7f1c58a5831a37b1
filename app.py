"""Gradio app: register two images, see the field and the scores, and learn how the method works.

Thin: the tabs are built by :mod:`webapp` (its handlers over :func:`regcore.register`, the
pictures in :mod:`regcore.viz`); this file sets the process up, builds the app and launches it.

Run ``python app.py`` (http://127.0.0.1:7860); ``--host`` / ``--port`` or the environment
variables ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` change where it listens. Importing this
module builds ``demo`` without launching it (tests and Hugging Face Spaces use that).
API: ``/register`` takes (source, target, method, model, refine_steps, source_labels,
target_labels, source_scan, target_scan, slice_axis, slice_index) and returns the warped image
first; also ``/deform``, ``/walkthrough``, ``/train``, ``/compare``; see the "Use via API"
link at the bottom of the page.
"""

from __future__ import annotations

import argparse
import os

# Offline by default: no telemetry thread, no Hub look-ups that would stall without a network.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Idle OpenMP threads sleep instead of spinning: on a small, shared CPU (2 cores running other
# work, or two requests at once) spinning threads starve each other and a request that takes
# milliseconds alone can take seconds. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from regcore.checkpoints import default_model_name
from webapp import build_demo, launch_options  # after the environment is set
from webapp.compute import warm_up
from webapp.learn_tab import first_pair
from webapp.process import steady_memory

demo = build_demo()


def launch(host: str | None = None, port: int | None = None, **kwargs):
    """Launch ``demo``: host/port default to GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, else 127.0.0.1:7860.

    ``kwargs`` go to :meth:`gradio.Blocks.launch` (tests pass ``prevent_thread_lock=True``).
    """
    host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = port or int(os.environ.get("GRADIO_SERVER_PORT") or 7860)
    first_pair(default_model_name())  # the page-load pair, and the default model loaded, before the first visitor
    warm_up(default_model_name())  # the default method's compiled loops loaded (or compiled) before the first visitor
    steady_memory()  # flat under load: start-up frozen for the GC, one malloc arena per core, free pages given back
    return demo.launch(server_name=host, server_port=port, **{**launch_options(), **kwargs})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="regcore's Gradio app")
    parser.add_argument("--host", default=None, help="interface to listen on (default $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default $GRADIO_SERVER_PORT or 7860)")
    args = parser.parse_args(argv)
    launch(args.host, args.port)


if __name__ == "__main__":
    main()
