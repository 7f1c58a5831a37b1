"""What the app's tabs share: the upload component, error reporting, result folders, number formatting."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

import regcore
from regcore.io import to_uint8

__all__ = [
    "MAX_FILE_SIZE",
    "OUTPUT_MAX_AGE_S",
    "OUTPUT_ROOT",
    "REQUEST_TIMEOUT_S",
    "UploadedImage",
    "fast_png",
    "output_dir",
    "round_sig",
    "user_errors",
]

MAX_FILE_SIZE = "10mb"
#: A registration request that runs longer than this is stopped with a message (frees the worker).
REQUEST_TIMEOUT_S = 120.0
OUTPUT_ROOT = Path(tempfile.gettempdir()) / "regcore-app"
#: Result folders older than this are deleted when a new one is made.
OUTPUT_MAX_AGE_S = 3600


class UploadedImage(gr.Image):
    """An image input that hands regcore the uploaded file itself.

    ``gr.Image`` decodes uploads on its own first, so a corrupt, empty or oversized file failed there
    with Gradio's generic "Could not preprocess input" message; regcore's loader gives the one-line
    reason instead (and applies its pixel limit before decoding).
    """

    def preprocess(self, payload: gr.data_classes.FileData | None) -> str | None:
        return None if payload is None else str(payload.path)

    def get_block_name(self) -> str:
        return "image"  # the browser draws it as the ordinary image input (it knows no "uploadedimage")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn regcore's one-line input errors into a message in the UI (and an AppError for API clients)."""
    try:
        yield
    except regcore.RegcoreError as err:
        raise gr.Error(str(err)) from None


_last_cleanup = 0.0


def output_dir() -> Path:
    """A fresh folder for one result's downloads; folders older than an hour are removed (checked at most once a minute)."""
    global _last_cleanup
    OUTPUT_ROOT.mkdir(parents=True, exist_ok=True)
    now = time.time()
    if now - _last_cleanup > 60:
        _last_cleanup = now
        for old in OUTPUT_ROOT.iterdir():
            if old.stat().st_mtime < now - OUTPUT_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=OUTPUT_ROOT))


def fast_png(path: Path, image: np.ndarray) -> str:
    """Write ``(H, W)`` in [0, 1] or ``(H, W, 3)`` uint8 as a PNG with fast compression; returns the path."""
    Image.fromarray(image if image.dtype == np.uint8 else to_uint8(image)).save(path, compress_level=1)
    return str(path)


def round_sig(value: float | None, digits: int = 4) -> float | None:
    """``digits`` significant digits: what a person reads (the full values are in metrics.json)."""
    return None if value is None else float(f"{value:.{digits}g}")
