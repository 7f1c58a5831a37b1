"""What the app's tabs share: the CPU budget (one concurrency group, a time budget per request), the
upload component, error reporting, result folders, number formatting."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import numpy as np
from gradio.utils import get_upload_folder
from PIL import Image

import regcore
from regcore.io import to_uint8

__all__ = [
    "CLEAN_EVERY_S",
    "CPU_WORKERS",
    "HEAVY",
    "MAX_FILE_SIZE",
    "OUTPUT_MAX_AGE_S",
    "OUTPUT_ROOT",
    "QUEUE_SIZE",
    "REQUEST_TIMEOUT_S",
    "SESSIONS_KEPT",
    "TRAIN_TIMEOUT_S",
    "Budget",
    "UploadedImage",
    "fast_png",
    "output_dir",
    "picture_files",
    "round_sig",
    "user_errors",
]

MAX_FILE_SIZE = "10mb"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: The CPU cores this process may use; every heavy event shares :data:`HEAVY`, a concurrency group
#: of this many workers (register, deform, walkthrough, train, compare: one CPU budget).
CPU_WORKERS = max(1, _cores())
HEAVY = {"concurrency_id": "cpu", "concurrency_limit": CPU_WORKERS}
#: Requests waiting beyond the running ones: a full queue answers "queue full" at once, rather
#: than accepting work that would wait for minutes.
QUEUE_SIZE = 8 * CPU_WORKERS
#: A request running longer than this, from decoding its inputs to its last figure, is stopped
#: with a message (which frees its worker).
REQUEST_TIMEOUT_S = 60.0
#: Live training stops (and says so) after this long.
TRAIN_TIMEOUT_S = 120.0
#: Gradio's cache (uploads and the files handed back) and the app's result folders: every
#: ``CLEAN_EVERY_S`` seconds, what is older than ``OUTPUT_MAX_AGE_S`` is deleted.
CLEAN_EVERY_S = 60
OUTPUT_MAX_AGE_S = 300
#: Sessions whose state Gradio keeps (least recently used dropped first). Each costs about 0.45 MB
#: here (a copy of every component's configuration, and the Learn tab's pair), and Gradio's default
#: of 10,000 would let a busy Space's visitors grow the process by gigabytes.
SESSIONS_KEPT = 200
#: Result folders live inside Gradio's cache folder: the files handed back are then served
#: from where they were written (not copied again), and Gradio's own cleaning deletes them.
OUTPUT_ROOT = Path(get_upload_folder()) / "regcore-results"


class Budget:
    """The time one request may take, from its start (decoding its inputs) to its last figure.

    ``check(stage)`` raises a :class:`gradio.Error` once the budget is spent; ``remaining()`` is
    what is left, for :func:`regcore.register`'s ``timeout_s``.
    """

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = REQUEST_TIMEOUT_S if seconds is None else seconds
        self.start = time.perf_counter()

    def remaining(self) -> float:
        return max(self.seconds - (time.perf_counter() - self.start), 1e-3)

    def expired(self) -> bool:
        return time.perf_counter() - self.start > self.seconds

    def check(self, stage: str) -> None:
        if self.expired():
            raise gr.Error(
                f"This request took longer than its {self.seconds:g} s budget and was stopped {stage}."
                " Try smaller images, fewer optimisation steps or a faster method."
            )


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
    """A fresh folder for one result's files; folders older than ``OUTPUT_MAX_AGE_S`` are removed
    (checked at most every ``CLEAN_EVERY_S``; Gradio's ``delete_cache`` deletes the files handed back)."""
    global _last_cleanup
    OUTPUT_ROOT.mkdir(parents=True, exist_ok=True)
    now = time.time()
    if now - _last_cleanup > CLEAN_EVERY_S:
        _last_cleanup = now
        for old in OUTPUT_ROOT.iterdir():
            with contextlib.suppress(OSError):  # another worker may have removed it first
                if old.stat().st_mtime < now - OUTPUT_MAX_AGE_S:
                    shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=OUTPUT_ROOT))


def fast_png(path: Path, image: np.ndarray) -> str:
    """Write ``(H, W)`` in [0, 1] or ``(H, W, 3)`` uint8 as a PNG with fast compression; returns the path."""
    Image.fromarray(image if image.dtype == np.uint8 else to_uint8(image)).save(path, compress_level=1)
    return str(path)


def picture_files(pictures: dict[str, np.ndarray], out: Path | None = None) -> dict[str, str]:
    """Each picture as a PNG of its own (:func:`fast_png`) in ``out`` (default: a fresh :func:`output_dir`).

    Handed arrays, Gradio writes each to a file named by its content, in place: two requests
    returning the same picture at once (the same photograph, a deterministic result) write one
    file together, and a client could fetch it half-written.
    """
    out = output_dir() if out is None else out
    return {name: fast_png(out / f"{name}.png", image) for name, image in pictures.items()}


def round_sig(value: float | None, digits: int = 4) -> float | None:
    """``digits`` significant digits: what a person reads (the full values are in metrics.json)."""
    return None if value is None else float(f"{value:.{digits}g}")
