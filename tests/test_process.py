"""The app's process settings that keep its memory flat under load (webapp/process.py, SESSIONS_KEPT)."""

from __future__ import annotations

import gc
import subprocess
import sys
import time
from pathlib import Path

import pytest

import webapp
from webapp import common, process

ROOT = Path(__file__).resolve().parent.parent

# Frees buffers that glibc served from its heap (its mmap threshold raised by a larger one freed
# before), behind a block that keeps the heap from shrinking; prints the MiB still held, then the
# MiB still held after webapp.process.trim().
HELD_AFTER_FREE = """
import importlib.util
import sys
import numpy as np

spec = importlib.util.spec_from_file_location("process", sys.argv[1])  # webapp/process.py alone, without gradio
process = importlib.util.module_from_spec(spec)
spec.loader.exec_module(process)

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

big = np.ones(24 * 2**20, np.uint8)
del big  # unmapped; glibc now serves buffers under 24 MB from its heap
before = rss_mb()
buffers = [np.ones(6 * 2**20, np.uint8) for _ in range(8)]
pin = np.ones(256 * 2**10, np.uint8)
del buffers
held = rss_mb() - before
assert process.trim()
print(held, rss_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_trimming_gives_freed_heap_memory_back():
    command = [sys.executable, "-c", HELD_AFTER_FREE, str(ROOT / "webapp" / "process.py")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    held, after_trim = map(float, run.stdout.split())
    assert held > 30 and after_trim < 5, (held, after_trim)  # 48 MB freed: kept by the heap until trimmed


def test_steady_memory_freezes_start_up_and_trims_in_a_daemon_thread():
    try:
        thread = process.steady_memory(every_s=3600)
        assert gc.get_freeze_count() > 100_000  # the libraries and the model: never scanned again
        assert thread is not None and thread.daemon and thread.is_alive()
    finally:
        gc.unfreeze()


def test_a_frozen_start_up_makes_full_collections_cheap():
    """Full collections scanned every object of the loaded libraries; frozen, they scan only what is new."""
    gc.collect()
    start = time.perf_counter()
    gc.collect()
    unfrozen = time.perf_counter() - start
    gc.freeze()
    try:
        start = time.perf_counter()
        gc.collect()
        frozen = time.perf_counter() - start
    finally:
        gc.unfreeze()
    assert frozen < unfrozen / 5, (frozen, unfrozen)


def test_gradio_keeps_a_bounded_number_of_sessions():
    assert webapp.launch_options()["state_session_capacity"] == common.SESSIONS_KEPT <= 1000
